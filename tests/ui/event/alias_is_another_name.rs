use cqrs_core::{Event, Upcast};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenedV1 {
    pub owner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenedV2 {
    pub owner: String,
    pub currency: String,
}

impl Upcast for OpenedV1 {
    type Next = OpenedV2;
    fn upcast(self) -> OpenedV2 {
        OpenedV2 { owner: self.owner, currency: "EUR".into() }
    }
}

impl Upcast for OpenedV2 {
    type Next = Opened;
    fn upcast(self) -> Opened {
        Opened { owner: self.owner, currency: self.currency }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closed {}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    #[event(name = "account.opened", version = 3, alias = "account.closed",
            upcast(from = 1, with = OpenedV1), upcast(from = 2, with = OpenedV2))]
    Opened(Opened),
    #[event(name = "account.closed")]
    Closed(Closed),
}

fn main() {}

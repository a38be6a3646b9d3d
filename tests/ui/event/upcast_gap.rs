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

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    // Version 2 has no upcaster: a stored version-1 event has no path to version 3.
    #[event(name = "account.opened", version = 3, upcast(from = 1, with = OpenedV1))]
    Opened(Opened),
}

fn main() {}

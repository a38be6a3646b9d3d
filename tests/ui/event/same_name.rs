use cqrs_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: u64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    #[event(name = "account.changed")]
    Deposited(Deposited),
    #[event(name = "account.changed")]
    Withdrawn(Withdrawn),
}

fn main() {}

use cqrs_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Amount {
    pub amount: u64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited(Amount),
    Withdrawn(Amount),
}

fn main() {}

use cqrs_core::{Event, aggregate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, thiserror::Error)]
#[error("account is closed")]
pub struct AccountClosed;

#[derive(Debug, Default)]
pub struct Account {
    balance: u64,
}

#[aggregate(event = AccountEvent, error = AccountClosed, unique_keys)]
impl Account {
    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

fn main() {}

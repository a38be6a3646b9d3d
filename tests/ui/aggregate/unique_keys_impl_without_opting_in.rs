use cqrs_core::{Event, KeyChanges, UniqueKeys, aggregate};
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

#[aggregate(event = AccountEvent, error = AccountClosed)]
impl Account {
    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

// Without `unique_keys` in `#[aggregate(...)]` these keys would never be reserved.
impl UniqueKeys for Account {
    fn unique_keys(&self, _event: &AccountEvent, keys: &mut KeyChanges) {
        keys.claim("account.owner", "ada");
    }
}

fn main() {}

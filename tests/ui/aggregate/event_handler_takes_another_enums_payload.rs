use cqrs_core::{Command, Event, aggregate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub name: String,
}

#[derive(Debug, Clone, Event)]
pub enum CustomerEvent {
    Registered(Registered),
}

#[derive(Debug, thiserror::Error)]
#[error("account is closed")]
pub struct AccountClosed;

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = account_id)]
pub struct Deposit {
    pub account_id: String,
    pub amount: u64,
}

#[derive(Debug, Default)]
pub struct Account {
    balance: u64,
    customers: u32,
}

#[aggregate(event = AccountEvent, error = AccountClosed)]
impl Account {
    #[command_handler]
    fn deposit(&self, command: &Deposit) -> Result<Deposited, AccountClosed> {
        Ok(Deposited {
            amount: command.amount,
        })
    }

    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }

    #[event_handler]
    fn on_registered(&mut self, _event: &Registered) {
        self.customers += 1;
    }
}

fn main() {}

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
    fn on_amount(&mut self, amount: &u64) {
        self.balance += amount;
    }
}

fn main() {}

use cqrs_core::{Command, CommandBus, Event, InMemoryEventStore, aggregate};
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
#[error("insufficient funds")]
pub struct InsufficientFunds;

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = account_id)]
pub struct Deposit {
    pub account_id: String,
    pub amount: u64,
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = account_id)]
pub struct Withdraw {
    pub account_id: String,
    pub amount: u64,
}

#[derive(Debug, Default)]
pub struct Account {
    balance: u64,
}

#[aggregate(event = AccountEvent, error = InsufficientFunds)]
impl Account {
    #[command_handler]
    fn deposit(&self, command: &Deposit) -> Result<Deposited, InsufficientFunds> {
        Ok(Deposited {
            amount: command.amount,
        })
    }

    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

pub fn withdraw() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(())
        .build();
    drop(bus.execute(Withdraw {
        account_id: "a".to_owned(),
        amount: 10,
    }));
}

fn main() {}

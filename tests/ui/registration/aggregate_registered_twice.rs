use cqrs_core::{CommandBus, Event, InMemoryEventStore, aggregate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, Default)]
pub struct Account {
    balance: u64,
}

#[aggregate(event = AccountEvent, error = std::convert::Infallible)]
impl Account {
    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

fn main() {
    let _bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(())
        .aggregate::<Account>(())
        .build();
}

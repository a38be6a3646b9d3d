use cqrs_core::{Event, Query, projection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, Query)]
#[query(output = u64)]
pub struct GetTotal;

#[derive(Debug, thiserror::Error)]
#[error("the total is not known yet")]
pub struct Unknown;

#[derive(Default)]
pub struct Totals {
    total: u64,
}

#[projection]
impl Totals {
    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.total += event.amount;
    }

    #[event_handler]
    fn also_on_deposited(&mut self, event: &Deposited) {
        self.total += event.amount;
    }
}

fn main() {}

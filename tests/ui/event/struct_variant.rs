use cqrs_core::Event;

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited { amount: u64 },
}

fn main() {}

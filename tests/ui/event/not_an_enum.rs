use cqrs_core::Event;

#[derive(Debug, Clone, Event)]
pub struct Deposited {
    pub amount: u64,
}

fn main() {}

use cqrs_core::aggregate;

#[aggregate(event = AccountEvent, error = AccountClosed)]
pub struct Account {
    pub balance: u64,
}

fn main() {}

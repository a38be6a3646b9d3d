use cqrs_core::Command;

#[derive(Command)]
#[command(agregate = Account, id = account_id)]
pub struct Deposit {
    pub account_id: String,
    pub amount: u64,
}

fn main() {}

use cqrs_core::Query;

#[derive(Query)]
#[query(name = "account.balance")]
pub struct GetBalance {
    pub account_id: String,
}

fn main() {}

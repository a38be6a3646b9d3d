use cqrs_core::Query;

#[derive(Query)]
#[query(ouput = u64)]
pub struct GetBalance {
    pub account_id: String,
}

fn main() {}

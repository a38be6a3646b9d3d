use cqrs_core::{Query, QueryBus, projection};

#[derive(Debug, Query)]
#[query(output = u64)]
pub struct GetBalance {
    pub account_id: String,
}

#[derive(Debug, Query)]
#[query(output = Vec<String>)]
pub struct ListAccounts;

#[derive(Debug, thiserror::Error)]
#[error("no such account")]
pub struct NotFound;

pub struct Balances;

#[projection]
impl Balances {
    #[query_handler]
    fn balance(&self, _: &GetBalance) -> Result<u64, NotFound> {
        Err(NotFound)
    }
}

pub fn list() {
    let queries = QueryBus::builder().handler(Balances).build();
    drop(queries.execute(ListAccounts));
}

fn main() {}

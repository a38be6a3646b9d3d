use cqrs_core::{Query, QueryBus, ReadModel, projection};

#[derive(Debug, Query)]
#[query(output = u64, name = "account.balance")]
pub struct GetBalance;

#[derive(Debug, thiserror::Error)]
#[error("not known yet")]
pub struct Unknown;

#[derive(Default)]
pub struct Balances;

#[projection]
impl Balances {
    #[query_handler]
    fn balance(&self, _: &GetBalance) -> Result<u64, Unknown> {
        Ok(0)
    }
}

#[derive(Default)]
pub struct Ledger;

#[projection]
impl Ledger {
    #[query_handler]
    fn balance(&self, _: &GetBalance) -> Result<u64, Unknown> {
        Ok(1)
    }
}

fn main() {
    let _queries = QueryBus::builder()
        .handler(ReadModel::new(Balances))
        .handler(ReadModel::new(Ledger))
        .build();
}

use cqrs_core::{Query, QueryBus, ReadModel, projection};

#[derive(Debug, Query)]
#[query(output = u64)]
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

fn main() {
    let balances = ReadModel::new(Balances);
    let _queries = QueryBus::builder()
        .handler(balances.clone())
        .handler(balances)
        .build();
}

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
    #[query_handler]
    fn total(&self, _: &GetTotal) -> Result<String, Unknown> {
        Ok(self.total.to_string())
    }
}

fn main() {}

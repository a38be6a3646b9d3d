//! Distinct aggregates and handlers of distinct queries register and run.

use cqrs_core::{CommandBus, Event, InMemoryEventStore, Query, QueryBus, ReadModel};
use cqrs_core::{aggregate, projection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited;

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, Default)]
pub struct Account;

#[aggregate(event = AccountEvent, error = std::convert::Infallible)]
impl Account {
    #[event_handler]
    fn on_deposited(&mut self, _: &Deposited) {}
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered;

#[derive(Debug, Clone, Event)]
pub enum CustomerEvent {
    Registered(Registered),
}

#[derive(Debug, Default)]
pub struct Customer;

#[aggregate(event = CustomerEvent, error = std::convert::Infallible)]
impl Customer {
    #[event_handler]
    fn on_registered(&mut self, _: &Registered) {}
}

#[derive(Debug, Query)]
#[query(output = u64)]
pub struct GetBalance;

#[derive(Debug, Query)]
#[query(output = u64)]
pub struct CountCustomers;

#[derive(Default)]
pub struct Balances;

#[projection]
impl Balances {
    #[query_handler]
    fn balance(&self, _: &GetBalance) -> Result<u64, std::convert::Infallible> {
        Ok(0)
    }
}

#[derive(Default)]
pub struct Customers;

#[projection]
impl Customers {
    #[query_handler]
    fn count(&self, _: &CountCustomers) -> Result<u64, std::convert::Infallible> {
        Ok(0)
    }
}

fn main() {
    let _bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(())
        .aggregate::<Customer>(())
        .build();
    let _queries = QueryBus::builder()
        .handler(ReadModel::new(Balances))
        .handler(ReadModel::new(Customers))
        .build();
}

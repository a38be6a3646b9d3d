use cqrs_core::{Command, Event, aggregate};

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Closed,
}

#[derive(Debug, thiserror::Error)]
#[error("account is closed")]
pub struct AccountClosed;

#[derive(Debug, Default)]
pub struct Account;

#[aggregate(event = AccountEvent, error = AccountClosed)]
impl Account {
    #[event_handler(Closed)]
    fn on_closed(&mut self) {}
}


#[derive(serde::Serialize, Command)]
#[command(aggregate = Account, id = account_id, idempotency_key = request)]
pub struct Deposit {
    pub account_id: String,
    pub request_id: String,
}

fn main() {}

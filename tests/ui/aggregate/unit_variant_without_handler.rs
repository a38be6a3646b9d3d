use cqrs_core::{Command, Event, aggregate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Opened(Opened),
    Closed,
}

#[derive(Debug, thiserror::Error)]
#[error("account is closed")]
pub struct AccountClosed;

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = account_id)]
pub struct Open {
    pub account_id: String,
    pub owner: String,
}

#[derive(Debug, Default)]
pub struct Account {
    open: bool,
}

#[aggregate(event = AccountEvent, error = AccountClosed)]
impl Account {
    #[command_handler]
    fn open(&self, command: &Open) -> Result<Opened, AccountClosed> {
        Ok(Opened {
            owner: command.owner.clone(),
        })
    }

    #[event_handler]
    fn on_opened(&mut self, _: &Opened) {
        self.open = true;
    }
}

fn main() {}

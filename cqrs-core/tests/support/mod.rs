//! A small domain shared by the behaviour tests.
#![allow(dead_code, missing_docs)]

pub mod delegate;
pub mod flaky;
pub mod wallet;

use std::sync::Arc;
use std::sync::Mutex;

use cqrs_core::prelude::*;
use cqrs_core::{AppendResult, BoxFuture, ExpectedVersion, NewEvent, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    #[event(name = "account.opened")]
    Opened(Opened),
    #[event(name = "account.deposited")]
    Deposited(Deposited),
    #[event(name = "account.withdrawn")]
    Withdrawn(Withdrawn),
    #[event(name = "account.closed")]
    Closed,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = id, name = "account.open")]
pub struct Open {
    pub id: u32,
    pub owner: String,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = id, name = "account.deposit")]
pub struct Deposit {
    pub id: u32,
    pub amount: u64,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = id, name = "account.withdraw")]
pub struct Withdraw {
    pub id: u32,
    pub amount: u64,
}

/// Deposits after a pause: lets tests make commands slow.
#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = id, name = "account.slow_deposit")]
pub struct SlowDeposit {
    pub id: u32,
    pub amount: u64,
    pub millis: u64,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = id, name = "account.close")]
pub struct Close {
    pub id: u32,
}

/// A command with field rules, checked by the validation middleware.
#[derive(Debug, Clone, Deserialize, validator::Validate, Command)]
#[command(aggregate = Account, id = id, name = "account.rename", validate)]
pub struct Rename {
    pub id: u32,
    #[validate(length(min = 1, max = 5))]
    pub owner: String,
    #[validate(email)]
    pub contact: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("not open")]
    NotOpen,
    #[error("already open")]
    AlreadyOpen,
    #[error("closed")]
    Closed,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

/// The services the account's handlers borrow.
#[derive(Debug, Default)]
pub struct Limits {
    pub max_deposit: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub closed: bool,
    pub balance: u64,
    pub owner: String,
}

#[aggregate(event = AccountEvent, error = AccountError, services = Limits, snapshot = 1)]
impl Account {
    #[command_handler]
    fn open(&self, cmd: &Open) -> Result<Opened, AccountError> {
        if self.open {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(Opened {
            owner: cmd.owner.clone(),
        })
    }

    #[command_handler]
    fn deposit(&self, cmd: &Deposit, limits: &Limits) -> Result<Deposited, AccountError> {
        self.active()?;
        Ok(Deposited {
            amount: cmd.amount.min(limits.max_deposit),
        })
    }

    #[command_handler]
    async fn slow_deposit(
        &self,
        cmd: &SlowDeposit,
        ctx: &CommandContext,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        self.active()?;
        tokio::time::sleep(std::time::Duration::from_millis(cmd.millis)).await;
        let _ = ctx.now;
        Ok(vec![AccountEvent::Deposited(Deposited {
            amount: cmd.amount,
        })])
    }

    #[command_handler]
    fn withdraw(&self, cmd: &Withdraw) -> Result<Withdrawn, AccountError> {
        self.active()?;
        if cmd.amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: cmd.amount,
            });
        }
        Ok(Withdrawn { amount: cmd.amount })
    }

    #[command_handler]
    fn close(&self, _cmd: &Close) -> Result<Option<AccountEvent>, AccountError> {
        if self.closed {
            return Ok(None);
        }
        self.active()?;
        Ok(Some(AccountEvent::Closed))
    }

    #[command_handler]
    fn rename(&self, _cmd: &Rename) -> Result<(), AccountError> {
        self.active()
    }

    #[event_handler]
    fn on_opened(&mut self, e: &Opened) {
        self.open = true;
        self.owner.clone_from(&e.owner);
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }

    #[event_handler]
    fn on_withdrawn(&mut self, e: &Withdrawn) {
        self.balance -= e.amount;
    }

    #[event_handler(Closed)]
    fn on_closed(&mut self) {
        self.closed = true;
    }
}

impl Account {
    fn active(&self) -> Result<(), AccountError> {
        if self.closed {
            Err(AccountError::Closed)
        } else if !self.open {
            Err(AccountError::NotOpen)
        } else {
            Ok(())
        }
    }
}

pub fn limits() -> Limits {
    Limits {
        max_deposit: 1_000_000,
    }
}

/// An in-memory store that records the `from_version` of every `load_stream` call.
#[derive(Clone, Default)]
pub struct CountingStore {
    pub inner: InMemoryEventStore,
    pub loads: Arc<Mutex<Vec<(String, u64)>>>,
}

impl CountingStore {
    pub fn loads(&self) -> Vec<(String, u64)> {
        self.loads.lock().unwrap().clone()
    }
}

impl EventStore for CountingStore {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        self.inner.append(stream_id, expected, events)
    }
    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.loads
            .lock()
            .unwrap()
            .push((stream_id.to_owned(), from_version));
        self.inner.load_stream(stream_id, from_version)
    }

    crate::support::delegate::delegate!(inner: stream_version, read_all_from, load_snapshot, save_snapshot, delete_snapshot);
}

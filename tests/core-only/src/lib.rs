//! A domain written with every macro of `cqrs_core` and no other dependency.
//!
//! Serde's derives are pointed at `cqrs_core::serde`; the errors implement `std::error::Error`
//! by hand instead of deriving it with `thiserror`.

use std::fmt;

use cqrs_core::prelude::*;

/// Money was paid in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "cqrs_core::serde")]
pub struct Deposited {
    /// Amount in cents.
    pub amount: u64,
}

/// What happens to an account.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    /// See [`Deposited`].
    #[event(name = "account.deposited")]
    Deposited(Deposited),
    /// The account was closed.
    #[event(name = "account.closed")]
    Closed,
}

/// Pay money in.
#[derive(Debug, Deserialize, Command)]
#[serde(crate = "cqrs_core::serde")]
#[command(aggregate = Account, id = account_id, name = "account.deposit")]
pub struct Deposit {
    /// The account.
    pub account_id: Uuid,
    /// Amount in cents.
    pub amount: u64,
}

/// Close the account.
#[derive(Debug, Deserialize, Command)]
#[serde(crate = "cqrs_core::serde")]
#[command(aggregate = Account, id = account_id, name = "account.close")]
pub struct Close {
    /// The account.
    pub account_id: Uuid,
}

/// Why the account refused a command.
#[derive(Debug, PartialEq, Eq)]
pub enum AccountError {
    /// The account is closed.
    Closed,
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the account is closed")
    }
}

impl std::error::Error for AccountError {}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        "account_closed"
    }
}

/// An account's state.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(crate = "cqrs_core::serde")]
pub struct Account {
    closed: bool,
}

#[aggregate(event = AccountEvent, error = AccountError, name = "account", snapshot = 1)]
impl Account {
    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, AccountError> {
        if self.closed {
            return Err(AccountError::Closed);
        }
        Ok(Deposited { amount: cmd.amount })
    }

    #[command_handler]
    fn close(&self, _cmd: &Close) -> Result<AccountEvent, AccountError> {
        Ok(AccountEvent::Closed)
    }

    #[event_handler]
    fn on_deposited(&mut self, _event: &Deposited) {}

    #[event_handler(Closed)]
    fn on_closed(&mut self) {
        self.closed = true;
    }
}

/// Ask for an account's balance.
#[derive(Debug, Deserialize, Query)]
#[serde(crate = "cqrs_core::serde")]
#[query(output = u64, name = "account.balance")]
pub struct GetBalance {
    /// The account.
    pub account_id: Uuid,
}

/// No deposit was seen for the account.
#[derive(Debug)]
pub struct UnknownAccount;

impl fmt::Display for UnknownAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown account")
    }
}

impl std::error::Error for UnknownAccount {}

/// Balances by account.
#[derive(Debug, Default)]
pub struct Balances {
    by_account: std::collections::HashMap<Uuid, u64>,
}

#[projection(name = "balances")]
impl Balances {
    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited, recorded: &RecordedEvent) {
        if let Some(id) = recorded
            .aggregate_id::<Account>()
            .and_then(|id| id.parse().ok())
        {
            *self.by_account.entry(id).or_default() += event.amount;
        }
    }

    #[query_handler]
    fn balance(&self, query: &GetBalance) -> Result<u64, UnknownAccount> {
        self.by_account
            .get(&query.account_id)
            .copied()
            .ok_or(UnknownAccount)
    }
}

/// The service's command bus.
pub type Commands = cqrs_core::CommandBusOf![Account];
/// The service's query bus.
pub type Queries = cqrs_core::QueryBusOf![ReadModel<Balances>];

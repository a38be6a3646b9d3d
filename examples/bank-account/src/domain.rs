//! The account aggregate: its events, commands, rules and errors.

use cqrs_core::prelude::*;
use validator::Validate;

/// An account was opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    /// The owner's name.
    pub owner: String,
}

/// Money was paid in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    /// Amount in cents.
    pub amount: u64,
}

/// Money was taken out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawn {
    /// Amount in cents.
    pub amount: u64,
}

/// Everything that can happen to an account. The names are pinned: renaming a variant
/// keeps stored events readable.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    /// See [`Opened`].
    #[event(name = "account.opened")]
    Opened(Opened),
    /// See [`Deposited`].
    #[event(name = "account.deposited")]
    Deposited(Deposited),
    /// See [`Withdrawn`].
    #[event(name = "account.withdrawn")]
    Withdrawn(Withdrawn),
    /// The account was closed.
    #[event(name = "account.closed")]
    Closed,
}

/// Open a new account.
#[derive(Debug, Clone, Deserialize, Validate, Command)]
#[command(aggregate = Account, id = account_id, name = "account.open", validate)]
pub struct OpenAccount {
    /// The new account's id.
    pub account_id: Uuid,
    /// The owner's name.
    #[validate(length(min = 1, max = 100))]
    pub owner: String,
}

/// Pay money in.
#[derive(Debug, Clone, Deserialize, Validate, Command)]
#[command(aggregate = Account, id = account_id, name = "account.deposit", validate)]
pub struct Deposit {
    /// The account.
    pub account_id: Uuid,
    /// Amount in cents.
    #[validate(range(min = 1))]
    pub amount: u64,
}

/// Take money out.
#[derive(Debug, Clone, Deserialize, Validate, Command)]
#[command(aggregate = Account, id = account_id, name = "account.withdraw", validate)]
pub struct Withdraw {
    /// The account.
    pub account_id: Uuid,
    /// Amount in cents.
    #[validate(range(min = 1))]
    pub amount: u64,
}

/// Close the account; only an empty account can be closed.
#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = account_id, name = "account.close")]
pub struct CloseAccount {
    /// The account.
    pub account_id: Uuid,
}

/// Why the account refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `OpenAccount` on an account that exists.
    #[error("the account is already open")]
    AlreadyOpen,
    /// A command on an account that was never opened.
    #[error("the account does not exist")]
    NotOpen,
    /// A command on a closed account.
    #[error("the account is closed")]
    Closed,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// The balance in cents.
        balance: u64,
        /// The requested amount in cents.
        requested: u64,
    },
    /// Closing an account that still holds money.
    #[error("the account still holds {balance}")]
    NotEmpty {
        /// The balance in cents.
        balance: u64,
    },
}

/// The account's state, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    open: bool,
    closed: bool,
    balance: u64,
}

#[aggregate(event = AccountEvent, error = AccountError, name = "account", snapshot = 1)]
impl Account {
    #[command_handler]
    fn open(&self, cmd: &OpenAccount) -> Result<Opened, AccountError> {
        if self.open || self.closed {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(Opened {
            owner: cmd.owner.clone(),
        })
    }

    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, AccountError> {
        self.ensure_active()?;
        Ok(Deposited { amount: cmd.amount })
    }

    #[command_handler]
    fn withdraw(&self, cmd: &Withdraw) -> Result<Withdrawn, AccountError> {
        self.ensure_active()?;
        if cmd.amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: cmd.amount,
            });
        }
        Ok(Withdrawn { amount: cmd.amount })
    }

    #[command_handler]
    fn close(&self, _cmd: &CloseAccount) -> Result<Option<AccountEvent>, AccountError> {
        if self.closed {
            // Closing twice is harmless: no new event.
            return Ok(None);
        }
        self.ensure_active()?;
        if self.balance > 0 {
            return Err(AccountError::NotEmpty {
                balance: self.balance,
            });
        }
        Ok(Some(AccountEvent::Closed))
    }

    #[event_handler]
    fn on_opened(&mut self, _event: &Opened) {
        self.open = true;
    }

    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }

    #[event_handler]
    fn on_withdrawn(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
    }

    #[event_handler(Closed)]
    fn on_closed(&mut self) {
        self.closed = true;
    }
}

impl Account {
    fn ensure_active(&self) -> Result<(), AccountError> {
        match (self.open, self.closed) {
            (_, true) => Err(AccountError::Closed),
            (false, false) => Err(AccountError::NotOpen),
            (true, false) => Ok(()),
        }
    }

    /// The balance in cents.
    pub fn balance(&self) -> u64 {
        self.balance
    }
}

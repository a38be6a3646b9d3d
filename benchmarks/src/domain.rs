//! The bank account every workload runs, written three ways with one set of rules: for this
//! framework (the macros, as a user writes it), for cqrs-es ([`es`]), and as plain methods
//! the hand-written baselines call.
//!
//! The rules: `OpenAccount` opens an account that is not open; `Deposit` needs an open
//! account and a balance that does not overflow, and records `Deposited`.

use cqrs_core::Repository;
use cqrs_core::prelude::*;

/// Stored type name of [`Opened`].
pub const OPENED: &str = "bank.opened";
/// Stored type name of [`Deposited`].
pub const DEPOSITED: &str = "bank.deposited";

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

/// Everything that can happen to an account.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    /// See [`Opened`].
    #[event(name = "bank.opened")]
    Opened(Opened),
    /// See [`Deposited`].
    #[event(name = "bank.deposited")]
    Deposited(Deposited),
}

/// Opens account `account`.
#[derive(Debug, Clone, Command)]
#[command(aggregate = Account, id = account, name = "bank.open")]
pub struct OpenAccount {
    /// The account.
    pub account: u64,
    /// The owner's name.
    pub owner: String,
}

/// Pays `amount` into account `account`.
#[derive(Debug, Clone, Command)]
#[command(aggregate = Account, id = account, name = "bank.deposit")]
pub struct Deposit {
    /// The account.
    pub account: u64,
    /// Amount in cents.
    pub amount: u64,
}

/// Why an account refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `OpenAccount` on an open account.
    #[error("the account is already open")]
    AlreadyOpen,
    /// `Deposit` on an account that was never opened.
    #[error("the account is not open")]
    NotOpen,
    /// The balance would overflow.
    #[error("the balance would overflow")]
    Overflow,
}

/// An account's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Whether the account was opened.
    pub open: bool,
    /// The balance in cents.
    pub balance: u64,
}

#[aggregate(event = AccountEvent, error = AccountError)]
impl Account {
    /// The rule of `OpenAccount`.
    #[command_handler]
    pub fn open(&self, cmd: &OpenAccount) -> Result<Opened, AccountError> {
        if self.open {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(Opened {
            owner: cmd.owner.clone(),
        })
    }

    /// The rule of `Deposit`.
    #[command_handler]
    pub fn deposit(&self, cmd: &Deposit) -> Result<Deposited, AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        self.balance
            .checked_add(cmd.amount)
            .ok_or(AccountError::Overflow)?;
        Ok(Deposited { amount: cmd.amount })
    }

    /// Applies [`Opened`].
    #[event_handler]
    pub fn on_opened(&mut self, _event: &Opened) {
        self.open = true;
    }

    /// Applies [`Deposited`].
    #[event_handler]
    pub fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

/// The command bus a user builds for this aggregate, with the defaults.
pub type Bus = CommandBus<(Repository<Account>, ())>;

/// The stream id this framework gives account `account`, formatted as a hand-written loop
/// formats it for each command.
pub fn stream_of(account: u64) -> String {
    format!("{}-{account}", <Account as Aggregate>::NAME)
}

/// The same account for cqrs-es: the same rules, in cqrs-es's traits.
pub mod es {
    use cqrs_es::DomainEvent;
    use cqrs_es::event_sink::EventSink;
    use serde::{Deserialize, Serialize};

    use super::{AccountError, Deposited, Opened};

    /// The account's events, as cqrs-es stores them (serde's external tagging).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum EsEvent {
        /// See [`Opened`].
        Opened(Opened),
        /// See [`Deposited`].
        Deposited(Deposited),
    }

    impl DomainEvent for EsEvent {
        fn event_type(&self) -> String {
            match self {
                EsEvent::Opened(_) => "Opened".to_owned(),
                EsEvent::Deposited(_) => "Deposited".to_owned(),
            }
        }

        fn event_version(&self) -> String {
            "1.0".to_owned()
        }
    }

    /// The account's commands; cqrs-es names the aggregate apart from the command.
    #[derive(Debug, Clone)]
    pub enum EsCommand {
        /// See [`super::OpenAccount`].
        Open {
            /// The owner's name.
            owner: String,
        },
        /// See [`super::Deposit`].
        Deposit {
            /// Amount in cents.
            amount: u64,
        },
    }

    /// The account's state.
    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    pub struct EsAccount {
        /// Whether the account was opened.
        pub open: bool,
        /// The balance in cents.
        pub balance: u64,
    }

    impl cqrs_es::Aggregate for EsAccount {
        const TYPE: &'static str = "Account";
        type Command = EsCommand;
        type Event = EsEvent;
        type Error = AccountError;
        type Services = ();

        async fn handle(
            &mut self,
            command: EsCommand,
            _services: &(),
            sink: &EventSink<Self>,
        ) -> Result<(), AccountError> {
            let event = match command {
                EsCommand::Open { owner } => {
                    if self.open {
                        return Err(AccountError::AlreadyOpen);
                    }
                    EsEvent::Opened(Opened { owner })
                }
                EsCommand::Deposit { amount } => {
                    if !self.open {
                        return Err(AccountError::NotOpen);
                    }
                    self.balance
                        .checked_add(amount)
                        .ok_or(AccountError::Overflow)?;
                    EsEvent::Deposited(Deposited { amount })
                }
            };
            sink.write(event, self).await;
            Ok(())
        }

        fn apply(&mut self, event: EsEvent) {
            match event {
                EsEvent::Opened(_) => self.open = true,
                EsEvent::Deposited(d) => self.balance += d.amount,
            }
        }
    }
}

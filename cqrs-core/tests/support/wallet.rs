//! A wallet whose commands take idempotency keys, and count their handler runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_core::DomainError;
use cqrs_core::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum WalletEvent {
    #[event(name = "wallet.credited")]
    Credited(Credited),
    #[event(name = "wallet.debited")]
    Debited(Debited),
}

/// Carries its key in a field.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.credit", idempotency_key = request_id)]
pub struct Credit {
    pub id: u32,
    pub request_id: String,
    pub amount: u64,
}

/// Takes its key from the caller's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.debit", idempotent)]
pub struct Debit {
    pub id: u32,
    pub amount: u64,
}

/// Produces no events.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.check", idempotent)]
pub struct Check {
    pub id: u32,
}

/// Takes no keys.
#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.touch")]
pub struct Touch {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

impl DomainError for WalletError {
    fn code(&self) -> &'static str {
        "insufficient_funds"
    }
}

/// Counts handler runs.
#[derive(Debug, Default)]
pub struct Runs(pub AtomicUsize);

#[derive(Debug, Default)]
pub struct Wallet {
    balance: u64,
}

#[aggregate(event = WalletEvent, error = WalletError, services = Arc<Runs>)]
impl Wallet {
    #[command_handler]
    fn credit(&self, cmd: &Credit, runs: &Arc<Runs>) -> Result<Credited, WalletError> {
        runs.0.fetch_add(1, Ordering::SeqCst);
        Ok(Credited { amount: cmd.amount })
    }

    #[command_handler]
    fn debit(&self, cmd: &Debit, runs: &Arc<Runs>) -> Result<Debited, WalletError> {
        runs.0.fetch_add(1, Ordering::SeqCst);
        if cmd.amount > self.balance {
            return Err(WalletError::InsufficientFunds {
                balance: self.balance,
                requested: cmd.amount,
            });
        }
        Ok(Debited { amount: cmd.amount })
    }

    #[command_handler]
    fn check(&self, _cmd: &Check, runs: &Arc<Runs>) -> Result<Vec<WalletEvent>, WalletError> {
        runs.0.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }

    #[command_handler]
    fn touch(&self, _cmd: &Touch) -> Result<Vec<WalletEvent>, WalletError> {
        Ok(Vec::new())
    }

    #[event_handler]
    fn on_credited(&mut self, e: &Credited) {
        self.balance += e.amount;
    }

    #[event_handler]
    fn on_debited(&mut self, e: &Debited) {
        self.balance -= e.amount;
    }
}

//! The balance read model: fed by account events, answering `GetBalance`.

use std::collections::HashMap;

use cqrs_core::prelude::*;

use crate::domain::{Account, Deposited, Opened, Withdrawn};

/// Ask for an account's owner and balance.
#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = AccountView, name = "account.balance")]
pub struct GetBalance {
    /// The account.
    pub account_id: Uuid,
}

/// What `GetBalance` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountView {
    /// The owner's name.
    pub owner: String,
    /// The balance in cents.
    pub balance: u64,
    /// How many deposits and withdrawals were made.
    pub movements: u32,
}

/// No account with that id has been seen.
#[derive(Debug, thiserror::Error)]
#[error("unknown account {0}")]
pub struct UnknownAccount(pub Uuid);

/// Its code reaches JSON callers as `DispatchError::domain_code`, next to `query_failed`.
impl DomainError for UnknownAccount {
    fn code(&self) -> &'static str {
        "not_found"
    }
}

/// Balances of every account, keyed by account id.
#[derive(Debug, Default)]
pub struct Balances {
    accounts: HashMap<Uuid, AccountView>,
}

/// The account an event belongs to: the id `OpenAccount` and the other commands carried.
fn account_id(event: &RecordedEvent) -> Option<Uuid> {
    event.aggregate_id::<Account>()?.parse().ok()
}

#[projection(name = "balances")]
impl Balances {
    #[event_handler]
    fn on_opened(&mut self, event: &Opened, recorded: &RecordedEvent) {
        if let Some(id) = account_id(recorded) {
            self.accounts.insert(
                id,
                AccountView {
                    owner: event.owner.clone(),
                    balance: 0,
                    movements: 0,
                },
            );
        }
    }

    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited, recorded: &RecordedEvent) {
        if let Some(view) = account_id(recorded).and_then(|id| self.accounts.get_mut(&id)) {
            view.balance += event.amount;
            view.movements += 1;
        }
    }

    #[event_handler]
    fn on_withdrawn(&mut self, event: &Withdrawn, recorded: &RecordedEvent) {
        if let Some(view) = account_id(recorded).and_then(|id| self.accounts.get_mut(&id)) {
            view.balance -= event.amount;
            view.movements += 1;
        }
    }

    #[query_handler]
    fn balance(&self, query: &GetBalance) -> Result<AccountView, UnknownAccount> {
        self.accounts
            .get(&query.account_id)
            .cloned()
            .ok_or(UnknownAccount(query.account_id))
    }
}

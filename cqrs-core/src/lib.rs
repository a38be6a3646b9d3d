//! CQRS and event sourcing with the wiring generated and checked at compile time.
//!
//! You write plain domain types — events, commands, queries, an aggregate's rules, a read
//! model — and a few attributes; the macros generate the trait impls that register, dispatch,
//! apply and serialize them. The runtime here executes commands through a typed
//! [`CommandBus`] (load the aggregate, run its handler, apply and append the events with
//! optimistic concurrency, publish them), answers queries through a typed [`QueryBus`], and
//! ships an [`InMemoryEventStore`] that is both the embedded default and the reference
//! semantics for other stores (`cqrs-postgres`).
//!
//! ```
//! use cqrs_core::prelude::*;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Deposited { pub amount: u64 }
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum AccountEvent {
//!     #[event(name = "account.deposited")]
//!     Deposited(Deposited),
//! }
//!
//! #[derive(Debug, Deserialize, Command)]
//! #[command(aggregate = Account, id = account_id)]
//! pub struct Deposit { pub account_id: u32, pub amount: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the balance would overflow")]
//! pub struct Overflow;
//!
//! #[derive(Debug, Default)]
//! pub struct Account { balance: u64 }
//!
//! #[aggregate(event = AccountEvent, error = Overflow)]
//! impl Account {
//!     #[command_handler]
//!     fn deposit(&self, cmd: &Deposit) -> Result<Deposited, Overflow> {
//!         self.balance.checked_add(cmd.amount).ok_or(Overflow)?;
//!         Ok(Deposited { amount: cmd.amount })
//!     }
//!
//!     #[event_handler]
//!     fn on_deposited(&mut self, event: &Deposited) {
//!         self.balance += event.amount;
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = InMemoryEventStore::new();
//! let bus = CommandBus::builder(store.clone()).aggregate::<Account>(()).build();
//!
//! let committed = bus.execute(Deposit { account_id: 7, amount: 10 }).await.unwrap();
//! assert_eq!(committed.stream_id, "Account-7");
//! assert_eq!(committed.stream_version, 1);
//!
//! let rejected = bus.execute(Deposit { account_id: 7, amount: u64::MAX }).await;
//! assert!(matches!(rejected, Err(CommandError::Rejected(Overflow))));
//! assert_eq!(store.len(), 1);
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `macros` | yes | re-exports `#[derive(Command, Query, Event)]`, `#[aggregate]`, `#[projection]` |
//! | `validator` | no | `#[command(validate)]` / `#[query(validate)]` run `validator::Validate` in the [`middleware::Validation`] layer |
//! | `testing` | no | `testing::conformance`: the checks every [`EventStore`] must pass |
//!
//! # Dependencies
//!
//! `serde`/`serde_json` for payloads, `serde_path_to_error` to name the bad field of a
//! malformed payload, `uuid` (v7) for ids, `chrono` for timestamps, `thiserror` for the error
//! enums, `tracing` for the tracing middleware, `tokio` (sync and time only) for the read-model
//! lock and the timeout middleware. Optional: `validator`.

// Lets the crate's own tests and docs use the derives, whose output names `::cqrs_core`.
#[allow(unused_extern_crates)]
extern crate self as cqrs_core;

mod aggregate;
mod bus;
mod command;
pub mod dispatch;
mod error;
mod event;
pub mod list;
mod metadata;
pub mod middleware;
mod projection;
mod query;
mod repository;
pub mod store;
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

use std::future::Future;
use std::pin::Pin;

pub use aggregate::{Aggregate, stream_id};
pub use bus::{CommandBus, CommandBusBuilder, HandlerError, QueryBus, QueryBusBuilder};
pub use command::{Command, CommandContext, Committed, Handles};
pub use dispatch::{CommandDispatcher, DispatchCommands, DispatchQueries, QueryDispatcher};
pub use error::{
    CommandError, DispatchError, DuplicateName, FieldError, QueryError, ValidationErrors,
};
pub use event::{Apply, ApplyUnit, Event, EventDecodeError, EventPayload, EventType, IntoEvents};
pub use metadata::{GlobalPosition, Metadata, NewEvent, RecordedEvent};
pub use projection::{Projection, ProjectionError, ReadModel, Subscriber};
pub use query::{HandlesQuery, Query};
pub use repository::{Loaded, Repository, RepositoryOptions};
pub use store::{
    AppendResult, EventStore, ExpectedVersion, InMemoryEventStore, Snapshot, StoreError,
    TransientReason,
};

#[cfg(feature = "macros")]
pub use cqrs_macros::{Command, Event, Query, aggregate, projection};

/// A boxed, sendable future: what object-safe async traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a domain module needs: `use cqrs_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Aggregate, Command, CommandBus, CommandContext, CommandError, Committed, Event, EventStore,
        InMemoryEventStore, Metadata, Projection, Query, QueryBus, QueryError, ReadModel,
        RecordedEvent,
    };
    #[cfg(feature = "macros")]
    pub use cqrs_macros::{aggregate, projection};
    pub use serde::{Deserialize, Serialize};
    pub use uuid::Uuid;
}

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
//! # Rules across aggregates: unique keys ("set validation")
//!
//! An aggregate guards its own invariants; "one user per e-mail address" or "one product per
//! SKU" spans all of them. Checking a read model before the command does not hold under
//! concurrency (two registrations both see the address free and both commit). Declare the
//! keys instead: `#[aggregate(..., unique_keys)]` and an impl of [`UniqueKeys`] saying which
//! keys each event claims and releases. The repository hands them to
//! [`EventStore::append_with_keys`], and the store reserves them in the same atomic append as
//! the events: a key another stream holds fails the command with
//! [`CommandError::UniqueKeyTaken`] and nothing is written. Changing a key is one append that
//! releases the old value and claims the new one. Aggregates without keys take the plain
//! [`EventStore::append`], at no cost. See [`Aggregate`] for the full example.
//!
//! ```
//! use cqrs_core::prelude::*;
//! use cqrs_core::{KeyChanges, UniqueKeys};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct SkuSet { pub sku: String }
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum ProductEvent { SkuSet(SkuSet) }
//!
//! #[derive(Debug, Deserialize, Command)]
//! #[command(aggregate = Product, id = id)]
//! pub struct SetSku { pub id: u32, pub sku: String }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("never")]
//! pub struct Never;
//!
//! #[derive(Debug, Default)]
//! pub struct Product { sku: Option<String> }
//!
//! #[aggregate(event = ProductEvent, error = Never, unique_keys)]
//! impl Product {
//!     #[command_handler]
//!     fn set_sku(&self, cmd: &SetSku) -> Result<SkuSet, Never> {
//!         Ok(SkuSet { sku: cmd.sku.clone() })
//!     }
//!     #[event_handler]
//!     fn on_sku_set(&mut self, e: &SkuSet) { self.sku = Some(e.sku.clone()) }
//! }
//!
//! impl UniqueKeys for Product {
//!     fn unique_keys(&self, event: &ProductEvent, keys: &mut KeyChanges) {
//!         let ProductEvent::SkuSet(e) = event;
//!         if let Some(old) = &self.sku {
//!             keys.release("product.sku", old.clone());
//!         }
//!         keys.claim("product.sku", e.sku.clone());
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = InMemoryEventStore::new();
//! let bus = CommandBus::builder(store.clone()).aggregate::<Product>(()).build();
//!
//! bus.execute(SetSku { id: 1, sku: "A-1".into() }).await.unwrap();
//! let taken = bus.execute(SetSku { id: 2, sku: "A-1".into() }).await;
//! assert!(matches!(taken, Err(CommandError::UniqueKeyTaken { .. })));
//!
//! // Product 1 moves to another SKU: "A-1" is free again, in the same append.
//! bus.execute(SetSku { id: 1, sku: "B-7".into() }).await.unwrap();
//! bus.execute(SetSku { id: 2, sku: "A-1".into() }).await.unwrap();
//! let owner = store.unique_key_owner("product.sku", "B-7").await.unwrap();
//! assert_eq!(owner.as_deref(), Some("Product-1"));
//! # }
//! ```
//!
//! # Sagas: processes across aggregates
//!
//! A command changes one aggregate; a business process often changes several and undoes
//! what it did when a later step fails. A [`saga`](mod@saga) (process manager) is a plain
//! struct, its state, with `#[saga(commands(...))]` on its impl block: `#[event_handler(key
//! = field, start | end)]` methods react to events of any aggregate and find their instance
//! by a payload field; they return (or `ctx.send`) typed commands; `#[failure_handler]`s get
//! a failed command back as [`saga::CommandFailed<C>`] to compensate; `#[deadline_handler]`s
//! run once when `ctx.schedule(deadline, after)` comes due. A runner drives it from the
//! store's events: [`saga::InMemorySagaRunner`] here, `cqrs_postgres::saga::SagaRunner`
//! durably (state, outbox of commands and checkpoint in one transaction per event). Every
//! command leaves with an idempotency key derived from the saga, the instance, the message
//! that caused it and its index, so sending it again after a crash does not execute it
//! twice. A runner cannot be built on a bus lacking an aggregate for one of the saga's
//! commands: that is a compile error naming the saga and the command.
//!
//! ```
//! use cqrs_core::prelude::*;
//! use cqrs_core::saga::InMemorySagaRunner;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Registered { pub user: u32 }
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Welcomed { pub user: u32 }
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum UserEvent { Registered(Registered), Welcomed(Welcomed) }
//!
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[command(aggregate = User, id = user)]
//! pub struct Register { pub user: u32 }
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[command(aggregate = User, id = user, idempotent)]
//! pub struct Welcome { pub user: u32 }
//!
//! #[derive(Debug, Default)]
//! pub struct User;
//! #[aggregate(event = UserEvent, error = std::convert::Infallible)]
//! impl User {
//!     #[command_handler]
//!     fn register(&self, c: &Register) -> Result<Registered, std::convert::Infallible> {
//!         Ok(Registered { user: c.user })
//!     }
//!     #[command_handler]
//!     fn welcome(&self, c: &Welcome) -> Result<Welcomed, std::convert::Infallible> {
//!         Ok(Welcomed { user: c.user })
//!     }
//!     #[event_handler] fn on_registered(&mut self, _: &Registered) {}
//!     #[event_handler] fn on_welcomed(&mut self, _: &Welcomed) {}
//! }
//!
//! /// Welcomes each new user once.
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! pub struct Onboarding;
//!
//! #[saga(commands(Welcome))]
//! impl Onboarding {
//!     #[event_handler(key = user, start)]
//!     fn on_registered(&mut self, e: &Registered) -> Welcome {
//!         Welcome { user: e.user }
//!     }
//!     #[event_handler(key = user, end)]
//!     fn on_welcomed(&mut self, _: &Welcomed) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = InMemoryEventStore::new();
//! let bus = CommandBus::builder(store.clone()).aggregate::<User>(()).build();
//! let onboarding = InMemorySagaRunner::<Onboarding>::new(&bus);
//!
//! bus.execute(Register { user: 1 }).await.unwrap();
//! onboarding.run_until_idle().await.unwrap();
//! assert_eq!(store.len(), 2); // registered, then welcomed by the saga
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `macros` | yes | re-exports `#[derive(Command, Query, Event)]`, `#[aggregate]`, `#[projection]`, `#[saga]` |
//! | `validator` | no | `#[command(validate)]` / `#[query(validate)]` run `validator::Validate` before every command or query is handled (where the [`middleware::Validation`] layer stands, or last when the bus has none) and in the test [`testing::Fixture`] |
//! | `testing` | no | `testing::conformance`: the checks every [`EventStore`] must pass |
//! | `metrics` | no | `middleware::Metrics` and `middleware::EventMetrics`: counters, latency histograms and in-flight gauges per command and query through the `metrics` facade (the one most Rust exporters implement) |
//! | `tower` | no | `tower::Service` for the JSON dispatchers and for typed commands and queries (`middleware::CommandService`, `middleware::QueryService`), to wrap them in tower layers and mount them in axum |
//! | `otel` | no | OpenTelemetry export of the trace context: the `command` span of [`middleware::Tracing`] and the `event_handled` spans of projections and subscriptions take their OpenTelemetry parent from the W3C traceparent the command carries in or its events carry on, so exported spans join the caller's trace ([`trace_context`]) |
//!
//! # Dependencies
//!
//! `serde`/`serde_json` for payloads, `serde_path_to_error` to name the bad field of a
//! malformed payload, `uuid` (v7) for ids, `chrono` for timestamps, `thiserror` for the error
//! enums, `tracing` for the tracing middleware, `tokio` (sync and time only) for the read-model
//! lock and the timeout middleware, `sha2` to hash the bodies of commands with idempotency keys.
//! Optional: `validator`; `metrics` (the facade Prometheus, `StatsD` and OpenTelemetry
//! exporters implement); `tower-service` (the trait alone, not tower); `opentelemetry` (the
//! API crate, trace part only) and `tracing-opentelemetry` (the bridge from `tracing` spans
//! to OpenTelemetry spans that the OpenTelemetry project and tokio maintain): with them the
//! spans the crate already opens with `tracing` are exported, and only their parents are set,
//! so the application keeps the choice of SDK, exporter and sampler.

// Lets the crate's own tests and docs use the derives, whose output names `::cqrs_core`.
#[allow(unused_extern_crates)]
extern crate self as cqrs_core;

mod aggregate;
mod bus;
mod command;
pub mod dispatch;
mod error;
mod event;
pub mod idempotency;
pub mod list;
mod metadata;
pub mod middleware;
pub mod problem;
mod projection;
mod query;
mod repository;
pub mod saga;
pub mod store;
pub mod testing;
pub mod trace_context;
mod unique;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

use std::future::Future;
use std::pin::Pin;

pub use aggregate::{Aggregate, aggregate_id, stream_id};
pub use bus::{CommandBus, CommandBusBuilder, HandlerError, QueryBus, QueryBusBuilder};
pub use command::{Command, CommandContext, Committed, Handles};
pub use dispatch::{CommandDispatcher, DispatchCommands, DispatchQueries, QueryDispatcher};
pub use error::RetryHints;
pub use error::{CircuitOpen, ConcurrencyLimited, Forbidden, RateLimited};
pub use error::{
    CommandError, DispatchError, DomainError, DuplicateName, ErrorKind, FieldError, QueryError,
    ValidationErrors,
};
pub use event::{
    Apply, ApplyUnit, Decoded, DecodedIter, Event, EventAlias, EventDecodeError, EventPayload,
    EventType, IntoEvents, Upcast,
};
pub use idempotency::{IdempotencyRecord, IdempotentOutcome, IdempotentWrite, RecordedRejection};
pub use list::AnsweredQueries;
pub use metadata::{GlobalPosition, Metadata, NewEvent, Payload, RecordedEvent};
pub use projection::{Projection, ProjectionError, Reactor, ReadModel, StateLocation, Subscriber};
pub use query::{HandlesQuery, Query};
pub use repository::{Loaded, Repository, RepositoryOptions};
pub use store::{
    AppendResult, EventStore, ExpectedVersion, InMemoryEventStore, Snapshot, StoreError,
    TransientReason,
};
pub use trace_context::{TraceParent, TraceParentError};
pub use unique::{KeyChange, KeyChanges, UniqueKey, UniqueKeys};

#[cfg(feature = "macros")]
pub use cqrs_macros::{Command, Event, Query, aggregate, projection, saga};

/// The `serde` this crate is built with. A domain crate that does not depend on `serde`
/// itself points serde's derives here: `#[serde(crate = "cqrs_core::serde")]` next to
/// `#[derive(Serialize, Deserialize)]`. (The derives name the `serde` crate unless told
/// otherwise; the code `cqrs_core`'s own macros generate never does.)
pub use serde;

/// The JSON dispatcher of command bus type `B`: `CommandDispatcherOf<CommandBusOf![...]>`.
pub type CommandDispatcherOf<B> =
    CommandDispatcher<<B as list::BusParts>::Registered, <B as list::BusParts>::Middleware>;

/// The JSON dispatcher of query bus type `B`: `QueryDispatcherOf<QueryBusOf![...]>`.
pub type QueryDispatcherOf<B> =
    QueryDispatcher<<B as list::BusParts>::Registered, <B as list::BusParts>::Middleware>;

/// A boxed, sendable future: what object-safe async traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a domain module needs: `use cqrs_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Aggregate, BoxFuture, Command, CommandBus, CommandContext, CommandError, Committed,
        DomainError, ErrorKind, Event, EventStore, InMemoryEventStore, Metadata, Projection, Query,
        QueryBus, QueryError, ReadModel, RecordedEvent,
    };
    #[cfg(feature = "macros")]
    pub use cqrs_macros::{aggregate, projection, saga};
    pub use serde::{Deserialize, Serialize};
    pub use uuid::Uuid;
}

//! The procedural macros of `cqrs_core`: they turn plain domain types into commands, queries,
//! events, aggregates and projections, and make wiring mistakes compile errors that point at
//! the user's own tokens.
//!
//! Depend on `cqrs_core`, not on this crate. It re-exports each macro under the name of the
//! trait it implements (`cqrs_core::Command` is both the trait and the derive, as
//! `serde::Serialize` is), and the generated code names `::cqrs_core`.
//!
//! | macro | goes on | generates |
//! |---|---|---|
//! | [`#[derive(Command)]`](derive@Command) | a struct with named fields | `Command` |
//! | [`#[derive(Query)]`](derive@Query) | a struct or enum | `Query` |
//! | [`#[derive(Event)]`](derive@Event) | an enum | `Event`; per payload type `EventPayload`, `From`, `IntoEvents` |
//! | [`#[aggregate]`](macro@aggregate) | the aggregate's `impl` block | `Aggregate`, `Handles<C>`, `Apply<P>`, `ApplyUnit<E>`, `DispatchCommands` |
//! | [`#[projection]`](macro@projection) | a read model's `impl` block | `Projection`, `HandlesQuery<Q>`, `DispatchQueries` |
//! | [`#[saga]`](macro@saga) | a saga's `impl` block | `Saga`, `Sends<C>`, `HandlesDeadline<D>`, `SendCommands<R, M, I>` |
//!
//! Each macro takes `crate = "path"` for code that reaches `cqrs_core` under another path (a
//! facade crate re-exporting it). Nothing else about the generated code is configurable, and
//! none of it is meant to be named by users: what it needs lives in `cqrs_core::__private`.
//!
//! ```
//! use cqrs_core::prelude::*;
//! use cqrs_core::{aggregate, projection};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Deposited { pub amount: u64 }
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum AccountEvent {
//!     #[event(name = "account.deposited")]
//!     Deposited(Deposited),
//!     #[event(name = "account.closed")]
//!     Closed,
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the account is closed")]
//! pub struct Closed;
//!
//! #[derive(Debug, Deserialize, Command)]
//! #[command(aggregate = Account, id = number, name = "account.deposit")]
//! pub struct Deposit { pub number: u32, pub amount: u64 }
//!
//! #[derive(Debug, Default)]
//! pub struct Account { balance: u64, closed: bool }
//!
//! #[aggregate(event = AccountEvent, error = Closed)]
//! impl Account {
//!     #[command_handler]
//!     fn deposit(&self, command: &Deposit) -> Result<Deposited, Closed> {
//!         if self.closed {
//!             return Err(Closed);
//!         }
//!         Ok(Deposited { amount: command.amount })
//!     }
//!
//!     #[event_handler]
//!     fn on_deposited(&mut self, event: &Deposited) {
//!         self.balance += event.amount;
//!     }
//!
//!     #[event_handler(Closed)]
//!     fn on_closed(&mut self) {
//!         self.closed = true;
//!     }
//! }
//!
//! #[derive(Debug, Query)]
//! #[query(output = u64)]
//! pub struct TotalDeposits;
//!
//! #[derive(Debug, Default)]
//! pub struct Totals { total: u64 }
//!
//! #[projection]
//! impl Totals {
//!     #[event_handler]
//!     fn on_deposited(&mut self, event: &Deposited) {
//!         self.total += event.amount;
//!     }
//!
//!     #[query_handler]
//!     fn total(&self, _: &TotalDeposits) -> Result<u64, std::convert::Infallible> {
//!         Ok(self.total)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let totals = cqrs_core::ReadModel::new(Totals::default());
//! let bus = CommandBus::builder(InMemoryEventStore::new())
//!     .aggregate::<Account>(())
//!     .subscribe(totals.clone())
//!     .build();
//! bus.execute(Deposit { number: 1, amount: 30 }).await.unwrap();
//! bus.execute(Deposit { number: 2, amount: 12 }).await.unwrap();
//!
//! let queries = QueryBus::builder().handler(totals).build();
//! assert_eq!(queries.execute(TotalDeposits).await.unwrap(), 42);
//! # }
//! ```
//!
//! # How mistakes are reported
//!
//! A macro reports every mistake it finds, each at the token that is wrong: the attribute key,
//! the literal, the argument type. Unknown keys list the known ones. A derive that fails still
//! emits a stand-in impl, and an attribute still emits the impl block it is on, so one mistake
//! gives one error rather than one per use of the type. Mistakes only the type checker can see
//! read as sentences too: executing a command no handler accepts says
//! "no `#[command_handler]` exists for command `Withdraw` on aggregate `Account`"; an event
//! variant an aggregate does not apply names the variant.

mod aggregate;
mod command;
mod event;
#[cfg(test)]
mod expand_tests;
mod internals;
mod projection;
mod query;
mod saga;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `Command` for a struct: a request to change one aggregate.
///
/// ```text
/// #[derive(Command)]
/// #[command(aggregate = Type, id = field, name = "wire.name", validate,
///           idempotency_key = field, idempotent, crate = "path")]
/// struct Name { field: T, ... }
/// ```
///
/// | key | required | meaning |
/// |---|---|---|
/// | `aggregate = Type` | yes | the aggregate the command targets (`Command::Aggregate`); its `#[aggregate]` impl needs a `#[command_handler]` for this command |
/// | `id = field` | yes | the field naming the aggregate instance; `aggregate_id()` is `field.to_string()`, so its type implements `Display`; the stream written is `"{Aggregate::NAME}-{id}"` |
/// | `name = "..."` | no | the stable wire name dynamic dispatch finds the command by (`Command::NAME`); defaults to the type's name, so pin it before clients depend on it |
/// | `validate` | no | `Command::validate` runs the type's `validator::Validate` impl (cqrs-core's `validator` feature); the `Validation` middleware calls it |
/// | `idempotency_key = field` | no | the field holding the command's idempotency key (`Command::idempotency_key`, via `ToString`); the command must be `serde::Serialize` (its JSON body is hashed to detect a key reused with another body). See `cqrs_core::idempotency` |
/// | `idempotent` | no | the command takes idempotency keys from the caller's metadata (`Metadata::with_idempotency_key`); the command must be `serde::Serialize`. Implied by `idempotency_key` |
/// | `crate = "path"` | no | the path to `cqrs_core` in the generated code |
///
/// Keys may be split across several `#[command(...)]` attributes; each may be given once.
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::aggregate;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Deposited { pub amount: u64 }
/// # #[derive(Debug, Clone, Event)]
/// # pub enum AccountEvent { Deposited(Deposited) }
/// #[derive(Debug, Deserialize, Command)]
/// #[command(aggregate = Account, id = number, name = "account.deposit")]
/// pub struct Deposit {
///     pub number: u32,
///     pub amount: u64,
/// }
///
/// # #[derive(Debug, Default)]
/// # pub struct Account;
/// # #[aggregate(event = AccountEvent, error = std::convert::Infallible)]
/// # impl Account {
/// #     #[command_handler]
/// #     fn deposit(&self, c: &Deposit) -> Result<Deposited, std::convert::Infallible> {
/// #         Ok(Deposited { amount: c.amount })
/// #     }
/// #     #[event_handler]
/// #     fn on_deposited(&mut self, _: &Deposited) {}
/// # }
/// let command = Deposit { number: 7, amount: 10 };
/// assert_eq!(<Deposit as Command>::NAME, "account.deposit");
/// assert_eq!(command.aggregate_id(), "7");
/// ```
///
/// Forgetting which field identifies the aggregate is an error at the attribute:
///
/// ```compile_fail
/// # use cqrs_core::prelude::*;
/// # pub struct Account;
/// #[derive(Command)]
/// #[command(aggregate = Account)] // error: missing `id = ...` in `#[command(...)]`
/// pub struct Deposit {
///     pub number: u32,
///     pub amount: u64,
/// }
/// ```
///
/// # Limitations
///
/// - Only structs with named fields; `id` names one of them.
/// - Generic commands keep their parameters, which must satisfy `Command`'s
///   `Send + Sync + 'static`: write the bounds on the struct.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    command::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Derives `Query`: a question with a typed answer.
///
/// ```text
/// #[derive(Query)]
/// #[query(output = Type, name = "wire.name", validate, crate = "path")]
/// struct Name { ... }
/// ```
///
/// | key | required | meaning |
/// |---|---|---|
/// | `output = Type` | yes | the answer's type (`Query::Output`); a `#[query_handler]` for the query returns `Result<Type, E>` |
/// | `name = "..."` | no | the stable wire name dynamic dispatch finds the query by; defaults to the type's name |
/// | `validate` | no | `Query::validate` runs the type's `validator::Validate` impl (cqrs-core's `validator` feature) |
/// | `crate = "path"` | no | the path to `cqrs_core` in the generated code |
///
/// ```
/// use cqrs_core::Query;
///
/// #[derive(Debug, Query)]
/// #[query(output = Vec<String>, name = "accounts.owners")]
/// pub struct ListOwners {
///     pub limit: usize,
/// }
///
/// assert_eq!(<ListOwners as Query>::NAME, "accounts.owners");
/// ```
///
/// The answer's type is part of the query, so it cannot be left out:
///
/// ```compile_fail
/// use cqrs_core::Query;
///
/// #[derive(Debug, Query)] // error: missing `output = ...` in `#[query(...)]`
/// pub struct ListOwners {
///     pub limit: usize,
/// }
/// ```
///
/// # Limitations
///
/// Generic queries keep their parameters, which must satisfy `Send + Sync + 'static`.
#[proc_macro_derive(Query, attributes(query))]
pub fn derive_query(input: TokenStream) -> TokenStream {
    query::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Derives `Event` for an enum whose variants are the event types of one aggregate.
///
/// ```text
/// #[derive(Event)]
/// #[event(crate = "path")]
/// enum Name {
///     #[event(name = "stable.name", version = N, alias = "old.name",
///             upcast(from = 1, with = PayloadV1), upcast(from = 2, raw = path::to::fn),
///             upcast(from = 3, many = path::to::fn))]
///     Variant(Payload),
///     #[event(name = "other.name")]
///     UnitVariant,
/// }
/// ```
///
/// Each variant is a unit variant or carries exactly one payload type. Variant keys:
///
/// | key | default | meaning |
/// |---|---|---|
/// | `name = "..."` | `"{Enum}.{Variant}"` | the type name stored with every event; it is what stored events are found by, so it never changes once events are written, and pinning it lets the variant be renamed |
/// | `version = N` | `1` | the payload's schema version the current code writes; a stored event of an older version is read through the upcasters, one of a version without a path (or a newer one) fails to decode with `EventDecodeError::UnsupportedVersion` |
/// | `alias = "..."` | none | an old name of this event type (repeatable): events stored under it are read as this variant, at any of its versions; subscriptions' type filters include it |
/// | `upcast(from = N, with = T)` | none | a stored version-`N` payload is a `T` (`Deserialize`), and `T: Upcast` turns it into version `N + 1`: `type Next` is the `with` type of `upcast(from = N + 1, ...)`, or the variant's payload when `N + 1` is the current version |
/// | `upcast(from = N, raw = f)` | none | `f(serde_json::Value) -> Result<serde_json::Value, E: Display>` turns version `N`'s JSON into version `N + 1`'s: for changes a struct cannot express; an `Err` is `EventDecodeError::Upcast` |
/// | `upcast(from = N, many = f)` | none | `f(input) -> Vec<Enum>` turns a version-`N` event into current events, any number: a split or a drop. `input` is whatever `f` takes that deserializes from version `N` (or the typed output of the step before). Read such events with `Event::decode_all`; `from_payload` refuses a result that is not exactly one event |
///
/// Upcasting happens on read, wherever events are read (aggregate loads, projections, sagas,
/// the test fixture's `given_stored`), and never rewrites a stored event. An event of the
/// current name and version goes straight to serde; only older forms run their chain.
/// Checked at compile time, each at the offending token: every `from` is below the version,
/// no version has two upcasters, each `with`/`raw` step is followed by one from the next
/// version (or reaches the current one), each `Upcast::Next` is the type the next step reads,
/// and an alias is no other variant's name or alias.
///
/// On the enum, `crate = "path"` names the path to `cqrs_core`.
///
/// Besides `Event` (names, versions, the payload as JSON, decoding by name), each payload type
/// gets `EventPayload` (its enum and stable name), `From<Payload>` for the enum, and
/// `IntoEvents<Enum>`, so a command handler can return the payload alone. The enum also learns
/// how to apply itself to any aggregate that has an `Apply<Payload>` per payload type and a
/// handler per unit variant: that is what makes a forgotten `#[event_handler]` a compile error.
///
/// ```
/// use cqrs_core::{Event, EventPayload};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Deposited {
///     pub amount: u64,
/// }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum AccountEvent {
///     #[event(name = "account.deposited", version = 2)]
///     Deposited(Deposited),
///     Closed,
/// }
///
/// let event = AccountEvent::from(Deposited { amount: 5 });
/// assert_eq!(event.event_type(), "account.deposited");
/// assert_eq!(event.schema_version(), 2);
/// assert_eq!(AccountEvent::Closed.event_type(), "AccountEvent.Closed");
/// assert_eq!(<Deposited as EventPayload>::EVENT_TYPE, "account.deposited");
///
/// let stored = event.to_payload().unwrap();
/// assert_eq!(AccountEvent::from_payload("account.deposited", 2, &stored).unwrap(), event);
/// ```
///
/// Old versions chain to the current one; a version-1 event stored under its old name:
///
/// ```
/// use cqrs_core::{Event, Upcast};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Opened { pub owner: String, pub currency: String }
///
/// /// Version 1 had no currency.
/// #[derive(Deserialize)]
/// pub struct OpenedV1 { pub owner: String }
///
/// impl Upcast for OpenedV1 {
///     type Next = Opened;
///     fn upcast(self) -> Opened { Opened { owner: self.owner, currency: "EUR".into() } }
/// }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum AccountEvent {
///     #[event(name = "account.opened", version = 2, alias = "account.created",
///             upcast(from = 1, with = OpenedV1))]
///     Opened(Opened),
/// }
///
/// let stored = cqrs_core::Payload::from_json(r#"{"owner":"ada"}"#).unwrap();
/// assert_eq!(
///     AccountEvent::from_payload("account.created", 1, &stored).unwrap(),
///     AccountEvent::Opened(Opened { owner: "ada".into(), currency: "EUR".into() }),
/// );
/// ```
///
/// A declared old version must reach the current one:
///
/// ```compile_fail
/// # use cqrs_core::{Event, Upcast};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Opened { pub owner: String }
/// # #[derive(Deserialize)]
/// # pub struct OpenedV1 { pub owner: String }
/// # impl Upcast for OpenedV1 { type Next = Opened; fn upcast(self) -> Opened { Opened { owner: self.owner } } }
/// #[derive(Debug, Clone, Event)]
/// pub enum AccountEvent {
///     // error: no upcaster from version 2: version 1 cannot reach version 3
///     #[event(name = "account.opened", version = 3, upcast(from = 1, with = OpenedV1))]
///     Opened(Opened),
/// }
/// ```
///
/// Fields belong in a payload struct, not in the variant:
///
/// ```compile_fail
/// use cqrs_core::Event;
///
/// #[derive(Debug, Clone, Event)]
/// pub enum AccountEvent {
///     Deposited { amount: u64 }, // error: an event variant is a unit variant or carries one payload type
/// }
/// ```
///
/// # Limitations
///
/// - A payload type belongs to one variant of one event enum (`EventPayload::Event` names it),
///   so two variants, or two enums, cannot share a payload type.
/// - Projections subscribe by payload type, so they cannot subscribe to a unit variant: give the
///   variant a payload struct (even an empty one) when a read model needs it.
/// - Two variants cannot share a name; the enum cannot be generic.
/// - An upcaster reads one version and writes the next (`many` writes current events): a
///   step that skips versions is written as a conversion straight to the payload the step
///   from the skipped-to version reads.
/// - A `many` upcaster may produce any variant, so every projection and saga handling any
///   variant of the enum reads the stored events of its name (and checks, cheaply, that
///   current-version ones are not its own). A saga takes one event per stored event: a split
///   into two events it handles is `EventDecodeError::NotOne`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Makes an aggregate of the type whose `impl` block it is on: its `#[command_handler]`
/// methods decide which events a command produces, its `#[event_handler]` methods apply them.
///
/// ```text
/// #[aggregate(event = Enum, error = Error, services = Type, name = "category",
///             snapshot = N, ignore(Payload, ...), unique_keys, crate = "path")]
/// impl Name { ... }
/// ```
///
/// | key | required | meaning |
/// |---|---|---|
/// | `event = Enum` | yes | the `#[derive(Event)]` enum the aggregate records |
/// | `error = Error` | yes | the domain error commands are rejected with; each handler's error converts into it with `?` (`From`) |
/// | `services = Type` | no | what command handlers may borrow besides the state (a password hasher, a price list), given once to `CommandBus::aggregate`; `()` when absent |
/// | `name = "..."` | no | the stream category: the stream of instance `x` is `"{name}-{x}"`; defaults to the type's name |
/// | `snapshot = N` | no | turns snapshots on with schema version `N`; the state is saved and restored with serde, so the type implements `Serialize` and `Deserialize` |
/// | `ignore(P, ...)` | no | payload types the state does not depend on: applying them does nothing |
/// | `unique_keys` | no | the aggregate's events claim and release unique keys across aggregates (one user per e-mail address): you implement `cqrs_core::UniqueKeys` for the type, and the store reserves the keys in the append of the events; without it the macro implements `UniqueKeys` with no keys, so an impl of yours conflicts instead of being ignored. See "Unique keys across aggregates" on `cqrs_core::Aggregate` |
/// | `crate = "path"` | no | the path to `cqrs_core` in the generated code |
///
/// # `#[command_handler]`
///
/// ```text
/// #[command_handler]
/// [async] fn name(&self, command: &C, [services: &S], [ctx: &CommandContext]) -> Result<X, E>
/// ```
///
/// - Takes `&self`: a handler decides from the state, it does not change it.
/// - The first argument is the command, by reference or by value (by value needs `C: Clone`:
///   the bus keeps the command, the handler gets a clone).
/// - After it, in any order: `&CommandContext` (command id, metadata, time of acceptance) and
///   `&S` where `S` is the declared `services` type under any spelling (an alias, a path), or
///   `&T` when the services are `Arc<T>` or `Box<T>` (`&dyn Trait` for `Arc<dyn Trait>`).
/// - Returns `Result<X, E>` where `X` is a payload type, the event enum, `Vec` or `Option` of
///   the enum, or `()` (no events), and `E` converts into the aggregate's error.
/// - May be `async`.
///
/// Each handler becomes `Handles<C>`, and the aggregate's commands are listed for dynamic
/// dispatch by name. One handler per command type.
///
/// # `#[event_handler]`
///
/// ```text
/// #[event_handler]
/// fn name(&mut self, event: &Payload)
/// #[event_handler(UnitVariant)]
/// fn name(&mut self)
/// ```
///
/// Applies one event to the state: synchronous, returns nothing (a recorded event cannot be
/// refused). Every variant of the event enum needs a handler or an `ignore`: a payload variant
/// without one is an error naming the payload type at `event = ...`, and a unit variant without
/// one is an error naming the variant, both reported by `cargo check`. The other way round, a
/// handler (or `ignore`) for a type no variant of the event enum carries would never be
/// called, so it is an error at that type: "`u64` is not an event of `AccountEvent`".
///
/// Unmarked methods are left as they are. The markers are removed from the re-emitted block,
/// and handlers get `#[allow(clippy::unused_self, clippy::unnecessary_wraps)]`: their `&self`
/// and `Result` are the macro's contract, not the user's choice.
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::aggregate;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Opened { pub owner: String }
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Noted { pub text: String }
/// # #[derive(Debug, Clone, Event)]
/// # pub enum AccountEvent { Opened(Opened), Noted(Noted), Closed }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("rejected")]
/// # pub struct Rejected;
/// # #[derive(Debug, Clone, Deserialize, Command)]
/// # #[command(aggregate = Account, id = number)]
/// # pub struct Open { pub number: u32, pub owner: String }
/// # #[derive(Debug, Deserialize, Command)]
/// # #[command(aggregate = Account, id = number)]
/// # pub struct Close { pub number: u32 }
/// pub struct Registry {
///     pub banned: Vec<String>,
/// }
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// pub struct Account {
///     owner: Option<String>,
///     closed: bool,
/// }
///
/// #[aggregate(event = AccountEvent, error = Rejected, services = Registry, snapshot = 1, ignore(Noted))]
/// impl Account {
///     #[command_handler]
///     async fn open(&self, command: Open, registry: &Registry, ctx: &CommandContext) -> Result<Opened, Rejected> {
///         if self.owner.is_some() || registry.banned.contains(&command.owner) {
///             return Err(Rejected);
///         }
///         let _accepted_at = ctx.now;
///         Ok(Opened { owner: command.owner })
///     }
///
///     #[command_handler]
///     fn close(&self, _: &Close) -> Result<Option<AccountEvent>, Rejected> {
///         Ok((!self.closed).then_some(AccountEvent::Closed))
///     }
///
///     #[event_handler]
///     fn on_opened(&mut self, event: &Opened) {
///         self.owner = Some(event.owner.clone());
///     }
///
///     #[event_handler(Closed)]
///     fn on_closed(&mut self) {
///         self.closed = true;
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = CommandBus::builder(InMemoryEventStore::new())
///     .aggregate::<Account>(Registry { banned: vec!["mallory".into()] })
///     .build();
/// bus.execute(Open { number: 1, owner: "ada".into() }).await.unwrap();
/// assert!(bus.execute(Open { number: 2, owner: "mallory".into() }).await.is_err());
/// # }
/// ```
///
/// # Services behind a trait
///
/// A service with async methods that the bus holds behind a trait object (a uniqueness check
/// backed by a database in production, by a list in tests) is declared as `Arc<dyn Trait>`.
/// Native `async fn` in a trait makes it unusable as `dyn Trait`, so its methods return
/// `cqrs_core::BoxFuture` (in the prelude). Handlers borrow it as
/// `&dyn Trait`, or as `&Arc<dyn Trait>`, or under an alias of either:
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::aggregate;
/// use std::sync::Arc;
///
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Registered { pub email: String }
/// # #[derive(Debug, Clone, Event)]
/// # pub enum CustomerEvent { Registered(Registered) }
/// # #[derive(Debug, Deserialize, Command)]
/// # #[command(aggregate = Customer, id = id)]
/// # pub struct Register { pub id: u32, pub email: String }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("the email is taken")]
/// # pub struct EmailTaken;
/// pub trait EmailRegistry: Send + Sync {
///     fn is_taken<'a>(&'a self, email: &'a str) -> BoxFuture<'a, bool>;
/// }
///
/// /// The registry of tests; production's asks the database.
/// pub struct KnownEmails(Vec<String>);
///
/// impl EmailRegistry for KnownEmails {
///     fn is_taken<'a>(&'a self, email: &'a str) -> BoxFuture<'a, bool> {
///         Box::pin(async move { self.0.iter().any(|known| known == email) })
///     }
/// }
///
/// #[derive(Debug, Default)]
/// pub struct Customer;
///
/// #[aggregate(event = CustomerEvent, error = EmailTaken, services = Arc<dyn EmailRegistry>)]
/// impl Customer {
///     #[command_handler]
///     async fn register(&self, cmd: &Register, emails: &dyn EmailRegistry) -> Result<Registered, EmailTaken> {
///         if emails.is_taken(&cmd.email).await {
///             return Err(EmailTaken);
///         }
///         Ok(Registered { email: cmd.email.clone() })
///     }
///
///     #[event_handler]
///     fn on_registered(&mut self, _: &Registered) {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = CommandBus::builder(InMemoryEventStore::new())
///     .aggregate::<Customer>(Arc::new(KnownEmails(vec!["ada@example.com".into()])))
///     .build();
/// assert!(bus.execute(Register { id: 1, email: "ada@example.com".into() }).await.is_err());
/// assert!(bus.execute(Register { id: 2, email: "grace@example.com".into() }).await.is_ok());
/// # }
/// ```
///
/// With one implementation only, a concrete struct (`services = Registry`) needs neither the
/// `Arc` nor the boxed futures: its methods can be plain `async fn`.
///
/// Forgetting to apply an event does not compile:
///
/// ```compile_fail,E0277
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::aggregate;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Opened { pub owner: String }
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Deposited { pub amount: u64 }
/// #[derive(Debug, Clone, Event)]
/// pub enum AccountEvent {
///     Opened(Opened),
///     Deposited(Deposited),
/// }
///
/// #[derive(Debug, Default)]
/// pub struct Account;
///
/// // error: `Account` has no `#[event_handler]` for event `Deposited`
/// #[aggregate(event = AccountEvent, error = std::convert::Infallible)]
/// impl Account {
///     #[event_handler]
///     fn on_opened(&mut self, _: &Opened) {}
/// }
/// ```
///
/// # Limitations
///
/// - Goes on an inherent, non-generic `impl` block; one such block per aggregate type.
/// - `ignore` takes payload types; a unit variant the state does not depend on gets an empty
///   `#[event_handler(Variant)]`.
/// - Command and payload types are compared as written when checking that each is handled
///   once: the same type named through two paths is not recognized as a duplicate by the
///   macro. (The `services` type is compared by the type checker, so any spelling works.)
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, item: TokenStream) -> TokenStream {
    aggregate::expand(args.into(), &item.into()).into()
}

/// Makes a projection (a read model or reactor) of the type whose `impl` block it is on: its
/// `#[event_handler]` methods consume recorded events, its `#[query_handler]` methods answer
/// queries.
///
/// ```text
/// #[projection(name = "stable.name", context = Type, crate = "path")]
/// impl Name { ... }
/// ```
///
/// | key | default | meaning |
/// |---|---|---|
/// | `name = "..."` | the type's name | `Projection::NAME`: the checkpoint key of durable subscriptions, so it stays stable |
/// | `context = Type` | `()` | what event handlers borrow mutably besides the event (`Projection::Context`), such as the transaction a database read model writes its rows and its checkpoint in |
/// | `crate = "path"` | `::cqrs_core` | the path to `cqrs_core` in the generated code |
///
/// # `#[event_handler]`
///
/// ```text
/// #[event_handler]
/// [async] fn name(&mut self | &self, event: &Payload, [recorded: &RecordedEvent], [ctx: &mut Context])
///     [-> Result<(), E>]
/// ```
///
/// The payload type says which events the handler takes; the projection subscribes to exactly
/// those (`Projection::EVENT_TYPES`) and ignores the rest. `&RecordedEvent` gives the stream,
/// position, time and metadata. A handler returning `Result<(), E>` (with `E` convertible into
/// `Box<dyn Error + Send + Sync>`) fails the projection with `ProjectionError::Handler`.
///
/// # `#[query_handler]`
///
/// ```text
/// #[query_handler]
/// [async] fn name(&self, query: &Q) -> Result<Q::Output, E>
/// ```
///
/// Becomes `HandlesQuery<Q>` with `E` as its error; the projection's queries are listed for
/// dynamic dispatch by name. One handler per query type.
///
/// `Projection` is generated when there is at least one event handler, the query impls when
/// there is at least one query handler. Markers are removed and unmarked methods left as they
/// are.
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::projection;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Deposited { pub amount: u64 }
/// # #[derive(Debug, Clone, Event)]
/// # pub enum AccountEvent { #[event(name = "account.deposited")] Deposited(Deposited) }
/// #[derive(Debug, Query)]
/// #[query(output = u64)]
/// pub struct GetBalance {
///     pub stream_id: String,
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("no such account")]
/// pub struct NotFound;
///
/// #[derive(Default)]
/// pub struct Balances {
///     by_stream: std::collections::HashMap<String, u64>,
/// }
///
/// #[projection(name = "balances.v1")]
/// impl Balances {
///     #[event_handler]
///     fn on_deposited(&mut self, event: &Deposited, recorded: &RecordedEvent) {
///         *self.by_stream.entry(recorded.stream_id.clone()).or_default() += event.amount;
///     }
///
///     #[query_handler]
///     fn balance(&self, query: &GetBalance) -> Result<u64, NotFound> {
///         self.by_stream.get(&query.stream_id).copied().ok_or(NotFound)
///     }
/// }
///
/// assert_eq!(<Balances as Projection>::EVENT_TYPES, &["account.deposited"]);
/// ```
///
/// A query handler answers with a `Result`, whose error type becomes the handler's:
///
/// ```compile_fail
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::projection;
/// # #[derive(Debug, Query)]
/// # #[query(output = u64)]
/// # pub struct GetTotal;
/// # pub struct Totals { total: u64 }
/// #[projection]
/// impl Totals {
///     #[query_handler]
///     fn total(&self, _: &GetTotal) -> u64 { // error: a `#[query_handler]` returns `Result<Output, Error>`
///         self.total
///     }
/// }
/// ```
///
/// # Limitations
///
/// - Subscriptions are by payload type, so a unit variant cannot be subscribed to: give it a
///   payload struct when a read model needs it.
/// - `ReadModel` (the in-process, lock-guarded wrapper) takes projections whose context is `()`;
///   one with another `context` is fed by a subscription that supplies it.
/// - The `context` type is compared as written: a handler naming it through another path or
///   alias is reported as a mismatch.
#[proc_macro_attribute]
pub fn projection(args: TokenStream, item: TokenStream) -> TokenStream {
    projection::expand(args.into(), &item.into()).into()
}

/// Makes a struct a saga (process manager): its `impl` block's handlers react to events of
/// several aggregates, keep the saga's state and send commands.
///
/// ```text
/// #[saga(commands(ReserveStock, ChargePayment, ...))]           // the commands it may send
/// #[saga(commands(...), name = "order-fulfilment")]             // stored name (default: the type's)
/// ```
///
/// The struct is the state: `Default + Serialize + Deserialize`. Handlers take `&mut self`,
/// their message, then optionally `&RecordedEvent` (event handlers) and
/// `&mut SagaContext<Self>`, and return nothing, commands to send (a declared command, a
/// tuple, an `Option` or a `Vec` of them, sent in order), or a `Result` of either (an error
/// parks the instance after the runner's attempts).
///
/// - `#[event_handler(key = field, start, end)]` takes `&Payload` of an event; `key` names
///   the payload field (or `a.b` path) whose text is the instance key; `start` creates the
///   instance when it does not exist; `end` ends it after the handler.
/// - `#[failure_handler]` takes `&CommandFailed<C>` for a command `C` in `commands(...)`.
/// - `#[deadline_handler]` takes `&D`, a deadline type scheduled with `ctx.schedule(D, after)`;
///   it is stored by its type name.
///
/// Every command in `commands(...)` must take idempotency keys (`#[command(idempotent)]`)
/// and be `Serialize + Deserialize`; the bus a runner is built on must have an aggregate
/// for each. See `cqrs_core::saga` for the full example and the guarantees.
///
/// ```compile_fail
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::saga;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Placed { pub order: u32 }
/// # #[derive(Debug, Clone, Event)]
/// # pub enum OrderEvent { Placed(Placed) }
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Fulfilment;
///
/// #[saga(commands())]
/// impl Fulfilment {
///     #[event_handler(start)] // error: the handler says which payload field finds the instance
///     fn on_placed(&mut self, _: &Placed) {}
/// }
/// ```
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(args.into(), &item.into()).into()
}

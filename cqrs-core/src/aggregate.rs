//! Aggregates: state rebuilt from events, guarding invariants when handling commands.

use serde_json::Value;

use crate::{Event, KeyChanges, RecordedEvent};

/// A consistency boundary whose state is the fold of its events.
///
/// Implemented by `#[aggregate(event = E, error = Err)]` on the aggregate's impl block.
///
/// # Unique keys across aggregates ("set validation")
///
/// Some rules span aggregates: one user per e-mail address, one product per SKU. An aggregate
/// cannot check them alone, and a check against a read model before the command is racy (two
/// concurrent registrations both find the address free, and both commit). Instead, declare the
/// keys: `#[aggregate(..., unique_keys)]` and an impl of [`UniqueKeys`](crate::UniqueKeys)
/// that says, for each event, which keys (namespace and value) it claims and which it
/// releases. The repository collects the keys of a command's events and appends with
/// [`EventStore::append_with_keys`](crate::EventStore::append_with_keys): the store reserves
/// them in the same atomic step as the events. A key held by another stream fails the command
/// with [`CommandError::UniqueKeyTaken`](crate::CommandError::UniqueKeyTaken) and writes
/// nothing; later events release keys or move them (release the old address, claim the new
/// one, in one append). Concurrent commands claiming one key cannot both win.
///
/// ```
/// use cqrs_core::prelude::*;
/// use cqrs_core::{KeyChanges, UniqueKeys};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Registered { pub email: String }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum UserEvent { Registered(Registered), Deleted }
///
/// #[derive(Debug, Deserialize, Command)]
/// #[command(aggregate = User, id = id)]
/// pub struct Register { pub id: u32, pub email: String }
///
/// #[derive(Debug, Deserialize, Command)]
/// #[command(aggregate = User, id = id)]
/// pub struct Delete { pub id: u32 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("already registered")]
/// pub struct AlreadyRegistered;
///
/// #[derive(Debug, Default)]
/// pub struct User { email: Option<String> }
///
/// #[aggregate(event = UserEvent, error = AlreadyRegistered, unique_keys)]
/// impl User {
///     #[command_handler]
///     fn register(&self, cmd: &Register) -> Result<Registered, AlreadyRegistered> {
///         match self.email {
///             Some(_) => Err(AlreadyRegistered),
///             None => Ok(Registered { email: cmd.email.to_lowercase() }),
///         }
///     }
///     #[command_handler]
///     fn delete(&self, _: &Delete) -> Result<Option<UserEvent>, AlreadyRegistered> {
///         Ok(self.email.as_ref().map(|_| UserEvent::Deleted))
///     }
///     #[event_handler]
///     fn on_registered(&mut self, e: &Registered) { self.email = Some(e.email.clone()) }
///     #[event_handler(Deleted)]
///     fn on_deleted(&mut self) { self.email = None }
/// }
///
/// impl UniqueKeys for User {
///     fn unique_keys(&self, event: &UserEvent, keys: &mut KeyChanges) {
///         match event {
///             UserEvent::Registered(e) => keys.claim("user.email", e.email.clone()),
///             UserEvent::Deleted => {
///                 if let Some(email) = &self.email {
///                     keys.release("user.email", email.clone());
///                 }
///             }
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = InMemoryEventStore::new();
/// let bus = CommandBus::builder(store.clone()).aggregate::<User>(()).build();
///
/// bus.execute(Register { id: 1, email: "ada@example.com".into() }).await.unwrap();
/// let taken = bus.execute(Register { id: 2, email: "ADA@example.com".into() }).await;
/// match taken {
///     Err(CommandError::UniqueKeyTaken { namespace, owner, .. }) => {
///         assert_eq!((namespace.as_str(), owner.as_str()), ("user.email", "User-1"));
///     }
///     other => panic!("expected the key to be taken, got {other:?}"),
/// }
/// assert_eq!(store.len(), 1);
///
/// // Deleting user 1 releases the address; user 2 may now claim it.
/// bus.execute(Delete { id: 1 }).await.unwrap();
/// bus.execute(Register { id: 2, email: "ada@example.com".into() }).await.unwrap();
/// # }
/// ```
///
/// Keys live in the event store, next to the events, and change only with them; they are not
/// rebuilt from history. Declaring keys for an aggregate that already has events claims
/// nothing for the past: claim existing keys with a migration of your own.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    note = "add `#[aggregate(event = ..., error = ...)]` to an `impl {Self}` block with its handlers"
)]
pub trait Aggregate: Default + Send + Sync + 'static {
    /// Stream category: the stream of the aggregate with id `x` is `"{NAME}-{x}"`.
    const NAME: &'static str;
    /// The event enum this aggregate records.
    type Event: Event;
    /// The domain error its command handlers reject commands with.
    type Error: std::error::Error + Send + Sync + 'static;
    /// What handlers may borrow besides the state (password hasher, price list, ...);
    /// supplied once when the aggregate is registered on the bus. `()` when none.
    type Services: Send + Sync + 'static;

    /// Applies one event to the state. Generated; exhaustive over the event enum.
    fn apply(&mut self, event: &Self::Event);

    /// The [`DomainError`](crate::DomainError) code of a domain error, or `None` when
    /// `Self::Error` does not implement `DomainError`. `#[aggregate]` generates it; it is how
    /// the JSON dispatcher reports the code without knowing the error type.
    fn domain_code(error: &Self::Error) -> Option<&'static str> {
        let _ = error;
        None
    }

    /// Snapshot schema version, or `None` when the aggregate does not support snapshots
    /// (`#[aggregate(snapshot = N)]` turns them on).
    const SNAPSHOT_VERSION: Option<u32> = None;

    /// Serializes the state for a snapshot; `None` when snapshots are off.
    fn to_snapshot(&self) -> Option<Result<Value, serde_json::Error>> {
        None
    }

    /// Restores state from a snapshot; `None` when snapshots are off.
    fn from_snapshot(state: &Value) -> Option<Result<Self, serde_json::Error>> {
        let _ = state;
        None
    }

    /// Records the unique keys `event` claims and releases, given the state before it. The
    /// default records none; `#[aggregate(unique_keys)]` forwards to
    /// [`UniqueKeys::unique_keys`](crate::UniqueKeys::unique_keys).
    fn key_changes(&self, event: &Self::Event, keys: &mut KeyChanges) {
        let _ = (event, keys);
    }
}

/// The stream id of the aggregate `A` with id `id`.
pub fn stream_id<A: Aggregate>(id: &str) -> String {
    let mut s = String::with_capacity(A::NAME.len() + 1 + id.len());
    s.push_str(A::NAME);
    s.push('-');
    s.push_str(id);
    s
}

/// The id of the aggregate `A` whose stream is `stream_id`: the inverse of [`stream_id`].
/// `None` when the stream is not one of `A`'s.
///
/// ```
/// # use cqrs_core::prelude::*;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Opened;
/// # #[derive(Debug, Clone, Event)]
/// # pub enum AccountEvent { Opened(Opened) }
/// # #[derive(Debug, Default)]
/// # pub struct Account;
/// #[aggregate(event = AccountEvent, error = std::convert::Infallible, name = "account")]
/// impl Account {
///     // ...
/// #     #[event_handler]
/// #     fn on_opened(&mut self, _: &Opened) {}
/// }
///
/// assert_eq!(cqrs_core::stream_id::<Account>("42"), "account-42");
/// assert_eq!(cqrs_core::aggregate_id::<Account>("account-42"), Some("42"));
/// assert_eq!(cqrs_core::aggregate_id::<Account>("customer-42"), None);
/// assert_eq!(cqrs_core::aggregate_id::<Account>("accounts-42"), None);
/// ```
pub fn aggregate_id<A: Aggregate>(stream_id: &str) -> Option<&str> {
    stream_id
        .strip_prefix(A::NAME)
        .and_then(|rest| rest.strip_prefix('-'))
}

impl RecordedEvent {
    /// The id of the aggregate `A` that recorded this event (`"7"` in stream `"Account-7"`),
    /// or `None` when the event is not in a stream of `A`. It is the command's
    /// `#[command(id = ...)]` field as a string: parse it back into its type. A read model
    /// keyed by aggregate id needs nothing else, and no stream-name prefix repeated by hand.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use cqrs_core::prelude::*;
    /// # #[derive(Debug, Clone, Serialize, Deserialize)]
    /// # pub struct Deposited { pub amount: u64 }
    /// # #[derive(Debug, Clone, Event)]
    /// # pub enum AccountEvent { Deposited(Deposited) }
    /// # #[derive(Debug, Deserialize, Command)]
    /// # #[command(aggregate = Account, id = number)]
    /// # pub struct Deposit { pub number: u32, pub amount: u64 }
    /// # #[derive(Debug, Default)]
    /// # pub struct Account;
    /// # #[aggregate(event = AccountEvent, error = std::convert::Infallible, name = "account")]
    /// # impl Account {
    /// #     #[command_handler]
    /// #     fn deposit(&self, c: &Deposit) -> Result<Deposited, std::convert::Infallible> {
    /// #         Ok(Deposited { amount: c.amount })
    /// #     }
    /// #     #[event_handler]
    /// #     fn on_deposited(&mut self, _: &Deposited) {}
    /// # }
    /// #[derive(Default)]
    /// pub struct Balances {
    ///     by_account: HashMap<u32, u64>,
    /// }
    ///
    /// #[projection]
    /// impl Balances {
    ///     #[event_handler]
    ///     fn on_deposited(&mut self, event: &Deposited, recorded: &RecordedEvent) {
    ///         if let Some(number) = recorded.aggregate_id::<Account>().and_then(|id| id.parse().ok()) {
    ///             *self.by_account.entry(number).or_default() += event.amount;
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let balances = ReadModel::new(Balances::default());
    /// let bus = CommandBus::builder(InMemoryEventStore::new())
    ///     .aggregate::<Account>(())
    ///     .subscribe(balances.clone())
    ///     .build();
    /// bus.execute(Deposit { number: 7, amount: 5 }).await.unwrap();
    /// assert_eq!(balances.read().await.by_account[&7], 5);
    /// # }
    /// ```
    pub fn aggregate_id<A: Aggregate>(&self) -> Option<&str> {
        aggregate_id::<A>(&self.stream_id)
    }
}

//! Aggregates: state rebuilt from events, guarding invariants when handling commands.

use serde_json::Value;

use crate::{Event, RecordedEvent};

/// A consistency boundary whose state is the fold of its events.
///
/// Implemented by `#[aggregate(event = E, error = Err)]` on the aggregate's impl block.
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
    /// What handlers may borrow besides the state (password hasher, uniqueness check, ...);
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

//! Aggregates: state rebuilt from events, guarding invariants when handling commands.

use serde_json::Value;

use crate::Event;

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

//! The [`EventStore`] contract, the in-memory reference implementation, and the [`audit`] of
//! a store's stored event forms against the current code.

pub mod audit;
mod memory;

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use memory::InMemoryEventStore;

use crate::{
    BoxFuture, GlobalPosition, IdempotencyRecord, IdempotentWrite, KeyChanges, NewEvent,
    RecordedEvent,
};

/// What the writer believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// The stream is at exactly this version (`Exact(0)` is the same as [`Self::NoStream`]).
    Exact(u64),
    /// The stream has no events yet.
    NoStream,
    /// No check: append at whatever the version is.
    Any,
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = no stream) satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Exact(v) => v == actual,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Any => true,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Any => f.write_str("any version"),
        }
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append.
    pub stream_version: u64,
    /// Global position of each appended event, in order.
    pub positions: Vec<GlobalPosition>,
    /// When the events were recorded.
    pub recorded_at: DateTime<Utc>,
}

impl AppendResult {
    /// Position of the last appended event, or [`GlobalPosition::START`] when none was.
    pub fn last_position(&self) -> GlobalPosition {
        self.positions
            .last()
            .copied()
            .unwrap_or(GlobalPosition::START)
    }
}

/// A serialized aggregate state covering a stream up to a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream the snapshot summarizes.
    pub stream_id: String,
    /// The stream version the state includes.
    pub stream_version: u64,
    /// The aggregate's snapshot schema version.
    pub schema_version: u32,
    /// The serialized state.
    pub state: Value,
}

/// Errors of an event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the expected version.
    #[error("conflict on stream `{stream}`: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version (0 = no stream).
        actual: u64,
    },
    /// An event id is already stored.
    #[error("event id {event_id} is already stored")]
    DuplicateEventId {
        /// The duplicated id.
        event_id: uuid::Uuid,
    },
    /// `read_all_from` was asked to read after a position at which no event was ever stored
    /// (a checkpoint from another store, or a corrupted one). Nothing was read.
    #[error("no event is stored at position {position}")]
    UnknownPosition {
        /// The position asked for.
        position: GlobalPosition,
    },
    /// The stream id is not acceptable (empty, or too long for the backend).
    #[error("invalid stream id {stream:?}: {reason}")]
    InvalidStreamId {
        /// The rejected id.
        stream: String,
        /// Why.
        reason: &'static str,
    },
    /// A unique key the append claims is held by another stream; nothing was written.
    #[error("{namespace} {value:?} is taken by stream `{owner}`")]
    UniqueKeyTaken {
        /// The key's namespace (`"user.email"`).
        namespace: String,
        /// The key's value.
        value: String,
        /// The stream that holds the key.
        owner: String,
    },
    /// The store cannot reserve unique keys ([`EventStore::append_with_keys`] with key
    /// changes on a store that does not implement it); nothing was written.
    #[error("this event store does not support unique keys")]
    UniqueKeysUnsupported,
    /// An idempotency key is already recorded for this command name
    /// ([`EventStore::append_idempotent`]); nothing was written. Read the record with
    /// [`EventStore::idempotency_record`].
    #[error("idempotency key {key:?} of `{command}` is already recorded")]
    IdempotencyKeyTaken {
        /// The command name.
        command: String,
        /// The key.
        key: String,
    },
    /// The store cannot record idempotency keys ([`EventStore::append_idempotent`] on a
    /// store that does not implement it); nothing was written.
    #[error("this event store does not support idempotency keys")]
    IdempotencyUnsupported,
    /// The operation failed for a passing reason and may succeed if simply tried again (in a
    /// new transaction): a serialization failure, a deadlock, a lost connection. See
    /// [`StoreError::is_retryable`] and [`TransientReason::rolled_back`].
    #[error("transient event store failure ({reason}): {source}")]
    Transient {
        /// What kind of passing failure.
        reason: TransientReason,
        /// The backend's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend failed (a statement refused, an I/O error outside the connection, ...).
    #[error("event store backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether the same operation, tried again unchanged, may succeed: the error is
    /// [`StoreError::Transient`]. A retry runs in a new transaction (the failed one is
    /// over, or must be rolled back when it is the caller's).
    ///
    /// A [`StoreError::Conflict`] is not retryable this way: the writer must first learn the
    /// stream's new state (the command bus reloads and runs the command again, see
    /// [`CommandBusBuilder::retry_on_conflict`](crate::CommandBusBuilder::retry_on_conflict)).
    /// After
    /// [`TransientReason::ConnectionLost`] the first attempt may have taken effect: an append
    /// retried with the same event ids then either succeeds or reports
    /// [`StoreError::DuplicateEventId`], but anything recomputed between the attempts (a
    /// command handled again) is only safe when it is idempotent.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

/// Why a [`StoreError::Transient`] failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransientReason {
    /// The transaction could not be serialized with a concurrent one (PostgreSQL's SQLSTATE
    /// `40001`; also an append whose transaction snapshot shows an older version of the
    /// stream than the one stored). The transaction is rolled back, or must be.
    SerializationFailure,
    /// The transaction was chosen to break a deadlock (SQLSTATE `40P01`) and is rolled back.
    Deadlock,
    /// The connection broke or the server ended it during the operation: whether the
    /// operation took effect is unknown.
    ConnectionLost,
    /// No connection could be had in time (the pool is exhausted, or the server is not
    /// accepting connections yet): nothing was sent.
    Unavailable,
}

impl TransientReason {
    /// Whether the failed operation certainly took no effect. False only for
    /// [`TransientReason::ConnectionLost`], where a commit may have happened before the
    /// connection broke.
    pub fn rolled_back(self) -> bool {
        !matches!(self, TransientReason::ConnectionLost)
    }
}

impl fmt::Display for TransientReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransientReason::SerializationFailure => "serialization failure",
            TransientReason::Deadlock => "deadlock",
            TransientReason::ConnectionLost => "connection lost",
            TransientReason::Unavailable => "no connection available",
        })
    }
}

/// Storage of event streams and their global order.
///
/// The in-memory [`InMemoryEventStore`] is the reference semantics; the conformance kit
/// (`testing` feature) checks any implementation against them.
///
/// Contract:
/// - `append` is atomic: all events are stored or none; versions continue the stream from
///   its current version without holes; a version mismatch is [`StoreError::Conflict`] and
///   writes nothing.
/// - `load_stream(s, v)` returns the events of `s` with version `>= v` in version order.
/// - `append` with no events writes nothing: it checks the expected version like any other
///   append (a mismatch is a `Conflict`), and otherwise returns the stream's current version
///   and no positions. It does not create the stream.
/// - An event id is stored at most once across all streams: reusing one, in any stream, is
///   [`StoreError::DuplicateEventId`] and writes nothing of the batch.
/// - `ExpectedVersion::Any` never conflicts: concurrent `Any` appends to one stream all
///   succeed, each taking its own run of versions.
/// - `load_stream(s, v)` returns the events of `s` with version `>= v` in version order.
/// - `read_all_from(p, n)` returns events strictly after position `p` in the global order,
///   never skipping an event that becomes visible later with a smaller position: the order
///   is fixed, so a reader that follows it live sees the same events in the same order as one
///   that reads it after everything settled. A page holds at most `n` events. A store may
///   return fewer, even none, while a transaction that could still commit before them is in
///   flight (PostgreSQL waits for every such transaction, and its horizon may lag for a
///   moment behind appends that just returned); once every append has returned, reading
///   again soon yields `min(n, events after p)`. `n = 0` reads nothing and returns an empty
///   page.
/// - `p` is [`GlobalPosition::START`] or the position of a stored event. Any other position is
///   [`StoreError::UnknownPosition`], never an empty page: a reader resuming from a wrong
///   checkpoint must hear about it rather than silently wait forever for events that are
///   already stored.
/// - `save_snapshot` replaces the stream's snapshot unless the stored one covers a later
///   version (an equal version replaces it); snapshots of different streams are independent.
/// - `append_with_keys` (for stores that support unique keys) is `append` plus the key
///   changes, in the same atomic step: a claimed key held by another stream is
///   [`StoreError::UniqueKeyTaken`] and writes nothing (neither events nor keys); on success
///   every claimed key is held by the stream and every released key it held is free.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream_id` if the stream is at `expected`.
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>>;

    /// Appends `events` as [`append`](Self::append) does and, in the same atomic step, claims
    /// and releases the unique keys of `keys` for `stream_id`.
    ///
    /// A claimed key that another stream holds fails the whole append with
    /// [`StoreError::UniqueKeyTaken`]; a version conflict or a duplicate event id is reported
    /// first, as by `append`. Claiming a key the stream holds, and releasing one it does not
    /// hold, change nothing. Key changes apply exactly when the append succeeds, also when
    /// `events` is empty.
    ///
    /// The default delegates to `append` when `keys` is empty and otherwise fails with
    /// [`StoreError::UniqueKeysUnsupported`], writing nothing: a store opts in by overriding
    /// it. [`InMemoryEventStore`] and the PostgreSQL store do.
    fn append_with_keys<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        if keys.is_empty() {
            self.append(stream_id, expected, events)
        } else {
            Box::pin(std::future::ready(Err(StoreError::UniqueKeysUnsupported)))
        }
    }

    /// Appends as [`append_with_keys`](Self::append_with_keys) does and, in the same atomic
    /// step, records the idempotency key of `write` with the outcome: the append's
    /// [`Committed`](crate::Committed) (built from the [`AppendResult`] and the number of
    /// events), or `write.rejection` (then `events` is empty and the append only checks the
    /// expected version). See [`idempotency`](crate::idempotency).
    ///
    /// A key already recorded for `write.command_name` fails the whole append with
    /// [`StoreError::IdempotencyKeyTaken`] and writes nothing; concurrent appends with one
    /// key have one winner. Other errors are those of `append_with_keys`, and write nothing
    /// either, the key included.
    ///
    /// The default fails with [`StoreError::IdempotencyUnsupported`], writing nothing: a
    /// store opts in by overriding it together with
    /// [`idempotency_record`](Self::idempotency_record) and
    /// [`purge_idempotency_keys`](Self::purge_idempotency_keys). [`InMemoryEventStore`] and
    /// the PostgreSQL store do.
    fn append_idempotent<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: IdempotentWrite,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        let _ = (stream_id, expected, events, keys, write);
        Box::pin(std::future::ready(Err(StoreError::IdempotencyUnsupported)))
    }

    /// The record of an idempotency key of command `command_name`, if any (`None` too on a
    /// store without idempotency keys, which is the default).
    fn idempotency_record<'a>(
        &'a self,
        command_name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        let _ = (command_name, key);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Deletes the idempotency records created before `older_than` and returns how many
    /// were deleted; a key purged is free again (its command runs anew). The default (a
    /// store without idempotency keys) deletes nothing.
    fn purge_idempotency_keys(
        &self,
        older_than: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let _ = older_than;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// The stream that holds a unique key, if any (`None` too on a store without unique
    /// keys, which is the default).
    fn unique_key_owner<'a>(
        &'a self,
        namespace: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let _ = (namespace, value);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Events of one stream with version `>= from_version`, in order.
    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;

    /// The current version of a stream (0 = no stream).
    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Up to `limit` events strictly after `after` in the global order; `after` must be
    /// [`GlobalPosition::START`] or the position of a stored event, else
    /// [`StoreError::UnknownPosition`].
    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>>;

    /// The latest snapshot of a stream, if any.
    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;

    /// Stores a snapshot, replacing an older one of the same stream.
    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes the snapshot of a stream, if any. The repository calls it when a snapshot
    /// claims a version past the stream's head (the events were restored from an older
    /// backup), since such a snapshot could never be replaced by a newer one.
    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

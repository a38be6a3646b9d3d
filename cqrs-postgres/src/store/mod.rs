//! The event store: [`PostgresEventStore`].

mod append;
mod group;
mod idempotency;
mod inline;
mod keys;
mod notify;
mod read;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_core::{
    AppendResult, BoxFuture, EventStore, ExpectedVersion, GlobalPosition, IdempotencyRecord,
    IdempotentWrite, KeyChanges, NewEvent, RecordedEvent, Snapshot, StoreError,
};
use sqlx::{PgConnection, PgPool};

pub use group::GroupCommit;
pub use inline::InlineProjection;
pub(crate) use read::{decode_payload, jsonb_text};

use crate::{MigrateError, migrate};
use notify::AfterCommit;

/// The longest stream id accepted, in bytes. Stream ids are keys of two B-tree indexes,
/// whose entries must fit in a third of a page; this limit leaves room to spare.
pub const MAX_STREAM_ID_BYTES: usize = 1024;

/// How appends wake the sessions that `LISTEN` on the `cqrs_events` channel.
///
/// A notification is only a wake-up call: subscribers also poll, so a notification that
/// never arrives delays them by at most their poll interval and loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyMode {
    /// `pg_notify('cqrs_events', <last position>)` inside the append's transaction:
    /// listeners wake exactly when the events commit. PostgreSQL serializes the commits of
    /// all transactions that notify (one lock, held through the commit's disk flush), so
    /// concurrent appends no longer share flushes. `cargo bench -p cqrs-postgres --bench
    /// postgres` runs the modes side by side.
    InTransaction,
    /// The default. After the append commits, a background task of this store sends one
    /// notification for all the appends that committed since its last one. Appends commit
    /// without the notification lock; listeners wake one round trip later. A crash between
    /// a commit and its notification leaves listeners to their polling, so nothing is lost,
    /// only delayed by at most the poll interval. Appends made with
    /// [`PostgresEventStore::append_in`] still notify inside the caller's transaction, since
    /// only the caller knows when it commits. The task runs on the Tokio runtime of the
    /// first append that needs it, and stops with that runtime.
    #[default]
    AfterCommit,
    /// No notifications: listeners rely on polling.
    Off,
}

/// An [`EventStore`] on PostgreSQL. Cloning is cheap and shares the pool.
///
/// See the [crate documentation](crate) for the schema, the global order and the guarantees.
#[derive(Clone)]
pub struct PostgresEventStore {
    pool: PgPool,
    inline: Arc<Vec<Arc<dyn InlineProjection>>>,
    notify: NotifyMode,
    after_commit: AfterCommit,
    group: Option<group::GroupWriter>,
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("pool", &self.pool)
            .field(
                "inline_projections",
                &self.inline.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("notify", &self.notify)
            .field(
                "group_commit",
                &self.group.as_ref().map(group::GroupWriter::options),
            )
            .finish_non_exhaustive()
    }
}

impl PostgresEventStore {
    /// A store on `pool`. The tables must exist: run [`Self::migrate`] first (or the SQL of
    /// [`MIGRATIONS`](crate::MIGRATIONS) with your own tool).
    pub fn new(pool: PgPool) -> Self {
        Self {
            after_commit: AfterCommit::new(pool.clone()),
            pool,
            inline: Arc::new(Vec::new()),
            notify: NotifyMode::default(),
            group: Some(group::GroupWriter::new(GroupCommit::default())),
        }
    }

    /// Creates or upgrades the store's tables in `pool`'s database: applies, in one
    /// transaction, the [`MIGRATIONS`](crate::MIGRATIONS) it has not recorded in
    /// `cqrs_schema_migrations`, and returns their versions.
    ///
    /// Running it again, or from several processes at once, is harmless: runners take a
    /// transaction-scoped advisory lock and skip recorded versions. The tables go into the
    /// first existing schema of the connection's `search_path`.
    pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, MigrateError> {
        migrate::run(pool).await
    }

    /// Runs `projection` in the transaction of every append, after the events are inserted.
    /// If it fails, the append fails and nothing is written.
    ///
    /// Any [`cqrs_core::Projection`] whose `Context` is [`sqlx::PgConnection`] (and that is
    /// `Clone`) qualifies, as does a hand-written [`InlineProjection`]. Projections run in the
    /// order they were added.
    #[must_use]
    pub fn with_inline_projection(mut self, projection: impl InlineProjection) -> Self {
        let mut all = Vec::clone(&self.inline);
        all.push(Arc::new(projection));
        self.inline = Arc::new(all);
        self
    }

    /// Chooses how appends wake listeners (default [`NotifyMode::AfterCommit`]).
    #[must_use]
    pub fn with_notify(mut self, mode: NotifyMode) -> Self {
        self.notify = mode;
        // Batches take the mode from the store that starts them: a store with another mode
        // gets batches of its own.
        if let Some(group) = &self.group {
            self.group = Some(group::GroupWriter::new(group.options()));
        }
        self
    }

    /// Sets the group-commit options ([`GroupCommit`]): concurrent appends on different
    /// streams share one statement and one commit, each with its own result and its own
    /// conflict. On by default with [`GroupCommit::default`], which groups only while at least
    /// 16 appends of the store are under way, so fewer concurrent clients run exactly as
    /// without it; see [`GroupCommit`] for what is grouped and what it costs, and the crate
    /// docs ("Group commit") for the measurements.
    #[must_use]
    pub fn with_group_commit(mut self, options: GroupCommit) -> Self {
        self.group = Some(group::GroupWriter::new(options));
        self
    }

    /// Turns group commit off: every append is a statement and a transaction of its own,
    /// whatever the concurrency. For a deployment where a lost connection must leave only
    /// one command in doubt, or whose many processes write the same streams at high
    /// concurrency (their batches can deadlock, which PostgreSQL breaks after
    /// `deadlock_timeout`; every command then runs alone, correctly but late).
    #[must_use]
    pub fn without_group_commit(mut self) -> Self {
        self.group = None;
        self
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends inside the caller's transaction: `conn` should be a [`sqlx::Transaction`]
    /// (it dereferences to a `PgConnection`), and the events become visible when the caller
    /// commits. The inline projections run in it too.
    ///
    /// Errors are those of [`EventStore::append`], with one more reason for
    /// [`StoreError::Conflict`]: the stream's last append committed from a transaction that
    /// got its id after this one (it has a larger transaction id; a transaction gets its id
    /// at its first write, or at this append's statement, before it waits for the stream).
    /// Appending now would put this stream's new versions before its older ones in the
    /// global `(tx, position)` order, so the append is refused; retry in a new transaction.
    /// The same happens while an `EventStore::append` to the stream is being retried in order
    /// (see the crate docs: per-stream order); `EventStore::append` does that retry itself.
    /// The reported `actual` version may then equal the expected one, and it happens with
    /// [`ExpectedVersion::Any`] too.
    ///
    /// Each append holds the stream's advisory lock, shared, until the transaction ends: a
    /// transaction that appends to many streams holds up to 256 such locks (streams share
    /// them by hash) in PostgreSQL's lock table.
    ///
    /// # Isolation levels
    ///
    /// All three of PostgreSQL's levels are supported. Whatever the level, a failure that
    /// retrying the whole transaction may cure is [`StoreError::Transient`]
    /// ([`StoreError::is_retryable`]): a serialization failure (SQLSTATE `40001`), a
    /// deadlock (`40P01`), a lost connection.
    ///
    /// - **`READ COMMITTED`** (PostgreSQL's default): the version check sees the stream as
    ///   last committed. The append waits for a concurrent writer of the stream to finish
    ///   and checks against what it wrote, so a [`StoreError::Conflict`]'s `actual` is the
    ///   stream's version.
    /// - **`REPEATABLE READ`**: the transaction sees the stream as of its snapshot (taken at
    ///   its first statement). When another transaction changed or created the stream since
    ///   then, the append fails with [`StoreError::Transient`] and
    ///   [`TransientReason::SerializationFailure`](cqrs_core::TransientReason): PostgreSQL
    ///   raises `40001` when this transaction would write a row changed after its snapshot,
    ///   and where the snapshot's version merely fails the check, the store reads the
    ///   stream's version outside the snapshot (on another connection: an idle one of the
    ///   pool, or a new one, never waiting for the pool) and reports the stale snapshot as
    ///   the same serialization failure ([`PostgresStoreError::StaleSnapshot`](crate::PostgresStoreError::StaleSnapshot)).
    ///   A [`StoreError::Conflict`] is reported only when the snapshot is current, so its
    ///   `actual` is the stream's version.
    /// - **`SERIALIZABLE`**: as `REPEATABLE READ`; PostgreSQL may also fail this statement,
    ///   a later one or the commit with `40001` when the transaction's reads and writes
    ///   cannot be serialized with concurrent ones (the commit's error is the caller's
    ///   [`sqlx::Error`]).
    ///
    /// After an error the transaction may hold partial work (an inline projection's writes)
    /// or be aborted: roll it back.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append::validate_stream_id(stream_id)?;
        let notify = self.notify != NotifyMode::Off;
        match self
            .append_on(conn, stream_id, expected, &events, notify, false)
            .await
        {
            Ok(result) => Ok(result),
            Err(failure) => Err(self
                .explain(failure, stream_id, expected, &events, false)
                .await),
        }
    }

    /// [`EventStore::read_all_from`] on a connection of the caller's (for instance inside a
    /// transaction that also updates a read model).
    pub async fn read_all_from_in(
        conn: &mut PgConnection,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read::read_all_from(conn, after, limit).await
    }
}

impl EventStore for PostgresEventStore {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(self.append_owned(stream_id, expected, events))
    }

    /// With key changes, the append and the changes of `cqrs_unique_keys` run in one
    /// transaction; without, this is [`append`](EventStore::append), one statement.
    fn append_with_keys<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        if keys.is_empty() {
            return Box::pin(self.append_owned(stream_id, expected, events));
        }
        Box::pin(async move {
            self.append_in_own_transaction(stream_id, expected, events, &keys, None)
                .await
        })
    }

    /// The append, the key changes and the record of `cqrs_idempotency` run in one
    /// transaction; a key already recorded rolls it back.
    fn append_idempotent<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: IdempotentWrite,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(async move {
            self.append_in_own_transaction(stream_id, expected, events, &keys, Some(write))
                .await
        })
    }

    fn idempotency_record<'a>(
        &'a self,
        command_name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        Box::pin(self.idempotency_record_of(command_name, key))
    }

    fn purge_idempotency_keys(
        &self,
        older_than: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.purge_idempotency(older_than))
    }

    fn unique_key_owner<'a>(
        &'a self,
        namespace: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(self.key_owner(namespace, value))
    }

    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(read::load_stream(&self.pool, stream_id, from_version))
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(read::stream_version(&self.pool, stream_id))
    }

    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(crate::error::database)?;
            read::read_all_from(&mut conn, after, limit).await
        })
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(read::load_snapshot(&self.pool, stream_id))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(read::save_snapshot(&self.pool, snapshot))
    }

    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(read::delete_snapshot(&self.pool, stream_id))
    }
}

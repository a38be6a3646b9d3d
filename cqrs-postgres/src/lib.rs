//! PostgreSQL event store, snapshot store and checkpointed subscriptions for `cqrs-core`.
//!
//! [`PostgresEventStore`] implements [`cqrs_core::EventStore`] on a `sqlx` pool: appends with
//! optimistic concurrency, one statement per batch; per-stream loads; snapshots; and a global
//! order that readers can follow without ever skipping an event committed late by a
//! concurrent transaction. Inline projections update read-model rows in the append's own
//! transaction, [`subscription`] feeds projections durably from a stored checkpoint (or, for
//! a read model in process memory, from the first event on every start), and every append
//! wakes listeners with `NOTIFY`. The tables ship as SQL migrations
//! ([`MIGRATIONS`]) that [`PostgresEventStore::migrate`] applies, or that you run with your
//! own tool.
//!
//! # Set-up
//!
//! Pool, migrate, store, bus, execute:
//!
//! ```
//! use cqrs_core::prelude::*;
//! use cqrs_postgres::PostgresEventStore;
//! use sqlx::PgPool;
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
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // This example keeps its tables in a schema of its own and drops it afterwards.
//! # let url = std::env::var("DATABASE_URL")
//! #     .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
//! # let schema = format!("cqrs_doc_{}", Uuid::now_v7().simple());
//! # let admin = PgPool::connect(&url).await?;
//! # sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await?;
//! # let options = url
//! #     .parse::<sqlx::postgres::PgConnectOptions>()?
//! #     .options([("search_path", schema.as_str())]);
//! let pool = PgPool::connect_with(options).await?;
//! PostgresEventStore::migrate(&pool).await?;
//! let store = PostgresEventStore::new(pool.clone());
//! let bus = CommandBus::builder(store).aggregate::<Account>(()).build();
//! let committed = bus.execute(Deposit { account_id: 7, amount: 10 }).await?;
//!
//! assert_eq!((committed.stream_id.as_str(), committed.stream_version), ("Account-7", 1));
//! # pool.close().await;
//! # sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The tables go into the first schema of the connection's `search_path` (`public` unless
//! you say otherwise), as above, where the example keeps them in a schema of its own. All
//! statements use unqualified names, so one database can hold several independent stores in
//! several schemas; they share the `cqrs_events` notification channel (a spurious wake-up
//! costs a read, nothing else).
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `otel` | OpenTelemetry export of the subscriptions' `event_handled` spans (`cqrs-core/otel`) |
//! | `metrics` | [`ProjectionAdmin::export_metrics`](subscription::ProjectionAdmin): projections' checkpoint, head, lag, parked streams and state as `metrics` gauges |
//!
//! None is on by default. The crate depends on `sqlx` (Postgres, tokio runtime; no
//! compile-time checked queries, so building needs no database), `cqrs-core`, `serde_json`,
//! `thiserror`, `tokio` and `tracing`.
//!
//! # Schema
//!
//! [`MIGRATIONS`] lists the migrations in order; `migrate` applies those that the
//! `cqrs_schema_migrations` table has not recorded, in one transaction under a
//! `pg_advisory_xact_lock`, so running it twice or from several processes at once is
//! harmless. Every object is created `IF NOT EXISTS`: you can run the files with another
//! migration tool instead. The first one:
//!
//! - `cqrs_events`: one row per event. `position` is a `bigint` identity, the global
//!   position; `tx` (`xid8`, default `pg_current_xact_id()`) is the id of the writing
//!   transaction; `(stream_id, stream_version)` and `event_id` are unique; payload and
//!   metadata are `jsonb`. The unique `(stream_id, stream_version)` index is what
//!   `load_stream` reads; the `(tx, position)` index is what `read_all_from` reads.
//! - `cqrs_streams`: one row per stream with its current version and the id of the
//!   transaction that last appended to it. An append claims its stream's row with the
//!   version check in the same statement, so the check is one index lookup, writers of one
//!   stream queue on one row lock, and writers of other streams never wait for each other.
//! - `cqrs_snapshots`: the latest snapshot per stream with the aggregate's snapshot schema
//!   version; saving an older snapshot never replaces a newer one.
//!
#![doc = concat!("```sql\n", include_str!("../migrations/0001_events.sql"), "```")]
//!
//! # Appending
//!
//! One statement claims the stream row (exact version, "no stream" or "any", as the
//! `WHERE` clause of the row's `UPDATE` or `INSERT ... ON CONFLICT`) and inserts the whole
//! batch with `INSERT ... SELECT ... FROM unnest($ids, $types, ...) WITH ORDINALITY`, numbering
//! versions from the claimed one and returning each event's position; the same statement
//! calls `pg_notify('cqrs_events', <last position>)` (see [`NotifyMode`]). Without inline
//! projections that statement runs on its own, outside a transaction block, which makes it a
//! transaction of its own; with them, the store opens a transaction around it and the
//! projections. The statements are in [`sql`].
//!
//! When the statement claims nothing, a second look in the same transaction says why:
//! another version ([`StoreError::Conflict`](cqrs_core::StoreError::Conflict) with the
//! actual version), an event id already stored
//! ([`StoreError::DuplicateEventId`](cqrs_core::StoreError::DuplicateEventId)), or the
//! per-stream order rule below. A concurrent insert of the same event id is caught by the
//! unique index (SQLSTATE `23505` on `cqrs_events_event_id_key`), and a version the
//! streams table does not know by `cqrs_events_stream_id_stream_version_key`
//! ([`PostgresStoreError::StreamOutOfSync`]: rows were written around the store). Errors are
//! never recognized by their message text, and nothing is decided after a commit.
//!
//! [`PostgresEventStore::append_in`] appends inside a transaction of yours, next to your own
//! writes; the events become visible when you commit.
//!
//! # Unique keys
//!
//! The store reserves the unique keys of aggregates declared with
//! `#[aggregate(..., unique_keys)]` (see "Unique keys across aggregates" on
//! [`cqrs_core::Aggregate`]) in `cqrs_unique_keys` (migration 3): one row per
//! `(namespace, value)` primary key, with the stream that holds it. An
//! [`append_with_keys`](cqrs_core::EventStore::append_with_keys) with key changes opens a
//! transaction, runs the append statement above, then one statement
//! ([`sql::CHANGE_UNIQUE_KEYS`]) that deletes the released keys this stream holds and inserts
//! the claimed ones; a claimed key held by another stream rolls everything back and is
//! [`StoreError::UniqueKeyTaken`](cqrs_core::StoreError::UniqueKeyTaken). A claim of a key
//! that a concurrent transaction is inserting waits on the primary key for that transaction
//! and then sees its outcome, so concurrent claims of one key have exactly one winner. Claims
//! are sent sorted, so two appends claiming the same keys take their locks in the same order.
//! The keyed append costs three more round trips (BEGIN, the key statement, COMMIT) than the
//! plain one; appends without key changes are the single statement, unchanged.
//!
//! # Idempotency keys
//!
//! Commands executed with an idempotency key (see `cqrs_core::idempotency`) are recorded in
//! `cqrs_idempotency` (migration 4): primary key `(command_name, key)`, the body's hash, the
//! stream, the outcome as JSON and `created_at`. An
//! [`append_idempotent`](cqrs_core::EventStore::append_idempotent) opens a transaction, runs
//! the append statement (and the key changes, when there are any), then inserts the record
//! ([`sql::RECORD_IDEMPOTENCY_KEY`], `ON CONFLICT DO NOTHING`). A key already recorded, or
//! being recorded by a concurrent transaction (the insert waits for it), inserts nothing: the
//! transaction is rolled back, events included, and the append is
//! [`StoreError::IdempotencyKeyTaken`](cqrs_core::StoreError::IdempotencyKeyTaken). A
//! rejection or an outcome without events is recorded the same way with no events (the
//! append then only checks the version). The keyed append costs BEGIN, the insert and COMMIT
//! on top of the append statement; commands without a key never pay it. Records stay until
//! [`purge_idempotency_keys`](cqrs_core::EventStore::purge_idempotency_keys) deletes them
//! (an index on `created_at` serves it).
//!
//! # The global order
//!
//! A position is drawn from the identity sequence when the row is inserted, but the row
//! becomes visible when its transaction commits. Transactions commit in any order, so a
//! reader asking for "everything after position 41" can read 43 while 42 is still
//! uncommitted, move its checkpoint to 43 and never see 42. The store prevents that as
//! follows.
//!
//! **Order by `(tx, position)` and read only below the settled horizon.** Every row records
//! the id of its transaction. [`read_all_from`](cqrs_core::EventStore::read_all_from)
//! returns events in `(tx, position)` order and only those with `tx` below the *horizon*: the
//! smallest transaction id that the statement's snapshot sees still running. Every
//! transaction below the horizon has ended, and any transaction that commits later has an id
//! at or above it, so no event can ever appear below the horizon after a reader passed it.
//! The query is a range scan of the `(tx, position)` index, written as a row-value comparison,
//! `(tx, position) > ($tx, $position)`, because the equivalent `tx > $tx OR (tx = $tx AND
//! position > $position)` is not an index range and was measured at ~2.5k events/s against
//! ~520k. A [`GlobalPosition`](cqrs_core::GlobalPosition) stays a plain position; the store
//! looks up the `tx` of the event at that position (a primary-key lookup in the same
//! statement).
//!
//! The horizon is [`sql::READ_HORIZON`]: `pg_snapshot_xmin(pg_current_snapshot())`, except that
//! transactions `pg_stat_get_activity` shows running in *another database* are left out,
//! since they cannot write this database's rows. Without that, any write transaction on the
//! cluster (a migration in another database, another service's batch job) would hold every
//! reader here back.
//!
//! **Per-stream order.** Versions of one stream must also be in `(tx, position)` order. A
//! stream's appends are serialized by its row lock, but a transaction can take its id, wait,
//! and append after a transaction with a larger id appended to the same stream and
//! committed; its events would then sort before the stream's earlier versions. So an append
//! whose transaction id is smaller than the stream's `last_tx` is refused with a
//! [`StoreError::Conflict`](cqrs_core::StoreError::Conflict) (retry in a new transaction).
//! Under contention on one stream, most appends are refused this way: the order in which
//! writers queue for a row lock is not the order in which they got their ids.
//!
//! `append` retries by itself, once, in order: every append statement first passes the
//! stream's advisory lock (a transaction-scoped lock in the store's own key space, shared,
//! taken without waiting), and the retry takes that lock exclusively before anything else
//! ([`sql::LOCK_STREAM`]). Taking a lock gives a transaction no id, and while the retry
//! holds or awaits it, the stream's other appends claim nothing and queue behind it; so the
//! retry gets its id after every earlier writer of the stream ended, and cannot be refused
//! again. Only [`PostgresEventStore::append_in`] callers see the refusal. Locking the row
//! first instead does not settle it: a transaction that waited for a writer that updated
//! the row gets its id while PostgreSQL follows the row to its newest version, before it
//! locks that version. (Measured with 32 writers appending to one stream: a fifth to a
//! third of such retries were refused again.)
//!
//! **The price.** A reader only gets an event once every transaction of the database that
//! was running when it was appended has ended, so *one long-running writing transaction in
//! the database holds every reader back* for as long as it runs (read-only transactions have
//! no id and do not count). Nothing is lost or reordered meanwhile; readers catch up when it
//! ends. Reading in this order costs little: catching up through `read_all_from` ran at
//! 0.93x the rate of a plain `position > $1` scan (see the README's benchmark).
//!
//! **Alternatives considered.**
//! - Serialize position assignment (a shared "last position" row every append updates, or
//!   a table lock): positions then commit in order and a plain scan is safe, but all
//!   writers queue on one row. Measured on the development machines: 1.2–1.7k events/s, flat
//!   from 1 to 32 clients, against 3.9–4.6k (1-event appends) and ~26k (10-event appends)
//!   with per-stream locking.
//! - A high-water mark with gap detection: read up to the first gap in positions, and give
//!   up on a gap after a timeout. Positions leave gaps for good when a transaction rolls back,
//!   so the timeout is needed, and a transaction that commits after it skips its events —
//!   silently, forever. The store's contract forbids that.
//!
//! # Delivery guarantees
//!
//! - **Appends are atomic and happen at most once per event id.** If a commit's outcome is
//!   unknown (the connection dropped), append the same events again: either it succeeds, or
//!   it fails with `DuplicateEventId` because the first attempt committed.
//! - **Inline projections** ([`PostgresEventStore::with_inline_projection`]) run in the
//!   append's transaction: their rows change exactly once per event, or the append fails
//!   and nothing is written.
//! - **Durable subscriptions** ([`subscription`]) resume from a checkpoint. A projection whose
//!   rows live in this database moves rows and checkpoint in one transaction: exactly once.
//!   Anything with effects outside the database gets each event **at least once**, and may
//!   see one again after a crash; use [`RecordedEvent::event_id`](cqrs_core::RecordedEvent)
//!   as the idempotency key. A read model in process memory
//!   ([`ReadModel`](cqrs_core::ReadModel)) starts empty in every process, so it is fed by
//!   [`Subscription::in_memory`](subscription::Subscription::in_memory), which replays from
//!   the first event and stores no checkpoint; a durable subscription refuses to resume one
//!   from a stored checkpoint. See [`subscription`] for which mode suits which read model.
//! - **Notifications** are wake-up calls only; a missed one delays a subscriber until its
//!   next poll and loses nothing.
//!
//! # Query plans
//!
//! The test `load_stream_and_read_all_from_use_their_indexes` prepares both reads exactly as
//! the store sends them and asserts their plans, custom and generic, on 20,000 events in 200
//! interleaved streams. The generic plans:
//!
//! ```text
//! load_stream
//! Sort
//!   Sort Key: stream_version
//!   ->  Bitmap Heap Scan on cqrs_events
//!         Recheck Cond: ((stream_id = $1) AND (stream_version >= $2))
//!         ->  Bitmap Index Scan on cqrs_events_stream_id_stream_version_key
//!               Index Cond: ((stream_id = $1) AND (stream_version >= $2))
//!
//! read_all_from
//! Limit
//!   InitPlan 1 (returns $0)
//!     ->  Index Scan using cqrs_events_pkey on cqrs_events start
//!           Index Cond: ("position" = $1)
//!   InitPlan 3 (returns $2)
//!     ->  Aggregate
//!           InitPlan 2 (returns $1)
//!             ->  Seq Scan on pg_database
//!                   Filter: (datname = current_database())
//!           ->  Hash Anti Join
//!                 Hash Cond: ((running.xid)::xid = backend.backend_xid)
//!                 ->  Function Scan on pg_snapshot_xip running
//!                 ->  Hash
//!                       ->  Function Scan on pg_stat_get_activity backend
//!                             Filter: (datid <> $1)
//!   ->  Index Scan using cqrs_events_tx_position_idx on cqrs_events
//!         Index Cond: ((ROW(tx, "position") > ROW(COALESCE($0, CASE WHEN ($1 = 0)
//!                      THEN '0'::xid8 ELSE NULL::xid8 END), $1))
//!                      AND (tx < COALESCE($2, pg_snapshot_xmax(pg_current_snapshot()))))
//! ```
//!
//! A stream's rows are scattered through the table, so its load is a bitmap scan of the
//! unique index; a stream written in one burst comes back as a plain index scan. Both
//! `InitPlan`s run once per statement: the `tx` of the starting event, and the horizon.
//!
//! # Errors
//!
//! The trait's errors are [`cqrs_core::StoreError`]; what is specific to PostgreSQL arrives
//! as `StoreError::Backend` wrapping a [`PostgresStoreError`], or as `StoreError::Transient`
//! when trying again may succeed: serialization failures, deadlocks, lost connections (see
//! [`PostgresStoreError::transient_reason`]). Migrations fail with [`MigrateError`].
//!
//! # Tuning
//!
//! - sqlx pings every connection it hands out (`PgPoolOptions::test_before_acquire`, on by
//!   default), a round trip before each statement here; turning it off makes a command
//!   noticeably cheaper, at the price of an error (instead of a silent reconnect) the first
//!   time a connection that died while idle is used.
//! - [`NotifyMode::AfterCommit`], the default, lets concurrent appends share disk flushes;
//!   [`NotifyMode::InTransaction`] wakes listeners exactly at commit but serializes the
//!   commits of every notifying transaction in the cluster.
//! - [`PostgresEventStore::with_group_commit`] lets many concurrent appends share one
//!   statement and one commit (see the next section); it pays off from a few dozen
//!   concurrent appends.
//!
//! # Group commit: a design note
//!
//! Each append is its own transaction, so each waits for its own commit record to reach the
//! disk. PostgreSQL already lets concurrent transactions share one flush (a committer that
//! finds the WAL flushed past its record returns without flushing), which is why the
//! notification moved out of the transaction: a notifying commit holds a cluster-wide lock
//! through its flush, so notifying commits could not share flushes.
//!
//! [`GroupCommit`] goes one step further, and is on by default (tuned with
//! [`PostgresEventStore::with_group_commit`], off with
//! [`PostgresEventStore::without_group_commit`]): under load, concurrent commands on
//! different streams share one *statement*, so one transaction, one commit record and one
//! flush.
//!
//! - **One statement, not savepoints.** A batch is [`sql::APPEND_GROUP`]: the commands'
//!   streams, expected versions and sizes as arrays, and their events as arrays tagged with
//!   their command. Each command is claimed as its single append claims it (the version
//!   check, the per-stream order, the stream's advisory gate, in `UPDATE ... FROM` and
//!   `INSERT ... ON CONFLICT` over the commands), and only claimed commands' events are
//!   inserted. A savepoint per command would cost two round trips per command (`SAVEPOINT`,
//!   `RELEASE`) on top of the append, most of what grouping saves.
//! - **Each command its own result and its own conflict.** A command whose claim fails is
//!   appended again on its own, which reports its conflict (or takes the in-order retry of
//!   the per-stream rule); when the statement fails as a whole (an event id already stored,
//!   a deadlock), nothing is written and every command of the batch is appended on its own.
//!   A conflict therefore costs one statement more than without grouping; a command that
//!   claims is done in one shared round trip. Nothing is decided after a commit, and a
//!   batch's events share one transaction id, so the global `(tx, position)` order and the
//!   read horizon hold unchanged.
//! - **No two commands of one stream in flight.** A batch holds one command per stream, and
//!   a stream in a batch under way waits for the next one: the statement numbers versions
//!   per stream from one claim, and two batches of this store never wait for each other's
//!   row locks (which could deadlock). Batches are sorted by stream, so batches of two
//!   processes lock rows in one order where the plan follows it; a deadlock they still meet
//!   fails the statement, and its commands are appended on their own.
//! - **Who writes.** No background writer sits idle: the append that finds a writer slot free
//!   (at most [`GroupCommit::writers`] batches in flight) spawns the batch's task, and that
//!   task runs the batches that formed meanwhile, handing its connection from batch to batch
//!   (no pool check per batch). A task, not the caller, runs the batch, so a caller that
//!   stops waiting (a timeout) harms no other command of its batch.
//! - **Only under load.** An append joins a batch only while at least
//!   [`GroupCommit::min_concurrency`] appends of the store are under way (default 16);
//!   otherwise it runs alone at once, exactly as without group commit. Measured
//!   (`BENCHMARKS.md`, part g), batches lost to one transaction per command at 8 concurrent
//!   commands when every contended append was grouped (0.57–0.85x: PostgreSQL already shares
//!   flushes among 8 concurrent commits, and a batch of two pays for a larger statement and a
//!   task hop) and won at 32 (2.2–2.6x with 4 batches in flight, 1.5–1.9x with 2).
//! - **The price.** A lost connection during a batch leaves all its commands in doubt, where
//!   without grouping only one would be. Appending the same events again settles it (a
//!   committed command reports `DuplicateEventId`); a command executed with an idempotency
//!   key can be asked with `CommandBus::outcome_of`. Appends with idempotency keys, with
//!   unique keys, with inline projections, and `append_in` are not grouped: they need a
//!   transaction block of their own (or the caller's).
//!
//! **Why it is the default.** Below [`GroupCommit::min_concurrency`] concurrent appends it
//! is not in the path at all, so one client, or a handful, runs the very code it ran without
//! it; above, it measured about twice as fast (`BENCHMARKS.md`, parts a, d and g), and the
//! figures users compare are those of the default settings. What it changes for a user is
//! the reach of a lost connection: under load, the commands of one batch are in doubt
//! together, each told so with the same `ConnectionLost` that a single append in doubt
//! returns, and each settled the same way. A deployment that would rather have one command
//! in doubt at a time, or whose many processes write the same streams at high concurrency
//! (their batches can deadlock; PostgreSQL breaks it after `deadlock_timeout` and the
//! commands then run alone, correct but late), turns it off with
//! [`PostgresEventStore::without_group_commit`].

mod error;
mod migrate;
pub mod saga;
pub mod sql;
mod store;
pub mod subscription;

pub use error::{MigrateError, PostgresStoreError};
pub use migrate::MIGRATIONS;
pub use store::{
    GroupCommit, InlineProjection, MAX_STREAM_ID_BYTES, NotifyMode, PostgresEventStore,
};

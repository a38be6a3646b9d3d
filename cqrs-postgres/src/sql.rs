//! The statements the store runs, verbatim: for review, for `EXPLAIN`, and for code that
//! reads the tables itself.
//!
//! All names are unqualified and resolve through the connection's `search_path`.

/// The columns of a [`RecordedEvent`](cqrs_core::RecordedEvent), in the order the store's
/// row decoder expects them.
macro_rules! event_columns {
    () => {
        "position, stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at"
    };
}

/// The transaction-id horizon below which every event is settled; see [`READ_HORIZON`].
macro_rules! read_horizon {
    () => {
        "CASE WHEN pg_snapshot_xmin(pg_current_snapshot()) = pg_snapshot_xmax(pg_current_snapshot())
     THEN pg_snapshot_xmax(pg_current_snapshot())
     ELSE coalesce(
    (SELECT min(running.xid)
       FROM pg_snapshot_xip(pg_current_snapshot()) AS running(xid)
      WHERE NOT EXISTS (
            SELECT 1
              FROM pg_stat_get_activity(NULL) AS backend
             WHERE backend.backend_xid = running.xid::xid
               AND backend.datid <> (SELECT oid FROM pg_database
                                      WHERE datname = current_database()))),
    pg_snapshot_xmax(pg_current_snapshot())) END"
    };
}

/// A scalar `xid8` expression: the horizon below which every event of this database is
/// settled, evaluated against the statement's own snapshot.
///
/// It is the smallest id among the transactions the snapshot sees running, leaving out those
/// that `pg_stat_get_activity` shows running in *another* database (they cannot write here);
/// when none is left, the snapshot's `xmax` (the first id not yet assigned). A transaction
/// below the horizon has finished, and any transaction that commits events later has an id
/// at or above it, so no event can ever appear below it that a reader has not seen.
///
/// When the snapshot sees no transaction running at all (`xmin = xmax`), the horizon is
/// `xmax` at once, without reading the backends' activity (a few tenths of a millisecond per
/// read, most of a quiet catch-up page's server time).
///
/// It equals `pg_snapshot_xmin(pg_current_snapshot())` whenever the oldest running
/// transaction is in this database; the filter only keeps a transaction in another database
/// of the same cluster from holding this one's readers back. A running transaction that
/// cannot be placed (a prepared transaction, a backend whose status is not visible) is kept,
/// so the horizon is only ever lower than necessary, never higher.
pub const READ_HORIZON: &str = read_horizon!();

/// `read_all_from($1 = after)`, followed by the page size written as a number: the next
/// settled events after the event at position `$1` (or from the start when `$1` is 0) in
/// `(tx, position)` order.
///
/// The page size is a literal, not a parameter: with `LIMIT $2` PostgreSQL's plan cache
/// cannot cost a generic plan and plans every page anew (0.2–0.5 ms a page, measured, for a
/// statement with this horizon), while with a literal it settles on one generic plan after
/// five executions. A caller uses one or a few page sizes, so the prepared statements stay
/// few.
///
/// The row-value comparison is a range scan of `cqrs_events_tx_position_idx`
/// (`Index Cond: ((ROW(tx, position) > ROW(...)) AND (tx < ...))`). When no event is stored
/// at `$1` the starting point is NULL and no row comes back.
pub const READ_ALL_FROM: &str = concat!(
    "SELECT ",
    event_columns!(),
    "
FROM cqrs_events
WHERE (tx, position) > (
        coalesce((SELECT start.tx FROM cqrs_events AS start WHERE start.position = $1),
                 CASE WHEN $1 = 0 THEN '0'::xid8 END),
        $1)
  AND tx < ",
    read_horizon!(),
    "
ORDER BY tx, position
LIMIT "
);

/// Whether an event is stored at position `$1`.
pub const POSITION_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM cqrs_events WHERE position = $1)";

/// `load_stream($1 = stream, $2 = from_version)`: a range scan of the
/// `cqrs_events_stream_id_stream_version_key` unique index.
pub const LOAD_STREAM: &str = concat!(
    "SELECT ",
    event_columns!(),
    "
FROM cqrs_events
WHERE stream_id = $1 AND stream_version >= $2
ORDER BY stream_version"
);

/// `stream_version($1 = stream)`: the stream's row in `cqrs_streams`.
pub const STREAM_VERSION: &str = "SELECT version FROM cqrs_streams WHERE stream_id = $1";

/// `load_snapshot($1 = stream)`.
pub const LOAD_SNAPSHOT: &str =
    "SELECT stream_version, schema_version, state FROM cqrs_snapshots WHERE stream_id = $1";

/// `save_snapshot($1 = stream, $2 = version, $3 = schema version, $4 = state)`: replaces the
/// stored snapshot unless that one covers a later version.
pub const SAVE_SNAPSHOT: &str = "\
INSERT INTO cqrs_snapshots (stream_id, stream_version, schema_version, state)
VALUES ($1, $2, $3, $4)
ON CONFLICT (stream_id) DO UPDATE
   SET stream_version = excluded.stream_version,
       schema_version = excluded.schema_version,
       state = excluded.state,
       taken_at = now()
 WHERE cqrs_snapshots.stream_version <= excluded.stream_version";

/// `delete_snapshot($1 = stream)`.
pub const DELETE_SNAPSHOT: &str = "DELETE FROM cqrs_snapshots WHERE stream_id = $1";

/// The shared tail of the append statements: insert the batch with ONE statement after the
/// stream row was claimed (`stream` CTE), numbering versions from the claimed version.
///
/// `$1` stream, `$2` number of events, `$3..$7` the columns as arrays; unnest keeps them
/// aligned and `WITH ORDINALITY` numbers them, so positions are drawn in batch order. (`$8`
/// and `$9` belong to the claim: see `stream_gate` and [`APPEND_EXACT`].)
///
/// An event id that is already stored is found by the unique index `cqrs_events_event_id_key`
/// as the row goes in (SQLSTATE 23505: the statement fails and writes nothing), and the store
/// then asks which id it was. The statements hold no `NOT EXISTS (.. event_id = ANY($3))`
/// pre-check on purpose: a prepared statement keeps the generic plan it got while the table
/// was small, and for that sub-query the plan can be a sequential scan, which then reads the
/// whole events table on every append until the next `ANALYZE` (measured: 0.8 ms appends
/// became 26 ms after 300,000 rows arrived).
macro_rules! append_tail {
    ($notify:expr, $select:expr) => {
        concat!(
            ",
inserted AS (
    INSERT INTO cqrs_events
           (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata)
    SELECT $1, stream.version - $2 + batch.ord, batch.event_id, batch.event_type,
           batch.schema_version, batch.payload, batch.metadata
      FROM stream,
           unnest($3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
               WITH ORDINALITY AS batch(event_id, event_type, schema_version, payload, metadata, ord)
     ORDER BY batch.ord
    RETURNING position, stream_version, recorded_at
)",
            $notify,
            "
SELECT inserted.position, inserted.stream_version, inserted.recorded_at
  FROM inserted",
            $select
        )
    };
}

/// Wakes `LISTEN cqrs_events` sessions at commit with the batch's last position.
macro_rules! notify {
    () => {
        ",
notified AS (
    SELECT pg_notify('cqrs_events', max(position)::text) FROM inserted HAVING count(*) > 0
)"
    };
}

/// The advisory lock that orders the appends to stream `$1`: a pair of `int4` keys, the
/// first `0x63717273` (`cqrs` in ASCII, the store's own namespace), the second one of 256
/// buckets that the stream id hashes to. Streams share buckets so that a transaction that
/// appends to many streams holds at most 256 of these locks, and PostgreSQL's lock table
/// (sized by `max_locks_per_transaction`) never runs out; a bucket shared with a contended
/// stream only sends an append down the slower way of [`LOCK_STREAM`] more often.
macro_rules! stream_lock_key {
    () => {
        "1668379251, hashtext($1) & 255"
    };
}

/// Every append passes through the stream's advisory lock before it touches the stream
/// row: `$8` says its transaction holds the lock exclusively already ([`LOCK_STREAM`]);
/// otherwise it takes the lock shared, without waiting, and holds it until its transaction
/// ends. It claims nothing when another transaction holds or awaits the lock exclusively.
/// (The holder of the exclusive lock cannot rely on taking it shared as well: PostgreSQL
/// refuses a lock that conflicts with a waiting request, even to a holder, when asked not
/// to wait.)
macro_rules! stream_gate {
    () => {
        concat!(
            "($8 OR pg_try_advisory_xact_lock_shared(",
            stream_lock_key!(),
            "))"
        )
    };
}

/// Claims the stream row for an exact expected version `$9` (> 0). Zero rows: the version
/// differs, the stream does not exist, the stream's last writer has a
/// later transaction id than this one (see the crate docs: per-stream order), or the
/// stream's appends are being ordered by [`LOCK_STREAM`].
macro_rules! claim_exact {
    () => {
        concat!(
            "WITH stream AS (
    UPDATE cqrs_streams
       SET version = version + $2, last_tx = pg_current_xact_id()
     WHERE stream_id = $1 AND version = $9 AND last_tx <= pg_current_xact_id()
       AND ",
            stream_gate!(),
            "
    RETURNING version
)"
        )
    };
}

/// Claims a stream that must not exist yet.
macro_rules! claim_new {
    () => {
        concat!(
            "WITH stream AS (
    INSERT INTO cqrs_streams (stream_id, version, last_tx)
    SELECT $1, $2, pg_current_xact_id()
     WHERE ",
            stream_gate!(),
            "
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING version
)"
        )
    };
}

/// Claims a stream whatever its version.
macro_rules! claim_any {
    () => {
        concat!(
            "WITH stream AS (
    INSERT INTO cqrs_streams (stream_id, version, last_tx)
    SELECT $1, $2, pg_current_xact_id()
     WHERE ",
            stream_gate!(),
            "
    ON CONFLICT (stream_id) DO UPDATE
       SET version = cqrs_streams.version + excluded.version, last_tx = excluded.last_tx
     WHERE cqrs_streams.last_tx <= excluded.last_tx
    RETURNING version
)"
        )
    };
}

/// Append with `ExpectedVersion::Exact(v)`, `v > 0` (`$9 = v`), notifying listeners.
pub const APPEND_EXACT: &str = concat!(claim_exact!(), append_tail!(notify!(), ", notified"));
/// Append to a stream that must not exist, notifying listeners.
pub const APPEND_NEW: &str = concat!(claim_new!(), append_tail!(notify!(), ", notified"));
/// Append whatever the stream's version, notifying listeners.
pub const APPEND_ANY: &str = concat!(claim_any!(), append_tail!(notify!(), ", notified"));
/// [`APPEND_EXACT`] without the notification.
pub const APPEND_EXACT_QUIET: &str = concat!(claim_exact!(), append_tail!("", ""));
/// [`APPEND_NEW`] without the notification.
pub const APPEND_NEW_QUIET: &str = concat!(claim_new!(), append_tail!("", ""));
/// [`APPEND_ANY`] without the notification.
pub const APPEND_ANY_QUIET: &str = concat!(claim_any!(), append_tail!("", ""));

/// The group commit's statement; see [`APPEND_GROUP`].
macro_rules! append_group {
    ($notify:expr, $select:expr) => {
        concat!(
            "WITH command AS (
    SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])
                  WITH ORDINALITY AS command(stream_id, expected, size, ord)
),
exact AS (
    UPDATE cqrs_streams
       SET version = cqrs_streams.version + command.size, last_tx = pg_current_xact_id()
      FROM command
     WHERE command.expected > 0
       AND cqrs_streams.stream_id = command.stream_id
       AND cqrs_streams.version = command.expected
       AND cqrs_streams.last_tx <= pg_current_xact_id()
       AND pg_try_advisory_xact_lock_shared(1668379251, hashtext(command.stream_id) & 255)
    RETURNING cqrs_streams.stream_id, cqrs_streams.version
),
created AS (
    INSERT INTO cqrs_streams (stream_id, version, last_tx)
    SELECT command.stream_id, command.size, pg_current_xact_id()
      FROM command
     WHERE command.expected = 0
       AND pg_try_advisory_xact_lock_shared(1668379251, hashtext(command.stream_id) & 255)
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id, version
),
any_version AS (
    INSERT INTO cqrs_streams (stream_id, version, last_tx)
    SELECT command.stream_id, command.size, pg_current_xact_id()
      FROM command
     WHERE command.expected < 0
       AND pg_try_advisory_xact_lock_shared(1668379251, hashtext(command.stream_id) & 255)
    ON CONFLICT (stream_id) DO UPDATE
       SET version = cqrs_streams.version + excluded.version, last_tx = excluded.last_tx
     WHERE cqrs_streams.last_tx <= excluded.last_tx
    RETURNING stream_id, version
),
claimed AS (
    SELECT command.ord, command.stream_id, stream.version - command.size AS base
      FROM (SELECT * FROM exact UNION ALL SELECT * FROM created UNION ALL SELECT * FROM any_version)
               AS stream
      JOIN command USING (stream_id)
),
inserted AS (
    INSERT INTO cqrs_events
           (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata)
    SELECT claimed.stream_id, claimed.base + batch.k, batch.event_id, batch.event_type,
           batch.schema_version, batch.payload, batch.metadata
      FROM unnest($4::int8[], $5::int8[], $6::uuid[], $7::text[], $8::int4[], $9::jsonb[],
                  $10::jsonb[])
               WITH ORDINALITY
               AS batch(command, k, event_id, event_type, schema_version, payload, metadata, ord)
      JOIN claimed ON claimed.ord = batch.command
     ORDER BY batch.ord
    RETURNING position, stream_id, stream_version, recorded_at
)",
            $notify,
            "
SELECT inserted.position, inserted.stream_id, inserted.stream_version, inserted.recorded_at
  FROM inserted",
            $select
        )
    };
}

/// The group commit's statement: the appends of many commands, each on a stream of its own,
/// claimed and inserted by one statement, so one transaction and one commit record.
///
/// `$1` the streams (distinct), `$2` each command's expected version (`> 0` exact, `0` no
/// stream, `-1` any), `$3` each command's number of events; then one element per event:
/// `$4` the 1-based index of its command, `$5` its 1-based place in its command's batch, and
/// `$6..$10` its columns, as in the single append. Each command is claimed as its single
/// append claims its stream (the version check, the per-stream order, the stream's advisory
/// gate); a command that claims nothing inserts nothing and the statement goes on with the
/// others. The rows returned are the inserted events; a command without rows claimed
/// nothing. An error (an event id already stored, a deadlock) fails the whole statement, and
/// nothing is written.
///
/// The plan: the commands (a materialized CTE, estimated at one row per claim) drive index
/// lookups of `cqrs_streams_pkey`, whatever the tables' sizes, so the prepared statement's
/// generic plan is the same on an empty store as on a large one (the test
/// `the_group_statement_plans_index_lookups` asserts it).
///
/// This one notifies listeners, as [`APPEND_EXACT`] does.
pub const APPEND_GROUP: &str = append_group!(notify!(), ", notified");
/// [`APPEND_GROUP`] without the notification.
pub const APPEND_GROUP_QUIET: &str = append_group!("", "");

/// Takes the advisory lock of stream `$1` exclusively, as the first statement of a
/// transaction that appends to the stream next: it waits for every transaction that passed
/// the stream's gate (see the append statements) to end, and while it waits or holds the
/// lock, every other append to the stream claims nothing and comes here to queue.
///
/// This is how an append is put in order after the per-stream order refused it. A
/// transaction gets its id when it first writes; an append statement writes before it queues
/// for the stream's row lock, so a writer that got its id later can take the row first and
/// commit a larger `last_tx`. (Taking the row lock first with a locking read does not
/// settle it: when the read waits for a writer that updated the row, PostgreSQL assigns the
/// waiting transaction's id while following the row to its newest version, before locking
/// that version.) An advisory lock gives the transaction no id, and no other writer of the
/// stream can run until it commits: the append that follows gets its id after every earlier
/// writer of the stream ended, so its transaction id is larger than the stream's `last_tx`.
pub const LOCK_STREAM: &str = concat!("SELECT pg_advisory_xact_lock(", stream_lock_key!(), ")");

/// After an append claimed nothing, in the same transaction: the stream's version (`$1`),
/// which ids of the batch (`$2`) are stored, and whether the transaction reads from one
/// snapshot for its whole length (`REPEATABLE READ` or `SERIALIZABLE`), so that the version
/// may be older than the stream's.
pub const DIAGNOSE_APPEND: &str = "\
SELECT (SELECT version FROM cqrs_streams WHERE stream_id = $1),
       ARRAY(SELECT event_id FROM cqrs_events WHERE event_id = ANY($2)),
       current_setting('transaction_isolation') <> 'read committed'";

/// The ids of a batch (`$1`) that are stored.
pub const STORED_IDS: &str = "SELECT event_id FROM cqrs_events WHERE event_id = ANY($1)";

/// Wakes `LISTEN cqrs_events` sessions with a position (`$1`, as text), outside an append.
///
/// A transaction that notifies gets a transaction id and writes a commit record; committed
/// synchronously, each notification would cost a disk flush of its own next to the appends'
/// (measured: a sequential writer at a third of its rate). The statement is its own
/// transaction, and `set_config(.., true)` turns synchronous commit off for that transaction
/// only: the notification is delivered at commit as always, and losing it in a crash costs
/// listeners one poll interval, nothing more.
pub const NOTIFY: &str =
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify('cqrs_events', $1)";

/// The key changes of an append, in its transaction: `$1` the stream, `$2`/`$3` namespaces
/// and values released, `$4`/`$5` namespaces and values claimed (each sorted, no key in both).
///
/// A release deletes the key only where this stream holds it. A claim inserts the key, or,
/// when a row exists, rewrites it unchanged: that takes the row's lock (after waiting for a
/// concurrent holder's transaction to end) and returns the committed holder. The rows
/// returned are the claimed keys held by *another* stream: none means every claim holds.
pub const CHANGE_UNIQUE_KEYS: &str = "\
WITH released AS (
    DELETE FROM cqrs_unique_keys AS held
     USING unnest($2::text[], $3::text[]) AS released(namespace, value)
     WHERE held.namespace = released.namespace
       AND held.value = released.value
       AND held.stream_id = $1
),
claimed AS (
    INSERT INTO cqrs_unique_keys (namespace, value, stream_id)
    SELECT claimed.namespace, claimed.value, $1
      FROM unnest($4::text[], $5::text[]) AS claimed(namespace, value)
    ON CONFLICT (namespace, value) DO UPDATE SET stream_id = cqrs_unique_keys.stream_id
    RETURNING namespace, value, stream_id
)
SELECT namespace, value, stream_id FROM claimed WHERE stream_id <> $1";

/// The stream holding the key `($1 = namespace, $2 = value)`.
pub const UNIQUE_KEY_OWNER: &str =
    "SELECT stream_id FROM cqrs_unique_keys WHERE namespace = $1 AND value = $2";

/// Records an idempotency key in the append's transaction: `$1` command name, `$2` key,
/// `$3` body hash, `$4` stream, `$5` the outcome (JSON). A row for the key already there
/// (committed, or inserted by a concurrent transaction, which this one waits for) inserts
/// nothing and returns no row: the key is taken.
pub const RECORD_IDEMPOTENCY_KEY: &str = "\
INSERT INTO cqrs_idempotency (command_name, key, body_hash, stream_id, result)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (command_name, key) DO NOTHING
RETURNING created_at";

/// The record of an idempotency key (`$1` command name, `$2` key).
pub const IDEMPOTENCY_RECORD: &str = "\
SELECT body_hash, stream_id, result::text, created_at
  FROM cqrs_idempotency
 WHERE command_name = $1 AND key = $2";

/// Deletes the idempotency records created before `$1`.
pub const PURGE_IDEMPOTENCY_KEYS: &str = "DELETE FROM cqrs_idempotency WHERE created_at < $1";

// ---------------------------------------------------------------- sagas (`crate::saga`)

/// Takes the leadership of saga `$1` for the session: one runner per saga name across
/// processes. Two-key form: `'cqrs'` as the class, the name's hash as the object.
pub const SAGA_TRY_LEAD: &str = "SELECT pg_try_advisory_lock(1668444787, hashtext($1))";

/// Whether the leader's session is still there (run on the leader's own connection).
pub const SAGA_STILL_LEADING: &str = "SELECT 1";

/// An instance's state and status, locked for the rest of the transaction.
pub const SAGA_INSTANCE_FOR_UPDATE: &str = "\
SELECT state::text, status FROM cqrs_saga_instances WHERE saga = $1 AND key = $2 FOR UPDATE";

/// An instance's state, status and error, unlocked.
pub const SAGA_INSTANCE: &str = "\
SELECT state::text, status FROM cqrs_saga_instances WHERE saga = $1 AND key = $2";

/// Writes an instance: `$3` state (JSON text or NULL), `$4` status, `$5` error, `$6` parked at.
pub const SAGA_SAVE_INSTANCE: &str = "\
INSERT INTO cqrs_saga_instances (saga, key, state, status, error, parked_at, updated_at)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, now())
ON CONFLICT (saga, key) DO UPDATE
SET state = EXCLUDED.state, status = EXCLUDED.status, error = EXCLUDED.error,
    parked_at = EXCLUDED.parked_at, updated_at = now()";

/// Forgets an instance that never started (released from parking without a state).
pub const SAGA_DELETE_INSTANCE: &str =
    "DELETE FROM cqrs_saga_instances WHERE saga = $1 AND key = $2";

/// The commands due to be sent, oldest first; none of an instance whose earlier command is
/// put off (after a passing failure), so that an instance's commands never overtake.
pub const SAGA_OUTBOX_DUE: &str = "\
SELECT o.id, o.command::text, o.attempts FROM cqrs_saga_outbox o
WHERE o.saga = $1 AND o.not_before <= $2
  AND NOT EXISTS (SELECT 1 FROM cqrs_saga_outbox p
                   WHERE p.saga = o.saga AND p.instance = o.instance AND p.id < o.id
                     AND p.not_before > $2)
ORDER BY o.id LIMIT $3";

/// Removes a sent command; `rows_affected` 0 means another runner recorded it first.
pub const SAGA_OUTBOX_DELETE: &str = "DELETE FROM cqrs_saga_outbox WHERE id = $1";

/// Puts a command off after a passing failure.
pub const SAGA_OUTBOX_RETRY: &str = "\
UPDATE cqrs_saga_outbox SET attempts = attempts + 1, last_error = $2, not_before = $3 WHERE id = $1";

/// How many commands of a saga wait to be sent.
pub const SAGA_OUTBOX_LEN: &str = "SELECT count(*) FROM cqrs_saga_outbox WHERE saga = $1";

/// Schedules (or replaces) an instance's deadline of one name.
pub const SAGA_DEADLINE_SCHEDULE: &str = "\
INSERT INTO cqrs_saga_deadlines (saga, key, name, id, payload, due_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (saga, key, name) DO UPDATE
SET id = EXCLUDED.id, payload = EXCLUDED.payload, due_at = EXCLUDED.due_at";

/// Cancels some of an instance's deadlines by name.
pub const SAGA_DEADLINE_CANCEL: &str =
    "DELETE FROM cqrs_saga_deadlines WHERE saga = $1 AND key = $2 AND name = ANY($3)";

/// Cancels every deadline of an instance (it ended).
pub const SAGA_DEADLINE_CANCEL_ALL: &str =
    "DELETE FROM cqrs_saga_deadlines WHERE saga = $1 AND key = $2";

/// The deadlines due, earliest first.
pub const SAGA_DEADLINES_DUE: &str = "\
SELECT key, name, id, payload::text, due_at FROM cqrs_saga_deadlines
WHERE saga = $1 AND due_at <= $2 ORDER BY due_at, key LIMIT $3";

/// Takes a due deadline; `rows_affected` 0 means it was cancelled, replaced or fired already.
pub const SAGA_DEADLINE_TAKE: &str =
    "DELETE FROM cqrs_saga_deadlines WHERE saga = $1 AND key = $2 AND name = $3 AND id = $4";

/// Every pending deadline of a saga: key, name, due at.
pub const SAGA_DEADLINES: &str =
    "SELECT key, name, due_at FROM cqrs_saga_deadlines WHERE saga = $1 ORDER BY due_at, key";

/// When the runner must look again without being woken: the next deadline or delayed send
/// (commands never put off have `not_before = '-infinity'`, and are sent in the round).
pub const SAGA_NEXT_WAKE: &str = "\
SELECT least((SELECT min(due_at) FROM cqrs_saga_deadlines WHERE saga = $1),
             (SELECT min(not_before) FROM cqrs_saga_outbox
               WHERE saga = $1 AND not_before > '-infinity'))";

/// Queues a message behind a parked instance.
pub const SAGA_INBOX_PUSH: &str =
    "INSERT INTO cqrs_saga_inbox (saga, key, message) VALUES ($1, $2, $3::jsonb)";

/// Takes every message waiting behind an instance.
pub const SAGA_INBOX_TAKE: &str =
    "DELETE FROM cqrs_saga_inbox WHERE saga = $1 AND key = $2 RETURNING id, message::text";

/// The parked instances of a saga, with their error, how many messages wait, and the first.
pub const SAGA_PARKED: &str = "\
SELECT i.key, coalesce(i.error, ''), coalesce(i.parked_at, now()),
       (SELECT count(*) FROM cqrs_saga_inbox b WHERE b.saga = i.saga AND b.key = i.key),
       (SELECT b.message::text FROM cqrs_saga_inbox b
         WHERE b.saga = i.saga AND b.key = i.key ORDER BY b.id LIMIT 1)
FROM cqrs_saga_instances i
WHERE i.saga = $1 AND i.status = 'parked'
ORDER BY i.key";

/// Whether saga `$1` (checkpoint `$2`) is idle at `$3`: no command waiting, no deadline due,
/// its checkpoint at the last visible event. One statement, so one snapshot: a command's
/// events commit before its outbox row is deleted, so a snapshot without the row shows them.
pub const SAGA_IDLE: &str = "\
SELECT NOT EXISTS (SELECT 1 FROM cqrs_saga_outbox WHERE saga = $1)
   AND NOT EXISTS (SELECT 1 FROM cqrs_saga_deadlines WHERE saga = $1 AND due_at <= $3)
   AND coalesce(
         (SELECT (c.tx, c.position) >= (e.tx, e.position)
            FROM cqrs_checkpoints c,
                 (SELECT tx, position FROM cqrs_events ORDER BY tx DESC, position DESC LIMIT 1) e
           WHERE c.name = $2),
         NOT EXISTS (SELECT 1 FROM cqrs_events))";

/// The saga runner's own session commits without waiting for the WAL flush; see
/// [`crate::saga`], "Commits".
pub const SAGA_ASYNC_COMMIT: &str = "SET synchronous_commit = off";

/// Claims an event for a saga's transaction: moves checkpoint `$1` to `($2, $3)` if it is
/// still before it, locking the row until the transaction ends. No row: another runner is
/// already past the event.
pub const SAGA_CLAIM_EVENT: &str = "\
UPDATE cqrs_checkpoints SET tx = $2::text::xid8, position = $3, updated_at = now()
WHERE name = $1 AND (tx, position) < ($2::text::xid8, $3)";

/// Removes sent commands.
pub const SAGA_OUTBOX_DELETE_MANY: &str = "DELETE FROM cqrs_saga_outbox WHERE id = ANY($1)";

/// [`SAGA_SAVE_INSTANCE`] of an active or ended instance and the insert of the commands it
/// sends into the outbox, in order, in one statement: `$3` state, `$4` status, `$5` the
/// commands as JSON texts.
pub const SAGA_SAVE_AND_SEND: &str = "\
WITH saved AS (
    INSERT INTO cqrs_saga_instances (saga, key, state, status, error, parked_at, updated_at)
    VALUES ($1, $2, $3::jsonb, $4, NULL, NULL, now())
    ON CONFLICT (saga, key) DO UPDATE
    SET state = EXCLUDED.state, status = EXCLUDED.status, error = NULL, parked_at = NULL,
        updated_at = now()
)
INSERT INTO cqrs_saga_outbox (saga, instance, command)
SELECT $1, $2, c.command::jsonb FROM unnest($5::text[]) WITH ORDINALITY AS c(command, n) ORDER BY c.n";

// ---------------------------------------------------------------- projections (`crate::subscription`)

/// Takes the lease of subscription `$1` for the session: one active worker per subscription
/// name across processes. Two-key form: `'cqrp'` as the class (sagas use `'cqrs'`), the
/// name's hash as the object.
pub const PROJECTION_TRY_LEAD: &str = "SELECT pg_try_advisory_lock(1668444784, hashtext($1))";

/// Gives the lease of subscription `$1` up (on the session holding it).
pub const PROJECTION_UNLEAD: &str = "SELECT pg_advisory_unlock(1668444784, hashtext($1))";

/// The same lock for the rest of a transaction: `false` while a worker of `$1` runs.
pub const PROJECTION_TRY_LOCK_IN_TX: &str =
    "SELECT pg_try_advisory_xact_lock(1668444784, hashtext($1))";

/// Whether a session holds the lease of subscription `$1` (in this database).
pub const PROJECTION_HAS_WORKER: &str = "\
SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = 1668444784::bigint::oid
       AND objid = (hashtext($1)::bigint & 4294967295)::oid
       AND objsubid = 2)";

/// The parked streams of subscription `$1`.
pub const PARKED_STREAMS: &str =
    "SELECT stream_id FROM cqrs_parked_streams WHERE subscription = $1";

/// Parks stream `$2` of subscription `$1` on the failed event at position `$4`, error `$3`.
pub const PARK_STREAM: &str = "\
INSERT INTO cqrs_parked_streams (subscription, stream_id, error, failed_position)
VALUES ($1, $2, $3, $4)
ON CONFLICT (subscription, stream_id) DO NOTHING";

/// Holds an event of a parked stream: `$1` subscription, `$2` stream, `$3` tx, `$4` position,
/// `$5` event id, `$6` type.
pub const HOLD_EVENT: &str = "\
INSERT INTO cqrs_parked_events (subscription, stream_id, tx, position, event_id, event_type)
VALUES ($1, $2, $3::text::xid8, $4, $5, $6)
ON CONFLICT DO NOTHING";

/// Records a skipped event: `$1` subscription, `$2` tx, `$3` position, `$4` stream, `$5` event
/// id, `$6` type, `$7` error, `$8` who skipped it.
pub const RECORD_SKIP: &str = "\
INSERT INTO cqrs_skipped_events
    (subscription, tx, position, stream_id, event_id, event_type, error, skipped_by)
VALUES ($1, $2::text::xid8, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING";

/// The operators' requests on parked streams of subscription `$1`.
pub const PARKED_REQUESTS: &str = "\
SELECT stream_id, request, error FROM cqrs_parked_streams
 WHERE subscription = $1 AND request IS NOT NULL
 ORDER BY parked_at";

/// A parked stream's row, locked: `$1` subscription, `$2` stream.
pub const PARKED_STREAM_FOR_UPDATE: &str = "\
SELECT request, error FROM cqrs_parked_streams
 WHERE subscription = $1 AND stream_id = $2 FOR UPDATE";

/// The events held behind parked stream `$2` of subscription `$1`, read back from the store
/// in `(tx, position)` order, with the columns of the catch-up read.
pub const HELD_EVENTS: &str = "\
SELECT e.tx::text AS tx, e.position, e.event_id, e.event_type,
       e.schema_version::bigint AS schema_version, e.stream_id,
       e.stream_version::bigint AS stream_version, e.payload, e.metadata, e.recorded_at
  FROM cqrs_parked_events p
  JOIN cqrs_events e ON e.position = p.position
 WHERE p.subscription = $1 AND p.stream_id = $2
 ORDER BY p.tx, p.position";

/// Lets go of held events `$3` (positions) of stream `$2`, subscription `$1`.
pub const RELEASE_HELD: &str = "\
DELETE FROM cqrs_parked_events
 WHERE subscription = $1 AND stream_id = $2 AND position = ANY($3)";

/// Unparks stream `$2` of subscription `$1`.
pub const UNPARK_STREAM: &str =
    "DELETE FROM cqrs_parked_streams WHERE subscription = $1 AND stream_id = $2";

/// A retry that failed again: the stream stays parked on the event at `$4` with error `$3`.
pub const REPARK_STREAM: &str = "\
UPDATE cqrs_parked_streams
   SET error = $3, failed_position = $4, request = NULL, parked_at = now()
 WHERE subscription = $1 AND stream_id = $2";

/// An operator's request on parked stream `$2` of subscription `$1`: `$3` 'retry' or 'skip'.
pub const REQUEST_ON_PARKED: &str = "\
UPDATE cqrs_parked_streams SET request = $3 WHERE subscription = $1 AND stream_id = $2";

/// The parked streams of subscription `$1` for an operator: stream, error, failed event
/// (position, id, type), parked at, held events, pending request.
pub const PARKED_LIST: &str = "\
SELECT s.stream_id, s.error, s.failed_position, e.event_id, e.event_type, s.parked_at,
       (SELECT count(*) FROM cqrs_parked_events p
         WHERE p.subscription = s.subscription AND p.stream_id = s.stream_id) AS held,
       s.request
  FROM cqrs_parked_streams s
  LEFT JOIN cqrs_events e ON e.position = s.failed_position
 WHERE s.subscription = $1
 ORDER BY s.parked_at, s.stream_id";

/// The events subscription `$1` skipped, in order.
pub const SKIPPED_LIST: &str = "\
SELECT position, stream_id, event_id, event_type, error, skipped_by, skipped_at
  FROM cqrs_skipped_events WHERE subscription = $1 ORDER BY tx, position";

/// A subscription's status in one snapshot: `$1` name. Whether it has a stored checkpoint,
/// the checkpoint (the start when none), the head, the events after the checkpoint and the
/// age in seconds of the oldest of them, the parked streams, and whether a worker holds the
/// lease ([`PROJECTION_HAS_WORKER`]).
pub const PROJECTION_STATUS: &str = "\
WITH stored AS (SELECT tx, position FROM cqrs_checkpoints WHERE name = $1),
     c AS (SELECT coalesce((SELECT tx FROM stored), '0'::xid8) AS tx,
                  coalesce((SELECT position FROM stored), 0) AS position),
     h AS (SELECT tx, position FROM cqrs_events ORDER BY tx DESC, position DESC LIMIT 1)
SELECT EXISTS (SELECT 1 FROM stored) AS known,
       (SELECT tx::text FROM c) AS checkpoint_tx,
       (SELECT position FROM c) AS checkpoint_position,
       (SELECT tx::text FROM h) AS head_tx,
       (SELECT position FROM h) AS head_position,
       (SELECT count(*) FROM cqrs_events e, c WHERE (e.tx, e.position) > (c.tx, c.position))
           AS lag_events,
       (SELECT extract(epoch FROM now() - e.recorded_at)::float8
          FROM cqrs_events e, c
         WHERE (e.tx, e.position) > (c.tx, c.position)
         ORDER BY e.tx, e.position LIMIT 1) AS lag_seconds,
       (SELECT count(*) FROM cqrs_parked_streams WHERE subscription = $1) AS parked_streams,
       EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = 1668444784::bigint::oid
       AND objid = (hashtext($1)::bigint & 4294967295)::oid
       AND objsubid = 2) AS has_worker";

/// Forgets everything stored about subscription `$1` but its checkpoint: parked streams, held
/// and skipped events (a rebuild starts clean).
pub const FORGET_FAULTS: &str = "\
WITH s AS (DELETE FROM cqrs_parked_streams WHERE subscription = $1),
     p AS (DELETE FROM cqrs_parked_events WHERE subscription = $1)
DELETE FROM cqrs_skipped_events WHERE subscription = $1";

/// The events held behind parked stream `$2` of subscription `$1`, in order: position, id,
/// type.
pub const HELD_LIST: &str = "\
SELECT position, event_id, event_type FROM cqrs_parked_events
 WHERE subscription = $1 AND stream_id = $2
 ORDER BY tx, position";

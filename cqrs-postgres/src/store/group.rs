//! Group commit: concurrent appends on different streams share one statement, so one
//! transaction and one commit record; see [`GroupCommit`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use cqrs_core::{AppendResult, ExpectedVersion, GlobalPosition, Metadata, NewEvent, StoreError};
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tokio::sync::oneshot;

use super::notify::AfterCommit;
use super::read::to_u64;
use super::{NotifyMode, PostgresEventStore};
use crate::error::{PostgresStoreError, transient_reason};
use crate::sql;

/// Group commit, on by default ([`PostgresEventStore::with_group_commit`] sets its options,
/// [`PostgresEventStore::without_group_commit`] turns it off): appends made while
/// another append of the same store is under way wait in a queue, and a writer task runs
/// everything waiting as *one* statement ([`sql::APPEND_GROUP`]), so the commands share a
/// transaction, a commit record and its disk flush, and the per-statement work of the server.
///
/// Each command keeps its own outcome: the statement claims each command's stream as the
/// single append does (version check, per-stream order, the stream's advisory gate), and a
/// command whose claim fails is appended again on its own, which reports its own conflict.
/// When the statement fails as a whole (an event id already stored, a deadlock with another
/// process's batch), nothing is written and every command of the batch is appended on its
/// own. A batch never holds two commands of one stream, nor a stream that another batch of
/// this store is writing.
///
/// What is grouped: [`EventStore::append`](cqrs_core::EventStore::append) (and
/// `append_with_keys` without key changes) of a non-empty batch without repeated ids, on a
/// store without inline projections, while at least [`GroupCommit::min_concurrency`] appends
/// of the store are under way. With fewer, an append runs on its own at once, as without
/// group commit, so a single client pays nothing.
/// Appends with unique keys or idempotency keys, `append_in`, and every append of a store with
/// inline projections run on their own as always.
///
/// **The price.** A lost connection during the shared statement leaves every command of the
/// batch in doubt ([`StoreError::Transient`] with
/// [`TransientReason::ConnectionLost`](cqrs_core::TransientReason::ConnectionLost)), where
/// without group commit only the one command would be: append the same events again (a
/// committed one reports [`StoreError::DuplicateEventId`]). A command waits for the batch
/// before it, so one slow batch delays the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    max_batch: usize,
    writers: usize,
    min_concurrency: usize,
}

impl Default for GroupCommit {
    /// Batches of up to 128 commands, 4 batches in flight, grouping from 16 concurrent
    /// appends.
    fn default() -> Self {
        GroupCommit {
            max_batch: 128,
            writers: 4,
            min_concurrency: 16,
        }
    }
}

impl GroupCommit {
    /// The default options: batches of up to 128 commands, 4 batches in flight, grouping
    /// from 16 concurrent appends.
    pub fn new() -> Self {
        Self::default()
    }

    /// An append joins a batch when at least `appends` appends of this store (itself
    /// included) are under way; with fewer it runs alone, one statement of its own, as
    /// without group commit. 1 groups every append. The default, 16, comes from
    /// `BENCHMARKS.md` (part g): at 8 concurrent one-event commands, batches were slower than
    /// PostgreSQL's own sharing of disk flushes between concurrent commits, at 32 much
    /// faster; where the crossover lies depends on the disk and the cores.
    #[must_use]
    pub fn min_concurrency(mut self, appends: usize) -> Self {
        self.min_concurrency = appends.max(1);
        self
    }

    /// At most `commands` commands per batch (at least 1).
    #[must_use]
    pub fn max_batch(mut self, commands: usize) -> Self {
        self.max_batch = commands.max(1);
        self
    }

    /// At most `batches` batches in flight at once, each on a pooled connection (at least 1).
    /// While they are all under way, new appends wait and form the next batch.
    #[must_use]
    pub fn writers(mut self, batches: usize) -> Self {
        self.writers = batches.max(1);
        self
    }
}

/// How a grouped append ended, for its caller.
pub(super) enum Outcome {
    /// The batch committed with this command's events.
    Committed(AppendResult),
    /// Nothing of this command was written: append it on its own, which reports why.
    Alone(Vec<NewEvent>),
    /// The batch failed with its outcome unknown, or could not start.
    Failed(StoreError),
}

/// One command waiting for a batch.
struct Pending {
    stream_id: String,
    /// `> 0` exact, `0` no stream, `-1` any (the encoding of [`sql::APPEND_GROUP`]).
    expected: i64,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Outcome>,
}

/// The store's side of group commit: the options, the shared queue (made with the first
/// grouped append, which fixes the store settings it uses) and the count of appends under
/// way.
#[derive(Clone)]
pub(super) struct GroupWriter {
    options: GroupCommit,
    shared: Arc<OnceLock<Arc<Shared>>>,
    active: Arc<AtomicUsize>,
}

/// Counts an append as under way until dropped.
pub(super) struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GroupWriter {
    pub(super) fn new(options: GroupCommit) -> Self {
        GroupWriter {
            options,
            shared: Arc::new(OnceLock::new()),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(super) fn options(&self) -> GroupCommit {
        self.options
    }

    /// Counts an append as under way; the flag says whether enough are (this one
    /// included) that it should join a batch rather than run alone.
    pub(super) fn enter(&self) -> (Active, bool) {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        let grouped = before + 1 >= self.options.min_concurrency;
        (Active(Arc::clone(&self.active)), grouped)
    }

    /// Queues the append and waits for its batch. Must run inside a Tokio runtime: a batch
    /// runs in a task of its own, so that a caller that stops waiting (a timeout) leaves the
    /// other commands of its batch unharmed.
    pub(super) async fn append(
        &self,
        store: &PostgresEventStore,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Outcome {
        let shared = self.shared.get_or_init(|| {
            Arc::new(Shared {
                pool: store.pool.clone(),
                notify: store.notify,
                after_commit: store.after_commit.clone(),
                options: self.options,
                state: Mutex::new(State::default()),
            })
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            stream_id: stream_id.to_owned(),
            expected: match expected {
                ExpectedVersion::Exact(v) => i64::try_from(v).unwrap_or(i64::MAX),
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Any => -1,
            },
            events,
            reply,
        };
        let start = {
            let mut state = shared.lock();
            state.waiting.push_back(pending);
            shared.next_batch(&mut state)
        };
        if let Some((batch, conn)) = start {
            tokio::spawn(run_batches(Arc::clone(shared), batch, conn));
        }
        answer.await.unwrap_or_else(|_| {
            // The batch's task ended without answering: its runtime shut down (or it
            // panicked) while the statement may have run.
            Outcome::Failed(
                PostgresStoreError::GroupCommit {
                    reason: "the batch's task ended before its outcome was known".to_owned(),
                    transient: Some(cqrs_core::TransientReason::ConnectionLost),
                }
                .into(),
            )
        })
    }
}

/// Whether an append may join a batch: the statement numbers a command's events by their
/// place and an id repeated inside one command would fail everyone's statement.
///
/// Runs on every append of a store with group commit, contended or not: a command's few
/// events are compared pairwise, without allocating; a long batch goes through a set.
pub(super) fn groupable(events: &[NewEvent]) -> bool {
    const PAIRWISE: usize = 16;
    match events {
        [] => false,
        [_] => true,
        few if few.len() <= PAIRWISE => few.iter().enumerate().all(|(i, e)| {
            few[..i]
                .iter()
                .all(|earlier| earlier.event_id != e.event_id)
        }),
        many => {
            let mut seen = HashSet::with_capacity(many.len());
            many.iter().all(|e| seen.insert(e.event_id))
        }
    }
}

/// What batches need of the store, and the queue they share.
struct Shared {
    pool: PgPool,
    notify: NotifyMode,
    after_commit: AfterCommit,
    options: GroupCommit,
    state: Mutex<State>,
}

/// The commands waiting for a batch and the batches under way.
#[derive(Default)]
struct State {
    waiting: VecDeque<Pending>,
    /// The streams of the batches under way: a stream is in one batch at a time, so two of
    /// this store's batches never wait for each other's row locks (which could deadlock).
    busy: HashSet<String>,
    in_flight: usize,
    /// Connections of finished batches, for the next batch while commands are waiting: a
    /// busy store does not pay the pool's check of each connection it hands out (a round
    /// trip); an idle one holds none.
    spare: Vec<PoolConnection<Postgres>>,
}

/// A connection a batch used, offered to the next one.
type Spare = Option<PoolConnection<Postgres>>;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic: every change is one assignment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next batch and a connection for it, when a writer is free and commands wait.
    fn next_batch(&self, state: &mut State) -> Option<(Vec<Pending>, Spare)> {
        if state.in_flight >= self.options.writers {
            return None;
        }
        let batch = take_batch(state, self.options.max_batch);
        if batch.is_empty() {
            return None;
        }
        state.in_flight += 1;
        Some((batch, state.spare.pop()))
    }
}

/// Runs a batch, then, in the same task, the batches that formed meanwhile, until none is
/// waiting.
async fn run_batches(shared: Arc<Shared>, batch: Vec<Pending>, conn: Spare) {
    let mut next = Some((batch, conn));
    while let Some((batch, conn)) = next {
        let release = Release {
            shared: &shared,
            streams: batch.iter().map(|p| p.stream_id.clone()).collect(),
        };
        let conn = run_batch(&shared, batch, conn).await;
        drop(release);
        let mut state = shared.lock();
        state.spare.extend(conn);
        next = shared.next_batch(&mut state);
        if state.waiting.is_empty() {
            // Nothing to hand the connections to: back to the pool.
            state.spare.clear();
        }
    }
}

/// Frees a batch's streams and writer when the batch ends, also when its task ends early.
struct Release<'a> {
    shared: &'a Shared,
    streams: Vec<String>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.in_flight -= 1;
        for stream in &self.streams {
            state.busy.remove(stream);
        }
    }
}

/// Takes up to `max` waiting commands, in arrival order, on streams that are neither in
/// flight nor already taken; the others keep their place for a later batch. The batch is
/// sorted by stream, so that concurrent batches (of other processes) lock stream rows in
/// one order where the plan follows it.
fn take_batch(state: &mut State, max: usize) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut kept = VecDeque::new();
    while let Some(pending) = state.waiting.pop_front() {
        if batch.len() < max && !state.busy.contains(&pending.stream_id) {
            state.busy.insert(pending.stream_id.clone());
            batch.push(pending);
        } else {
            kept.push_back(pending);
        }
    }
    state.waiting = kept;
    batch.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    batch
}

/// How the batch's statement ended.
enum BatchEnd {
    /// It ran; the inserted events.
    Rows(Vec<(String, u64, GlobalPosition, DateTime<Utc>)>),
    /// The server refused it: nothing is written.
    Refused,
    /// It may or may not have committed, or it could not start.
    Failed(sqlx::Error),
}

/// Runs one batch and answers its commands; returns the connection when it is fit for the
/// next batch.
async fn run_batch(shared: &Shared, batch: Vec<Pending>, conn: Spare) -> Spare {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match shared.pool.acquire().await {
            Ok(conn) => conn,
            Err(error) => {
                fail(batch, &error);
                return None;
            }
        },
    };
    match execute(shared, &mut conn, &batch).await {
        BatchEnd::Rows(rows) => {
            answer(shared, batch, rows);
            Some(conn)
        }
        BatchEnd::Refused => {
            for pending in batch {
                let _ = pending.reply.send(Outcome::Alone(pending.events));
            }
            Some(conn)
        }
        // The connection goes back to the pool, which checks it before its next use.
        BatchEnd::Failed(error) => {
            fail(batch, &error);
            None
        }
    }
}

/// Answers every command of a batch whose outcome is unknown, or that could not start.
fn fail(batch: Vec<Pending>, error: &sqlx::Error) {
    let transient = transient_reason(error);
    let commands = batch.len();
    for pending in batch {
        let failure = PostgresStoreError::GroupCommit {
            reason: format!("a batch of {commands} appends failed: {error}"),
            transient,
        };
        let _ = pending.reply.send(Outcome::Failed(failure.into()));
    }
}

/// Sends the batch's statement.
async fn execute(shared: &Shared, conn: &mut PgConnection, batch: &[Pending]) -> BatchEnd {
    let streams: Vec<&str> = batch.iter().map(|p| p.stream_id.as_str()).collect();
    let expected: Vec<i64> = batch.iter().map(|p| p.expected).collect();
    let total: usize = batch.iter().map(|p| p.events.len()).sum();
    let mut sizes = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(total);
    let mut places = Vec::with_capacity(total);
    let mut ids = Vec::with_capacity(total);
    let mut types: Vec<&str> = Vec::with_capacity(total);
    let mut schema_versions = Vec::with_capacity(total);
    let mut payloads: Vec<Json<&RawValue>> = Vec::with_capacity(total);
    let mut metadata: Vec<Json<&Metadata>> = Vec::with_capacity(total);
    for (command, pending) in (1_i64..).zip(batch) {
        sizes.push(i64::try_from(pending.events.len()).expect("a batch fits in memory"));
        for (place, event) in (1_i64..).zip(&pending.events) {
            let Ok(schema_version) = i32::try_from(event.schema_version) else {
                // Out of range for the column: the append on its own reports it.
                return BatchEnd::Refused;
            };
            commands.push(command);
            places.push(place);
            ids.push(event.event_id);
            types.push(event.event_type.as_ref());
            schema_versions.push(schema_version);
            payloads.push(Json(event.payload.as_raw()));
            metadata.push(Json(&event.metadata));
        }
    }
    let statement = if shared.notify == NotifyMode::InTransaction {
        sql::APPEND_GROUP
    } else {
        sql::APPEND_GROUP_QUIET
    };
    let result = sqlx::query(statement)
        .bind(&streams)
        .bind(&expected)
        .bind(&sizes)
        .bind(&commands)
        .bind(&places)
        .bind(&ids)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_all(conn)
        .await;
    match result {
        Ok(rows) => {
            let decoded = rows
                .iter()
                .map(|row| {
                    let position: i64 = row.try_get(0)?;
                    let stream: String = row.try_get(1)?;
                    let version: i64 = row.try_get(2)?;
                    let recorded_at: DateTime<Utc> = row.try_get(3)?;
                    Ok((stream, version, position, recorded_at))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>();
            match decoded {
                Ok(rows) => {
                    let mut out = Vec::with_capacity(rows.len());
                    for (stream, version, position, recorded_at) in rows {
                        // Numbers the server made from positive ones; a failure here would be
                        // a broken server, reported to every command as unknown.
                        let (Ok(version), Ok(position)) = (
                            to_u64("stream_version", version),
                            to_u64("position", position),
                        ) else {
                            return BatchEnd::Failed(sqlx::Error::Protocol(
                                "a negative version or position came back".to_owned(),
                            ));
                        };
                        out.push((stream, version, GlobalPosition(position), recorded_at));
                    }
                    BatchEnd::Rows(out)
                }
                // The statement committed: its outcome is known to the server only.
                Err(error) => BatchEnd::Failed(error),
            }
        }
        Err(error) if refused(&error) => {
            tracing::debug!(%error, commands = batch.len(), "a group-commit batch was refused; its appends run alone");
            BatchEnd::Refused
        }
        Err(error) => BatchEnd::Failed(error),
    }
}

/// Whether the server refused the statement, so that nothing of it is written: a database
/// error outside the classes that end the connection (after which the commit is unknown).
fn refused(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            !matches!(
                transient_reason(error),
                Some(cqrs_core::TransientReason::ConnectionLost)
            ) && db.code().is_some()
        }
        _ => false,
    }
}

/// Gives each command its events' positions, or sends it to append on its own.
fn answer(
    shared: &Shared,
    batch: Vec<Pending>,
    rows: Vec<(String, u64, GlobalPosition, DateTime<Utc>)>,
) {
    let last = rows.iter().map(|row| row.2).max();
    let mut by_stream: HashMap<String, Vec<(u64, GlobalPosition, DateTime<Utc>)>> =
        HashMap::with_capacity(batch.len());
    for (stream, version, position, recorded_at) in rows {
        by_stream
            .entry(stream)
            .or_default()
            .push((version, position, recorded_at));
    }
    if let Some(last) = last
        && shared.notify == NotifyMode::AfterCommit
    {
        shared.after_commit.committed(last);
    }
    for pending in batch {
        let outcome = match by_stream.remove(&pending.stream_id) {
            Some(mut written) => {
                written.sort_unstable_by_key(|(version, ..)| *version);
                let (stream_version, _, recorded_at) = *written.last().expect("not empty");
                Outcome::Committed(AppendResult {
                    stream_version,
                    positions: written.iter().map(|(_, p, _)| *p).collect(),
                    recorded_at,
                })
            }
            None => Outcome::Alone(pending.events),
        };
        let _ = pending.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use cqrs_core::{Metadata, NewEvent, Payload};
    use uuid::Uuid;

    use super::groupable;

    fn events(ids: &[Uuid]) -> Vec<NewEvent> {
        ids.iter()
            .map(|&event_id| NewEvent {
                event_id,
                event_type: Cow::Borrowed("test.noted"),
                schema_version: 1,
                payload: Payload::from_json("{}").expect("json"),
                metadata: Metadata::default(),
            })
            .collect()
    }

    #[test]
    fn an_append_with_an_id_twice_is_never_grouped_whatever_its_length() {
        assert!(!groupable(&[]), "an empty append has nothing to group");
        for len in [1, 2, 10, 16, 17, 40] {
            let ids: Vec<Uuid> = (0..len).map(|_| Uuid::now_v7()).collect();
            assert!(groupable(&events(&ids)), "{len} distinct ids");
            if len > 1 {
                let mut repeated = ids.clone();
                repeated[len - 1] = ids[0];
                assert!(!groupable(&events(&repeated)), "{len} ids, one repeated");
            }
        }
    }
}

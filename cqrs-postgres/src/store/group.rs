//! Group commit: concurrent appends on different streams share one statement, so one
//! transaction and one commit record; see [`GroupCommit`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use cqrs_core::{AppendResult, ExpectedVersion, GlobalPosition, Metadata, NewEvent, StoreError};
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tokio::sync::{mpsc, oneshot};

use super::notify::AfterCommit;
use super::read::to_u64;
use super::{NotifyMode, PostgresEventStore};
use crate::error::{PostgresStoreError, transient_reason};
use crate::sql;

/// Group commit, an opt-in of [`PostgresEventStore::with_group_commit`]: appends made while
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
/// store without inline projections. An append that finds no other append of the store under
/// way runs on its own at once, as without group commit, so a single client pays nothing.
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
}

impl Default for GroupCommit {
    /// Batches of up to 128 commands, 2 batches in flight.
    fn default() -> Self {
        GroupCommit {
            max_batch: 128,
            writers: 2,
        }
    }
}

impl GroupCommit {
    /// The default options: batches of up to 128 commands, 2 batches in flight.
    pub fn new() -> Self {
        Self::default()
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

/// The store's side of group commit: the options, the queue (started with the first grouped
/// append) and the count of appends under way.
#[derive(Clone)]
pub(super) struct GroupWriter {
    options: GroupCommit,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
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
            queue: Arc::new(OnceLock::new()),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(super) fn options(&self) -> GroupCommit {
        self.options
    }

    /// Counts an append as under way; the flag says whether another one already was, so
    /// that this one should join a batch rather than run alone.
    pub(super) fn enter(&self) -> (Active, bool) {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        (Active(Arc::clone(&self.active)), before > 0)
    }

    /// Queues the append and waits for its batch. Must run inside a Tokio runtime: the writer
    /// task starts on the runtime of the first grouped append.
    pub(super) async fn append(
        &self,
        store: &PostgresEventStore,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Outcome {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let context = Context {
                pool: store.pool.clone(),
                notify: store.notify,
                after_commit: store.after_commit.clone(),
            };
            tokio::spawn(dispatch(Arc::new(context), receiver, self.options));
            sender
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
        if let Err(refused) = queue.send(pending) {
            // The writer's runtime is gone: nothing was sent for this command.
            return Outcome::Alone(refused.0.events);
        }
        answer.await.unwrap_or_else(|_| {
            // The writer stopped (its runtime shut down) with this command in a batch.
            Outcome::Failed(
                PostgresStoreError::GroupCommit {
                    reason: "the group-commit writer stopped before the batch's outcome was known"
                        .to_owned(),
                    transient: Some(cqrs_core::TransientReason::ConnectionLost),
                }
                .into(),
            )
        })
    }
}

/// Whether an append may join a batch: the statement numbers a command's events by their
/// place and an id repeated inside one command would fail everyone's statement.
pub(super) fn groupable(events: &[NewEvent]) -> bool {
    if events.is_empty() {
        return false;
    }
    let mut seen = HashSet::with_capacity(events.len());
    events.iter().all(|e| seen.insert(e.event_id))
}

/// What a batch needs of the store.
struct Context {
    pool: PgPool,
    notify: NotifyMode,
    after_commit: AfterCommit,
}

/// A connection a batch used, offered to the next one.
type Spare = Option<PoolConnection<Postgres>>;

/// The writer: forms batches of waiting commands and runs up to `writers` at once. It ends
/// when every clone of the store is gone and the last batch answered.
///
/// A batch's connection goes to the next batch when commands are waiting, so a busy writer
/// does not pay the pool's check of each connection it hands out (a round trip); an idle
/// writer holds none.
async fn dispatch(
    context: Arc<Context>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    options: GroupCommit,
) {
    let (done, mut finished) = mpsc::unbounded_channel::<(Vec<String>, Spare)>();
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    // The streams of the batches in flight: a stream is in one batch at a time, so two of
    // this store's batches never wait for each other's row locks (which could deadlock).
    let mut busy: HashSet<String> = HashSet::new();
    let mut spare: Vec<PoolConnection<Postgres>> = Vec::new();
    let mut in_flight = 0_usize;
    let mut closed = false;
    let settle = |(streams, conn): (Vec<String>, Spare),
                  busy: &mut HashSet<String>,
                  spare: &mut Vec<PoolConnection<Postgres>>| {
        for stream in streams {
            busy.remove(&stream);
        }
        spare.extend(conn);
    };
    loop {
        while let Ok(finished_batch) = finished.try_recv() {
            in_flight -= 1;
            settle(finished_batch, &mut busy, &mut spare);
        }
        while !closed {
            match queue.try_recv() {
                Ok(pending) => waiting.push_back(pending),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        if in_flight < options.writers {
            let batch = take_batch(&mut waiting, &mut busy, options.max_batch);
            if !batch.is_empty() {
                in_flight += 1;
                let streams = batch.iter().map(|p| p.stream_id.clone()).collect();
                let guard = Finished {
                    streams: Some(streams),
                    conn: None,
                    done: done.clone(),
                };
                tokio::spawn(run_batch(Arc::clone(&context), batch, spare.pop(), guard));
                continue;
            }
        }
        if waiting.is_empty() {
            // Nothing to hand the connections to: back to the pool.
            spare.clear();
        }
        if closed && waiting.is_empty() && in_flight == 0 {
            return;
        }
        tokio::select! {
            Some(finished_batch) = finished.recv() => {
                in_flight -= 1;
                settle(finished_batch, &mut busy, &mut spare);
            }
            pending = queue.recv(), if !closed => match pending {
                Some(pending) => waiting.push_back(pending),
                None => closed = true,
            },
        }
    }
}

/// Takes up to `max` waiting commands, in arrival order, on streams that are neither in
/// flight nor already taken; the others keep their place for a later batch. The batch is
/// sorted by stream, so that concurrent batches (of other processes) lock stream rows in
/// one order where the plan follows it.
fn take_batch(
    waiting: &mut VecDeque<Pending>,
    busy: &mut HashSet<String>,
    max: usize,
) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut kept = VecDeque::new();
    while let Some(pending) = waiting.pop_front() {
        if batch.len() < max && !busy.contains(&pending.stream_id) {
            busy.insert(pending.stream_id.clone());
            batch.push(pending);
        } else {
            kept.push_back(pending);
        }
    }
    *waiting = kept;
    batch.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    batch
}

/// Tells the writer that a batch finished (and hands back its connection, when it is fit
/// for the next batch), also when the batch's task ends early.
struct Finished {
    streams: Option<Vec<String>>,
    conn: Spare,
    done: mpsc::UnboundedSender<(Vec<String>, Spare)>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(streams) = self.streams.take() {
            let _ = self.done.send((streams, self.conn.take()));
        }
    }
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

async fn run_batch(
    context: Arc<Context>,
    batch: Vec<Pending>,
    conn: Spare,
    mut finished: Finished,
) {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match context.pool.acquire().await {
            Ok(conn) => conn,
            Err(error) => return fail(batch, &error),
        },
    };
    match execute(&context, &mut conn, &batch).await {
        BatchEnd::Rows(rows) => {
            finished.conn = Some(conn);
            answer(&context, batch, rows);
        }
        BatchEnd::Refused => {
            finished.conn = Some(conn);
            for pending in batch {
                let _ = pending.reply.send(Outcome::Alone(pending.events));
            }
        }
        // The connection goes back to the pool, which checks it before its next use.
        BatchEnd::Failed(error) => fail(batch, &error),
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
async fn execute(context: &Context, conn: &mut PgConnection, batch: &[Pending]) -> BatchEnd {
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
    let statement = if context.notify == NotifyMode::InTransaction {
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
    context: &Context,
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
        && context.notify == NotifyMode::AfterCommit
    {
        context.after_commit.committed(last);
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

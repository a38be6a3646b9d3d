//! Durable subscriptions against a real PostgreSQL server, each test in a fresh database.
//!
//! What they pin down: a transactional projection applies every event exactly once across
//! crashes and handler failures; a live subscription misses nothing committed out of
//! position order; notifications only speed delivery up; a projection receives only its
//! event types while its checkpoint still passes the others; a query can wait for a
//! projection to reach a command's position; and a read model in process memory sees every
//! earlier event after a restart, while a durable checkpoint refuses to resume one.
#![allow(missing_docs)]

#[path = "common/commits.rs"]
mod commits;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use commits::{Commit, CommitClock, late_commits};
use common::TestDb;
use cqrs_core::{
    Event, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, Projection,
    ProjectionError, Reactor, ReadModel, RecordedEvent, projection,
};
use cqrs_postgres::subscription::{
    Checkpoint, Checkpoints, Subscription, SubscriptionError, WaitError,
};
use cqrs_postgres::{NotifyMode, PostgresEventStore};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

/// Long enough that only a real failure reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- events and appends

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Happened {
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TestEvent {
    #[event(name = "test.happened")]
    Happened(Happened),
    #[event(name = "test.registered")]
    Registered(Registered),
    #[event(name = "test.a")]
    A,
    #[event(name = "test.b")]
    B,
    #[event(name = "test.c")]
    C,
}

fn happened() -> TestEvent {
    TestEvent::Happened(Happened { n: 1 })
}

fn noted(event_type: &str) -> TestEvent {
    match event_type {
        "test.a" => TestEvent::A,
        "test.b" => TestEvent::B,
        "test.c" => TestEvent::C,
        other => panic!("no test event `{other}`"),
    }
}

/// A fresh database with the store's tables, and a store on it.
async fn store_on(db: &TestDb) -> PostgresEventStore {
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    PostgresEventStore::new(db.pool.clone())
}

/// An event as a test appended it.
#[derive(Debug, Clone, PartialEq)]
struct Appended {
    event_id: Uuid,
    stream_id: String,
    stream_version: u64,
    event_type: String,
    position: GlobalPosition,
}

fn new_events(events: &[TestEvent]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|event| NewEvent::from_event(event, Metadata::default()).expect("serialize"))
        .collect()
}

fn appended(stream: &str, sent: &[NewEvent], result: &cqrs_core::AppendResult) -> Vec<Appended> {
    let first_version = result.stream_version + 1 - u64::try_from(sent.len()).unwrap();
    sent.iter()
        .zip(&result.positions)
        .zip(first_version..)
        .map(|((event, &position), stream_version)| Appended {
            event_id: event.event_id,
            stream_id: stream.to_owned(),
            stream_version,
            event_type: event.event_type.to_string(),
            position,
        })
        .collect()
}

/// Appends and commits.
async fn append(store: &PostgresEventStore, stream: &str, events: &[TestEvent]) -> Vec<Appended> {
    let sent = new_events(events);
    let result = store
        .append(stream, ExpectedVersion::Any, sent.clone())
        .await
        .expect("append");
    appended(stream, &sent, &result)
}

/// Appends inside the caller's transaction.
async fn append_in(
    store: &PostgresEventStore,
    conn: &mut PgConnection,
    stream: &str,
    events: &[TestEvent],
) -> Vec<Appended> {
    let sent = new_events(events);
    let result = store
        .append_in(conn, stream, ExpectedVersion::Any, sent.clone())
        .await
        .expect("append in transaction");
    appended(stream, &sent, &result)
}

/// Polls `condition` until it holds, panicking with `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(PATIENCE, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

// ---------------------------------------------------------------- a transactional projection

/// What a test projection does besides recording the event.
#[derive(Clone)]
enum Fault {
    None,
    /// Once `after` events were handled, announce it and hang: the batch is in flight when
    /// the test aborts the task. The ledger also waits until its open batch holds three rows.
    HangMidBatch {
        after: usize,
        hanging: Arc<Notify>,
    },
    /// Same point, but fail once instead.
    FailOnceMidBatch {
        after: usize,
        failed: Arc<AtomicBool>,
    },
    /// Fail on every event.
    Always,
}

#[derive(Debug, thiserror::Error)]
enum LedgerError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Injected(&'static str),
}

/// Records every event it handles as one row of `ledger`, through the batch transaction.
/// `ledger` has no unique key, so an event applied twice shows up as two rows.
struct Ledger {
    handled: Arc<AtomicUsize>,
    fault: Fault,
}

#[projection(context = PgConnection)]
impl Ledger {
    #[event_handler]
    async fn on_happened(
        &mut self,
        _: &Happened,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO ledger (event_id, stream_id, stream_version, position) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(event.event_id)
        .bind(&event.stream_id)
        .bind(i64::try_from(event.stream_version).unwrap())
        .bind(i64::try_from(event.position.0).unwrap())
        .execute(&mut *db)
        .await?;
        let handled = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
        match &self.fault {
            Fault::None => {}
            Fault::HangMidBatch { after, hanging } => {
                if handled >= *after && mid_batch(db).await? {
                    hanging.notify_one();
                    std::future::pending::<()>().await;
                }
            }
            Fault::FailOnceMidBatch { after, failed } => {
                if handled >= *after && !failed.load(Ordering::SeqCst) && mid_batch(db).await? {
                    failed.store(true, Ordering::SeqCst);
                    return Err(LedgerError::Injected("injected failure"));
                }
            }
            Fault::Always => return Err(LedgerError::Injected("always fails")),
        }
        Ok(())
    }
}

impl Ledger {
    fn new(fault: Fault) -> Self {
        Self {
            handled: Arc::new(AtomicUsize::new(0)),
            fault,
        }
    }

    async fn create_table(pool: &PgPool) {
        sqlx::query(
            "CREATE TABLE ledger (
                event_id       uuid NOT NULL,
                stream_id      text NOT NULL,
                stream_version bigint NOT NULL,
                position       bigint NOT NULL,
                tx             xid8 NOT NULL DEFAULT pg_current_xact_id()
            )",
        )
        .execute(pool)
        .await
        .expect("ledger table");
    }
}

/// Whether the open batch transaction already wrote three rows or more.
async fn mid_batch(db: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let in_this_batch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger WHERE tx = pg_current_xact_id()")
            .fetch_one(db)
            .await?;
    Ok(in_this_batch >= 3)
}

/// How many `ledger` rows each event id has.
async fn ledger_rows(pool: &PgPool) -> HashMap<Uuid, i64> {
    sqlx::query_as::<_, (Uuid, i64)>("SELECT event_id, count(*) FROM ledger GROUP BY event_id")
        .fetch_all(pool)
        .await
        .expect("ledger rows")
        .into_iter()
        .collect()
}

async fn ledger_len(pool: &PgPool) -> usize {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .expect("ledger count");
    usize::try_from(rows).unwrap()
}

fn assert_exactly_once(rows: &HashMap<Uuid, i64>, events: &[Appended]) {
    for event in events {
        assert_eq!(
            rows.get(&event.event_id).copied(),
            Some(1),
            "event {}@{} (position {}) must be applied exactly once",
            event.stream_id,
            event.stream_version,
            event.position
        );
    }
    assert_eq!(rows.len(), events.len(), "the ledger holds unknown events");
}

/// 100 events over 10 streams, one append each.
async fn hundred_events(store: &PostgresEventStore) -> Vec<Appended> {
    let mut events = Vec::new();
    for n in 0..100 {
        events.extend(append(store, &format!("s-{}", n % 10), &[happened()]).await);
    }
    events
}

// ---------------------------------------------------------------- crash and resume

#[tokio::test(flavor = "multi_thread")]
async fn aborted_mid_batch_resumes_with_every_event_applied_exactly_once() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    Ledger::create_table(&db.pool).await;
    let events = hundred_events(&store).await;

    let hanging = Arc::new(Notify::new());
    let ledger = Ledger::new(Fault::HangMidBatch {
        after: 40,
        hanging: Arc::clone(&hanging),
    });
    let handled = Arc::clone(&ledger.handled);
    let first = Subscription::transactional(ledger)
        .batch_size(8)
        .start(&db.pool)
        .await
        .expect("start");
    tokio::time::timeout(PATIENCE, hanging.notified())
        .await
        .expect("the projection reaches the middle of a batch");
    first.abort();

    // The batch in flight is rolled back: the rows are exactly those the checkpoint covers.
    let checkpoints = Checkpoints::new(db.pool.clone());
    let committed = tokio::time::timeout(PATIENCE, async {
        loop {
            let stored = checkpoints.load(Ledger::NAME).await.unwrap().unwrap();
            let covered = events
                .iter()
                .filter(|e| e.position <= stored.position)
                .count();
            if ledger_len(&db.pool).await == covered {
                return covered;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the aborted batch is rolled back");
    let handled = handled.load(Ordering::SeqCst);
    assert!(
        committed > 0 && committed + 3 <= handled,
        "the abort hit an open batch of at least 3 applied events: \
         {handled} handled, {committed} committed"
    );

    let second = Subscription::transactional(Ledger::new(Fault::None))
        .batch_size(8)
        .start(&db.pool)
        .await
        .expect("restart");
    let last = events.last().unwrap().position;
    second.wait_for(last, PATIENCE).await.expect("caught up");
    assert_exactly_once(&ledger_rows(&db.pool).await, &events);
    second.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_failing_mid_batch_is_retried_without_applying_anything_twice() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    Ledger::create_table(&db.pool).await;
    let events = hundred_events(&store).await;

    let failed = Arc::new(AtomicBool::new(false));
    let ledger = Ledger::new(Fault::FailOnceMidBatch {
        after: 30,
        failed: Arc::clone(&failed),
    });
    let handled = Arc::clone(&ledger.handled);
    let subscription = Subscription::transactional(ledger)
        .batch_size(8)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .start(&db.pool)
        .await
        .expect("start");
    let last = events.last().unwrap().position;
    subscription
        .wait_for(last, PATIENCE)
        .await
        .expect("caught up");

    assert!(failed.load(Ordering::SeqCst), "the failure was injected");
    assert!(
        handled.load(Ordering::SeqCst) > events.len(),
        "the failed batch was applied again"
    );
    assert_exactly_once(&ledger_rows(&db.pool).await, &events);
    subscription.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_keeps_failing_surfaces_its_error_and_applies_nothing() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    Ledger::create_table(&db.pool).await;
    let events = append(&store, "s-1", &[happened(), happened()]).await;

    let subscription = Subscription::transactional(Ledger::new(Fault::Always))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .max_consecutive_failures(3)
        .start(&db.pool)
        .await
        .expect("start");
    let error = subscription.join().await.expect_err("gives up");
    let SubscriptionError::Projection(failure) = &error else {
        panic!("unexpected error {error:?}");
    };
    let ProjectionError::Handler {
        projection,
        position,
        source,
        ..
    } = &**failure
    else {
        panic!("unexpected projection error {failure:?}");
    };
    assert_eq!(*projection, Ledger::NAME);
    assert_eq!(*position, events[0].position);
    assert_eq!(source.to_string(), "always fails");

    assert_eq!(ledger_len(&db.pool).await, 0);
    let stored = Checkpoints::new(db.pool.clone())
        .load(Ledger::NAME)
        .await
        .unwrap();
    assert_eq!(stored, Some(Checkpoint::START));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_of_one_transactional_projection_never_apply_an_event_twice() {
    let db = TestDb::create(16).await;
    let store = store_on(&db).await;
    Ledger::create_table(&db.pool).await;
    let first = Subscription::transactional(Ledger::new(Fault::None))
        .batch_size(4)
        .start(&db.pool)
        .await
        .expect("first");
    let second = Subscription::transactional(Ledger::new(Fault::None))
        .batch_size(4)
        .start(&db.pool)
        .await
        .expect("second");
    let mut events = Vec::new();
    for round in 0..40 {
        events.extend(append(&store, &format!("twin-{}", round % 4), &[happened()]).await);
    }
    let last = events.last().unwrap().position;
    first
        .wait_for(last, PATIENCE)
        .await
        .expect("first caught up");
    second
        .wait_for(last, PATIENCE)
        .await
        .expect("second caught up");
    assert_exactly_once(&ledger_rows(&db.pool).await, &events);
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- an at-least-once collector

/// Projections that keep every event the subscription hands them, in order. They do not
/// filter by type themselves, so they show exactly what the subscription delivers.
macro_rules! collectors {
    ($($(#[$doc:meta])* $name:ident: $types:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Default)]
        struct $name {
            seen: Vec<RecordedEvent>,
        }

        impl Projection for $name {
            const NAME: &'static str = stringify!($name);
            const EVENT_TYPES: &'static [&'static str] = $types;
            type Context = ();

            async fn project(
                &mut self,
                event: &RecordedEvent,
                (): &mut (),
            ) -> Result<(), ProjectionError> {
                self.seen.push(event.clone());
                Ok(())
            }
        }

        impl Seen for $name {
            fn seen(&self) -> &[RecordedEvent] {
                &self.seen
            }
        }
    )*};
}

trait Seen {
    fn seen(&self) -> &[RecordedEvent];
}

collectors! {
    /// Subscribes to `test.happened`.
    Happenings: &["test.happened"];
    /// Subscribes to `test.happened` too, under its own name.
    Deaf: &["test.happened"];
    /// Subscribes to `test.a` only.
    OnlyA: &["test.a"];
}

async fn seen<C: Seen + Send + Sync>(model: &ReadModel<C>) -> Vec<RecordedEvent> {
    model.read().await.seen().to_vec()
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

// ---------------------------------------------------------------- at least once

/// Every delivery a `Mailbox` received, shared by its instances across restarts.
#[derive(Clone, Default)]
struct Deliveries(Arc<std::sync::Mutex<Vec<RecordedEvent>>>);

impl Deliveries {
    fn all(&self) -> Vec<RecordedEvent> {
        self.0.lock().unwrap().clone()
    }

    fn count_by_id(&self) -> HashMap<Uuid, usize> {
        let mut counts = HashMap::new();
        for event in self.all() {
            *counts.entry(event.event_id).or_default() += 1;
        }
        counts
    }
}

/// A side effect outside the database: it records each delivery in memory.
struct Mailbox {
    deliveries: Deliveries,
    handled: usize,
    fault: Fault,
}

#[projection]
impl Mailbox {
    #[event_handler]
    async fn on_happened(
        &mut self,
        _: &Happened,
        event: &RecordedEvent,
    ) -> Result<(), LedgerError> {
        self.deliveries.0.lock().unwrap().push(event.clone());
        self.handled += 1;
        match &self.fault {
            Fault::HangMidBatch { after, hanging } if self.handled == *after => {
                hanging.notify_one();
                std::future::pending::<()>().await;
            }
            Fault::FailOnceMidBatch { after, failed }
                if self.handled == *after && !failed.swap(true, Ordering::SeqCst) =>
            {
                return Err(LedgerError::Injected("injected failure"));
            }
            Fault::Always => return Err(LedgerError::Injected("always fails")),
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_at_least_once_subscriber_redelivers_only_what_it_had_not_checkpointed() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let events = hundred_events(&store).await;
    let deliveries = Deliveries::default();

    let hanging = Arc::new(Notify::new());
    let first = Subscription::at_least_once(Reactor::new(Mailbox {
        deliveries: deliveries.clone(),
        handled: 0,
        fault: Fault::HangMidBatch {
            after: 20,
            hanging: Arc::clone(&hanging),
        },
    }))
    .batch_size(8)
    .start(&db.pool)
    .await
    .expect("start");
    tokio::time::timeout(PATIENCE, hanging.notified())
        .await
        .expect("the subscriber hangs in a batch");
    first.abort();
    let at_abort = Checkpoints::new(db.pool.clone())
        .load(Mailbox::NAME)
        .await
        .unwrap()
        .unwrap();

    let second = Subscription::at_least_once(Reactor::new(Mailbox {
        deliveries: deliveries.clone(),
        handled: 0,
        fault: Fault::None,
    }))
    .batch_size(8)
    .start(&db.pool)
    .await
    .expect("restart");
    let last = events.last().unwrap().position;
    second.wait_for(last, PATIENCE).await.expect("caught up");
    second.shutdown().await.expect("shutdown");

    let counts = deliveries.count_by_id();
    let mut repeated = 0;
    for event in &events {
        let count = counts.get(&event.event_id).copied().unwrap_or(0);
        if event.position <= at_abort.position {
            assert_eq!(
                count, 1,
                "checkpointed event {} is not delivered again",
                event.position
            );
        } else {
            assert!(
                (1..=2).contains(&count),
                "event {} delivered {count} times",
                event.position
            );
            repeated += count - 1;
        }
    }
    assert!(
        repeated >= 1,
        "the batch cut short by the abort is delivered again"
    );
    assert_eq!(counts.len(), events.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_at_least_once_handler_error_keeps_the_events_before_it() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let events = hundred_events(&store).await;
    let deliveries = Deliveries::default();

    let subscription = Subscription::at_least_once(Reactor::new(Mailbox {
        deliveries: deliveries.clone(),
        handled: 0,
        fault: Fault::FailOnceMidBatch {
            after: 13,
            failed: Arc::new(AtomicBool::new(false)),
        },
    }))
    .batch_size(8)
    .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
    .start(&db.pool)
    .await
    .expect("start");
    let last = events.last().unwrap().position;
    subscription
        .wait_for(last, PATIENCE)
        .await
        .expect("caught up");
    subscription.shutdown().await.expect("shutdown");

    // The 13th delivery failed and was retried; nothing before it came again.
    let delivered = deliveries.all();
    let failed = &delivered[12];
    assert_eq!(delivered[13].event_id, failed.event_id);
    let counts = deliveries.count_by_id();
    for event in &events {
        let expected = if event.event_id == failed.event_id {
            2
        } else {
            1
        };
        assert_eq!(counts.get(&event.event_id).copied(), Some(expected));
    }
}

// ---------------------------------------------------------------- the gap test

/// The gap on purpose, whatever the timing: an older transaction appends and stays open
/// while a newer append commits a larger position (which wakes the subscriptions), then the
/// older one commits.
async fn commit_behind_a_larger_position(
    store: PostgresEventStore,
    clock: Arc<CommitClock>,
) -> (Vec<Appended>, Vec<Commit>) {
    let mut older = store.pool().begin().await.expect("begin");
    let held = append_in(&store, &mut older, "gap-forced-older", &[happened()]).await;
    let (newer, newer_commit) = clock
        .stamp(
            Vec::new(),
            append(&store, "gap-forced-newer", &[happened()]),
        )
        .await;
    assert!(newer[0].position > held[0].position);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (committed, older_commit) = clock.stamp(vec![held[0].position], older.commit()).await;
    committed.expect("commit");
    let newer_commit = Commit {
        positions: vec![newer[0].position],
        ..newer_commit
    };
    (
        held.into_iter().chain(newer).collect(),
        vec![newer_commit, older_commit],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_subscriber_receives_events_committed_out_of_position_order_exactly_once() {
    const APPENDERS: usize = 8;
    const TRANSACTIONS: usize = 12;
    let db = TestDb::create(24).await;
    let store = store_on(&db).await;
    Ledger::create_table(&db.pool).await;

    let collector = ReadModel::new(Happenings::default());
    let live = Subscription::at_least_once(collector.clone())
        .batch_size(16)
        .start(&db.pool)
        .await
        .expect("start collector");
    let ledger = Subscription::transactional(Ledger::new(Fault::None))
        .batch_size(16)
        .start(&db.pool)
        .await
        .expect("start ledger");

    // Each appender holds its transaction open for a while after inserting: positions are
    // drawn in one order and become visible in another. One pair does so on purpose.
    let clock = Arc::new(CommitClock::default());
    let mut appenders = Vec::new();
    for appender in 0..APPENDERS {
        let store = store.clone();
        let clock = Arc::clone(&clock);
        appenders.push(tokio::spawn(async move {
            let mut appended = Vec::new();
            let mut commits = Vec::new();
            for round in 0..TRANSACTIONS {
                let mut tx = store.pool().begin().await.expect("begin");
                let stream = format!("gap-{appender}-{}", round % 3);
                let count = 1 + (appender + round) % 3;
                let batch = append_in(&store, &mut tx, &stream, &vec![happened(); count]).await;
                let hold = ((appender * 7 + round * 13) % 11) * 5;
                tokio::time::sleep(Duration::from_millis(u64::try_from(hold).unwrap())).await;
                let positions = batch.iter().map(|e| e.position).collect();
                let (committed, commit) = clock.stamp(positions, tx.commit()).await;
                committed.expect("commit");
                commits.push(commit);
                appended.extend(batch);
            }
            (appended, commits)
        }));
    }
    appenders.push(tokio::spawn(commit_behind_a_larger_position(
        store.clone(),
        Arc::clone(&clock),
    )));
    let mut events = Vec::new();
    let mut commits = Vec::new();
    for appender in appenders {
        let (appended, committed) = appender.await.expect("appender");
        events.extend(appended);
        commits.extend(committed);
    }
    assert_eq!(events.len(), APPENDERS * TRANSACTIONS * 2 + 2);
    assert!(
        late_commits(&commits) > 0,
        "no commit became visible after an event with a larger position: the test did not \
         exercise the gap"
    );

    // Every position, whatever its commit order, is passed by both subscriptions.
    let progress = live.progress();
    for event in &events {
        progress.wait_for(event.position, PATIENCE).await.unwrap();
        ledger.wait_for(event.position, PATIENCE).await.unwrap();
    }

    let received = seen(&collector).await;
    let mut count_by_id: HashMap<Uuid, usize> = HashMap::new();
    for event in &received {
        *count_by_id.entry(event.event_id).or_default() += 1;
    }
    for event in &events {
        assert_eq!(
            count_by_id.get(&event.event_id).copied(),
            Some(1),
            "event {}@{} at position {} must arrive exactly once",
            event.stream_id,
            event.stream_version,
            event.position
        );
    }
    assert_eq!(received.len(), events.len());
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &received {
        versions
            .entry(event.stream_id.as_str())
            .or_default()
            .push(event.stream_version);
    }
    for (stream, versions) in versions {
        let expected: Vec<u64> = (1..=u64::try_from(versions.len()).unwrap()).collect();
        assert_eq!(
            versions, expected,
            "stream {stream} arrives in version order"
        );
    }
    assert_exactly_once(&ledger_rows(&db.pool).await, &events);

    live.shutdown().await.expect("collector shutdown");
    ledger.shutdown().await.expect("ledger shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_delivered_past_a_transaction_that_may_still_commit() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let collector = ReadModel::new(Happenings::default());
    let subscription = Subscription::at_least_once(collector.clone())
        .start(&db.pool)
        .await
        .expect("start");

    // An older transaction appends first and stays open; a newer one commits behind it.
    let mut older = db.pool.begin().await.expect("begin");
    let held = append_in(&store, &mut older, "held", &[happened()])
        .await
        .remove(0);
    let newer = append(&store, "free", &[happened()]).await.remove(0);
    assert!(newer.position > held.position);
    let early = subscription
        .wait_for(newer.position, Duration::from_millis(300))
        .await;
    assert!(
        matches!(early, Err(WaitError::Timeout { .. })),
        "the newer event must wait for the older transaction: {early:?}"
    );
    assert!(seen(&collector).await.is_empty());

    older.commit().await.expect("commit");
    subscription
        .wait_for(newer.position, PATIENCE)
        .await
        .expect("reached once the older transaction ended");
    assert_eq!(
        ids(&seen(&collector).await),
        vec![held.event_id, newer.event_id]
    );
    subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- following live

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_wakes_a_caught_up_subscription() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let collector = ReadModel::new(Happenings::default());
    // Polling alone would not find the events before the test gives up.
    let subscription = Subscription::at_least_once(collector.clone())
        .poll_interval(Duration::from_secs(3600))
        .start(&db.pool)
        .await
        .expect("start");

    for round in 0..3 {
        let appended = append(&store, "live", &[happened(), happened()]).await;
        eventually("the notified events arrive", || async {
            seen(&collector).await.len() == (round + 1) * 2
        })
        .await;
        assert_eq!(
            ids(&seen(&collector).await[round * 2..]),
            appended.iter().map(|e| e.event_id).collect::<Vec<_>>()
        );
    }
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_notifications_polling_still_delivers_everything() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await.with_notify(NotifyMode::Off);

    // A listening subscription whose notifications never come...
    let listening = ReadModel::new(Happenings::default());
    let listening_subscription = Subscription::at_least_once(listening.clone())
        .poll_interval(Duration::from_millis(50))
        .start(&db.pool)
        .await
        .expect("start listening");
    // ...and one that does not listen at all.
    let deaf = ReadModel::new(Deaf::default());
    let deaf_subscription = Subscription::at_least_once(deaf.clone())
        .notifications(false)
        .poll_interval(Duration::from_millis(50))
        .start(&db.pool)
        .await
        .expect("start deaf");

    let mut events = Vec::new();
    for round in 0..5 {
        events.extend(append(&store, &format!("quiet-{}", round % 2), &[happened()]).await);
    }
    let expected: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    eventually("polling delivers every event", || async {
        ids(&seen(&listening).await) == expected && ids(&seen(&deaf).await) == expected
    })
    .await;
    listening_subscription.shutdown().await.expect("shutdown");
    deaf_subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- event types

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_receives_only_its_types_and_its_checkpoint_passes_the_others() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    // History before it starts, and more after.
    let mut events = append(
        &store,
        "mixed",
        &[noted("test.b"), noted("test.a"), noted("test.c")],
    )
    .await;
    let model = ReadModel::new(OnlyA::default());
    let subscription = Subscription::at_least_once(model.clone())
        .batch_size(2)
        .start(&db.pool)
        .await
        .expect("start");
    events.extend(
        append(
            &store,
            "mixed",
            &[
                noted("test.a"),
                noted("test.b"),
                noted("test.b"),
                noted("test.c"),
            ],
        )
        .await,
    );

    // The last event is one it does not handle; reaching it means passing it.
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "test.c");
    subscription
        .wait_for(last.position, PATIENCE)
        .await
        .expect("the checkpoint passes events of other types");
    let received = seen(&model).await;
    let a_events: Vec<Uuid> = events
        .iter()
        .filter(|e| e.event_type == "test.a")
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids(&received), a_events);
    assert_eq!(subscription.status().checkpoint.position, last.position);

    // Only other types from here on: the stored checkpoint still follows.
    let others = append(&store, "other", &[noted("test.b"), noted("test.c")]).await;
    Checkpoints::new(db.pool.clone())
        .wait_for(OnlyA::NAME, others[1].position, PATIENCE)
        .await
        .expect("the stored checkpoint passes them too");
    assert_eq!(seen(&model).await.len(), 2);
    subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- read your writes

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_an_unreachable_position_times_out_with_a_typed_error() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    Ledger::create_table(&db.pool).await;
    let subscription = Subscription::transactional(Ledger::new(Fault::None))
        .start(&db.pool)
        .await
        .expect("start");

    let written = append(&store, "ryw", &[happened()]).await.remove(0);
    subscription
        .wait_for(written.position, PATIENCE)
        .await
        .expect("reached");
    assert_eq!(ledger_rows(&db.pool).await.get(&written.event_id), Some(&1));
    subscription
        .wait_for(GlobalPosition::START, Duration::ZERO)
        .await
        .expect("the start is always reached");

    let unreachable = GlobalPosition(written.position.0 + 1_000_000);
    let local = subscription
        .wait_for(unreachable, Duration::from_millis(200))
        .await;
    assert!(
        matches!(local, Err(WaitError::Timeout { ref projection, position, .. })
            if projection == Ledger::NAME && position == unreachable),
        "{local:?}"
    );
    let stored = Checkpoints::new(db.pool.clone())
        .wait_for(Ledger::NAME, unreachable, Duration::from_millis(200))
        .await;
    assert!(
        matches!(stored, Err(WaitError::Timeout { ref projection, position, .. })
            if projection == Ledger::NAME && position == unreachable),
        "{stored:?}"
    );
    subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- read models in memory

/// The e-mail addresses in use: the read model a user service asks before registering.
#[derive(Default)]
struct Emails {
    taken: HashSet<String>,
}

#[projection]
impl Emails {
    #[event_handler]
    fn on_registered(&mut self, registered: &Registered) {
        self.taken.insert(registered.email.clone());
    }
}

#[derive(Debug, PartialEq)]
struct EmailTaken;

fn registered(email: &str) -> TestEvent {
    TestEvent::Registered(Registered {
        email: email.to_owned(),
    })
}

/// A user service's uniqueness rule: register `email` only if the read model does not know it.
async fn register(
    store: &PostgresEventStore,
    emails: &ReadModel<Emails>,
    email: &str,
) -> Result<Appended, EmailTaken> {
    if emails.read().await.taken.contains(email) {
        return Err(EmailTaken);
    }
    let stream = format!("user-{}", Uuid::now_v7());
    Ok(append(store, &stream, &[registered(email)]).await.remove(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_uniqueness_rule_asking_an_in_memory_model_holds_across_a_restart() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;

    // The first run registers an address.
    let emails = ReadModel::new(Emails::default());
    let feed = Subscription::in_memory(emails.clone())
        .start(&db.pool)
        .await
        .expect("start");
    let ada = register(&store, &emails, "ada@example.com")
        .await
        .expect("a new address");
    feed.wait_for(ada.position, PATIENCE).await.expect("fed");
    assert_eq!(
        register(&store, &emails, "ada@example.com").await,
        Err(EmailTaken)
    );
    feed.shutdown().await.expect("shutdown");

    // The restarted service has a new, empty model; `start` returns once it holds the history.
    let emails = ReadModel::new(Emails::default());
    let feed = Subscription::in_memory(emails.clone())
        .start(&db.pool)
        .await
        .expect("restart");
    assert_eq!(
        register(&store, &emails, "ada@example.com").await,
        Err(EmailTaken),
        "a duplicate is refused after a restart"
    );
    let grace = register(&store, &emails, "grace@example.com")
        .await
        .expect("another address");
    feed.wait_for(grace.position, PATIENCE)
        .await
        .expect("follows live");
    assert!(emails.read().await.taken.contains("grace@example.com"));
    assert_eq!(
        Checkpoints::new(db.pool.clone())
            .load(Emails::NAME)
            .await
            .unwrap(),
        None,
        "an in-memory subscription stores no checkpoint"
    );
    feed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_subscription_refuses_an_in_memory_model_behind_its_stored_checkpoint() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let ada = append(&store, "user-1", &[registered("ada@example.com")])
        .await
        .remove(0);

    // From a fresh checkpoint the model does see every event, so the first start is allowed...
    let emails = ReadModel::new(Emails::default());
    let first = Subscription::at_least_once(emails.clone())
        .start(&db.pool)
        .await
        .expect("a fresh checkpoint");
    first.wait_for(ada.position, PATIENCE).await.expect("fed");
    first.shutdown().await.expect("shutdown");
    let checkpoints = Checkpoints::new(db.pool.clone());
    let stored = checkpoints.load(Emails::NAME).await.unwrap().unwrap();
    assert!(stored > Checkpoint::START);

    // ...but a new, empty model would resume past the address, and never learn it.
    let refused = Subscription::at_least_once(ReadModel::new(Emails::default()))
        .start(&db.pool)
        .await;
    match refused {
        Err(SubscriptionError::InMemoryBehindCheckpoint { name, checkpoint }) => {
            assert_eq!(name, Emails::NAME);
            assert_eq!(checkpoint, stored);
        }
        other => panic!("expected the in-memory model to be refused, got {other:?}"),
    }

    // Once the checkpoint is reset, the model starts at the first event again.
    assert!(checkpoints.reset(Emails::NAME).await.unwrap());
    let emails = ReadModel::new(Emails::default());
    let again = Subscription::at_least_once(emails.clone())
        .start(&db.pool)
        .await
        .expect("a reset checkpoint");
    again.wait_for(ada.position, PATIENCE).await.expect("fed");
    assert!(emails.read().await.taken.contains("ada@example.com"));
    again.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn resetting_a_checkpoint_makes_the_next_start_begin_at_the_first_event() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let events = append(&store, "reset", &[happened(), happened(), happened()]).await;
    let last = events.last().unwrap().position;
    let deliveries = Deliveries::default();
    let mailbox = || {
        Reactor::new(Mailbox {
            deliveries: deliveries.clone(),
            handled: 0,
            fault: Fault::None,
        })
    };
    let first = Subscription::at_least_once(mailbox())
        .start(&db.pool)
        .await
        .expect("start");
    first.wait_for(last, PATIENCE).await.expect("caught up");
    first.shutdown().await.expect("shutdown");
    let checkpoints = Checkpoints::new(db.pool.clone());
    assert!(checkpoints.load(Mailbox::NAME).await.unwrap().is_some());

    // A reset inside a transaction that rolls back does not happen.
    let mut tx = db.pool.begin().await.expect("begin");
    assert!(
        Checkpoints::reset_in(&mut tx, Mailbox::NAME)
            .await
            .expect("reset in a transaction")
    );
    tx.rollback().await.expect("rollback");
    assert!(checkpoints.load(Mailbox::NAME).await.unwrap().is_some());

    assert!(
        checkpoints.reset(Mailbox::NAME).await.expect("reset"),
        "there was a checkpoint"
    );
    assert_eq!(checkpoints.load(Mailbox::NAME).await.unwrap(), None);
    assert!(
        !checkpoints.reset(Mailbox::NAME).await.expect("reset"),
        "nothing left to reset"
    );

    let second = Subscription::at_least_once(mailbox())
        .start(&db.pool)
        .await
        .expect("restart");
    second.wait_for(last, PATIENCE).await.expect("caught up");
    second.shutdown().await.expect("shutdown");
    let counts = deliveries.count_by_id();
    for event in &events {
        assert_eq!(
            counts.get(&event.event_id).copied(),
            Some(2),
            "delivered once per start"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_memory_model_is_replayed_from_the_first_event_before_start_returns() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let history = append(
        &store,
        "mixed",
        &[happened(), noted("test.a"), happened(), happened()],
    )
    .await;

    let model = ReadModel::new(Happenings::default());
    let subscription = Subscription::in_memory(model.clone())
        .batch_size(1)
        .start(&db.pool)
        .await
        .expect("start");
    // No waiting: `start` returned after the replay.
    let mut expected = vec![
        history[0].event_id,
        history[2].event_id,
        history[3].event_id,
    ];
    assert_eq!(ids(&seen(&model).await), expected);

    let live = append(&store, "mixed", &[happened(), noted("test.b")]).await;
    subscription
        .wait_for(live[1].position, PATIENCE)
        .await
        .expect("follows live, passing other types");
    expected.push(live[0].event_id);
    assert_eq!(ids(&seen(&model).await), expected);

    // Another model started now gets all of it too: there is no shared, stored checkpoint.
    let another = ReadModel::new(Happenings::default());
    let second = Subscription::in_memory(another.clone())
        .start(&db.pool)
        .await
        .expect("start another");
    assert_eq!(ids(&seen(&another).await), expected);
    assert_eq!(
        Checkpoints::new(db.pool.clone())
            .load(Happenings::NAME)
            .await
            .unwrap(),
        None
    );
    subscription.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_memory_model_retries_a_failed_event_without_applying_earlier_ones_again() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let events = hundred_events(&store).await;
    let deliveries = Deliveries::default();

    let subscription = Subscription::in_memory(ReadModel::new(Mailbox {
        deliveries: deliveries.clone(),
        handled: 0,
        fault: Fault::FailOnceMidBatch {
            after: 13,
            failed: Arc::new(AtomicBool::new(false)),
        },
    }))
    .batch_size(8)
    .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
    .start(&db.pool)
    .await
    .expect("start, through one retry");

    // The 13th delivery failed and was retried; nothing before it came again.
    let delivered = deliveries.all();
    let failed = &delivered[12];
    assert_eq!(delivered[13].event_id, failed.event_id);
    let counts = deliveries.count_by_id();
    for event in &events {
        let expected = if event.event_id == failed.event_id {
            2
        } else {
            1
        };
        assert_eq!(counts.get(&event.event_id).copied(), Some(expected));
    }
    assert_eq!(subscription.status().failures, 0);
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_memory_start_fails_with_the_error_that_stopped_the_replay() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    append(&store, "s", &[happened()]).await;

    let started = Subscription::in_memory(ReadModel::new(Mailbox {
        deliveries: Deliveries::default(),
        handled: 0,
        fault: Fault::Always,
    }))
    .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
    .max_consecutive_failures(2)
    .start(&db.pool)
    .await;
    assert!(
        matches!(started, Err(SubscriptionError::Projection(_))),
        "{started:?}"
    );
}

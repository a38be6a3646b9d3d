//! Projections in production, against a real PostgreSQL server, each test in a fresh
//! database: fault policies (stop by default, skip recorded, park per stream with retry and
//! skip by an operator), status and lag, reset for a rebuild, a blue/green rebuild, and one
//! worker per name across processes (a child process killed with `SIGKILL`, a standby taking over).
#![allow(missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestDb;
use cqrs_core::{
    BoxFuture, Event, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, Projection,
    ProjectionError, RecordedEvent, Subscriber, projection,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{
    AdminError, FaultPolicy, ProjectionAdmin, ProjectionState, Subscription, SubscriptionError,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Long enough that only a real failure reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Happened {
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TestEvent {
    #[event(name = "test.happened")]
    Happened(Happened),
}

/// An event as appended: id, stream, version, position.
#[derive(Debug, Clone)]
struct Appended {
    event_id: Uuid,
    stream_id: String,
    stream_version: u64,
    position: GlobalPosition,
}

async fn store_on(db: &TestDb) -> PostgresEventStore {
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    PostgresEventStore::new(db.pool.clone())
}

/// Appends one event with value `n` to `stream`.
async fn append(store: &PostgresEventStore, stream: &str, n: u64) -> Appended {
    let event = NewEvent::from_event(&TestEvent::Happened(Happened { n }), Metadata::default())
        .expect("serialize");
    let event_id = event.event_id;
    let result = store
        .append(stream, ExpectedVersion::Any, vec![event])
        .await
        .expect("append");
    Appended {
        event_id,
        stream_id: stream.to_owned(),
        stream_version: result.stream_version,
        position: result.positions[0],
    }
}

/// Polls `condition` until it holds, panicking with `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(PATIENCE, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

// ---------------------------------------------------------------- a transactional ledger

/// The events a test projection fails on, by `(stream, version)`; shared with the test.
#[derive(Clone, Default)]
struct Poison(Arc<Mutex<HashSet<(String, u64)>>>);

impl Poison {
    fn add(&self, stream: &str, version: u64) {
        self.0.lock().unwrap().insert((stream.to_owned(), version));
    }

    fn cure(&self) {
        self.0.lock().unwrap().clear();
    }

    fn hits(&self, event: &RecordedEvent) -> bool {
        self.0
            .lock()
            .unwrap()
            .contains(&(event.stream_id.clone(), event.stream_version))
    }
}

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("poisoned event {0}@{1}")]
    Poisoned(String, u64),
    #[error("not yet")]
    NotYet,
}

/// Appends a row per event to its table (no unique key: twice shows as two rows, and `seq`
/// keeps the order of application). Fails on poisoned events.
struct Ledger {
    table: &'static str,
    poison: Poison,
}

#[projection(context = PgConnection)]
impl Ledger {
    #[event_handler]
    async fn on_happened(
        &mut self,
        _: &Happened,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), TestError> {
        if self.poison.hits(event) {
            return Err(TestError::Poisoned(
                event.stream_id.clone(),
                event.stream_version,
            ));
        }
        sqlx::query(&format!(
            "INSERT INTO {} (event_id, stream_id, stream_version) VALUES ($1, $2, $3)",
            self.table
        ))
        .bind(event.event_id)
        .bind(&event.stream_id)
        .bind(i64::try_from(event.stream_version).unwrap())
        .execute(db)
        .await?;
        Ok(())
    }
}

async fn create_ledger(pool: &PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (
            seq            bigint GENERATED ALWAYS AS IDENTITY,
            event_id       uuid   NOT NULL,
            stream_id      text   NOT NULL,
            stream_version bigint NOT NULL
        )"
    ))
    .execute(pool)
    .await
    .expect("ledger table");
}

/// The ledger's rows in order of application: `(event id, stream, version)`.
async fn ledger(pool: &PgPool, table: &str) -> Vec<(Uuid, String, i64)> {
    sqlx::query_as(&format!(
        "SELECT event_id, stream_id, stream_version FROM {table} ORDER BY seq"
    ))
    .fetch_all(pool)
    .await
    .expect("ledger rows")
}

fn counts(rows: &[(Uuid, String, i64)]) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for (id, _, _) in rows {
        *counts.entry(*id).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------- fault policies

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_projection_that_keeps_failing_stops_loudly_and_passes_nothing() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    create_ledger(&db.pool, "ledger").await;
    let first = append(&store, "a", 1).await;
    let poisoned = append(&store, "a", 2).await;
    append(&store, "b", 3).await;
    let poison = Poison::default();
    poison.add("a", poisoned.stream_version);

    let subscription = Subscription::transactional(Ledger {
        table: "ledger",
        poison: poison.clone(),
    })
    .batch_size(1)
    .retry_backoff(Duration::from_millis(5), Duration::from_millis(10))
    .start(&db.pool)
    .await
    .expect("start");
    let error = tokio::time::timeout(PATIENCE, subscription.join())
        .await
        .expect("stops by itself")
        .expect_err("stops with the error");
    let SubscriptionError::Projection(failure) = &error else {
        panic!("unexpected error {error:?}");
    };
    assert!(
        matches!(&**failure, ProjectionError::Handler { position, .. } if *position == poisoned.position),
        "the error names the event: {failure}"
    );

    // Nothing at or after the poisoned event is applied; nothing is recorded as skipped.
    let rows = ledger(&db.pool, "ledger").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, first.event_id);
    let admin = ProjectionAdmin::new(db.pool.clone());
    assert!(admin.skipped(Ledger::NAME).await.unwrap().is_empty());
    assert!(admin.parked(Ledger::NAME).await.unwrap().is_empty());
    let status = admin.status(Ledger::NAME).await.unwrap();
    assert_eq!(status.state, ProjectionState::Stopped);
    assert_eq!(
        status.lag_events, 2,
        "the poisoned event and the one after it"
    );
    assert!(status.checkpoint.unwrap().position < poisoned.position);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_skip_policy_passes_a_failing_event_and_records_it() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    create_ledger(&db.pool, "ledger").await;
    let mut events = Vec::new();
    for n in 0..12 {
        events.push(append(&store, &format!("s-{}", n % 3), n).await);
    }
    let poisoned = events[4].clone();
    let poison = Poison::default();
    poison.add(&poisoned.stream_id, poisoned.stream_version);

    let subscription = Subscription::transactional(Ledger {
        table: "ledger",
        poison,
    })
    .batch_size(5)
    .fault_policy(FaultPolicy::skip().after_attempts(2))
    .retry_backoff(Duration::from_millis(5), Duration::from_millis(10))
    .start(&db.pool)
    .await
    .expect("start");
    subscription
        .wait_for(events.last().unwrap().position, PATIENCE)
        .await
        .expect("caught up");

    let rows = counts(&ledger(&db.pool, "ledger").await);
    for event in &events {
        let expected = usize::from(event.event_id != poisoned.event_id);
        assert_eq!(rows.get(&event.event_id).copied().unwrap_or(0), expected);
    }
    let skipped = ProjectionAdmin::new(db.pool.clone())
        .skipped(Ledger::NAME)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].event_id, poisoned.event_id);
    assert_eq!(skipped[0].position, poisoned.position);
    assert_eq!(skipped[0].stream_id, poisoned.stream_id);
    assert_eq!(skipped[0].skipped_by, "policy");
    assert!(
        skipped[0].error.contains("poisoned event"),
        "{}",
        skipped[0].error
    );
    subscription.shutdown().await.expect("shutdown");
}

/// Stream `a` is parked on its version 2, with it and the later versions held in order.
async fn assert_parked_on_a2(admin: &ProjectionAdmin, events: &[Appended]) {
    let parked = admin.parked(Ledger::NAME).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].stream_id, "a");
    assert_eq!(
        parked[0].held_events, 4,
        "the failed event and the three after it"
    );
    assert_eq!(parked[0].failed_event_id, Some(events[2].event_id));
    assert!(
        parked[0].error.contains("poisoned event a@2"),
        "{}",
        parked[0].error
    );
    let held: Vec<Uuid> = admin
        .held_events(Ledger::NAME, "a")
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    let a_from_2: Vec<Uuid> = events
        .iter()
        .filter(|e| e.stream_id == "a" && e.stream_version >= 2)
        .map(|e| e.event_id)
        .collect();
    assert_eq!(held, a_from_2, "held in order, the failed event first");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_stream_waits_while_others_go_on_and_a_retry_replays_it_in_order() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    create_ledger(&db.pool, "ledger").await;
    let poison = Poison::default();
    poison.add("a", 2);

    let subscription = Subscription::transactional(Ledger {
        table: "ledger",
        poison: poison.clone(),
    })
    .batch_size(3)
    .fault_policy(FaultPolicy::park().after_attempts(2))
    .retry_backoff(Duration::from_millis(5), Duration::from_millis(10))
    .start(&db.pool)
    .await
    .expect("start");

    let mut events = Vec::new();
    for n in 0..5 {
        events.push(append(&store, "a", n).await);
        events.push(append(&store, "b", n).await);
    }
    let last = events.last().unwrap().position;
    subscription
        .wait_for(last, PATIENCE)
        .await
        .expect("the global checkpoint goes on");

    // `b` is live; `a` applied up to its version 1, the rest held.
    let rows = ledger(&db.pool, "ledger").await;
    let applied: Vec<(&str, i64)> = rows.iter().map(|(_, s, v)| (s.as_str(), *v)).collect();
    assert!(applied.contains(&("a", 1)));
    assert_eq!(applied.iter().filter(|(s, _)| *s == "a").count(), 1);
    assert_eq!(applied.iter().filter(|(s, _)| *s == "b").count(), 5);

    let admin = ProjectionAdmin::new(db.pool.clone());
    assert_parked_on_a2(&admin, &events).await;
    let status = admin.status(Ledger::NAME).await.unwrap();
    assert_eq!(status.state, ProjectionState::Parked);
    assert_eq!(status.parked_streams, 1);
    assert_eq!(status.lag_events, 0);
    assert_eq!(subscription.status().parked_streams, 1);

    // A retry while the cause remains: still parked, nothing applied, error kept.
    assert!(admin.retry(Ledger::NAME, "a").await.unwrap());
    eventually("the failed retry is carried out", || async {
        admin.parked(Ledger::NAME).await.unwrap()[0]
            .request
            .is_none()
    })
    .await;
    assert_eq!(ledger(&db.pool, "ledger").await.len(), 6);

    // Cured: a retry replays the held events in order, and the stream is live again.
    poison.cure();
    assert!(admin.retry(Ledger::NAME, "a").await.unwrap());
    assert!(
        !admin.retry(Ledger::NAME, "no-such-stream").await.unwrap(),
        "only a parked stream can be retried"
    );
    eventually("the stream is live again", || async {
        admin.parked(Ledger::NAME).await.unwrap().is_empty()
    })
    .await;
    let later = append(&store, "a", 99).await;
    subscription
        .wait_for(later.position, PATIENCE)
        .await
        .expect("caught up");
    let rows = ledger(&db.pool, "ledger").await;
    let a_versions: Vec<i64> = rows
        .iter()
        .filter(|(_, s, _)| s == "a")
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(
        a_versions,
        vec![1, 2, 3, 4, 5, 6],
        "stream `a` in order, once each"
    );
    assert!(counts(&rows).values().all(|n| *n == 1));
    assert_eq!(
        admin.status(Ledger::NAME).await.unwrap().state,
        ProjectionState::Running
    );
    subscription.shutdown().await.expect("shutdown");
}

/// An at-least-once subscriber that records what it was handed, failing on poisoned events.
#[derive(Clone, Default)]
struct Outbox {
    sent: Arc<Mutex<Vec<(String, u64)>>>,
    poison: Poison,
}

impl Subscriber for Outbox {
    fn name(&self) -> &'static str {
        "Outbox"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["test.happened"]
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            if self.poison.hits(event) {
                return Err(cqrs_core::__private::handler_error(
                    "Outbox",
                    event,
                    TestError::Poisoned(event.stream_id.clone(), event.stream_version),
                ));
            }
            self.sent
                .lock()
                .unwrap()
                .push((event.stream_id.clone(), event.stream_version));
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_skip_of_a_parked_stream_records_the_event_and_replays_the_rest() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    let outbox = Outbox::default();
    outbox.poison.add("a", 2);
    let subscription = Subscription::at_least_once(outbox.clone())
        .batch_size(4)
        .fault_policy(FaultPolicy::park().after_attempts(1))
        .start(&db.pool)
        .await
        .expect("start");
    let mut events = Vec::new();
    for n in 0..4 {
        events.push(append(&store, "a", n).await);
        events.push(append(&store, "b", n).await);
    }
    subscription
        .wait_for(events.last().unwrap().position, PATIENCE)
        .await
        .expect("caught up");
    let admin = ProjectionAdmin::new(db.pool.clone());
    let parked = admin.parked("Outbox").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].held_events, 3);

    // The poison stays: a skip passes the failed event and replays the others.
    assert!(admin.skip("Outbox", "a").await.unwrap());
    eventually("the stream is live again", || async {
        admin.parked("Outbox").await.unwrap().is_empty()
    })
    .await;
    let sent = outbox.sent.lock().unwrap().clone();
    let a: Vec<u64> = sent
        .iter()
        .filter(|(s, _)| s == "a")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(a, vec![1, 3, 4]);
    let skipped = admin.skipped("Outbox").await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].event_id, events[2].event_id);
    assert_eq!(skipped[0].skipped_by, "operator");
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn modes_that_cannot_keep_dead_letters_refuse_a_skip_or_park_policy_at_start() {
    let db = TestDb::create(4).await;
    store_on(&db).await;
    let model = cqrs_core::ReadModel::new(Ledgerless::default());
    let started = Subscription::in_memory(model)
        .fault_policy(FaultPolicy::park())
        .start(&db.pool)
        .await;
    assert!(
        matches!(
            started,
            Err(SubscriptionError::Unsupported {
                name: "Ledgerless",
                ..
            })
        ),
        "{started:?}"
    );
    let in_memory = Subscription::in_memory(cqrs_core::ReadModel::new(Ledgerless::default()))
        .named("Renamed")
        .start(&db.pool)
        .await;
    assert!(
        matches!(in_memory, Err(SubscriptionError::Unsupported { .. })),
        "{in_memory:?}"
    );
    // Nothing was written: no checkpoint, no lease.
    let admin = ProjectionAdmin::new(db.pool.clone());
    assert_eq!(admin.status("Ledgerless").await.unwrap().checkpoint, None);
    assert_eq!(admin.status("Renamed").await.unwrap().checkpoint, None);
}

#[derive(Default)]
struct Ledgerless {
    seen: u64,
}

#[projection]
impl Ledgerless {
    #[event_handler]
    fn on_happened(&mut self, happened: &Happened) {
        self.seen += happened.n;
    }
}

// ---------------------------------------------------------------- status, reset, blue/green

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_checkpoint_head_lag_and_state() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    create_ledger(&db.pool, "ledger").await;
    let admin = ProjectionAdmin::new(db.pool.clone());
    let mut events = Vec::new();
    for n in 0..7 {
        events.push(append(&store, "s", n).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let before = admin.status(Ledger::NAME).await.unwrap();
    assert_eq!(before.checkpoint, None);
    assert_eq!(before.state, ProjectionState::Stopped);
    assert_eq!(before.lag_events, 7);
    assert!(before.lag >= Duration::from_millis(50), "{:?}", before.lag);
    assert_eq!(before.head.position, events.last().unwrap().position);

    let subscription = Subscription::transactional(Ledger {
        table: "ledger",
        poison: Poison::default(),
    })
    .start(&db.pool)
    .await
    .expect("start");
    subscription
        .wait_for(events.last().unwrap().position, PATIENCE)
        .await
        .expect("caught up");
    let running = admin.status(Ledger::NAME).await.unwrap();
    assert_eq!(running.state, ProjectionState::Running);
    assert_eq!(running.lag_events, 0);
    assert_eq!(running.lag, Duration::ZERO);
    assert_eq!(running.checkpoint.unwrap().position, running.head.position);
    assert!(subscription.status().leading);

    #[cfg(feature = "metrics")]
    #[allow(clippy::float_cmp)] // whole numbers, exactly representable
    {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let statuses = metrics::with_local_recorder(&recorder, || {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(admin.export_metrics(&[Ledger::NAME]))
            })
        })
        .unwrap();
        assert_eq!(statuses.len(), 1);
        let gauges: HashMap<String, f64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                metrics_util::debugging::DebugValue::Gauge(g) => {
                    Some((key.key().name().to_owned(), g.into_inner()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(gauges["cqrs_projection_state"], 1.0);
        assert_eq!(gauges["cqrs_projection_lag_events"], 0.0);
        #[allow(clippy::cast_precision_loss)]
        let head = events.last().unwrap().position.0 as f64;
        assert_eq!(gauges["cqrs_projection_head_position"], head);
        assert_eq!(gauges["cqrs_projection_checkpoint_position"], head);
    }

    subscription.shutdown().await.expect("shutdown");
    eventually("the lease is released", || async {
        admin.status(Ledger::NAME).await.unwrap().state == ProjectionState::Stopped
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_is_refused_while_a_worker_runs_and_rebuilds_once_it_stopped() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    create_ledger(&db.pool, "ledger").await;
    let mut events = Vec::new();
    for n in 0..20 {
        events.push(append(&store, &format!("s-{}", n % 4), n).await);
    }
    let last = events.last().unwrap().position;
    let ledger_projection = || Ledger {
        table: "ledger",
        poison: Poison::default(),
    };
    let running = Subscription::transactional(ledger_projection())
        .start(&db.pool)
        .await
        .expect("start");
    running.wait_for(last, PATIENCE).await.expect("caught up");

    let mut tx = db.pool.begin().await.unwrap();
    let refused = ProjectionAdmin::reset_in(&mut tx, Ledger::NAME).await;
    assert!(
        matches!(refused, Err(AdminError::Running { .. })),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();

    running.shutdown().await.expect("shutdown");
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("TRUNCATE ledger")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(
        ProjectionAdmin::reset_in(&mut tx, Ledger::NAME)
            .await
            .expect("reset")
    );
    tx.commit().await.unwrap();

    let rebuilt = Subscription::transactional(ledger_projection())
        .start(&db.pool)
        .await
        .expect("restart");
    rebuilt.wait_for(last, PATIENCE).await.expect("rebuilt");
    let rows = counts(&ledger(&db.pool, "ledger").await);
    assert_eq!(rows.len(), events.len());
    assert!(rows.values().all(|n| *n == 1));
    rebuilt.shutdown().await.expect("shutdown");
}

/// The sum of `n` per stream, in a table it takes as data. It applies as many events as its
/// budget allows and fails on the others (rolled back, retried), so a test can hold it
/// behind the head without holding a transaction open.
struct Totals {
    table: &'static str,
    budget: Arc<AtomicI64>,
}

#[projection(context = PgConnection)]
impl Totals {
    #[event_handler]
    async fn on_happened(
        &mut self,
        happened: &Happened,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), TestError> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.budget.fetch_add(1, Ordering::SeqCst);
            return Err(TestError::NotYet);
        }
        sqlx::query(&format!(
            "INSERT INTO {table} (stream_id, total) VALUES ($1, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET total = {table}.total + $2",
            table = self.table
        ))
        .bind(&event.stream_id)
        .bind(i64::try_from(happened.n).unwrap())
        .execute(db)
        .await?;
        Ok(())
    }
}

async fn totals(pool: &PgPool, table: &str) -> Vec<(String, i64)> {
    sqlx::query_as(&format!(
        "SELECT stream_id, total FROM {table} ORDER BY stream_id"
    ))
    .fetch_all(pool)
    .await
    .expect("totals")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blue_green_rebuild_serves_the_old_table_until_the_new_one_has_caught_up() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    for table in ["totals_v1", "totals_v2"] {
        sqlx::query(&format!(
            "CREATE TABLE {table} (stream_id text PRIMARY KEY, total bigint NOT NULL)"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let blue = Subscription::transactional(Totals {
        table: "totals_v1",
        budget: Arc::new(AtomicI64::new(i64::MAX)),
    })
    .start(&db.pool)
    .await
    .expect("blue");
    let mut events = Vec::new();
    for n in 1..=30 {
        events.push(append(&store, &format!("s-{}", n % 3), n).await);
    }
    let mut last = events.last().unwrap().position;
    blue.wait_for(last, PATIENCE).await.expect("blue caught up");

    // Green: the same projection type, a new table and a new name; it gets through ten
    // events, then is held back.
    let budget = Arc::new(AtomicI64::new(10));
    let green = Subscription::transactional(Totals {
        table: "totals_v2",
        budget: Arc::clone(&budget),
    })
    .named("Totals_v2")
    .batch_size(1)
    .fault_policy(FaultPolicy::retry_forever())
    .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
    .start(&db.pool)
    .await
    .expect("green");
    green
        .wait_for(events[9].position, PATIENCE)
        .await
        .expect("green rebuilds the first ten");
    let admin = ProjectionAdmin::new(db.pool.clone());
    let early = admin
        .wait_caught_up("Totals_v2", Duration::from_millis(200))
        .await;
    assert!(
        matches!(early, Err(AdminError::NotCaughtUp { .. })),
        "no switch before green caught up: {early:?}"
    );
    let rebuilding = admin.status("Totals_v2").await.unwrap();
    assert_eq!(rebuilding.lag_events, 20);

    // Meanwhile blue keeps serving, new events included.
    for n in 31..=36 {
        last = append(&store, &format!("s-{}", n % 3), n).await.position;
    }
    blue.wait_for(last, PATIENCE).await.expect("blue serves");
    let served = totals(&db.pool, "totals_v1").await;
    let sum: i64 = served.iter().map(|(_, t)| t).sum();
    assert_eq!(sum, (1..=36).sum::<i64>());
    let partial: i64 = totals(&db.pool, "totals_v2")
        .await
        .iter()
        .map(|(_, t)| t)
        .sum();
    assert_eq!(partial, (1..=10).sum::<i64>());

    // Green goes on; the switch waits for it to catch up, then the query side flips.
    budget.store(i64::MAX / 2, Ordering::SeqCst);
    let head = admin
        .wait_caught_up("Totals_v2", PATIENCE)
        .await
        .expect("green caught up");
    assert_eq!(head.position, last);
    assert_eq!(totals(&db.pool, "totals_v2").await, served);
    assert_eq!(
        admin.status("Totals").await.unwrap().state,
        ProjectionState::Running
    );
    assert_eq!(
        admin.status("Totals_v2").await.unwrap().state,
        ProjectionState::Running
    );
    blue.shutdown().await.expect("blue");
    green.shutdown().await.expect("green");
}

// ---------------------------------------------------------------- one worker per name

const CHILD_DB: &str = "PROJECTION_OPS_CHILD_DB";
const CHILD_MODE: &str = "PROJECTION_OPS_CHILD_MODE";
const LEADING: &str = "PROJECTION_OPS_CHILD_LEADING";

/// Records each delivery, with the worker that made it, in `deliveries` (outside any batch
/// transaction: an at-least-once side effect).
#[derive(Clone)]
struct Deliveries {
    pool: PgPool,
    worker: &'static str,
}

impl Subscriber for Deliveries {
    fn name(&self) -> &'static str {
        "Deliveries"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["test.happened"]
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO deliveries (event_id, worker) VALUES ($1, $2)")
                .bind(event.event_id)
                .bind(self.worker)
                .execute(&self.pool)
                .await
                .map_err(|e| cqrs_core::__private::handler_error("Deliveries", event, e))?;
            Ok(())
        })
    }
}

fn subscription(mode: &str, pool: &PgPool, worker: &'static str) -> Subscription {
    let subscription = match mode {
        "transactional" => Subscription::transactional(Ledger {
            table: "ledger",
            poison: Poison::default(),
        }),
        "at_least_once" => Subscription::at_least_once(Deliveries {
            pool: pool.clone(),
            worker,
        }),
        other => panic!("unknown mode {other}"),
    };
    subscription
        .batch_size(5)
        .lead_retry(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
}

/// Not a test on its own: the child process of
/// `one_worker_per_name_across_processes_and_a_standby_takes_over_when_it_is_killed`.
/// Runs the subscription, announces that it leads, and keeps running until killed.
#[test]
fn child_worker() {
    let (Ok(db), Ok(mode)) = (std::env::var(CHILD_DB), std::env::var(CHILD_MODE)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let options =
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&common::admin_url())
                .expect("url")
                .database(&db);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("connect");
        let handle = subscription(&mode, &pool, "child")
            .start(&pool)
            .await
            .expect("start");
        while !handle.status().leading {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("{LEADING}");
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("the child was not killed");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_per_name_across_processes_and_a_standby_takes_over_when_it_is_killed() {
    for mode in ["transactional", "at_least_once"] {
        let db = TestDb::create(8).await;
        let store = store_on(&db).await;
        create_ledger(&db.pool, "ledger").await;
        sqlx::query("CREATE TABLE deliveries (event_id uuid NOT NULL, worker text NOT NULL)")
            .execute(&db.pool)
            .await
            .unwrap();
        let mut events = Vec::new();
        for n in 0..20 {
            events.push(append(&store, &format!("s-{}", n % 4), n).await);
        }

        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, &db.name)
            .env(CHILD_MODE, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child worker");
        let stdout = child.stdout.take().expect("stdout");
        let leads = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.contains(LEADING))
        });
        let leads = tokio::time::timeout(Duration::from_secs(30), leads)
            .await
            .expect("the child starts")
            .expect("reader");
        assert!(leads, "{mode}: the child leads");

        // This process's worker stands by while the child leads and delivers.
        let standby = subscription(mode, &db.pool, "parent")
            .start(&db.pool)
            .await
            .expect("standby");
        for n in 20..40 {
            events.push(append(&store, &format!("s-{}", n % 4), n).await);
        }
        let before_kill = events[29].position;
        standby
            .wait_for(before_kill, PATIENCE)
            .await
            .expect("the standby follows the stored checkpoint");
        assert!(!standby.status().leading, "{mode}: two workers never lead");
        let parent_deliveries: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE worker = 'parent'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(parent_deliveries, 0, "{mode}: the standby delivers nothing");

        // SIGKILL: the session ends, and the lock with it.
        child.kill().expect("kill");
        let killed = Instant::now();
        child.wait().expect("reap");
        for n in 40..50 {
            events.push(append(&store, &format!("s-{}", n % 4), n).await);
        }
        eventually("the standby leads", || async { standby.status().leading }).await;
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{mode}: took over {took:?} after the kill"
        );
        standby
            .wait_for(events.last().unwrap().position, PATIENCE)
            .await
            .expect("the new leader catches up");

        if mode == "transactional" {
            let rows = counts(&ledger(&db.pool, "ledger").await);
            assert_eq!(rows.len(), events.len());
            assert!(rows.values().all(|n| *n == 1), "{mode}: exactly once");
        } else {
            let delivered: Vec<(Uuid, String)> =
                sqlx::query_as("SELECT event_id, worker FROM deliveries")
                    .fetch_all(&db.pool)
                    .await
                    .unwrap();
            let ids: HashSet<Uuid> = delivered.iter().map(|(id, _)| *id).collect();
            for event in &events {
                assert!(ids.contains(&event.event_id), "{mode}: at least once");
            }
            assert!(delivered.iter().any(|(_, w)| w == "child"));
            assert!(delivered.iter().any(|(_, w)| w == "parent"));
        }
        standby.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_lease_session_is_killed_gives_way_and_leads_again() {
    let db = TestDb::create(8).await;
    let store = store_on(&db).await;
    create_ledger(&db.pool, "ledger").await;
    let worker = subscription("transactional", &db.pool, "only")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .start(&db.pool)
        .await
        .expect("start");
    eventually("the worker leads", || async { worker.status().leading }).await;
    let mut events = Vec::new();
    for n in 0..10 {
        events.push(append(&store, "s", n).await);
    }
    worker
        .wait_for(events.last().unwrap().position, PATIENCE)
        .await
        .expect("caught up");

    // The session holding the lock ends, as when its connection breaks.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND classid = 1668444784::bigint::oid AND granted \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true], "one session held the lease");
    for n in 10..20 {
        events.push(append(&store, "s", n).await);
    }
    let admin = ProjectionAdmin::new(db.pool.clone());
    worker
        .wait_for(events.last().unwrap().position, PATIENCE)
        .await
        .expect("the worker takes the lease again and goes on");
    // Within a second of the loss the worker notices, gives way, and takes the lease again.
    eventually("the lease is held again", || async {
        admin.status(Ledger::NAME).await.unwrap().state == ProjectionState::Running
    })
    .await;
    eventually("the worker leads again", || async {
        worker.status().leading
    })
    .await;
    events.push(append(&store, "s", 20).await);
    worker
        .wait_for(events.last().unwrap().position, PATIENCE)
        .await
        .expect("delivers under the new lease");
    let rows = counts(&ledger(&db.pool, "ledger").await);
    assert_eq!(rows.len(), events.len());
    assert!(rows.values().all(|n| *n == 1), "exactly once");
    worker.shutdown().await.expect("shutdown");
}

//! Durable subscriptions against a real PostgreSQL server, each test in a fresh database.
//!
//! What they pin down: a transactional projection applies every event exactly once across
//! crashes and handler failures; a live subscription misses nothing committed out of
//! position order; notifications only speed delivery up; a projection receives only its
//! event types while its checkpoint still passes the others; and a query can wait for a
//! projection to reach a command's position.
#![allow(missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::TestDb;
use cqrs_core::{GlobalPosition, Projection, ProjectionError, ReadModel, RecordedEvent};
use cqrs_postgres::subscription::{
    Checkpoint, Checkpoints, Subscription, SubscriptionError, WaitError,
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

/// Long enough that only a real failure reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- schema and appends

/// The events table as the store defines it, and the subscriptions migration.
async fn migrate(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE cqrs_events (
            position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tx             xid8 NOT NULL DEFAULT pg_current_xact_id(),
            stream_id      text NOT NULL,
            stream_version bigint NOT NULL,
            event_id       uuid NOT NULL UNIQUE,
            event_type     text NOT NULL,
            schema_version int NOT NULL,
            payload        jsonb NOT NULL,
            metadata       jsonb NOT NULL DEFAULT '{}',
            recorded_at    timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream_id, stream_version)
        );
        CREATE INDEX ON cqrs_events (tx, position);",
    )
    .execute(pool)
    .await
    .expect("events table");
    sqlx::raw_sql(include_str!("../migrations/0002_subscriptions.sql"))
        .execute(pool)
        .await
        .expect("subscriptions migration");
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

/// Appends one event per type to `stream` inside the caller's transaction, announcing it on
/// the events channel unless `notify` is false (a lost notification).
async fn append_in(
    conn: &mut PgConnection,
    stream: &str,
    types: &[&str],
    notify: bool,
) -> Vec<Appended> {
    let version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(stream_version), 0) FROM cqrs_events WHERE stream_id = $1",
    )
    .bind(stream)
    .fetch_one(&mut *conn)
    .await
    .expect("stream version");
    let mut appended = Vec::new();
    for (offset, event_type) in types.iter().enumerate() {
        let event_id = Uuid::now_v7();
        let stream_version = version + 1 + i64::try_from(offset).unwrap();
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO cqrs_events \
             (stream_id, stream_version, event_id, event_type, schema_version, payload) \
             VALUES ($1, $2, $3, $4, 1, $5) RETURNING position",
        )
        .bind(stream)
        .bind(stream_version)
        .bind(event_id)
        .bind(event_type)
        .bind(serde_json::json!({ "n": stream_version }))
        .fetch_one(&mut *conn)
        .await
        .expect("insert event");
        appended.push(Appended {
            event_id,
            stream_id: stream.to_owned(),
            stream_version: u64::try_from(stream_version).unwrap(),
            event_type: (*event_type).to_owned(),
            position: GlobalPosition(u64::try_from(position).unwrap()),
        });
    }
    if notify {
        if let Some(last) = appended.last() {
            sqlx::query("SELECT pg_notify('cqrs_events', $1)")
                .bind(last.position.to_string())
                .execute(&mut *conn)
                .await
                .expect("notify");
        }
    }
    appended
}

/// Appends and commits.
async fn append(pool: &PgPool, stream: &str, types: &[&str]) -> Vec<Appended> {
    let mut tx = pool.begin().await.expect("begin");
    let appended = append_in(&mut tx, stream, types, true).await;
    tx.commit().await.expect("commit");
    appended
}

/// Appends and commits without a notification.
async fn append_silently(pool: &PgPool, stream: &str, types: &[&str]) -> Vec<Appended> {
    let mut tx = pool.begin().await.expect("begin");
    let appended = append_in(&mut tx, stream, types, false).await;
    tx.commit().await.expect("commit");
    appended
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

const HAPPENED: &str = "test.happened";

/// What the ledger projection does besides recording the event.
#[derive(Clone)]
enum Fault {
    None,
    /// Once at least `after` events were handled and the open batch already holds three
    /// rows, announce it and hang: the batch is in flight when the test aborts the task.
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

/// Records every event it handles as one row of `ledger`, through the batch transaction.
/// `ledger` has no unique key, so an event applied twice shows up as two rows.
struct Ledger {
    handled: Arc<AtomicUsize>,
    fault: Fault,
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

fn handler_error(event: &RecordedEvent, message: &str) -> ProjectionError {
    ProjectionError::Handler {
        projection: Ledger::NAME,
        event_type: event.event_type.clone(),
        position: event.position,
        source: message.into(),
    }
}

impl Projection for Ledger {
    const NAME: &'static str = "Ledger";
    const EVENT_TYPES: &'static [&'static str] = &[HAPPENED];
    type Context = PgConnection;

    async fn project(
        &mut self,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), ProjectionError> {
        sqlx::query(
            "INSERT INTO ledger (event_id, stream_id, stream_version, position) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(event.event_id)
        .bind(&event.stream_id)
        .bind(i64::try_from(event.stream_version).unwrap())
        .bind(i64::try_from(event.position.0).unwrap())
        .execute(&mut *db)
        .await
        .map_err(|e| handler_error(event, &e.to_string()))?;
        let handled = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
        match &self.fault {
            Fault::None => Ok(()),
            Fault::HangMidBatch { after, hanging } => {
                if handled >= *after && mid_batch(db).await {
                    hanging.notify_one();
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
            Fault::FailOnceMidBatch { after, failed } => {
                if handled >= *after && !failed.load(Ordering::SeqCst) && mid_batch(db).await {
                    failed.store(true, Ordering::SeqCst);
                    return Err(handler_error(event, "injected failure"));
                }
                Ok(())
            }
            Fault::Always => Err(handler_error(event, "always fails")),
        }
    }
}

/// Whether the open batch transaction already wrote three rows or more.
async fn mid_batch(db: &mut PgConnection) -> bool {
    let in_this_batch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger WHERE tx = pg_current_xact_id()")
            .fetch_one(db)
            .await
            .expect("rows of the open batch");
    in_this_batch >= 3
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

async fn ledger_len(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .expect("ledger count")
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

/// 100 events over 10 streams, committed one stream at a time.
async fn ten_streams_of_ten(pool: &PgPool) -> Vec<Appended> {
    let mut events = Vec::new();
    for n in 0..100 {
        events.extend(append(pool, &format!("s-{}", n % 10), &[HAPPENED]).await);
    }
    events
}

// ---------------------------------------------------------------- crash and resume

#[tokio::test(flavor = "multi_thread")]
async fn aborted_mid_batch_resumes_with_every_event_applied_exactly_once() {
    let db = TestDb::create(8).await;
    migrate(&db.pool).await;
    Ledger::create_table(&db.pool).await;
    let events = ten_streams_of_ten(&db.pool).await;

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

    // The batch in flight is rolled back; what is stored agrees with the checkpoint.
    let checkpoints = Checkpoints::new(db.pool.clone());
    let committed = tokio::time::timeout(PATIENCE, async {
        loop {
            let stored = checkpoints.load(Ledger::NAME).await.unwrap().unwrap();
            let committed = events
                .iter()
                .filter(|e| e.position <= stored.position)
                .count();
            if ledger_len(&db.pool).await == i64::try_from(committed).unwrap() {
                return committed;
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
    migrate(&db.pool).await;
    Ledger::create_table(&db.pool).await;
    let events = ten_streams_of_ten(&db.pool).await;

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
    migrate(&db.pool).await;
    Ledger::create_table(&db.pool).await;
    let events = append(&db.pool, "s-1", &[HAPPENED, HAPPENED]).await;

    let subscription = Subscription::transactional(Ledger::new(Fault::Always))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .max_consecutive_failures(3)
        .start(&db.pool)
        .await
        .expect("start");
    let error = subscription.join().await.expect_err("gives up");
    match &error {
        SubscriptionError::Projection(failure) => match &**failure {
            ProjectionError::Handler {
                projection,
                position,
                source,
                ..
            } => {
                assert_eq!(*projection, Ledger::NAME);
                assert_eq!(*position, events[0].position);
                assert_eq!(source.to_string(), "always fails");
            }
            other => panic!("unexpected projection error {other:?}"),
        },
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(ledger_len(&db.pool).await, 0);
    let stored = Checkpoints::new(db.pool.clone())
        .load(Ledger::NAME)
        .await
        .unwrap();
    assert_eq!(stored, Some(Checkpoint::START));
}

// ---------------------------------------------------------------- an at-least-once collector

/// Keeps every event it receives, in order.
#[derive(Default)]
struct Collector {
    seen: Vec<RecordedEvent>,
}

impl Projection for Collector {
    const NAME: &'static str = "Collector";
    const EVENT_TYPES: &'static [&'static str] = &[HAPPENED];
    type Context = ();

    async fn project(&mut self, event: &RecordedEvent, _: &mut ()) -> Result<(), ProjectionError> {
        self.seen.push(event.clone());
        Ok(())
    }
}

async fn seen(model: &ReadModel<Collector>) -> Vec<RecordedEvent> {
    model.read().await.seen.clone()
}

// ---------------------------------------------------------------- the gap test

#[tokio::test(flavor = "multi_thread")]
async fn a_live_subscriber_receives_events_committed_out_of_position_order_exactly_once() {
    const APPENDERS: usize = 8;
    const TRANSACTIONS: usize = 12;
    let db = TestDb::create(24).await;
    migrate(&db.pool).await;
    Ledger::create_table(&db.pool).await;

    let collector = ReadModel::new(Collector::default());
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
    // drawn in one order and become visible in another.
    let mut appenders = Vec::new();
    for appender in 0..APPENDERS {
        let pool = db.pool.clone();
        appenders.push(tokio::spawn(async move {
            let mut appended = Vec::new();
            for round in 0..TRANSACTIONS {
                let mut tx = pool.begin().await.expect("begin");
                let stream = format!("gap-{}", (appender + round) % 5 + appender * 5);
                let count = 1 + (appender + round) % 3;
                appended.extend(append_in(&mut tx, &stream, &vec![HAPPENED; count], true).await);
                let hold = ((appender * 7 + round * 13) % 11) * 5;
                tokio::time::sleep(Duration::from_millis(u64::try_from(hold).unwrap())).await;
                tx.commit().await.expect("commit");
            }
            appended
        }));
    }
    let mut events = Vec::new();
    for appender in appenders {
        events.extend(appender.await.expect("appender"));
    }
    assert_eq!(events.len(), APPENDERS * TRANSACTIONS * 2);

    let progress = live.progress();
    // Every position, whatever its commit order, is passed by both subscriptions.
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

// ---------------------------------------------------------------- following live

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_wakes_a_caught_up_subscription() {
    let db = TestDb::create(8).await;
    migrate(&db.pool).await;
    let collector = ReadModel::new(Collector::default());
    // Polling alone would not find the events before the test gives up.
    let subscription = Subscription::at_least_once(collector.clone())
        .poll_interval(Duration::from_secs(3600))
        .start(&db.pool)
        .await
        .expect("start");
    let checkpoints = Checkpoints::new(db.pool.clone());
    eventually("the subscription has caught up", || async {
        checkpoints.load(Collector::NAME).await.unwrap().is_some()
    })
    .await;

    for round in 0..3 {
        let appended = append(&db.pool, "live", &[HAPPENED, HAPPENED]).await;
        eventually("the notified events arrive", || async {
            seen(&collector).await.len() == (round + 1) * 2
        })
        .await;
        let ids: Vec<Uuid> = seen(&collector).await[round * 2..]
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(ids, appended.iter().map(|e| e.event_id).collect::<Vec<_>>());
    }
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_notifications_polling_still_delivers_everything() {
    let db = TestDb::create(8).await;
    migrate(&db.pool).await;

    // A listening subscription whose notifications never come...
    let listening = ReadModel::new(Collector::default());
    let listening_subscription = Subscription::at_least_once(listening.clone())
        .poll_interval(Duration::from_millis(50))
        .start(&db.pool)
        .await
        .expect("start listening");
    // ...and one that does not listen at all.
    #[derive(Default)]
    struct Deaf(Collector);
    impl Projection for Deaf {
        const NAME: &'static str = "Deaf";
        const EVENT_TYPES: &'static [&'static str] = &[HAPPENED];
        type Context = ();
        async fn project(
            &mut self,
            event: &RecordedEvent,
            ctx: &mut (),
        ) -> Result<(), ProjectionError> {
            self.0.project(event, ctx).await
        }
    }
    let deaf = ReadModel::new(Deaf::default());
    let deaf_subscription = Subscription::at_least_once(deaf.clone())
        .notifications(false)
        .poll_interval(Duration::from_millis(50))
        .start(&db.pool)
        .await
        .expect("start deaf");

    let mut events = Vec::new();
    for round in 0..5 {
        events
            .extend(append_silently(&db.pool, &format!("quiet-{}", round % 2), &[HAPPENED]).await);
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    eventually("polling delivers every event", || async {
        let listened: Vec<Uuid> = seen(&listening).await.iter().map(|e| e.event_id).collect();
        let polled: Vec<Uuid> = deaf
            .read()
            .await
            .0
            .seen
            .iter()
            .map(|e| e.event_id)
            .collect();
        listened == ids && polled == ids
    })
    .await;
    listening_subscription.shutdown().await.expect("shutdown");
    deaf_subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- event types

/// Handles only `test.a`.
#[derive(Default)]
struct OnlyA {
    seen: Vec<String>,
}

impl Projection for OnlyA {
    const NAME: &'static str = "OnlyA";
    const EVENT_TYPES: &'static [&'static str] = &["test.a"];
    type Context = ();

    async fn project(&mut self, event: &RecordedEvent, _: &mut ()) -> Result<(), ProjectionError> {
        self.seen.push(event.event_type.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_receives_only_its_types_and_its_checkpoint_passes_the_others() {
    let db = TestDb::create(8).await;
    migrate(&db.pool).await;
    // History before it starts, and more after.
    let mut events = append(&db.pool, "mixed", &["test.b", "test.a", "test.c"]).await;
    let model = ReadModel::new(OnlyA::default());
    let subscription = Subscription::at_least_once(model.clone())
        .batch_size(2)
        .start(&db.pool)
        .await
        .expect("start");
    events.extend(append(&db.pool, "mixed", &["test.a", "test.b", "test.b", "test.c"]).await);

    // The last event is one it does not handle; reaching it means passing it.
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "test.c");
    subscription
        .wait_for(last.position, PATIENCE)
        .await
        .expect("the checkpoint passes events of other types");
    assert_eq!(model.read().await.seen, vec!["test.a", "test.a"]);
    assert_eq!(subscription.status().checkpoint.position, last.position);

    // Only other types after this: the checkpoint still follows.
    let others = append(&db.pool, "other", &["test.b", "test.c"]).await;
    Checkpoints::new(db.pool.clone())
        .wait_for(OnlyA::NAME, others[1].position, PATIENCE)
        .await
        .expect("the stored checkpoint passes them too");
    assert_eq!(model.read().await.seen.len(), 2);
    subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- read your writes

#[tokio::test(flavor = "multi_thread")]
async fn a_query_waits_for_the_projection_to_reach_a_position() {
    let db = TestDb::create(8).await;
    migrate(&db.pool).await;
    Ledger::create_table(&db.pool).await;
    let subscription = Subscription::transactional(Ledger::new(Fault::None))
        .start(&db.pool)
        .await
        .expect("start");

    let written = append(&db.pool, "ryw", &[HAPPENED]).await.remove(0);
    subscription
        .wait_for(written.position, PATIENCE)
        .await
        .expect("reached");
    let rows = ledger_rows(&db.pool).await;
    assert_eq!(
        rows.get(&written.event_id),
        Some(&1),
        "the query sees the write"
    );

    let unreachable = GlobalPosition(written.position.0 + 1_000_000);
    let local = subscription
        .wait_for(unreachable, Duration::from_millis(200))
        .await;
    assert!(
        matches!(local, Err(WaitError::Timeout { ref projection, position, .. })
            if projection == Ledger::NAME && position == unreachable),
        "{local:?}"
    );
    let shared = Checkpoints::new(db.pool.clone())
        .wait_for(Ledger::NAME, unreachable, Duration::from_millis(200))
        .await;
    assert!(
        matches!(shared, Err(WaitError::Timeout { .. })),
        "{shared:?}"
    );
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_of_one_transactional_projection_never_apply_an_event_twice() {
    let db = TestDb::create(16).await;
    migrate(&db.pool).await;
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
        events.extend(append(&db.pool, &format!("twin-{}", round % 4), &[HAPPENED]).await);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_position_behind_an_open_transaction_is_reached_once_it_commits() {
    let db = TestDb::create(8).await;
    migrate(&db.pool).await;
    let collector = ReadModel::new(Collector::default());
    let subscription = Subscription::at_least_once(collector.clone())
        .start(&db.pool)
        .await
        .expect("start");

    // An older transaction inserts first and stays open; a newer one commits behind it.
    let mut older = db.pool.begin().await.expect("begin");
    let held = append_in(&mut older, "held", &[HAPPENED], true)
        .await
        .remove(0);
    let newer = append(&db.pool, "free", &[HAPPENED]).await.remove(0);
    assert!(newer.position > held.position);
    let early = subscription
        .wait_for(newer.position, Duration::from_millis(300))
        .await;
    assert!(
        matches!(early, Err(WaitError::Timeout { .. })),
        "nothing is delivered past a transaction that may still commit: {early:?}"
    );
    assert!(seen(&collector).await.is_empty());

    older.commit().await.expect("commit");
    subscription
        .wait_for(newer.position, PATIENCE)
        .await
        .expect("reached once the older transaction ended");
    let ids: Vec<Uuid> = seen(&collector).await.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec![held.event_id, newer.event_id]);
    subscription.shutdown().await.expect("shutdown");
}

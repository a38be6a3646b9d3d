//! A durable subscription through separate database outages on a quiet store: each outage
//! is one failure, and a successful read in between ends the run of failures, events or not.
#![allow(missing_docs)]

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::TestDb;
use cqrs_core::{Event, RecordedEvent, projection};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{Subscription, SubscriptionHandle};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Happened;

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TestEvent {
    #[event(name = "test.happened")]
    Happened(Happened),
}

/// A projection that is never given anything: the store stays empty.
#[derive(Clone)]
struct Idle;

#[projection(context = PgConnection)]
impl Idle {
    #[event_handler]
    fn on_happened(&mut self, _: &Happened, _: &RecordedEvent, _: &mut PgConnection) {}
}

/// Polls `condition` every few milliseconds for up to `limit`; whether it came to hold.
async fn within<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    condition().await
}

/// Moves the events table out of the way (every read fails) or back.
async fn rename_events(pool: &PgPool, from: &str, to: &str) {
    sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
        .execute(pool)
        .await
        .expect("rename the events table");
}

fn failures(handle: &SubscriptionHandle) -> u32 {
    handle.status().failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_outages_on_a_quiet_store_never_add_up_to_giving_up() {
    let db = TestDb::create(4).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    // The retry comes long after the test has restored the table: each outage is exactly
    // one failed read.
    let handle = Subscription::transactional(Idle)
        .notifications(false)
        .poll_interval(Duration::from_millis(10))
        .retry_backoff(Duration::from_millis(400), Duration::from_millis(400))
        .max_consecutive_failures(2)
        .start(&db.pool)
        .await
        .expect("start");

    for outage in 1..=3 {
        let before = failures(&handle);
        rename_events(&db.pool, "cqrs_events", "cqrs_events_away").await;
        let failed = within(Duration::from_secs(10), || async {
            failures(&handle) > before || handle.is_finished()
        })
        .await;
        rename_events(&db.pool, "cqrs_events_away", "cqrs_events").await;
        assert!(failed, "outage {outage}: the read did not fail");
        assert!(
            !handle.is_finished(),
            "outage {outage}: the subscription gave up although every read between the \
             outages succeeded"
        );
        assert!(handle.status().last_error.is_some(), "outage {outage}");

        // The retry reads an empty store successfully: the run of failures is over. (Without
        // a reset this waits out the limit, long after several successful reads.)
        within(Duration::from_secs(3), || async { failures(&handle) == 0 }).await;
    }

    assert!(!handle.is_finished(), "the subscription is still running");
    let status = handle.status();
    assert_eq!(status.failures, 0, "no stale failure count: {status:?}");
    assert!(status.last_error.is_none(), "no stale error: {status:?}");
    handle.shutdown().await.expect("clean shutdown");
}

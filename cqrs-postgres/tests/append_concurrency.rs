//! Appends racing each other against a real server: many writers on one stream, and appends
//! inside the caller's transactions at every isolation level PostgreSQL offers.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use cqrs_core::{
    Event, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, StoreError,
    TransientReason,
};
use cqrs_postgres::PostgresEventStore;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tokio::sync::Barrier;

async fn migrated(max_connections: u32) -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(max_connections).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    let store = PostgresEventStore::new(db.pool.clone());
    (db, store)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Happened {
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TestEvent {
    #[event(name = "test.happened")]
    Happened(Happened),
}

fn event(n: u64) -> NewEvent {
    NewEvent::from_event(&TestEvent::Happened(Happened { n }), Metadata::default())
        .expect("serialize")
}

fn events(count: u64) -> Vec<NewEvent> {
    (1..=count).map(event).collect()
}

// ---------------------------------------------------------------- many writers, one stream

/// `ExpectedVersion::Any` means "no check": however many writers queue on the stream's row,
/// and in whatever order their transactions took their ids, `append` never reports a
/// conflict, and the stream's versions come out contiguous and in the global order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_appends_to_one_contended_stream_never_conflict() {
    const TASKS: u64 = 32;
    const APPENDS: u64 = 100;
    let (db, store) = migrated(32).await;
    let barrier = Arc::new(Barrier::new(usize::try_from(TASKS).unwrap()));
    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let mut written = 0;
                let mut errors = Vec::new();
                for n in 0..APPENDS {
                    // 1, 2 or 3 events, varying between writers and appends.
                    let size = (task * 7 + n * 13) % 3 + 1;
                    match store
                        .append("hot", ExpectedVersion::Any, events(size))
                        .await
                    {
                        Ok(result) => {
                            assert_eq!(result.positions.len() as u64, size);
                            written += size;
                        }
                        Err(error) => errors.push(error.to_string()),
                    }
                }
                (written, errors)
            })
        })
        .collect();
    let mut total = 0;
    let mut errors = Vec::new();
    for writer in writers {
        let (written, failed) = writer.await.expect("writer task");
        total += written;
        errors.extend(failed);
    }
    assert!(
        errors.is_empty(),
        "{} of {} appends failed, first: {}",
        errors.len(),
        TASKS * APPENDS,
        errors[0]
    );
    assert_eq!(store.stream_version("hot").await.expect("version"), total);
    let versions: Vec<u64> = store
        .load_stream("hot", 1)
        .await
        .expect("load")
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());

    // The global order keeps the stream's versions in order as well.
    let mut in_global_order = Vec::new();
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all_from(after, 1000).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        in_global_order.extend(page.iter().map(|e| e.stream_version));
    }
    assert_eq!(in_global_order, (1..=total).collect::<Vec<_>>());
    drop(db);
}

// ---------------------------------------------------------------- isolation levels

const LEVELS: [&str; 2] = ["REPEATABLE READ", "SERIALIZABLE"];

/// A transaction at `level` whose snapshot is taken at once (by reading the stream), as a
/// caller that loads inside its transaction would do.
async fn snapshot_at<'c>(
    store: &PostgresEventStore,
    level: &str,
    stream: &str,
) -> Transaction<'c, Postgres> {
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query(&format!("SET TRANSACTION ISOLATION LEVEL {level}"))
        .execute(&mut *tx)
        .await
        .expect("isolation level");
    let _: Option<i64> = sqlx::query_scalar(cqrs_postgres::sql::STREAM_VERSION)
        .bind(stream)
        .fetch_optional(&mut *tx)
        .await
        .expect("read the stream inside the transaction");
    tx
}

fn assert_serialization_failure(result: Result<cqrs_core::AppendResult, StoreError>, what: &str) {
    match result {
        Err(
            ref error @ StoreError::Transient {
                reason: TransientReason::SerializationFailure,
                ..
            },
        ) => assert!(error.is_retryable(), "{what}: must be retryable"),
        other => panic!("{what}: expected a serialization failure, got {other:?}"),
    }
}

/// Two transactions at the same level append with `Any`; the one whose snapshot predates
/// the other's commit gets a typed, retryable serialization failure, and succeeds when
/// retried in a new transaction.
#[tokio::test]
async fn any_behind_a_concurrent_commit_is_a_retryable_serialization_failure() {
    let (db, store) = migrated(4).await;
    for level in LEVELS {
        let stream = format!("any-{}", level.replace(' ', "-"));
        store
            .append(&stream, ExpectedVersion::NoStream, events(1))
            .await
            .expect("seed");
        let mut late = snapshot_at(&store, level, &stream).await;
        let mut early = snapshot_at(&store, level, &stream).await;
        store
            .append_in(&mut early, &stream, ExpectedVersion::Any, events(1))
            .await
            .expect("the first writer appends");
        early.commit().await.expect("commit");

        let result = store
            .append_in(&mut late, &stream, ExpectedVersion::Any, events(1))
            .await;
        assert_serialization_failure(result, level);
        late.rollback().await.expect("rollback");

        let mut retried = snapshot_at(&store, level, &stream).await;
        let result = store
            .append_in(&mut retried, &stream, ExpectedVersion::Any, events(1))
            .await
            .expect("the retry appends");
        retried.commit().await.expect("commit");
        assert_eq!(result.stream_version, 3, "{level}");
    }
    drop(db);
}

/// With an exact expected version, a transaction whose snapshot is older than the stream
/// never reports the snapshot's version as the stream's: the failure is a serialization
/// failure whether the snapshot's version is the expected one or not, and whether the
/// stream existed when the snapshot was taken or not. A conflict that the snapshot sees
/// truly reports the stream's current version.
#[tokio::test]
async fn exact_with_a_stale_snapshot_is_a_serialization_failure_never_a_stale_version() {
    let (db, store) = migrated(6).await;
    for level in LEVELS {
        let stream = format!("exact-{}", level.replace(' ', "-"));
        store
            .append(&stream, ExpectedVersion::NoStream, events(1))
            .await
            .expect("seed");

        // Both transactions load version 1; the first one commits version 2.
        let mut late = snapshot_at(&store, level, &stream).await;
        let mut early = snapshot_at(&store, level, &stream).await;
        store
            .append_in(&mut early, &stream, ExpectedVersion::Exact(1), events(1))
            .await
            .expect("the first writer appends");
        early.commit().await.expect("commit");

        // The version the snapshot shows.
        let mut late_too = snapshot_at(&store, level, "other").await;
        let result = store
            .append_in(&mut late, &stream, ExpectedVersion::Exact(1), events(1))
            .await;
        assert_serialization_failure(result, &format!("{level}, expected as loaded"));
        late.rollback().await.expect("rollback");

        // A snapshot taken before that commit, expecting the version it does not show yet
        // (learnt outside the transaction): the stream is at 2, the snapshot says 1.
        let mut before = snapshot_at(&store, level, &stream).await;
        store
            .append(&stream, ExpectedVersion::Exact(2), events(1))
            .await
            .expect("another commit");
        let result = store
            .append_in(&mut before, &stream, ExpectedVersion::Exact(3), events(1))
            .await;
        assert_serialization_failure(result, &format!("{level}, expected as it is now"));
        before.rollback().await.expect("rollback");

        // A stream created after the snapshot was taken.
        let created = format!("{stream}-created");
        store
            .append(&created, ExpectedVersion::NoStream, events(1))
            .await
            .expect("created after the snapshot");
        let result = store
            .append_in(
                &mut late_too,
                &created,
                ExpectedVersion::Exact(1),
                events(1),
            )
            .await;
        assert_serialization_failure(result, &format!("{level}, stream created since"));
        late_too.rollback().await.expect("rollback");

        // A real conflict, seen by an up-to-date snapshot: the actual version is the truth.
        let mut current = snapshot_at(&store, level, &stream).await;
        match store
            .append_in(&mut current, &stream, ExpectedVersion::Exact(7), events(1))
            .await
        {
            Err(StoreError::Conflict { actual: 3, .. }) => {}
            other => panic!("{level}: expected a conflict at version 3, got {other:?}"),
        }
        current.rollback().await.expect("rollback");
        assert_eq!(store.stream_version(&stream).await.expect("version"), 3);
    }
    drop(db);
}

/// The check of a stale snapshot reads the stream outside the caller's transaction without
/// waiting for the pool, even when the caller holds the pool's only connection.
#[tokio::test]
async fn a_stale_snapshot_is_told_apart_when_the_caller_holds_the_last_connection() {
    let (db, store) = migrated(1).await;
    let mut other = PgConnection::connect_with(&db.options)
        .await
        .expect("connect");
    let mut tx = snapshot_at(&store, "REPEATABLE READ", "solo").await;
    let mut created = other.begin().await.expect("begin");
    store
        .append_in(&mut created, "solo", ExpectedVersion::NoStream, events(2))
        .await
        .expect("created after the snapshot");
    created.commit().await.expect("commit");
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        store.append_in(&mut tx, "solo", ExpectedVersion::Exact(2), events(1)),
    )
    .await
    .expect("never waits for the pool");
    assert_serialization_failure(result, "the pool's last connection");
    match store
        .append_in(&mut tx, "solo", ExpectedVersion::Exact(5), events(1))
        .await
    {
        Err(StoreError::Transient { source, .. }) => assert!(
            matches!(
                source.downcast_ref::<cqrs_postgres::PostgresStoreError>(),
                Some(cqrs_postgres::PostgresStoreError::StaleSnapshot {
                    snapshot: 0,
                    current: 2,
                    ..
                })
            ),
            "{source:?}"
        ),
        other => panic!("expected a stale snapshot, got {other:?}"),
    }
    tx.rollback().await.expect("rollback");
    drop(db);
}

/// Two transactions that each hold one stream and then append to the other's: PostgreSQL
/// breaks the deadlock by failing one of them, which arrives as a retryable error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_between_two_appending_transactions_is_retryable() {
    let (db, store) = migrated(4).await;
    for stream in ["left", "right"] {
        store
            .append(stream, ExpectedVersion::NoStream, events(1))
            .await
            .expect("seed");
    }
    let barrier = Arc::new(Barrier::new(2));
    let writers: Vec<_> = [("left", "right"), ("right", "left")]
        .into_iter()
        .map(|(first, second)| {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let mut tx = store.pool().begin().await.expect("begin");
                store
                    .append_in(&mut tx, first, ExpectedVersion::Any, events(1))
                    .await
                    .expect("own stream");
                barrier.wait().await;
                let result = store
                    .append_in(&mut tx, second, ExpectedVersion::Any, events(1))
                    .await;
                if result.is_ok() {
                    tx.commit().await.expect("commit");
                }
                result
            })
        })
        .collect();
    let mut deadlocks = 0;
    for writer in writers {
        match writer.await.expect("task") {
            Ok(_) => {}
            Err(
                ref error @ StoreError::Transient {
                    reason: TransientReason::Deadlock,
                    ..
                },
            ) => {
                assert!(error.is_retryable());
                deadlocks += 1;
            }
            Err(other) => panic!("expected a deadlock, got {other:?}"),
        }
    }
    assert_eq!(deadlocks, 1, "one transaction is chosen to fail");
    drop(db);
}

/// The server ends the connection under a transaction: the append reports a lost
/// connection, retryable, and says the outcome may be unknown.
#[tokio::test]
async fn a_connection_ended_by_the_server_is_a_retryable_connection_loss() {
    let (db, store) = migrated(4).await;
    let mut conn = PgConnection::connect_with(&db.options)
        .await
        .expect("connect");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pid");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .expect("terminate");
    assert!(terminated);
    tokio::time::sleep(Duration::from_millis(50)).await;
    match store
        .append_in(&mut conn, "cut", ExpectedVersion::Any, events(1))
        .await
    {
        Err(
            ref error @ StoreError::Transient {
                reason: TransientReason::ConnectionLost,
                ..
            },
        ) => {
            assert!(error.is_retryable());
            assert!(!TransientReason::ConnectionLost.rolled_back());
        }
        other => panic!("expected a lost connection, got {other:?}"),
    }
    assert_eq!(store.stream_version("cut").await.expect("version"), 0);
    drop(db);
}

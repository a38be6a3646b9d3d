//! Group commit (`PostgresEventStore::with_group_commit`): concurrent appends share
//! statements and commits, and each still gets its own result and its own conflict.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::TestDb;
use cqrs_core::{EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, StoreError};
use cqrs_postgres::{GroupCommit, PostgresEventStore};
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

async fn grouped(max_connections: u32) -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(max_connections).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    // Every append joins a batch, however few run at once: the tests are about batches.
    let store = PostgresEventStore::new(db.pool.clone())
        .with_group_commit(GroupCommit::new().min_concurrency(1));
    (db, store)
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        payload: json!({ "n": n }).into(),
        metadata: Metadata::default(),
    }
}

/// How many transactions wrote the events: fewer than the appends means they were grouped.
async fn writing_transactions(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT tx) FROM cqrs_events")
        .fetch_one(&db.pool)
        .await
        .expect("count transactions")
}

/// Runs `task(i)` for `0..tasks` at once, all released by one barrier, and returns the
/// results in task order.
async fn at_once<T, F, Fut>(tasks: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let run = task(i);
            tokio::spawn(async move {
                barrier.wait().await;
                run.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks);
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_event_store_conformance_kit_with_group_commit() {
    let (_db, store) = grouped(8).await;
    cqrs_core::testing::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_each_gets_its_own_positions() {
    let (db, store) = grouped(8).await;
    let clients = 48_usize;
    let rounds = 5_u64;
    let per_client = at_once(clients, |client| {
        let store = store.clone();
        async move {
            let stream = format!("grouped-{client}");
            let mut results = Vec::new();
            for round in 0..rounds {
                // One to three events per append, so commands of a batch differ in size.
                let size = 1 + (client as u64 + round) % 3;
                let version = results
                    .last()
                    .map_or(0, |r: &cqrs_core::AppendResult| r.stream_version);
                let events: Vec<NewEvent> = (0..size).map(|n| event(version + n + 1)).collect();
                let expected = if version == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                };
                let result = store
                    .append(&stream, expected, events)
                    .await
                    .expect("a grouped append on a stream of its own succeeds");
                assert_eq!(result.stream_version, version + size);
                assert_eq!(result.positions.len() as u64, size);
                results.push(result);
            }
            (stream, results)
        }
    })
    .await;

    // Every event once, in the global order; each stream's versions in order, at the
    // positions its appends reported.
    let mut all = Vec::new();
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all_from(after, 100).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        all.extend(page);
    }
    let reported: usize = per_client
        .iter()
        .flat_map(|(_, results)| results.iter().map(|r| r.positions.len()))
        .sum();
    assert_eq!(all.len(), reported);
    let positions: HashSet<GlobalPosition> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions.len(), all.len(), "no event twice");
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for recorded in &all {
        let last = seen.entry(recorded.stream_id.as_str()).or_insert(0);
        assert_eq!(
            recorded.stream_version,
            *last + 1,
            "stream order in the log"
        );
        *last = recorded.stream_version;
    }
    for (stream, results) in &per_client {
        let loaded = store.load_stream(stream, 1).await.expect("load");
        let stored: Vec<GlobalPosition> = loaded.iter().map(|e| e.position).collect();
        let told: Vec<GlobalPosition> = results
            .iter()
            .flat_map(|r| r.positions.iter().copied())
            .collect();
        assert_eq!(stored, told, "{stream}: each append got its own positions");
    }
    let appends = i64::try_from(clients).expect("small") * i64::try_from(rounds).expect("small");
    let transactions = writing_transactions(&db).await;
    assert!(
        transactions < appends,
        "{appends} appends in {transactions} transactions: nothing was grouped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_in_a_batch_fails_alone_and_writes_nothing() {
    let (db, store) = grouped(8).await;
    let stored = event(1);
    let stored_id = stored.event_id;
    store
        .append("taken", ExpectedVersion::NoStream, vec![stored])
        .await
        .expect("seed");
    for stream in (0..30).map(|i| format!("good-{i}")) {
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .expect("seed");
    }
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM cqrs_events")
        .fetch_one(&db.pool)
        .await
        .expect("count");

    // Thirty good appends and three bad ones, released together.
    let results = at_once(33, |i| {
        let store = store.clone();
        async move {
            match i {
                30 => {
                    store
                        .append("taken", ExpectedVersion::Exact(5), vec![event(6)])
                        .await
                }
                31 => {
                    store
                        .append("taken", ExpectedVersion::NoStream, vec![event(1)])
                        .await
                }
                32 => {
                    let mut again = event(1);
                    again.event_id = stored_id;
                    store
                        .append("elsewhere", ExpectedVersion::NoStream, vec![again])
                        .await
                }
                good => {
                    store
                        .append(
                            &format!("good-{good}"),
                            ExpectedVersion::Exact(1),
                            vec![event(2), event(3)],
                        )
                        .await
                }
            }
        }
    })
    .await;

    for (i, result) in results.iter().enumerate().take(30) {
        let result = result.as_ref().expect("the good appends commit");
        assert_eq!(result.stream_version, 3, "good-{i}");
    }
    assert!(
        matches!(
            &results[30],
            Err(StoreError::Conflict { stream, expected: ExpectedVersion::Exact(5), actual: 1 })
                if stream == "taken"
        ),
        "{:?}",
        results[30]
    );
    assert!(
        matches!(
            &results[31],
            Err(StoreError::Conflict { stream, expected: ExpectedVersion::NoStream, actual: 1 })
                if stream == "taken"
        ),
        "{:?}",
        results[31]
    );
    assert!(
        matches!(&results[32], Err(StoreError::DuplicateEventId { event_id }) if *event_id == stored_id),
        "{:?}",
        results[32]
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM cqrs_events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(
        after - before,
        60,
        "the good appends' events and nothing else"
    );
    assert_eq!(store.stream_version("taken").await.expect("version"), 1);
    assert_eq!(store.stream_version("elsewhere").await.expect("version"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_racing_on_one_stream_have_one_winner_under_group_commit() {
    let (_db, store) = grouped(8).await;
    for round in 0..5_u64 {
        let stream = format!("race-{round}");
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .expect("seed");
        // Other streams' appends keep the writer busy, so the racers queue and batch.
        let results = at_once(24, |i| {
            let store = store.clone();
            let stream = stream.clone();
            async move {
                if i < 8 {
                    Some(
                        store
                            .append(&stream, ExpectedVersion::Exact(1), vec![event(2)])
                            .await,
                    )
                } else {
                    store
                        .append(
                            &format!("busy-{round}-{i}"),
                            ExpectedVersion::Any,
                            vec![event(1)],
                        )
                        .await
                        .expect("an append on a stream of its own");
                    None
                }
            }
        })
        .await;
        let racers: Vec<_> = results.into_iter().flatten().collect();
        let wins = racers.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {racers:?}");
        for lost in racers.iter().filter(|r| r.is_err()) {
            assert!(
                matches!(lost, Err(StoreError::Conflict { actual: 2, .. })),
                "{lost:?}"
            );
        }
        assert_eq!(store.stream_version(&stream).await.expect("version"), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_under_group_commit_is_a_typed_error_and_writes_nothing() {
    let (db, store) = grouped(4).await;
    let results = at_once(8, |i| {
        let store = store.clone();
        async move {
            if i == 0 {
                store
                    .append("", ExpectedVersion::NoStream, vec![event(1)])
                    .await
            } else {
                store
                    .append(&format!("fine-{i}"), ExpectedVersion::Any, vec![event(1)])
                    .await
            }
        }
    })
    .await;
    assert!(
        matches!(&results[0], Err(StoreError::InvalidStreamId { .. })),
        "{:?}",
        results[0]
    );
    assert!(results[1..].iter().all(Result::is_ok));
    let empty: i64 = sqlx::query_scalar("SELECT count(*) FROM cqrs_streams WHERE stream_id = ''")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(empty, 0);
}

/// The generic plan of the group statement, on a connection of `db`, for a batch of two
/// commands.
async fn group_plan(db: &TestDb) -> String {
    let mut conn = db.pool.acquire().await.expect("connection");
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("generic plans");
    sqlx::raw_sql(&format!(
        "PREPARE grouped(text[], int8[], int8[], int8[], int8[], uuid[], text[], int4[], \
         jsonb[], jsonb[]) AS {}",
        cqrs_postgres::sql::APPEND_GROUP_QUIET
    ))
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let lines: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE grouped('{a,b}', '{3,0}', '{1,1}', '{1,2}', '{1,1}', \
         '{00000000-0000-7000-8000-000000000001,00000000-0000-7000-8000-000000000002}', \
         '{t,t}', '{1,1}', '{\"{}\",\"{}\"}', '{\"{}\",\"{}\"}')",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("explain");
    sqlx::raw_sql("DEALLOCATE grouped; RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .expect("clean up");
    lines.join("\n")
}

/// The group statement is prepared once per connection and keeps its generic plan: that
/// plan must look streams up by their key whether the tables were empty or large when it
/// was made, never scan them.
#[tokio::test]
async fn the_group_statement_plans_index_lookups() {
    let (db, _store) = grouped(2).await;
    let empty = group_plan(&db).await;
    sqlx::raw_sql(
        "INSERT INTO cqrs_streams (stream_id, version, last_tx)
         SELECT 'bulk-' || g, 1, pg_current_xact_id() FROM generate_series(1, 50000) AS g;
         ANALYZE cqrs_streams",
    )
    .execute(&db.pool)
    .await
    .expect("grow the streams table");
    let large = group_plan(&db).await;
    for (tables, plan) in [("empty", &empty), ("large", &large)] {
        assert!(
            plan.contains("Index Scan using cqrs_streams_pkey on cqrs_streams"),
            "{tables} tables:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{tables} tables:\n{plan}");
    }
}

/// A batch whose connection is ended by the server leaves its commands in doubt: each gets
/// a retryable `ConnectionLost`, never a conflict or a success it cannot know; the commands
/// waiting behind it form the next batch and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_loses_its_connection_reports_each_command_in_doubt() {
    let db = TestDb::create(8).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    let store = PostgresEventStore::new(db.pool.clone())
        .with_group_commit(GroupCommit::new().min_concurrency(1).writers(1));
    for stream in ["held", "next-0", "next-1", "next-2"] {
        store
            .append(stream, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .expect("seed");
    }
    // Another transaction holds the row of `held`, so the batch appending to it waits.
    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("UPDATE cqrs_streams SET version = version WHERE stream_id = 'held'")
        .execute(&mut *holder)
        .await
        .expect("lock the row");
    let blocked = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append("held", ExpectedVersion::Exact(1), vec![event(2)])
                .await
        })
    };
    let backend: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE 'WITH command AS%'",
        )
        .fetch_optional(&db.pool)
        .await
        .expect("activity");
        if let Some(pid) = waiting {
            break pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    // The only writer is busy: these wait and form the next batch.
    let behind: Vec<_> = (0..3)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &format!("next-{i}"),
                        ExpectedVersion::Exact(1),
                        vec![event(2)],
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .execute(&db.pool)
        .await
        .expect("end the batch's session");
    let result = blocked.await.expect("task");
    match &result {
        Err(error @ StoreError::Transient { reason, .. }) => {
            assert_eq!(
                *reason,
                cqrs_core::TransientReason::ConnectionLost,
                "{error}"
            );
            assert!(error.is_retryable());
        }
        other => panic!("expected an append in doubt, got {other:?}"),
    }
    for (i, waiting) in behind.into_iter().enumerate() {
        let result = waiting
            .await
            .expect("task")
            .expect("the next batch commits");
        assert_eq!(result.stream_version, 2, "next-{i}");
    }
    holder.rollback().await.expect("rollback");
    // Here the session ended before the commit: nothing was written, and the same append
    // tried again commits.
    assert_eq!(store.stream_version("held").await.expect("version"), 1);
    let again = store
        .append("held", ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .expect("the retry commits");
    assert_eq!(again.stream_version, 2);
}

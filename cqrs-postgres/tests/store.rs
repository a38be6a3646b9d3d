//! The PostgreSQL event store against a real server: the conformance kit, then what only a
//! real database can get wrong (concurrency, the global order, bad stored data, plans).

#[path = "common/bank.rs"]
mod bank;
#[path = "common/commits.rs"]
mod commits;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bank::{Account, BankError, BankEvent, Deposit, Deposited};
use commits::{Commit, CommitClock, late_commits};
use common::TestDb;
use cqrs_core::{
    CommandBus, CommandError, EventDecodeError, EventStore, ExpectedVersion, GlobalPosition,
    Metadata, NewEvent, RecordedEvent, Repository, RepositoryOptions, Snapshot, StoreError,
};
use cqrs_postgres::{
    MigrateError, NotifyMode, PostgresEventStore, PostgresStoreError, sql as store_sql,
};
use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Barrier;
use uuid::Uuid;

async fn migrated(max_connections: u32) -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(max_connections).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    let store = PostgresEventStore::new(db.pool.clone());
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

fn deposit_event(amount: u64) -> NewEvent {
    NewEvent::from_event(
        &BankEvent::Deposited(Deposited { amount }),
        Metadata::default(),
    )
    .expect("serialize")
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn row_counts(pool: &PgPool) -> (i64, i64) {
    (
        count(pool, "cqrs_events").await,
        count(pool, "cqrs_streams").await,
    )
}

/// Reads the whole global order, page by page.
async fn read_everything(store: &PostgresEventStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all_from(after, 500).await.expect("read");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// A small deterministic generator for sleeps and sizes (no extra dependency needed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

// ---------------------------------------------------------------- the shared contract

#[tokio::test]
async fn passes_the_event_store_conformance_kit() {
    let (_db, store) = migrated(8).await;
    cqrs_core::testing::conformance::run_all(&store).await;
}

// ---------------------------------------------------------------- migrations

#[tokio::test]
async fn migrations_run_twice_or_concurrently_apply_once() {
    let db = TestDb::create(8).await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move { PostgresEventStore::migrate(&pool).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.push(run.await.expect("task").expect("migrate"));
    }
    let all_versions: Vec<i64> = cqrs_postgres::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(
        applied.iter().filter(|a| **a == all_versions).count(),
        1,
        "exactly one runner applies the migrations: {applied:?}"
    );
    assert!(applied.iter().filter(|a| a.is_empty()).count() == 3);
    assert_eq!(
        PostgresEventStore::migrate(&db.pool).await.expect("again"),
        Vec::<i64>::new()
    );
    let recorded: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM cqrs_schema_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .expect("recorded");
    assert_eq!(recorded, all_versions);
}

#[tokio::test]
async fn the_tables_can_live_in_a_schema_of_their_own() {
    let db = TestDb::create(2).await;
    let tenant_options = db.options.clone().options([("search_path", "tenant_a")]);
    let tenant = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(tenant_options)
        .await
        .expect("connect");
    match PostgresEventStore::migrate(&tenant).await {
        Err(MigrateError::NoSchema) => {}
        other => panic!("expected NoSchema before the schema exists, got {other:?}"),
    }
    sqlx::query("CREATE SCHEMA tenant_a")
        .execute(&db.pool)
        .await
        .expect("schema");
    PostgresEventStore::migrate(&tenant).await.expect("migrate");
    let store = PostgresEventStore::new(tenant.clone());
    store
        .append("s", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("append");
    assert_eq!(count(&db.pool, "tenant_a.cqrs_events").await, 1);
    let public_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'cqrs_%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("tables");
    assert_eq!(public_tables, 0);
    tenant.close().await;
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_lose_and_duplicate_nothing() {
    const TASKS: u64 = 16;
    const COMMANDS: u64 = 100;
    let (db, store) = migrated(20).await;
    // Snapshots keep each retry's reload short: 16 writers on one stream conflict a lot, and
    // a retry rebuilds the aggregate (the repository's cache holds one state per stream).
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>(
            (),
            RepositoryOptions {
                snapshot_every: Some(25),
                ..RepositoryOptions::default()
            },
        )
        .retry_on_conflict(100_000)
        .build();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for n in 0..COMMANDS {
                    let amount = task * 1000 + n + 1;
                    match bus
                        .execute(Deposit {
                            account: "shared".into(),
                            amount,
                        })
                        .await
                    {
                        Ok(_) => accepted.push(amount),
                        Err(error) => panic!("command failed: {error}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.expect("task"));
    }
    assert_eq!(accepted.len() as u64, TASKS * COMMANDS);

    let events = store.load_stream("Account-shared", 1).await.expect("load");
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
    let expected_versions: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(versions, expected_versions, "versions 1..n with no hole");
    let mut deposited: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.decode::<BankEvent>().expect("decode") {
            BankEvent::Deposited(d) => Some(d.amount),
            BankEvent::Opened(_) => None,
        })
        .collect();
    deposited.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(
        deposited, accepted,
        "exactly one event per accepted command"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == bank::OPENED)
            .count(),
        1
    );
    assert_eq!(
        store
            .stream_version("Account-shared")
            .await
            .expect("version"),
        events.len() as u64
    );

    let repository = Repository::<Account>::new(
        Arc::new(store.clone()),
        (),
        RepositoryOptions {
            cache_capacity: 0,
            ..RepositoryOptions::default()
        },
    );
    let loaded = repository.load("Account-shared").await.expect("load");
    assert_eq!(loaded.version, events.len() as u64);
    assert_eq!(loaded.state.balance, accepted.iter().sum::<u64>());
    assert_eq!(loaded.state.deposits, TASKS * COMMANDS);
    drop(db);
}

/// Two held transactions append with the same expected version; the first to claim the
/// stream row keeps its transaction open while the other waits on the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_the_same_expected_version_never_both_win() {
    let (db, store) = migrated(6).await;
    for round in 0..10u64 {
        let stream = format!("race-{round}");
        // Half the rounds race on an existing stream, half on creating it.
        let expected = if round % 2 == 0 {
            store
                .append(&stream, ExpectedVersion::NoStream, vec![event(0)])
                .await
                .expect("seed");
            ExpectedVersion::Exact(1)
        } else {
            ExpectedVersion::NoStream
        };
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                let stream = stream.clone();
                tokio::spawn(async move {
                    let mut tx = store.pool().begin().await.expect("begin");
                    barrier.wait().await;
                    let result = store
                        .append_in(&mut tx, &stream, expected, vec![event(1), event(2)])
                        .await;
                    if result.is_ok() {
                        // Hold the row so the other writer really waits on it.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        tx.commit().await.expect("commit");
                    } else {
                        tx.rollback().await.expect("rollback");
                    }
                    result
                })
            })
            .collect();
        let mut wins = Vec::new();
        let mut conflicts = Vec::new();
        for writer in writers {
            match writer.await.expect("task") {
                Ok(result) => wins.push(result),
                Err(StoreError::Conflict {
                    stream: s,
                    expected: e,
                    actual,
                }) => {
                    assert_eq!((s.as_str(), e), (stream.as_str(), expected));
                    conflicts.push(actual);
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        let final_version = if round % 2 == 0 { 3 } else { 2 };
        assert_eq!(wins.len(), 1, "round {round}: exactly one writer wins");
        assert_eq!(wins[0].stream_version, final_version);
        assert_eq!(
            conflicts,
            vec![final_version],
            "the loser sees the new version"
        );
        assert_eq!(
            store.stream_version(&stream).await.expect("version"),
            final_version
        );
        assert_eq!(
            store.load_stream(&stream, 1).await.expect("load").len() as u64,
            final_version
        );
    }
    drop(db);
}

/// A transaction that took its id before another one committed to the stream would put the
/// stream's next versions *before* the existing ones in `(tx, position)` order: refused.
#[tokio::test]
async fn an_older_transaction_cannot_append_behind_a_newer_commit_to_the_stream() {
    let (db, store) = migrated(4).await;
    store
        .append("ordered", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("seed");

    let mut older = store.pool().begin().await.expect("begin");
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *older)
        .await
        .expect("take a transaction id");
    store
        .append("ordered", ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .expect("a newer transaction commits first");
    match store
        .append_in(
            &mut older,
            "ordered",
            ExpectedVersion::Exact(2),
            vec![event(3)],
        )
        .await
    {
        Err(StoreError::Conflict { actual: 2, .. }) => {}
        other => panic!("expected a conflict from the older transaction, got {other:?}"),
    }
    older.rollback().await.expect("rollback");

    // Its own transaction, started now, appends (and `append` would retry by itself).
    store
        .append("ordered", ExpectedVersion::Any, vec![event(3)])
        .await
        .expect("append");
    let versions: Vec<u64> = read_everything(&store)
        .await
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    drop(db);
}

// ---------------------------------------------------------------- the global order

#[tokio::test]
async fn readers_wait_for_older_transactions_of_this_database_only() {
    let (db, store) = migrated(4).await;
    let other_db = TestDb::create(1).await;

    // A writing transaction in another database of the cluster does not hold readers back.
    let mut elsewhere = other_db.pool.begin().await.expect("begin");
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *elsewhere)
        .await
        .expect("xid");
    store
        .append("a", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("append");
    assert_eq!(read_everything(&store).await.len(), 1);

    // One in this database does, until it ends: it could still commit events that sort
    // before what was appended after it started writing.
    let mut here = store.pool().begin().await.expect("begin");
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *here)
        .await
        .expect("xid");
    store
        .append("b", ExpectedVersion::NoStream, vec![event(2)])
        .await
        .expect("append");
    let first = read_everything(&store).await;
    assert_eq!(
        first.len(),
        1,
        "the event behind the open transaction waits"
    );
    let append_in_older = store
        .append_in(&mut here, "c", ExpectedVersion::NoStream, vec![event(3)])
        .await
        .expect("append in the older transaction");
    here.commit().await.expect("commit");

    let all = read_everything(&store).await;
    let streams: Vec<&str> = all.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(
        streams,
        vec!["a", "c", "b"],
        "the older transaction's event comes first although its position is larger"
    );
    assert!(append_in_older.positions[0] > all[2].position);
    // Reading on from where the first read stopped yields exactly the rest.
    let rest = store
        .read_all_from(first[0].position, 10)
        .await
        .expect("read");
    assert_eq!(
        rest.iter()
            .map(|e| e.stream_id.as_str())
            .collect::<Vec<_>>(),
        vec!["c", "b"]
    );
    elsewhere.rollback().await.expect("rollback");
    drop(db);
}

/// Positions a rolled-back transaction drew stay holes for good; resuming after one (or
/// after a position never drawn) is the core `UnknownPosition` error, not an empty page.
#[tokio::test]
async fn reading_from_a_position_that_holds_no_event_is_an_error() {
    let (db, store) = migrated(2).await;
    let mut rolled_back = store.pool().begin().await.expect("begin");
    let hole = store
        .append_in(
            &mut rolled_back,
            "s",
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("append in a transaction")
        .last_position();
    rolled_back.rollback().await.expect("rollback");
    let appended = store
        .append("s", ExpectedVersion::NoStream, vec![event(2)])
        .await
        .expect("append");
    assert!(appended.last_position() > hole);
    assert!(
        store
            .read_all_from(appended.last_position(), 10)
            .await
            .expect("read from the last event")
            .is_empty()
    );
    for unknown in [hole, GlobalPosition(999)] {
        match store.read_all_from(unknown, 10).await {
            Err(StoreError::UnknownPosition { position }) => assert_eq!(position, unknown),
            other => panic!("expected UnknownPosition at {unknown}, got {other:?}"),
        }
    }
    drop(db);
}

/// One gap-test writer: `batches` appends, each in a transaction held open for a random
/// while; every fourth goes to a stream all writers share (`Any`), and a third of the
/// transactions take their id well before appending. Returns its commits.
async fn held_appends(
    store: PostgresEventStore,
    writer: u64,
    batches: u64,
    clock: Arc<CommitClock>,
) -> Vec<Commit> {
    let mut random = Lcg(writer + 1);
    let own = format!("gap-{writer}");
    let mut commits = Vec::new();
    let mut version = 0;
    for batch in 0..batches {
        let shared = batch % 4 == writer % 4;
        let size = 1 + random.below(3);
        loop {
            let mut tx = store.pool().begin().await.expect("begin");
            if random.below(3) == 0 {
                let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
                    .fetch_one(&mut *tx)
                    .await
                    .expect("xid");
                tokio::time::sleep(Duration::from_millis(random.below(15))).await;
            }
            let (stream, expected) = if shared {
                ("gap-shared".to_owned(), ExpectedVersion::Any)
            } else {
                (own.clone(), ExpectedVersion::Exact(version))
            };
            let events = (0..size).map(|n| event(writer * 1000 + n)).collect();
            match store.append_in(&mut tx, &stream, expected, events).await {
                Ok(result) => {
                    tokio::time::sleep(Duration::from_millis(random.below(30))).await;
                    let (committed, commit) = clock.stamp(result.positions, tx.commit()).await;
                    committed.expect("commit");
                    commits.push(commit);
                    if !shared {
                        version = result.stream_version;
                    }
                    break;
                }
                // The shared stream's last writer had a later transaction: start over.
                Err(StoreError::Conflict { .. }) => tx.rollback().await.expect("rollback"),
                Err(other) => panic!("append failed: {other:?}"),
            }
        }
    }
    commits
}

/// The gap on purpose, whatever the timing: an older transaction appends and stays open
/// while a newer append commits a larger position; the reader polls in between, then the
/// older one commits.
async fn commit_behind_a_larger_position(
    store: PostgresEventStore,
    clock: Arc<CommitClock>,
) -> Vec<Commit> {
    let mut older = store.pool().begin().await.expect("begin");
    let held = store
        .append_in(
            &mut older,
            "gap-forced-older",
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("append in the older transaction");
    let (newer, newer_commit) = clock
        .stamp(
            Vec::new(),
            store.append(
                "gap-forced-newer",
                ExpectedVersion::NoStream,
                vec![event(2)],
            ),
        )
        .await;
    let newer = newer.expect("append");
    assert!(newer.last_position() > held.last_position());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (committed, older_commit) = clock.stamp(held.positions, older.commit()).await;
    committed.expect("commit");
    vec![
        Commit {
            positions: newer.positions,
            ..newer_commit
        },
        older_commit,
    ]
}

/// Follows the global order page by page until it has read `total` events (unknown, i.e.
/// `u64::MAX`, while writers run), or two minutes pass.
async fn follow(store: PostgresEventStore, total: Arc<AtomicU64>) -> Vec<RecordedEvent> {
    let mut seen: Vec<RecordedEvent> = Vec::new();
    let mut after = GlobalPosition::START;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (seen.len() as u64) < total.load(Ordering::SeqCst)
        && tokio::time::Instant::now() < deadline
    {
        let page = store.read_all_from(after, 7).await.expect("read");
        match page.last() {
            Some(last) => {
                after = last.position;
                seen.extend(page);
            }
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    // Anything beyond the total would be a duplicate: one more read shows it.
    seen.extend(store.read_all_from(after, 100).await.expect("read"));
    seen
}

/// Appenders hold their transactions open for varying times (so positions commit out of
/// order), some take their transaction id long before appending, several share one stream,
/// and one pair commits a smaller position after a larger one on purpose; a reader follows
/// the global order meanwhile. It must see every event exactly once, each stream in version
/// order, and in the same order a reader sees after everything settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_concurrent_held_appends_sees_each_event_once_in_stream_order() {
    let (db, store) = migrated(24).await;
    let clock = Arc::new(CommitClock::default());
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let reader = tokio::spawn(follow(store.clone(), Arc::clone(&total)));
    let mut writers: Vec<_> = (0..8)
        .map(|writer| tokio::spawn(held_appends(store.clone(), writer, 20, Arc::clone(&clock))))
        .collect();
    writers.push(tokio::spawn(commit_behind_a_larger_position(
        store.clone(),
        Arc::clone(&clock),
    )));
    let mut commits = Vec::new();
    for writer in writers {
        commits.extend(writer.await.expect("writer"));
    }
    let written: u64 = commits.iter().map(|c| c.positions.len() as u64).sum();
    total.store(written, Ordering::SeqCst);
    let seen = reader.await.expect("reader");

    let late = late_commits(&commits);
    assert!(
        late > 0,
        "no commit became visible after an event with a larger position: the test did not \
         exercise the gap"
    );
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len(), "an event was delivered twice");
    assert_eq!(seen.len() as u64, written, "an event was skipped");
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for event in &seen {
        let last = versions.entry(event.stream_id.as_str()).or_insert(0);
        assert_eq!(
            event.stream_version,
            *last + 1,
            "stream {} out of order",
            event.stream_id
        );
        *last = event.stream_version;
    }
    let settled: Vec<Uuid> = read_everything(&store)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    let followed: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(
        followed, settled,
        "the live reader saw another order than the settled one"
    );
    let out_of_position_order = seen
        .windows(2)
        .filter(|w| w[0].position > w[1].position)
        .count();
    println!(
        "{written} events in {} commits; {late} commits became visible after a larger \
         position; {out_of_position_order} events read after one with a larger position",
        commits.len()
    );
    drop(db);
}

// ---------------------------------------------------------------- bad data and bad input

#[tokio::test]
async fn an_unknown_stored_event_type_is_a_typed_error_naming_stream_version_and_type() {
    let (db, store) = migrated(4).await;
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    bus.execute(Deposit {
        account: "odd".into(),
        amount: 5,
    })
    .await
    .expect("deposit");
    let mut unknown = event(1);
    unknown.event_type = "bank.renamed_long_ago".into();
    store
        .append("Account-odd", ExpectedVersion::Exact(2), vec![unknown])
        .await
        .expect("append");
    let fresh_bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let error = fresh_bus
        .execute(Deposit {
            account: "odd".into(),
            amount: 5,
        })
        .await
        .expect_err("the stream holds an event the aggregate does not know");
    match &error {
        CommandError::Decode {
            stream,
            version: 3,
            source: EventDecodeError::UnknownType { name },
        } => {
            assert_eq!(stream, "Account-odd");
            assert_eq!(name, "bank.renamed_long_ago");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let message = error.to_string();
    for part in ["Account-odd", "3", "bank.renamed_long_ago"] {
        assert!(message.contains(part), "{message:?} does not name {part}");
    }
    assert_eq!(row_counts(&db.pool).await, (3, 1), "nothing was written");
}

#[tokio::test]
async fn a_stored_payload_that_no_longer_deserializes_is_a_typed_error() {
    let (db, store) = migrated(4).await;
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    for amount in [5, 6] {
        bus.execute(Deposit {
            account: "drift".into(),
            amount,
        })
        .await
        .expect("deposit");
    }
    // The payload's schema changed under the stored rows.
    sqlx::query(
        "UPDATE cqrs_events SET payload = '{\"amount\": \"a lot\"}'
         WHERE stream_id = 'Account-drift' AND stream_version = 3",
    )
    .execute(&db.pool)
    .await
    .expect("corrupt");
    let fresh_bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let error = fresh_bus
        .execute(Deposit {
            account: "drift".into(),
            amount: 7,
        })
        .await
        .expect_err("undecodable history");
    match &error {
        CommandError::Decode {
            stream,
            version: 3,
            source: EventDecodeError::Payload { name, .. },
        } => {
            assert_eq!(stream, "Account-drift");
            assert_eq!(name, bank::DEPOSITED);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let message = error.to_string();
    for part in ["Account-drift", "3", bank::DEPOSITED] {
        assert!(message.contains(part), "{message:?} does not name {part}");
    }
    assert_eq!(row_counts(&db.pool).await, (3, 1), "nothing was written");
}

#[tokio::test]
async fn hostile_stream_ids_are_stored_and_read_back_verbatim() {
    let (db, store) = migrated(4).await;
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let ids = [
        "'; DROP TABLE cqrs_events; --",
        r#"\"quoted\" \\ 'single' \x00 $1 %s"#,
        "x'); DELETE FROM cqrs_streams WHERE ('1'='1",
        "E'\\\\' || chr(39) || '",
        "ünïcödé ☃ 流 \u{200b}",
    ];
    for (n, id) in ids.iter().enumerate() {
        let committed = bus
            .execute(Deposit {
                account: (*id).to_owned(),
                amount: n as u64 + 1,
            })
            .await
            .expect("deposit");
        assert_eq!(committed.stream_id, format!("Account-{id}"));
        let loaded = store
            .load_stream(&committed.stream_id, 1)
            .await
            .expect("load");
        assert_eq!(loaded.len(), 2);
        assert!(loaded.iter().all(|e| e.stream_id == committed.stream_id));
        assert_eq!(
            store
                .stream_version(&committed.stream_id)
                .await
                .expect("version"),
            2
        );
    }
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT stream_id FROM cqrs_streams ORDER BY stream_id")
            .fetch_all(&db.pool)
            .await
            .expect("streams");
    let mut expected: Vec<String> = ids.iter().map(|id| format!("Account-{id}")).collect();
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(row_counts(&db.pool).await, (10, 5));
}

#[tokio::test]
async fn bad_input_writes_nothing() {
    let (db, store) = migrated(4).await;
    store
        .append("kept", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("seed");
    let before = row_counts(&db.pool).await;
    let invalid_stream = |result: Result<_, StoreError>| {
        assert!(
            matches!(result, Err(StoreError::InvalidStreamId { .. })),
            "{result:?}"
        );
    };
    invalid_stream(store.append("", ExpectedVersion::Any, vec![event(1)]).await);
    invalid_stream(
        store
            .append("nul\0byte", ExpectedVersion::Any, vec![event(1)])
            .await,
    );
    invalid_stream(
        store
            .append(
                &"x".repeat(cqrs_postgres::MAX_STREAM_ID_BYTES + 1),
                ExpectedVersion::Any,
                vec![event(1)],
            )
            .await,
    );

    // PostgreSQL's jsonb cannot hold a NUL character; the whole batch is refused.
    let mut unstorable = event(2);
    unstorable.payload = json!({ "text": "nul \u{0} inside" }).into();
    match store
        .append("new", ExpectedVersion::NoStream, vec![event(1), unstorable])
        .await
    {
        Err(StoreError::Backend(source)) => assert!(matches!(
            source.downcast_ref::<PostgresStoreError>(),
            Some(PostgresStoreError::Database(_))
        )),
        other => panic!("expected a database error, got {other:?}"),
    }
    let mut too_new = event(3);
    too_new.schema_version = u32::MAX;
    assert!(matches!(
        store
            .append("new", ExpectedVersion::NoStream, vec![too_new])
            .await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store
            .append("kept", ExpectedVersion::Exact(5), vec![event(1)])
            .await,
        Err(StoreError::Conflict { actual: 1, .. })
    ));
    let twin = event(4);
    assert!(matches!(
        store
            .append("new", ExpectedVersion::NoStream, vec![twin.clone(), twin])
            .await,
        Err(StoreError::DuplicateEventId { .. })
    ));
    let stored = store.load_stream("kept", 1).await.expect("load");
    let mut reused = event(5);
    reused.event_id = stored[0].event_id;
    match store
        .append("new", ExpectedVersion::NoStream, vec![event(6), reused])
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, stored[0].event_id),
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }

    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let rejected = bus
        .execute(Deposit {
            account: "zero".into(),
            amount: 0,
        })
        .await;
    assert!(matches!(
        rejected,
        Err(CommandError::Rejected(BankError::ZeroAmount))
    ));
    assert_eq!(row_counts(&db.pool).await, before, "something was written");
    assert_eq!(store.stream_version("new").await.expect("version"), 0);
}

#[tokio::test]
async fn events_written_around_the_store_are_reported_not_overwritten() {
    let (db, store) = migrated(2).await;
    sqlx::query(
        "INSERT INTO cqrs_events (stream_id, stream_version, event_id, event_type,
                                  schema_version, payload, metadata)
         VALUES ('sideways', 1, gen_random_uuid(), 'test.happened', 1, '{}', '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("insert around the store");
    match store
        .append("sideways", ExpectedVersion::NoStream, vec![event(1)])
        .await
    {
        Err(StoreError::Backend(source)) => assert!(matches!(
            source.downcast_ref::<PostgresStoreError>(),
            Some(PostgresStoreError::StreamOutOfSync { stream }) if stream == "sideways"
        )),
        other => panic!("expected StreamOutOfSync, got {other:?}"),
    }
    assert_eq!(row_counts(&db.pool).await, (1, 0));
}

// ---------------------------------------------------------------- snapshots

fn snapshotting() -> RepositoryOptions {
    RepositoryOptions {
        snapshot_every: Some(5),
        cache_capacity: 0,
    }
}

#[tokio::test]
async fn snapshots_are_taken_and_used() {
    let (db, store) = migrated(4).await;
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>((), snapshotting())
        .build();
    for amount in 1..=6 {
        bus.execute(Deposit {
            account: "snap".into(),
            amount,
        })
        .await
        .expect("deposit");
    }
    // The first command opened the account too: versions 2..=7, a snapshot when crossing 5.
    let snapshot = store
        .load_snapshot("Account-snap")
        .await
        .expect("load")
        .expect("a snapshot was taken");
    assert_eq!(snapshot.stream_version, 5);
    assert_eq!(snapshot.schema_version, 2);
    assert_eq!(
        snapshot.state,
        json!({ "open": true, "balance": 10, "deposits": 4 })
    );

    // Prove the snapshot is what the repository starts from: rewrite the state it holds.
    store
        .save_snapshot(Snapshot {
            state: json!({ "open": true, "balance": 1000, "deposits": 4 }),
            ..snapshot
        })
        .await
        .expect("save");
    let repository = Repository::<Account>::new(Arc::new(store.clone()), (), snapshotting());
    let loaded = repository.load("Account-snap").await.expect("load");
    assert_eq!((loaded.version, loaded.state.balance), (7, 1000 + 5 + 6));
    drop(db);
}

#[tokio::test]
async fn a_snapshot_that_no_longer_fits_is_ignored_and_the_aggregate_rebuilt() {
    let (db, store) = migrated(4).await;
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>((), snapshotting())
        .build();
    for amount in 1..=3 {
        bus.execute(Deposit {
            account: "stale".into(),
            amount,
        })
        .await
        .expect("deposit");
    }
    let repository = Repository::<Account>::new(Arc::new(store.clone()), (), snapshotting());
    let mut truth = repository.load("Account-stale").await.expect("load");
    assert_eq!((truth.version, truth.state.balance), (4, 6));

    for (schema_version, state) in [
        // The state's shape changed: it no longer deserializes.
        (2, json!({ "open": "yes", "balance": [1, 2] })),
        // Written by an older schema version of the aggregate's state.
        (
            1,
            json!({ "open": true, "balance": 999_999, "deposits": 1 }),
        ),
    ] {
        store
            .save_snapshot(Snapshot {
                stream_id: "Account-stale".into(),
                stream_version: truth.version,
                schema_version,
                state,
            })
            .await
            .expect("save");
        let loaded = repository.load("Account-stale").await.expect("load");
        assert_eq!(loaded, truth, "schema version {schema_version}");
        // Commands go on as if there were no snapshot.
        let committed = bus
            .execute(Deposit {
                account: "stale".into(),
                amount: 100,
            })
            .await
            .expect("deposit");
        assert_eq!(committed.stream_version, truth.version + 1);
        truth = repository.load("Account-stale").await.expect("load");
        assert_eq!(truth.state.balance, loaded.state.balance + 100);
    }
    drop(db);
}

// ---------------------------------------------------------------- inline projections

#[tokio::test]
async fn an_inline_projection_commits_with_the_events_or_not_at_all() {
    let (db, store) = migrated(4).await;
    sqlx::query(bank::BALANCES_TABLE)
        .execute(&db.pool)
        .await
        .expect("read model table");
    let store = store.with_inline_projection(bank::BalanceRows);
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let mut last = None;
    for amount in [10, 20] {
        last = Some(
            bus.execute(Deposit {
                account: "inline".into(),
                amount,
            })
            .await
            .expect("deposit"),
        );
    }
    let balance = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT balance, last_position FROM test_balances WHERE stream_id = 'Account-inline'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("balance row")
    };
    let committed = last.expect("committed");
    assert_eq!(
        balance().await,
        (30, i64::try_from(committed.position.0).unwrap())
    );

    let before = row_counts(&db.pool).await;
    let failed = bus
        .execute(Deposit {
            account: "inline".into(),
            amount: bank::CURSED_AMOUNT,
        })
        .await;
    match failed {
        Err(CommandError::Store(StoreError::Backend(source))) => assert!(matches!(
            source.downcast_ref::<PostgresStoreError>(),
            Some(PostgresStoreError::InlineProjection {
                name: "BalanceRows",
                ..
            })
        )),
        other => panic!("expected the inline projection's failure, got {other:?}"),
    }
    assert_eq!(row_counts(&db.pool).await, before, "events were written");
    assert_eq!(
        balance().await,
        (30, i64::try_from(committed.position.0).unwrap())
    );
    assert_eq!(
        store
            .stream_version("Account-inline")
            .await
            .expect("version"),
        committed.stream_version
    );

    // Inside the caller's transaction, rolled back: neither events nor rows stay.
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .append_in(
            &mut tx,
            "Account-inline",
            ExpectedVersion::Exact(committed.stream_version),
            vec![deposit_event(100)],
        )
        .await
        .expect("append in");
    let inside: i64 =
        sqlx::query_scalar("SELECT balance FROM test_balances WHERE stream_id = 'Account-inline'")
            .fetch_one(&mut *tx)
            .await
            .expect("balance in the transaction");
    assert_eq!(inside, 130);
    tx.rollback().await.expect("rollback");
    assert_eq!(row_counts(&db.pool).await, before);
    assert_eq!(balance().await.0, 30);
}

// ---------------------------------------------------------------- notifications

async fn next_notification(listener: &mut PgListener) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .ok()
        .map(|n| n.expect("notification").payload().to_owned())
}

#[tokio::test]
async fn appends_wake_listeners_with_their_last_position_once_committed() {
    let (db, store) = migrated(4).await;
    let mut listener = PgListener::connect_with(&db.pool).await.expect("listener");
    listener.listen("cqrs_events").await.expect("listen");

    let appended = store
        .append("n", ExpectedVersion::NoStream, events_of(3))
        .await
        .expect("append");
    assert_eq!(
        next_notification(&mut listener).await,
        Some(appended.last_position().to_string())
    );

    // Not for a conflict, nor for a rolled-back transaction.
    assert!(
        store
            .append("n", ExpectedVersion::NoStream, events_of(1))
            .await
            .is_err()
    );
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .append_in(&mut tx, "m", ExpectedVersion::NoStream, events_of(1))
        .await
        .expect("append in");
    tx.rollback().await.expect("rollback");
    let after_commit = store.clone().with_notify(NotifyMode::AfterCommit);
    let appended = after_commit
        .append("n", ExpectedVersion::Exact(3), events_of(2))
        .await
        .expect("append");
    assert_eq!(
        next_notification(&mut listener).await,
        Some(appended.last_position().to_string()),
        "the first notification after the first one is the after-commit one"
    );
    let quiet = store.clone().with_notify(NotifyMode::Off);
    quiet
        .append("n", ExpectedVersion::Exact(5), events_of(1))
        .await
        .expect("append");
    assert_eq!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .ok()
            .map(|n| n.expect("notification").payload().to_owned()),
        None
    );
    drop(listener);
    drop(db);
}

fn events_of(n: u64) -> Vec<NewEvent> {
    (1..=n).map(event).collect()
}

// ---------------------------------------------------------------- plans

async fn explain(conn: &mut PgConnection, execute: &str) -> String {
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {execute}"))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    lines.join("\n")
}

#[tokio::test]
async fn load_stream_and_read_all_from_use_their_indexes() {
    let (db, store) = migrated(2).await;
    // 200 streams of 100 events, interleaved, in 100 transactions.
    for round in 1..=100 {
        sqlx::query(
            "INSERT INTO cqrs_events (stream_id, stream_version, event_id, event_type,
                                      schema_version, payload, metadata)
             SELECT 'plan-' || s, $1, gen_random_uuid(), 'test.happened', 1,
                    jsonb_build_object('n', s), '{}'
             FROM generate_series(1, 200) AS s",
        )
        .bind(round)
        .execute(&db.pool)
        .await
        .expect("seed");
    }
    sqlx::query("ANALYZE cqrs_events")
        .execute(&db.pool)
        .await
        .expect("analyze");
    let middle = store
        .read_all_from(GlobalPosition::START, 10_000)
        .await
        .expect("read")
        .last()
        .expect("events")
        .position;

    let mut conn = db.pool.acquire().await.expect("connection");
    // The statements exactly as the store sends them, prepared with their parameters.
    sqlx::raw_sql(&format!(
        "PREPARE load_stream_plan (text, bigint) AS {};
         PREPARE read_all_from_plan (bigint) AS {}1000",
        store_sql::LOAD_STREAM,
        store_sql::READ_ALL_FROM
    ))
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let mut plans = BTreeMap::new();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .expect("plan mode");
        let load = explain(&mut conn, "EXECUTE load_stream_plan('plan-42', 1)").await;
        assert!(
            load.contains("Index Scan using cqrs_events_stream_id_stream_version_key")
                || load.contains("Bitmap Index Scan on cqrs_events_stream_id_stream_version_key"),
            "{mode}: load_stream does not use the (stream_id, stream_version) index:\n{load}"
        );
        let read = explain(
            &mut conn,
            &format!("EXECUTE read_all_from_plan({})", middle.0),
        )
        .await;
        assert!(
            read.contains("Index Scan using cqrs_events_tx_position_idx on cqrs_events"),
            "{mode}: read_all_from does not scan the (tx, position) index:\n{read}"
        );
        assert!(
            read.contains("Index Cond: ((ROW(tx, \"position\") > ROW("),
            "{mode}: the row comparison is not an index condition:\n{read}"
        );
        plans.insert(mode, (load, read));
    }
    for (mode, (load, read)) in plans {
        println!("-- {mode}\n-- load_stream\n{load}\n-- read_all_from\n{read}\n");
    }
}

/// A prepared statement keeps the generic plan it got while the tables were small; a
/// sub-query reading `cqrs_events` in an append could then stay a sequential scan of the
/// whole table on every append until the next `ANALYZE` (0.8 ms appends became 26 ms after
/// 300,000 rows). The appends read `cqrs_events` through nothing but the unique indexes
/// their `INSERT` maintains.
#[test]
fn appends_read_nothing_from_the_events_table() {
    for (name, statement) in [
        ("APPEND_EXACT", store_sql::APPEND_EXACT),
        ("APPEND_NEW", store_sql::APPEND_NEW),
        ("APPEND_ANY", store_sql::APPEND_ANY),
        ("APPEND_EXACT_QUIET", store_sql::APPEND_EXACT_QUIET),
        ("APPEND_NEW_QUIET", store_sql::APPEND_NEW_QUIET),
        ("APPEND_ANY_QUIET", store_sql::APPEND_ANY_QUIET),
        ("APPEND_GROUP", store_sql::APPEND_GROUP),
        ("APPEND_GROUP_QUIET", store_sql::APPEND_GROUP_QUIET),
    ] {
        assert!(
            !statement.contains("FROM cqrs_events"),
            "{name} reads cqrs_events:\n{statement}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_stay_fast_after_the_table_grows_under_a_cached_plan() {
    let (db, store) = migrated(1).await;
    // Ten appends on a near-empty table: the one connection prepares the append and, after
    // five executions, caches its generic plan.
    for version in 0..10 {
        store
            .append(
                "grows",
                ExpectedVersion::Exact(version),
                vec![event(version)],
            )
            .await
            .expect("append");
    }
    sqlx::query(
        "INSERT INTO cqrs_events
                (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata)
         SELECT 'bulk', g, gen_random_uuid(), 't', 1, '{}', '{}'
           FROM generate_series(1, 200000) AS g",
    )
    .execute(&db.pool)
    .await
    .expect("grow the table");
    // Count the heap pages the next appends read: a plan that scans the table reads
    // thousands per append, index lookups a handful. The pool has one connection, so the
    // appends and these reads run on one backend; it flushes its counters when asked
    // (PostgreSQL 15 and later), at the end of the asking statement.
    let reads = "SELECT coalesce(heap_blks_read + heap_blks_hit, 0)
                   FROM pg_statio_user_tables WHERE relname = 'cqrs_events'";
    let flush = "SELECT pg_stat_force_next_flush()";
    sqlx::query(flush).execute(&db.pool).await.expect("flush");
    let before: i64 = sqlx::query_scalar(reads)
        .fetch_one(&db.pool)
        .await
        .expect("stats");
    for version in 10..20 {
        store
            .append(
                "grows",
                ExpectedVersion::Exact(version),
                vec![event(version)],
            )
            .await
            .expect("append");
    }
    sqlx::query(flush).execute(&db.pool).await.expect("flush");
    let after: i64 = sqlx::query_scalar(reads)
        .fetch_one(&db.pool)
        .await
        .expect("stats");
    assert!(
        after - before < 1_000,
        "ten appends read {} heap pages of cqrs_events",
        after - before
    );
}

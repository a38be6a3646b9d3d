//! Idempotent commands on PostgreSQL: the key, the outcome and the events commit together,
//! and concurrent executions of one key append once.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestDb;
use cqrs_core::{Command, DomainError, Event, aggregate};
use cqrs_core::{
    CommandBus, CommandError, EventStore, ExpectedVersion, IdempotentOutcome, IdempotentWrite,
    KeyChanges, Metadata, NewEvent, Repository, RepositoryOptions, StoreError,
};
use cqrs_postgres::PostgresEventStore;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Barrier;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum WalletEvent {
    #[event(name = "wallet.credited")]
    Credited(Credited),
    #[event(name = "wallet.debited")]
    Debited(Debited),
}

/// Carries its key in a field.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.credit", idempotency_key = request_id)]
pub struct Credit {
    pub id: u32,
    pub request_id: String,
    pub amount: u64,
}

/// Takes its key from the caller's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.debit", idempotent)]
pub struct Debit {
    pub id: u32,
    pub amount: u64,
}

/// Produces no events.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.check", idempotent)]
pub struct Check {
    pub id: u32,
}

/// Takes no keys.
#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Wallet, id = id, name = "wallet.touch")]
pub struct Touch {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

impl DomainError for WalletError {
    fn code(&self) -> &'static str {
        "insufficient_funds"
    }
}

/// Counts handler runs.
#[derive(Debug, Default)]
pub struct Runs(pub AtomicUsize);

#[derive(Debug, Default)]
pub struct Wallet {
    balance: u64,
}

#[aggregate(event = WalletEvent, error = WalletError, services = Arc<Runs>)]
impl Wallet {
    #[command_handler]
    fn credit(&self, cmd: &Credit, runs: &Arc<Runs>) -> Result<Credited, WalletError> {
        runs.0.fetch_add(1, Ordering::SeqCst);
        Ok(Credited { amount: cmd.amount })
    }

    #[command_handler]
    fn debit(&self, cmd: &Debit, runs: &Arc<Runs>) -> Result<Debited, WalletError> {
        runs.0.fetch_add(1, Ordering::SeqCst);
        if cmd.amount > self.balance {
            return Err(WalletError::InsufficientFunds {
                balance: self.balance,
                requested: cmd.amount,
            });
        }
        Ok(Debited { amount: cmd.amount })
    }

    #[command_handler]
    fn check(&self, _cmd: &Check, runs: &Arc<Runs>) -> Result<Vec<WalletEvent>, WalletError> {
        runs.0.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }

    #[command_handler]
    fn touch(&self, _cmd: &Touch) -> Result<Vec<WalletEvent>, WalletError> {
        Ok(Vec::new())
    }

    #[event_handler]
    fn on_credited(&mut self, e: &Credited) {
        self.balance += e.amount;
    }

    #[event_handler]
    fn on_debited(&mut self, e: &Debited) {
        self.balance -= e.amount;
    }
}

type Bus = CommandBus<(Repository<Wallet>, ())>;

async fn migrated(max_connections: u32) -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(max_connections).await;
    let applied = PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    assert!(applied.contains(&4), "{applied:?}");
    let store = PostgresEventStore::new(db.pool.clone());
    (db, store)
}

fn bus(store: &PostgresEventStore, runs: &Arc<Runs>, cache: bool) -> Bus {
    let options = RepositoryOptions {
        cache_capacity: if cache { 100 } else { 0 },
        ..RepositoryOptions::default()
    };
    CommandBus::builder(store.clone())
        .aggregate_with::<Wallet>(Arc::clone(runs), options)
        .build()
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

fn credit(key: &str, amount: u64) -> Credit {
    Credit {
        id: 1,
        request_id: key.into(),
        amount,
    }
}

fn write(key: &str) -> IdempotentWrite {
    IdempotentWrite {
        command_name: "wallet.credit".into(),
        key: key.into(),
        body_hash: cqrs_core::idempotency::body_hash("{}"),
        command_id: uuid::Uuid::now_v7(),
        rejection: None,
    }
}

fn credited() -> Vec<NewEvent> {
    let event = WalletEvent::Credited(Credited { amount: 1 });
    vec![NewEvent::from_event(&event, Metadata::default()).unwrap()]
}

#[tokio::test]
async fn a_second_execution_returns_the_first_result_without_running_or_writing() {
    let (db, store) = migrated(4).await;
    let runs = Arc::new(Runs::default());
    for cache in [true, false] {
        let bus = bus(&store, &runs, cache);
        let key = format!("r-{cache}");
        let first = bus.execute(credit(&key, 5)).await.unwrap();
        let events = count(&db.pool, "cqrs_events").await;
        let second = bus.execute(credit(&key, 5)).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(count(&db.pool, "cqrs_events").await, events);
    }
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
    assert_eq!(count(&db.pool, "cqrs_idempotency").await, 2);
}

#[tokio::test]
async fn a_rejection_is_recorded_and_replayed() {
    let (db, store) = migrated(4).await;
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, false);
    let metadata = Metadata::default().with_idempotency_key("d-1");
    let first = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata.clone())
        .await
        .unwrap_err();
    assert!(matches!(first, CommandError::Rejected(_)));
    bus.execute(credit("c", 10)).await.unwrap();
    let again = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata)
        .await
        .unwrap_err();
    let CommandError::AlreadyRejected {
        domain_code,
        message,
        ..
    } = &again
    else {
        panic!("expected the recorded rejection, got {again:?}");
    };
    assert_eq!(domain_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(message, &first.rejection().unwrap().to_string());
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_typed_error() {
    let (db, store) = migrated(4).await;
    let bus = bus(&store, &Arc::default(), true);
    bus.execute(credit("r-1", 5)).await.unwrap();
    let error = bus.execute(credit("r-1", 6)).await.unwrap_err();
    assert!(
        matches!(&error, CommandError::IdempotencyKeyReused { key, .. } if key == "r-1"),
        "{error:?}"
    );
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_executions_of_one_key_append_once_and_agree() {
    let (db, store) = migrated(20).await;
    let runs = Arc::new(Runs::default());
    // No cache: the executions race in the database, not in the process's queue.
    let bus = bus(&store, &runs, false);
    let barrier = Arc::new(Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let bus = bus.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                bus.execute(credit("r-1", 5)).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
    assert_eq!(count(&db.pool, "cqrs_idempotency").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_executions_of_one_key_without_events_record_one_outcome() {
    let (db, store) = migrated(20).await;
    let bus = bus(&store, &Arc::default(), false);
    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let bus = bus.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let metadata = Metadata::default().with_idempotency_key("k");
                bus.execute_with(Check { id: 1 }, metadata).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!(count(&db.pool, "cqrs_idempotency").await, 1);
}

#[tokio::test]
async fn a_retry_after_a_lost_reply_returns_the_stored_result() {
    let (db, store) = migrated(4).await;
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, false);
    // The command commits, and the reply never reaches the caller.
    drop(bus.execute(credit("r-1", 5)).await);
    let record = bus.outcome_of::<Credit>("r-1").await.unwrap().unwrap();
    let IdempotentOutcome::Committed(recorded) = record.outcome else {
        panic!("expected a commit");
    };
    let retried = bus.execute(credit("r-1", 5)).await.unwrap();
    assert_eq!(retried, recorded);
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_store_records_the_key_with_the_append_or_not_at_all() {
    let (db, store) = migrated(4).await;
    let keys = KeyChanges::new;
    // A failed append records nothing.
    let conflict = store
        .append_idempotent(
            "Wallet-1",
            ExpectedVersion::Exact(3),
            credited(),
            keys(),
            write("k"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, StoreError::Conflict { .. }),
        "{conflict:?}"
    );
    assert!(
        store
            .idempotency_record("wallet.credit", "k")
            .await
            .unwrap()
            .is_none()
    );
    // The append and its record, then a caller that lost the reply looks the key up.
    let appended = store
        .append_idempotent(
            "Wallet-1",
            ExpectedVersion::NoStream,
            credited(),
            keys(),
            write("k"),
        )
        .await
        .unwrap();
    let record = store
        .idempotency_record("wallet.credit", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.stream_id, "Wallet-1");
    let IdempotentOutcome::Committed(committed) = record.outcome else {
        panic!("expected a commit");
    };
    assert_eq!(committed.stream_version, appended.stream_version);
    assert_eq!(committed.position, appended.last_position());
    // A second append with the key is refused and its events undone.
    let taken = store
        .append_idempotent(
            "Wallet-1",
            ExpectedVersion::Any,
            credited(),
            keys(),
            write("k"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(taken, StoreError::IdempotencyKeyTaken { .. }),
        "{taken:?}"
    );
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
    assert_eq!(store.stream_version("Wallet-1").await.unwrap(), 1);
}

#[tokio::test]
async fn purging_deletes_records_older_than_the_cutoff() {
    let (db, store) = migrated(4).await;
    let bus = bus(&store, &Arc::default(), true);
    bus.execute(credit("r-1", 5)).await.unwrap();
    let day_ago = chrono::Utc::now() - chrono::Duration::days(1);
    assert_eq!(store.purge_idempotency_keys(day_ago).await.unwrap(), 0);
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.purge_idempotency_keys(later).await.unwrap(), 1);
    assert_eq!(count(&db.pool, "cqrs_idempotency").await, 0);
    // The key is free again.
    bus.execute(credit("r-1", 5)).await.unwrap();
    assert_eq!(count(&db.pool, "cqrs_events").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_idempotency_checks() {
    let (db, store) = migrated(20).await;
    cqrs_core::testing::idempotency::run_all(&store).await;
    // The checks hold whichever way appends notify.
    cqrs_core::testing::idempotency::run_all(
        &store
            .clone()
            .with_notify(cqrs_postgres::NotifyMode::InTransaction),
    )
    .await;
    drop(db);
}

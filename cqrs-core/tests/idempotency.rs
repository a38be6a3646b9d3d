//! Idempotent commands on the in-memory store: a key runs its command once, and every later
//! execution of the key returns the first outcome.
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cqrs_core::prelude::*;
use cqrs_core::{IdempotentOutcome, RepositoryOptions};
use support::wallet::*;

type Bus = CommandBus<(cqrs_core::Repository<Wallet>, ())>;

fn bus(store: &InMemoryEventStore, runs: &Arc<Runs>, cache: bool) -> Bus {
    let options = RepositoryOptions {
        cache_capacity: if cache { 100 } else { 0 },
        ..RepositoryOptions::default()
    };
    CommandBus::builder(store.clone())
        .aggregate_with::<Wallet>(Arc::clone(runs), options)
        .build()
}

fn credit(key: &str, amount: u64) -> Credit {
    Credit {
        id: 1,
        request_id: key.into(),
        amount,
    }
}

#[tokio::test]
async fn a_second_execution_of_a_key_returns_the_first_result_without_running_or_writing() {
    for cache in [true, false] {
        let store = InMemoryEventStore::new();
        let runs = Arc::new(Runs::default());
        let bus = bus(&store, &runs, cache);
        let first = bus.execute(credit("r-1", 5)).await.unwrap();
        let second = bus.execute(credit("r-1", 5)).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(store.len(), 1);
        assert_eq!(runs.0.load(Ordering::SeqCst), 1);
        // Another key is another execution.
        let other = bus.execute(credit("r-2", 5)).await.unwrap();
        assert_ne!(other.command_id, first.command_id);
        assert_eq!(store.len(), 2);
    }
}

#[tokio::test]
async fn the_key_is_recorded_on_the_events_metadata() {
    let store = InMemoryEventStore::new();
    let bus = bus(&store, &Arc::default(), true);
    bus.execute(credit("r-1", 5)).await.unwrap();
    let events = store.load_stream("Wallet-1", 1).await.unwrap();
    assert_eq!(events[0].metadata.idempotency_key(), Some("r-1"));
}

#[tokio::test]
async fn a_key_from_the_callers_metadata_is_honoured() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, true);
    bus.execute(credit("c", 10)).await.unwrap();
    let metadata = Metadata::default().with_idempotency_key("d-1");
    let first = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata.clone())
        .await
        .unwrap();
    let second = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(store.len(), 2);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rejection_is_recorded_and_replayed() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, true);
    let metadata = Metadata::default().with_idempotency_key("d-1");
    let first = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata.clone())
        .await
        .unwrap_err();
    assert!(matches!(first, CommandError::Rejected(_)));
    // Funds arrive: run again, the debit would now pass, but the key's outcome stands.
    bus.execute(credit("c", 10)).await.unwrap();
    let again = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata)
        .await
        .unwrap_err();
    let CommandError::AlreadyRejected {
        key,
        domain_code,
        message,
    } = &again
    else {
        panic!("expected the recorded rejection, got {again:?}");
    };
    assert_eq!(key, "d-1");
    assert_eq!(domain_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(message, &first.rejection().unwrap().to_string());
    assert_eq!(again.kind(), first.kind());
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn an_outcome_without_events_is_recorded_and_replayed() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, false);
    let metadata = Metadata::default().with_idempotency_key("k");
    let first = bus
        .execute_with(Check { id: 1 }, metadata.clone())
        .await
        .unwrap();
    bus.execute(credit("c", 10)).await.unwrap();
    let second = bus.execute_with(Check { id: 1 }, metadata).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(second.stream_version, 0);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_typed_error() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, true);
    bus.execute(credit("r-1", 5)).await.unwrap();
    let error = bus.execute(credit("r-1", 6)).await.unwrap_err();
    assert!(
        matches!(&error, CommandError::IdempotencyKeyReused { command: "wallet.credit", key } if key == "r-1"),
        "{error:?}"
    );
    assert_eq!(error.code(), "idempotency_key_reused");
    assert_eq!(store.len(), 1);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn keys_are_scoped_by_command_name() {
    let store = InMemoryEventStore::new();
    let bus = bus(&store, &Arc::default(), true);
    bus.execute(credit("shared", 10)).await.unwrap();
    let metadata = Metadata::default().with_idempotency_key("shared");
    bus.execute_with(Debit { id: 1, amount: 3 }, metadata)
        .await
        .unwrap();
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn a_key_for_a_command_that_takes_none_is_refused() {
    let store = InMemoryEventStore::new();
    let bus = bus(&store, &Arc::default(), true);
    let metadata = Metadata::default().with_idempotency_key("k");
    let error = bus
        .execute_with(Touch { id: 1 }, metadata)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        CommandError::NotIdempotent {
            command: "wallet.touch"
        }
    ));
}

#[tokio::test]
async fn a_caller_that_lost_the_reply_finds_the_outcome_by_key() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, true);
    assert!(bus.outcome_of::<Credit>("r-1").await.unwrap().is_none());
    // The reply is lost: the caller drops it.
    drop(bus.execute(credit("r-1", 5)).await);
    let record = bus.outcome_of::<Credit>("r-1").await.unwrap().unwrap();
    let IdempotentOutcome::Committed(recorded) = &record.outcome else {
        panic!("expected a commit, got {record:?}");
    };
    assert_eq!(record.stream_id, "Wallet-1");
    // Retrying returns the same commit, and writes nothing more.
    let retried = bus.execute(credit("r-1", 5)).await.unwrap();
    assert_eq!(&retried, recorded);
    assert_eq!(store.len(), 1);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_executions_of_one_key_append_once() {
    for cache in [true, false] {
        let store = InMemoryEventStore::new();
        let runs = Arc::new(Runs::default());
        let bus = bus(&store, &runs, cache);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let bus = bus.clone();
                tokio::spawn(async move { bus.execute(credit("r-1", 5)).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap().unwrap());
        }
        assert!(results.iter().all(|r| *r == results[0]));
        assert_eq!(store.len(), 1);
    }
}

#[tokio::test]
async fn purging_frees_keys_older_than_the_retention() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::clone(&runs))
        .idempotency_retention(std::time::Duration::ZERO)
        .build();
    bus.execute(credit("r-1", 5)).await.unwrap();
    // A fresh record is younger than a day: the default retention keeps it.
    assert_eq!(
        store
            .purge_idempotency_keys(chrono::Utc::now() - chrono::Duration::days(1))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    assert_eq!(bus.purge_idempotency_keys().await.unwrap(), 1);
    assert!(bus.outcome_of::<Credit>("r-1").await.unwrap().is_none());
    bus.execute(credit("r-1", 5)).await.unwrap();
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn a_store_without_idempotency_refuses_keys_and_writes_nothing() {
    /// Delegates everything but the idempotency methods.
    struct Plain(InMemoryEventStore);
    impl EventStore for Plain {
        fn append<'a>(
            &'a self,
            stream_id: &'a str,
            expected: cqrs_core::ExpectedVersion,
            events: Vec<cqrs_core::NewEvent>,
        ) -> BoxFuture<'a, Result<cqrs_core::AppendResult, cqrs_core::StoreError>> {
            self.0.append(stream_id, expected, events)
        }

        crate::support::delegate::delegate!(0: load_stream, stream_version, read_all_from, load_snapshot, save_snapshot, delete_snapshot);
    }
    let inner = InMemoryEventStore::new();
    let bus = CommandBus::builder(Plain(inner.clone()))
        .aggregate::<Wallet>(Arc::default())
        .build();
    let error = bus.execute(credit("r-1", 5)).await.unwrap_err();
    assert!(matches!(
        error,
        CommandError::Store(cqrs_core::StoreError::IdempotencyUnsupported)
    ));
    assert_eq!(error.code(), "unsupported");
    assert!(inner.is_empty());
    // Without a key the store serves as before.
    bus.execute(Touch { id: 1 }).await.unwrap();
}

fn write(key: &str) -> cqrs_core::IdempotentWrite {
    cqrs_core::IdempotentWrite {
        command_name: "wallet.credit".into(),
        key: key.into(),
        body_hash: cqrs_core::idempotency::body_hash("{}"),
        command_id: uuid::Uuid::now_v7(),
        rejection: None,
    }
}

fn credited() -> Vec<cqrs_core::NewEvent> {
    vec![
        cqrs_core::NewEvent::from_event(
            &WalletEvent::Credited(Credited { amount: 1 }),
            Metadata::default(),
        )
        .unwrap(),
    ]
}

#[tokio::test]
async fn a_recorded_key_fails_a_second_append_which_writes_nothing() {
    let store = InMemoryEventStore::new();
    let any = cqrs_core::ExpectedVersion::Any;
    let keys = cqrs_core::KeyChanges::new;
    let first = store
        .append_idempotent("Wallet-1", any, credited(), keys(), write("k"))
        .await
        .unwrap();
    let second = store
        .append_idempotent("Wallet-1", any, credited(), keys(), write("k"))
        .await
        .unwrap_err();
    assert!(matches!(
        second,
        cqrs_core::StoreError::IdempotencyKeyTaken { ref command, ref key }
            if command == "wallet.credit" && key == "k"
    ));
    assert_eq!(store.len(), 1);
    // The appender that lost the reply reads what it did.
    let record = store
        .idempotency_record("wallet.credit", "k")
        .await
        .unwrap()
        .unwrap();
    let IdempotentOutcome::Committed(committed) = record.outcome else {
        panic!("expected a commit");
    };
    assert_eq!(committed.stream_version, first.stream_version);
    assert_eq!(committed.position, first.last_position());
    assert_eq!(committed.events, 1);
}

#[tokio::test]
async fn the_json_path_replays_outcomes_with_the_same_kind_and_message() {
    let store = InMemoryEventStore::new();
    let runs = Arc::new(Runs::default());
    let bus = bus(&store, &runs, true);
    let json = cqrs_core::CommandDispatcher::new(bus).unwrap();
    let metadata = Metadata::default().with_idempotency_key("d-1");
    let body = br#"{ "id": 1, "amount": 3 }"#;
    let first = json
        .dispatch_json_with("wallet.debit", body, metadata.clone())
        .await
        .unwrap_err();
    let again = json
        .dispatch_json_with("wallet.debit", body, metadata)
        .await
        .unwrap_err();
    assert_eq!(again.kind(), first.kind());
    let message = |error: &cqrs_core::DispatchError| match error {
        cqrs_core::DispatchError::Failed { message, .. } => message.clone(),
        other => panic!("expected a failure, got {other:?}"),
    };
    assert_eq!(message(&again), message(&first));
    let credit = br#"{ "id": 1, "request_id": "c-1", "amount": 3 }"#;
    let committed = json.dispatch_json("wallet.credit", credit).await.unwrap();
    let replayed = json.dispatch_json("wallet.credit", credit).await.unwrap();
    assert_eq!(committed, replayed);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

//! The bus's retry policy: transient failures and conflicts are retried with backoff, within a
//! budget; domain rejections and validation errors never are.
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cqrs_core::middleware::Retry;
use cqrs_core::prelude::*;
use cqrs_core::{StoreError, TransientReason};
use support::flaky::{Failure, Flaky};
use support::wallet::{Credit, Debit, Runs, Wallet};
use support::*;

fn fast(attempts: u32) -> Retry {
    Retry::new()
        .max_attempts(attempts)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(4))
}

type Bus = CommandBus<(cqrs_core::Repository<Account>, ())>;

async fn bus_on(store: &Flaky, retry: Retry) -> Bus {
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(limits())
        .retry(retry)
        .build();
    // Open the account before any failure is injected.
    let failures = store.failures.swap(0, Ordering::SeqCst);
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    store.failures.store(failures, Ordering::SeqCst);
    store.appends.store(0, Ordering::SeqCst);
    bus
}

#[tokio::test]
async fn a_command_succeeds_after_transient_failures_that_rolled_back() {
    let store = Flaky::new(2, Failure::Transient(TransientReason::SerializationFailure));
    let bus = bus_on(&store, fast(5)).await;
    let committed = bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap();
    assert_eq!(committed.stream_version, 2);
    assert_eq!(store.appends.load(Ordering::SeqCst), 3);
    assert_eq!(store.inner.len(), 2);
}

#[tokio::test]
async fn a_command_succeeds_after_conflicts_by_reloading() {
    let store = Flaky::new(3, Failure::Conflict);
    let bus = bus_on(&store, fast(5)).await;
    bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap();
    assert_eq!(store.appends.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_policy_gives_up_after_its_attempts_with_the_last_error() {
    let store = Flaky::new(10, Failure::Transient(TransientReason::Deadlock));
    let bus = bus_on(&store, fast(3)).await;
    let error = bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap_err();
    let CommandError::RetriesExhausted {
        attempts,
        last,
        idempotency_key,
    } = &error
    else {
        panic!("expected exhaustion, got {error:?}");
    };
    assert_eq!(*attempts, 3);
    assert_eq!(*idempotency_key, None, "the command has no key");
    assert!(matches!(
        last,
        StoreError::Transient {
            reason: TransientReason::Deadlock,
            ..
        }
    ));
    assert_eq!(error.code(), "retries_exhausted");
    assert_eq!(store.appends.load(Ordering::SeqCst), 3);
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn the_policy_gives_up_when_its_time_is_spent() {
    let store = Flaky::new(100, Failure::Conflict);
    let retry = Retry::new()
        .max_attempts(100)
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(20))
        .max_elapsed(Duration::from_millis(60));
    let bus = bus_on(&store, retry).await;
    let started = std::time::Instant::now();
    let error = bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap_err();
    assert!(
        matches!(error, CommandError::RetriesExhausted { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(store.appends.load(Ordering::SeqCst) < 100);
}

#[tokio::test]
async fn a_rejection_is_never_retried() {
    let store = Flaky::new(0, Failure::Conflict);
    let runs = Arc::new(Runs::default());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::clone(&runs))
        .retry(fast(5))
        .build();
    let error = bus.execute(Debit { id: 1, amount: 100 }).await.unwrap_err();
    assert!(matches!(error, CommandError::Rejected(_)), "{error:?}");
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_invalid_command_is_never_retried() {
    let store = Flaky::new(u32::MAX, Failure::Conflict);
    let bus = bus_on(&store, fast(5)).await;
    let invalid = bus
        .execute(Rename {
            id: 1,
            owner: String::new(),
            contact: "nope".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(invalid, CommandError::Invalid(_)), "{invalid:?}");
    assert_eq!(store.appends.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_lost_connection_is_not_retried_for_a_command_without_a_key() {
    let store = Flaky::new(1, Failure::Transient(TransientReason::ConnectionLost));
    let bus = bus_on(&store, fast(5)).await;
    let error = bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap_err();
    assert!(
        matches!(
            error,
            CommandError::Store(StoreError::Transient {
                reason: TransientReason::ConnectionLost,
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!(store.appends.load(Ordering::SeqCst), 1);
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn a_lost_connection_is_retried_for_a_command_with_an_idempotency_key() {
    let store = Flaky::new(1, Failure::Transient(TransientReason::ConnectionLost));
    let runs = Arc::new(Runs::default());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::clone(&runs))
        .retry(fast(5))
        .build();
    let credit = Credit {
        id: 1,
        request_id: "r-1".into(),
        amount: 5,
    };
    bus.execute(credit).await.unwrap();
    assert_eq!(store.appends.load(Ordering::SeqCst), 2);
    assert_eq!(store.inner.len(), 1);
}

//! The circuit breaker: opens on infrastructure failures only, refuses before anything is
//! loaded while open, lets one trial through after the cool-down.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::CommandBusOf;
use cqrs_core::middleware::{
    CircuitBreaker, CircuitError, CircuitState, CircuitStats, ManualClock, TripsCircuit,
};
use cqrs_core::prelude::*;
use cqrs_core::{
    AppendResult, BoxFuture, CircuitOpen, ErrorKind, ExpectedVersion, NewEvent, Snapshot,
    StoreError,
};
use support::{Account, AccountError, Deposit, Open, Withdraw, limits};

/// An in-memory store that can be switched off, and counts stream loads.
#[derive(Clone, Default)]
struct FlakyStore {
    inner: InMemoryEventStore,
    down: Arc<AtomicBool>,
    loads: Arc<AtomicUsize>,
}

impl FlakyStore {
    fn fail<T: Send + 'static>(&self) -> Option<BoxFuture<'static, Result<T, StoreError>>> {
        self.down.load(Ordering::SeqCst).then(|| {
            Box::pin(std::future::ready(Err(StoreError::Backend(
                "connection refused".into(),
            )))) as BoxFuture<'static, _>
        })
    }
}

impl EventStore for FlakyStore {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        self.fail()
            .unwrap_or_else(|| self.inner.append(stream_id, expected, events))
    }
    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.fail()
            .unwrap_or_else(|| self.inner.load_stream(stream_id, from_version))
    }
    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        self.fail()
            .unwrap_or_else(|| self.inner.load_snapshot(stream_id))
    }

    crate::support::delegate::delegate!(inner: stream_version, read_all_from, save_snapshot, delete_snapshot);
}

type Bus = CommandBusOf![Account; CircuitBreaker];

fn setup(threshold: u32) -> (FlakyStore, ManualClock, CircuitBreaker, Bus) {
    let store = FlakyStore::default();
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::new("event-store")
        .failure_threshold(threshold)
        .cool_down(Duration::from_secs(30))
        .clock(clock.clone());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(limits())
        .middleware(breaker.clone())
        .build();
    (store, clock, breaker, bus)
}

fn open_account(id: u32) -> Open {
    Open {
        id,
        owner: "ada".into(),
    }
}

#[tokio::test]
async fn store_failures_open_the_circuit_and_it_refuses_before_loading() {
    let (store, _clock, breaker, bus) = setup(3);
    store.down.store(true, Ordering::SeqCst);
    for id in 0..3 {
        let error = bus.execute(open_account(id)).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::StoreUnavailable);
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    let loads = store.loads.load(Ordering::SeqCst);
    let error = bus.execute(open_account(9)).await.unwrap_err();
    let CommandError::CircuitOpen(CircuitOpen {
        circuit,
        retry_after,
    }) = &error
    else {
        panic!("expected an open circuit, got {error:?}");
    };
    assert_eq!(circuit, &"event-store");
    assert_eq!(retry_after, &Duration::from_secs(30));
    assert_eq!(error.code(), "circuit_open");
    assert_eq!(store.loads.load(Ordering::SeqCst), loads, "nothing loaded");
    assert_eq!(
        breaker.stats(),
        CircuitStats {
            opened: 1,
            half_opened: 0,
            closed: 0,
            refused: 1,
        }
    );
}

#[tokio::test]
async fn domain_rejections_and_validation_never_open_the_circuit() {
    let (_store, _clock, breaker, bus) = setup(2);
    bus.execute(open_account(1)).await.unwrap();
    for _ in 0..5 {
        let error = bus
            .execute(Withdraw { id: 1, amount: 10 })
            .await
            .unwrap_err();
        assert!(matches!(
            error.rejection(),
            Some(AccountError::InsufficientFunds { .. })
        ));
        let error = bus.execute(Deposit { id: 2, amount: 1 }).await.unwrap_err();
        assert_eq!(error.rejection(), Some(&AccountError::NotOpen));
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.stats(), CircuitStats::default());
}

#[tokio::test]
async fn a_success_resets_the_count_of_consecutive_failures() {
    let (store, _clock, breaker, bus) = setup(2);
    store.down.store(true, Ordering::SeqCst);
    bus.execute(open_account(1)).await.unwrap_err();
    store.down.store(false, Ordering::SeqCst);
    bus.execute(open_account(1)).await.unwrap();
    store.down.store(true, Ordering::SeqCst);
    bus.execute(open_account(2)).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Closed);
    bus.execute(open_account(3)).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test]
async fn after_the_cool_down_a_failed_trial_reopens_and_a_good_one_closes() {
    let (store, clock, breaker, bus) = setup(1);
    store.down.store(true, Ordering::SeqCst);
    bus.execute(open_account(1)).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Open);

    clock.advance(Duration::from_secs(29));
    let error = bus.execute(open_account(1)).await.unwrap_err();
    let CommandError::CircuitOpen(open) = error else {
        panic!("still open")
    };
    assert_eq!(open.retry_after, Duration::from_secs(1));

    clock.advance(Duration::from_secs(1));
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    let error = bus.execute(open_account(1)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::StoreUnavailable, "the trial ran");
    assert_eq!(breaker.state(), CircuitState::Open);

    clock.advance(Duration::from_secs(30));
    store.down.store(false, Ordering::SeqCst);
    bus.execute(open_account(1)).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(
        breaker.stats(),
        CircuitStats {
            opened: 2,
            half_opened: 2,
            closed: 1,
            refused: 1,
        }
    );
}

#[tokio::test]
async fn only_one_trial_runs_while_half_open_and_a_cancelled_trial_frees_its_place() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(1)
        .cool_down(Duration::from_secs(5))
        .clock(clock.clone());
    let down = || async { Err::<(), _>(std::io::Error::other("refused")) };
    assert!(matches!(
        breaker.call(down()).await,
        Err(CircuitError::Failed(_))
    ));
    clock.advance(Duration::from_secs(5));

    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let trial = {
        let breaker = breaker.clone();
        tokio::spawn(async move {
            breaker
                .call(async {
                    wait.await.ok();
                    Ok::<_, std::io::Error>(())
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    assert!(matches!(
        breaker.call(async { Ok::<_, std::io::Error>(()) }).await,
        Err(CircuitError::Open(_))
    ));
    trial.abort();
    assert!(trial.await.unwrap_err().is_cancelled());
    drop(release);

    breaker
        .call(async { Ok::<_, std::io::Error>(()) })
        .await
        .unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test]
async fn call_with_counts_only_the_failures_the_classifier_names() {
    #[derive(Debug)]
    enum ServiceError {
        NotFound,
        Unreachable,
    }
    let breaker = CircuitBreaker::new("directory").failure_threshold(2);
    for _ in 0..3 {
        let result = breaker
            .call_with(async { Err::<(), _>(ServiceError::NotFound) }, |e| {
                matches!(e, ServiceError::Unreachable)
            })
            .await;
        assert!(matches!(
            result,
            Err(CircuitError::Failed(ServiceError::NotFound))
        ));
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    for _ in 0..2 {
        let _ = breaker
            .call_with(async { Err::<(), _>(ServiceError::Unreachable) }, |e| {
                matches!(e, ServiceError::Unreachable)
            })
            .await;
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[test]
fn which_failures_trip_a_circuit() {
    type E = CommandError<AccountError>;
    assert!(
        E::Timeout {
            command: "c",
            after: Duration::ZERO,
            idempotency_key: None,
        }
        .trips_circuit()
    );
    assert!(E::Store(StoreError::Backend("down".into())).trips_circuit());
    assert!(!E::Rejected(AccountError::NotOpen).trips_circuit());
    assert!(!E::Invalid(cqrs_core::ValidationErrors::field("x", "y")).trips_circuit());
    assert!(
        !E::Conflict {
            stream: "s".into(),
            expected: ExpectedVersion::Exact(1),
            actual: 2
        }
        .trips_circuit()
    );
    assert!(!StoreError::UniqueKeysUnsupported.trips_circuit());
}

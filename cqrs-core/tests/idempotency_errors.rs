//! The idempotency key on the error path: a command with a key that fails without a settled
//! outcome (a timeout, a lost connection, retries given up) names its key in the error, and
//! `outcome_of` with that key tells what really happened.
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use cqrs_core::middleware::{Quota, RateLimit, Timeout};
use cqrs_core::prelude::*;
use cqrs_core::{
    AppendResult, ErrorKind, ExpectedVersion, IdempotentOutcome, IdempotentWrite, KeyChanges,
    NewEvent, StoreError, TransientReason,
};
use support::wallet::*;

/// What the store does with the next appends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    /// Appends and replies.
    Healthy,
    /// Appends, then never replies (the reply is lost in a hung connection).
    HangAfterCommit,
    /// Never reaches the database.
    HangBeforeCommit,
    /// Appends, then reports the connection lost (the commit went through, the reply not).
    DropAfterCommit,
}

/// The in-memory store behind a connection that misbehaves as `mode` says.
#[derive(Clone)]
struct Unreliable {
    inner: InMemoryEventStore,
    mode: Arc<AtomicU8>,
}

impl Unreliable {
    fn new() -> Self {
        Self {
            inner: InMemoryEventStore::new(),
            mode: Arc::new(AtomicU8::new(Mode::Healthy as u8)),
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Healthy,
            1 => Mode::HangAfterCommit,
            2 => Mode::HangBeforeCommit,
            _ => Mode::DropAfterCommit,
        }
    }

    /// Runs `append` as the mode says (the in-memory store appends when called, so a hang
    /// before the commit must not call it).
    fn misbehave<'a>(
        &'a self,
        append: impl FnOnce() -> BoxFuture<'a, Result<AppendResult, StoreError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        let mode = self.mode();
        if mode == Mode::HangBeforeCommit {
            return Box::pin(std::future::pending());
        }
        let append = append();
        Box::pin(async move {
            match mode {
                Mode::Healthy | Mode::HangBeforeCommit => append.await,
                Mode::HangAfterCommit => {
                    append.await?;
                    std::future::pending().await
                }
                Mode::DropAfterCommit => {
                    append.await?;
                    Err(StoreError::Transient {
                        reason: TransientReason::ConnectionLost,
                        source: "connection reset by peer".into(),
                    })
                }
            }
        })
    }
}

impl EventStore for Unreliable {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        self.misbehave(move || self.inner.append(stream_id, expected, events))
    }

    fn append_idempotent<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: IdempotentWrite,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        self.misbehave(move || {
            self.inner
                .append_idempotent(stream_id, expected, events, keys, write)
        })
    }

    crate::support::delegate::delegate!(inner: idempotency_record, load_stream, stream_version, read_all_from, load_snapshot, save_snapshot, delete_snapshot);
}

fn credit(key: &str, amount: u64) -> Credit {
    Credit {
        id: 1,
        request_id: key.into(),
        amount,
    }
}

const LIMIT: Duration = Duration::from_millis(50);

#[tokio::test]
async fn a_timeout_after_the_commit_names_the_key_and_the_outcome_is_the_commit() {
    let store = Unreliable::new();
    let runs = Arc::new(Runs::default());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::clone(&runs))
        .middleware(Timeout::new(LIMIT))
        .build();

    store.set(Mode::HangAfterCommit);
    let error = bus.execute(credit("r-1", 5)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert_eq!(error.idempotency_key(), Some("r-1"));
    // The key is a field of the variant: a match on `Timeout` works as without a key.
    assert!(matches!(
        &error,
        CommandError::Timeout {
            command: "wallet.credit",
            idempotency_key: Some(key),
            ..
        } if key == "r-1"
    ));
    assert_eq!(
        error.to_string(),
        format!("command `wallet.credit` timed out after {LIMIT:?}")
    );

    // The caller asks with the key from the error: the command did commit.
    let key = error.idempotency_key().unwrap();
    let record = bus.outcome_of::<Credit>(key).await.unwrap().unwrap();
    let IdempotentOutcome::Committed(committed) = &record.outcome else {
        panic!("expected a commit, got {:?}", record.outcome);
    };
    let events = store.inner.load_stream("Wallet-1", 1).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(committed.stream_version, 1);
    assert_eq!(committed.position, events[0].position);
    assert_eq!(events[0].metadata.causation_id, Some(committed.command_id));

    // Executing the key again returns that commit without running or appending again, even
    // though the connection still hangs.
    let again = bus.execute(credit("r-1", 5)).await.unwrap();
    assert_eq!(&again, committed);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn a_timeout_before_the_commit_names_the_key_and_no_outcome_is_recorded() {
    let store = Unreliable::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::default())
        .middleware(Timeout::new(LIMIT))
        .build();

    store.set(Mode::HangBeforeCommit);
    let error = bus.execute(credit("r-1", 5)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert_eq!(error.idempotency_key(), Some("r-1"));

    // Nothing committed: no record, no event; executing the key again is safe and runs it.
    let key = error.idempotency_key().unwrap();
    assert_eq!(bus.outcome_of::<Credit>(key).await.unwrap(), None);
    assert_eq!(store.inner.len(), 0);
    store.set(Mode::Healthy);
    let committed = bus.execute(credit("r-1", 5)).await.unwrap();
    assert_eq!(committed.stream_version, 1);
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn a_connection_lost_after_the_commit_names_the_key_from_the_metadata() {
    let store = Unreliable::new();
    let runs = Arc::new(Runs::default());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::clone(&runs))
        .build();
    bus.execute(credit("r-1", 10)).await.unwrap();

    store.set(Mode::DropAfterCommit);
    let metadata = Metadata::default().with_idempotency_key("d-1");
    let error = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::StoreUnavailable);
    assert_eq!(error.idempotency_key(), Some("d-1"));
    // The append may or may not have committed: the error says so, with the key.
    assert!(matches!(
        &error,
        CommandError::OutcomeUnknown {
            idempotency_key,
            source: StoreError::Transient {
                reason: TransientReason::ConnectionLost,
                ..
            },
        } if idempotency_key == "d-1"
    ));
    // The source chain goes through the store error to the backend's.
    let source = std::error::Error::source(&error).expect("the store's error");
    let backend = source.source().expect("the backend's error");
    assert_eq!(backend.to_string(), "connection reset by peer");

    let record = bus.outcome_of::<Debit>("d-1").await.unwrap().unwrap();
    let IdempotentOutcome::Committed(committed) = record.outcome else {
        panic!("expected a commit, got {:?}", record.outcome);
    };
    assert_eq!(committed.stream_version, 2);
    assert_eq!(store.inner.len(), 2);

    // A retry of the key returns the commit and writes nothing more.
    store.set(Mode::Healthy);
    let again = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata)
        .await
        .unwrap();
    assert_eq!(again, committed);
    assert_eq!(store.inner.len(), 2);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_command_is_settled_names_no_key_and_nothing_is_recorded() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::default())
        .middleware(RateLimit::new("wallet", Quota::per_minute(1)))
        .build();
    bus.execute(credit("r-1", 5)).await.unwrap();

    let error = bus.execute(credit("r-2", 5)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    // Nothing ran: the outcome is not open, so trying the key again simply runs it.
    assert_eq!(error.idempotency_key(), None);
    let CommandError::RateLimited(refusal) = &error else {
        panic!("expected a rate limit, got {error:?}");
    };
    assert!(refusal.retry_after > Duration::ZERO);
    assert_eq!(bus.outcome_of::<Credit>("r-2").await.unwrap(), None);
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn the_commands_own_outcomes_keep_their_variant() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Wallet>(Arc::default())
        .build();
    let metadata = Metadata::default().with_idempotency_key("d-1");

    // A rejection matches as `Rejected` with or without a key...
    let first = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        first,
        CommandError::Rejected(WalletError::InsufficientFunds { .. })
    ));
    assert_eq!(first.idempotency_key(), None);
    // ...and its replay carries the key in its own variant.
    let replay = bus
        .execute_with(Debit { id: 1, amount: 3 }, metadata)
        .await
        .unwrap_err();
    assert!(matches!(&replay, CommandError::AlreadyRejected { key, .. } if key == "d-1"));
    assert_eq!(replay.idempotency_key(), Some("d-1"));
    assert_eq!(replay.kind(), ErrorKind::Rejected);
}

#[tokio::test]
async fn an_error_without_a_key_is_left_as_it_is() {
    use support::{Account, Open, SlowDeposit, limits};

    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .aggregate::<Wallet>(Arc::default())
        .middleware(Timeout::new(LIMIT))
        .build();
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    let slow = SlowDeposit {
        id: 1,
        amount: 1,
        millis: 10_000,
    };
    let error = bus.execute(slow).await.unwrap_err();
    assert!(matches!(
        error,
        CommandError::Timeout {
            idempotency_key: None,
            ..
        }
    ));
    assert_eq!(error.idempotency_key(), None);

    // A key for a command that takes none: a settled refusal, which names no key.
    let error = bus
        .execute_with(
            Touch { id: 1 },
            Metadata::default().with_idempotency_key("t-1"),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        CommandError::NotIdempotent {
            command: "wallet.touch"
        }
    ));
    assert_eq!(error.idempotency_key(), None);
}

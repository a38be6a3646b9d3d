//! Behaviour checks for an [`EventStore`] that records idempotency keys
//! ([`EventStore::append_idempotent`], [`EventStore::idempotency_record`],
//! [`EventStore::purge_idempotency_keys`]); the in-memory store is their reference.
//!
//! They are separate from [`conformance`](super::conformance): a store without idempotency
//! keys still conforms to the base contract. A store that records them must also reserve
//! unique keys ([`unique_keys`](super::unique_keys)), since an idempotent append may carry
//! key changes. Run them all from a test of your store:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = cqrs_core::InMemoryEventStore::new();
//! cqrs_core::testing::idempotency::run_all(&store).await;
//! # }
//! ```
//!
//! Each check uses fresh stream ids, command names and keys, so the store may already hold
//! events and records. One check purges: it deletes every record created before the moment
//! it runs, so run the kit on a store whose records nothing else needs. A failing check
//! panics with its name.

// Every check reports failure by panicking (it runs inside a test).
#![allow(clippy::missing_panics_doc)]

use chrono::{TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::{
    AppendResult, EventStore, ExpectedVersion, IdempotencyRecord, IdempotentOutcome,
    IdempotentWrite, KeyChanges, Metadata, NewEvent, RecordedRejection, StoreError,
};

/// A check: its name and the function that runs it.
pub type Check<S> = (&'static str, fn(&S) -> crate::BoxFuture<'_, ()>);

/// Every check, in the order [`run_all`] runs them.
pub fn checks<S: EventStore + Clone>() -> Vec<Check<S>> {
    vec![
        ("a_recorded_key_holds_the_appends_outcome", |s| {
            Box::pin(a_recorded_key_holds_the_appends_outcome(s))
        }),
        ("a_key_recorded_twice_is_refused_and_writes_nothing", |s| {
            Box::pin(a_key_recorded_twice_is_refused_and_writes_nothing(s))
        }),
        ("keys_are_scoped_by_command_name", |s| {
            Box::pin(keys_are_scoped_by_command_name(s))
        }),
        ("a_rejection_is_recorded_without_events", |s| {
            Box::pin(a_rejection_is_recorded_without_events(s))
        }),
        ("a_failed_append_records_no_key", |s| {
            Box::pin(a_failed_append_records_no_key(s))
        }),
        ("a_taken_unique_key_records_no_idempotency_key", |s| {
            Box::pin(a_taken_unique_key_records_no_idempotency_key(s))
        }),
        ("concurrent_records_of_one_key_have_one_winner", |s| {
            Box::pin(concurrent_records_of_one_key_have_one_winner(s))
        }),
        ("purging_frees_the_keys_recorded_before_the_cutoff", |s| {
            Box::pin(purging_frees_the_keys_recorded_before_the_cutoff(s))
        }),
    ]
}

/// Runs every check against `store`, panicking with the name of the first that fails.
pub async fn run_all<S: EventStore + Clone>(store: &S) {
    super::run_checks("idempotency", checks::<S>(), store).await;
}

fn fresh(label: &str) -> String {
    format!("idem-{label}-{}", Uuid::now_v7().simple())
}

// `.into()` keeps the payload independent of the exact type `NewEvent` stores it as.
#[allow(clippy::useless_conversion)]
fn event(n: u32) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "conformance.idempotent".into(),
        schema_version: 1,
        payload: json!({ "n": n }).into(),
        metadata: Metadata::default(),
    }
}

fn write(command: &str, key: &str, rejection: Option<RecordedRejection>) -> IdempotentWrite {
    IdempotentWrite {
        command_name: command.to_owned(),
        key: key.to_owned(),
        body_hash: crate::idempotency::body_hash(&format!("{{\"key\":\"{key}\"}}")),
        command_id: Uuid::now_v7(),
        rejection,
    }
}

async fn record<S: EventStore>(store: &S, command: &str, key: &str) -> Option<IdempotencyRecord> {
    store
        .idempotency_record(command, key)
        .await
        .expect("idempotency_record")
}

async fn version<S: EventStore>(store: &S, stream: &str) -> u64 {
    store.stream_version(stream).await.expect("stream_version")
}

/// Asserts that `actual` is the record of `write` after `appended` wrote `events` events to
/// `stream`; `created_at` may differ from the append's time by the store's clock precision.
#[track_caller]
fn assert_record(
    actual: Option<IdempotencyRecord>,
    write: IdempotentWrite,
    stream: &str,
    appended: &AppendResult,
    events: usize,
) {
    let actual = actual.expect("the key has no record after its append");
    let expected = write.into_record(stream, appended, events);
    let drift = (actual.created_at - expected.created_at).abs();
    assert!(
        drift < TimeDelta::seconds(5),
        "the record's created_at {} is far from the append's {}",
        actual.created_at,
        expected.created_at
    );
    assert_eq!(
        IdempotencyRecord {
            created_at: expected.created_at,
            ..actual
        },
        expected
    );
}

/// An idempotent append writes its events and records the key with the append's
/// `Committed`: the command id, stream, version, last position and number of events.
pub async fn a_recorded_key_holds_the_appends_outcome<S: EventStore>(store: &S) {
    let stream = fresh("stream");
    let (command, key) = (fresh("command"), fresh("key"));
    assert_eq!(record(store, &command, &key).await, None);

    let w = write(&command, &key, None);
    let appended = store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(0),
            vec![event(1), event(2)],
            KeyChanges::new(),
            w.clone(),
        )
        .await
        .expect("idempotent append");
    assert_eq!(appended.stream_version, 2);
    assert_eq!(appended.positions.len(), 2);
    assert_eq!(store.load_stream(&stream, 1).await.expect("load").len(), 2);
    assert_record(
        record(store, &command, &key).await,
        w,
        &stream,
        &appended,
        2,
    );
}

/// A key already recorded for the command refuses the whole append with
/// `IdempotencyKeyTaken`: no event is written, and the first record stays as it was.
pub async fn a_key_recorded_twice_is_refused_and_writes_nothing<S: EventStore>(store: &S) {
    let (first, second) = (fresh("first"), fresh("second"));
    let (command, key) = (fresh("command"), fresh("key"));
    let w = write(&command, &key, None);
    let appended = store
        .append_idempotent(
            &first,
            ExpectedVersion::Exact(0),
            vec![event(1)],
            KeyChanges::new(),
            w.clone(),
        )
        .await
        .expect("first record");

    for target in [&second, &first] {
        let expected = ExpectedVersion::Exact(version(store, target).await);
        match store
            .append_idempotent(
                target,
                expected,
                vec![event(2)],
                KeyChanges::new(),
                write(&command, &key, None),
            )
            .await
        {
            Err(StoreError::IdempotencyKeyTaken {
                command: taken_command,
                key: taken_key,
            }) => assert_eq!((taken_command, taken_key), (command.clone(), key.clone())),
            other => panic!("expected the key to be taken, got {other:?}"),
        }
    }
    assert_eq!(version(store, &second).await, 0, "the refused append wrote");
    assert_eq!(version(store, &first).await, 1, "the refused append wrote");
    assert_record(record(store, &command, &key).await, w, &first, &appended, 1);
}

/// The same key under two command names names two executions.
pub async fn keys_are_scoped_by_command_name<S: EventStore>(store: &S) {
    let key = fresh("key");
    let (one, two) = (fresh("command-one"), fresh("command-two"));
    for command in [&one, &two] {
        let stream = fresh("stream");
        store
            .append_idempotent(
                &stream,
                ExpectedVersion::Exact(0),
                vec![event(1)],
                KeyChanges::new(),
                write(command, &key, None),
            )
            .await
            .expect("one key under another command name");
        let stored = record(store, command, &key).await.expect("record");
        assert_eq!(stored.stream_id, stream);
    }
}

/// A rejection is recorded by an append of no events, which checks the expected version and
/// leaves the stream as it was; a wrong version records nothing.
pub async fn a_rejection_is_recorded_without_events<S: EventStore>(store: &S) {
    let stream = fresh("rejecting");
    store
        .append(&stream, ExpectedVersion::Exact(0), vec![event(1)])
        .await
        .expect("seed");
    let (command, key) = (fresh("command"), fresh("key"));
    let rejection = RecordedRejection {
        domain_code: Some("insufficient_funds".into()),
        message: "balance 3 is below 5".into(),
    };

    match store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(0),
            Vec::new(),
            KeyChanges::new(),
            write(&command, &key, Some(rejection.clone())),
        )
        .await
    {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a rejection decided on version 0 of a stream at 1: {other:?}"),
    }
    assert_eq!(record(store, &command, &key).await, None);

    let w = write(&command, &key, Some(rejection.clone()));
    let appended = store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(1),
            Vec::new(),
            KeyChanges::new(),
            w.clone(),
        )
        .await
        .expect("record a rejection");
    assert_eq!(appended.stream_version, 1);
    assert!(appended.positions.is_empty());
    assert_eq!(version(store, &stream).await, 1, "a rejection wrote events");
    let stored = record(store, &command, &key).await.expect("record");
    assert_eq!(stored.outcome, IdempotentOutcome::Rejected(rejection));
    assert_record(Some(stored), w, &stream, &appended, 0);
}

/// A version conflict or a duplicate event id fails the append and records no key: the key
/// can be used by the next attempt.
pub async fn a_failed_append_records_no_key<S: EventStore>(store: &S) {
    let stream = fresh("failing");
    let (command, key) = (fresh("command"), fresh("key"));
    match store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(3),
            vec![event(1)],
            KeyChanges::new(),
            write(&command, &key, None),
        )
        .await
    {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(record(store, &command, &key).await, None);

    let stored = event(1);
    let duplicate = stored.clone();
    store
        .append(&fresh("holder"), ExpectedVersion::Exact(0), vec![stored])
        .await
        .expect("store an event id");
    match store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(0),
            vec![duplicate],
            KeyChanges::new(),
            write(&command, &key, None),
        )
        .await
    {
        Err(StoreError::DuplicateEventId { .. }) => {}
        other => panic!("expected a duplicate event id, got {other:?}"),
    }
    assert_eq!(record(store, &command, &key).await, None);
    assert_eq!(version(store, &stream).await, 0);

    store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(0),
            vec![event(2)],
            KeyChanges::new(),
            write(&command, &key, None),
        )
        .await
        .expect("the key is free after failed appends");
    assert!(record(store, &command, &key).await.is_some());
}

/// A claimed unique key that another stream holds fails the append with `UniqueKeyTaken`
/// and records no idempotency key.
pub async fn a_taken_unique_key_records_no_idempotency_key<S: EventStore>(store: &S) {
    let namespace = "conformance.idempotent.email";
    let value = format!("{}@example.com", fresh("taken"));
    let mut claim = KeyChanges::new();
    claim.claim(namespace, value.clone());
    let holder = fresh("holder");
    store
        .append_with_keys(
            &holder,
            ExpectedVersion::Exact(0),
            vec![event(1)],
            claim.clone(),
        )
        .await
        .expect("claim the unique key");

    let stream = fresh("claimer");
    let (command, key) = (fresh("command"), fresh("key"));
    match store
        .append_idempotent(
            &stream,
            ExpectedVersion::Exact(0),
            vec![event(2)],
            claim,
            write(&command, &key, None),
        )
        .await
    {
        Err(StoreError::UniqueKeyTaken { owner, .. }) => assert_eq!(owner, holder),
        other => panic!("expected the unique key to be taken, got {other:?}"),
    }
    assert_eq!(record(store, &command, &key).await, None);
    assert_eq!(version(store, &stream).await, 0);
}

/// Sixteen appends with one key to sixteen streams at once: one writes and is recorded,
/// the others are refused with `IdempotencyKeyTaken` and write nothing.
pub async fn concurrent_records_of_one_key_have_one_winner<S: EventStore + Clone>(store: &S) {
    let (command, key) = (fresh("command"), fresh("key"));
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let store = store.clone();
            let (command, key) = (command.clone(), key.clone());
            tokio::spawn(async move {
                let stream = fresh(&format!("racer{n}"));
                let result = store
                    .append_idempotent(
                        &stream,
                        ExpectedVersion::Exact(0),
                        vec![event(n)],
                        KeyChanges::new(),
                        write(&command, &key, None),
                    )
                    .await;
                (stream, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for task in tasks {
        let (stream, result) = task.await.expect("racer");
        match result {
            Ok(_) => winners.push(stream),
            Err(StoreError::IdempotencyKeyTaken { .. }) => losers.push(stream),
            Err(other) => panic!("unexpected error in the race: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    for stream in &losers {
        assert_eq!(version(store, stream).await, 0, "loser {stream} wrote");
    }
    let stored = record(store, &command, &key).await.expect("record");
    assert_eq!(stored.stream_id, winners[0]);
}

/// Purging deletes the records created before the cutoff, and only those; a purged key is
/// free again.
pub async fn purging_frees_the_keys_recorded_before_the_cutoff<S: EventStore>(store: &S) {
    let (command, key) = (fresh("command"), fresh("key"));
    store
        .append_idempotent(
            &fresh("purged"),
            ExpectedVersion::Exact(0),
            vec![event(1)],
            KeyChanges::new(),
            write(&command, &key, None),
        )
        .await
        .expect("record");
    let created = record(store, &command, &key)
        .await
        .expect("record")
        .created_at;

    store
        .purge_idempotency_keys(created - TimeDelta::hours(1))
        .await
        .expect("purge before the record");
    assert!(
        record(store, &command, &key).await.is_some(),
        "a purge deleted a record created after its cutoff"
    );

    let purged = store
        .purge_idempotency_keys(Utc::now() + TimeDelta::minutes(1))
        .await
        .expect("purge after the record");
    assert!(purged >= 1, "the purge reported {purged} records deleted");
    assert_eq!(record(store, &command, &key).await, None);

    store
        .append_idempotent(
            &fresh("again"),
            ExpectedVersion::Exact(0),
            vec![event(2)],
            KeyChanges::new(),
            write(&command, &key, None),
        )
        .await
        .expect("a purged key is free again");
}

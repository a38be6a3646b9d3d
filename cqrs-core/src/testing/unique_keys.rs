//! Behaviour checks for an [`EventStore`] that reserves unique keys
//! ([`EventStore::append_with_keys`]); the in-memory store is their reference.
//!
//! They are separate from [`conformance`](super::conformance): a store without unique keys
//! still conforms to the base contract. Run them all from a test of your store:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = cqrs_core::InMemoryEventStore::new();
//! cqrs_core::testing::unique_keys::run_all(&store).await;
//! # }
//! ```
//!
//! Each check uses fresh stream ids and fresh key values, so the store may already hold
//! events and keys. A failing check panics with its name.

// Every check reports failure by panicking (it runs inside a test).
#![allow(clippy::missing_panics_doc)]

use serde_json::json;
use uuid::Uuid;

use crate::{
    AppendResult, EventStore, ExpectedVersion, KeyChanges, Metadata, NewEvent, StoreError,
};

/// A check: its name and the function that runs it.
pub type Check<S> = (&'static str, fn(&S) -> crate::BoxFuture<'_, ()>);

/// Every check, in the order [`run_all`] runs them.
pub fn checks<S: EventStore + Clone>() -> Vec<Check<S>> {
    vec![
        ("a_claimed_key_is_held_by_its_stream", |s| {
            Box::pin(a_claimed_key_is_held_by_its_stream(s))
        }),
        ("a_taken_key_is_refused_and_writes_nothing", |s| {
            Box::pin(a_taken_key_is_refused_and_writes_nothing(s))
        }),
        ("claiming_a_held_key_again_changes_nothing", |s| {
            Box::pin(claiming_a_held_key_again_changes_nothing(s))
        }),
        ("a_released_key_can_be_claimed_by_another_stream", |s| {
            Box::pin(a_released_key_can_be_claimed_by_another_stream(s))
        }),
        ("releasing_a_key_of_another_stream_changes_nothing", |s| {
            Box::pin(releasing_a_key_of_another_stream_changes_nothing(s))
        }),
        ("a_change_releases_and_claims_in_one_append", |s| {
            Box::pin(a_change_releases_and_claims_in_one_append(s))
        }),
        ("a_version_conflict_changes_no_key", |s| {
            Box::pin(a_version_conflict_changes_no_key(s))
        }),
        ("namespaces_keep_equal_values_apart", |s| {
            Box::pin(namespaces_keep_equal_values_apart(s))
        }),
        ("no_key_changes_is_a_plain_append", |s| {
            Box::pin(no_key_changes_is_a_plain_append(s))
        }),
        ("concurrent_claims_of_one_key_have_one_winner", |s| {
            Box::pin(concurrent_claims_of_one_key_have_one_winner(s))
        }),
    ]
}

/// Runs every check against `store`, panicking with the name of the first that fails.
pub async fn run_all<S: EventStore + Clone>(store: &S) {
    super::run_checks("unique-key", checks::<S>(), store).await;
}

const NAMESPACE: &str = "conformance.email";

fn fresh_stream(label: &str) -> String {
    format!("keys-{label}-{}", Uuid::now_v7().simple())
}

fn fresh_value(label: &str) -> String {
    format!("{label}-{}@example.com", Uuid::now_v7().simple())
}

// `.into()` keeps the payload independent of the exact type `NewEvent` stores it as.
#[allow(clippy::useless_conversion)]
fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "conformance.keyed".into(),
        schema_version: 1,
        payload: json!({ "n": 1 }).into(),
        metadata: Metadata::default(),
    }
}

fn claim(value: &str) -> KeyChanges {
    let mut keys = KeyChanges::new();
    keys.claim(NAMESPACE, value.to_owned());
    keys
}

fn release(value: &str) -> KeyChanges {
    let mut keys = KeyChanges::new();
    keys.release(NAMESPACE, value.to_owned());
    keys
}

async fn owner<S: EventStore>(store: &S, value: &str) -> Option<String> {
    store
        .unique_key_owner(NAMESPACE, value)
        .await
        .expect("unique_key_owner")
}

/// Appends one event to `stream` at `version` with `keys`.
async fn append<S: EventStore>(
    store: &S,
    stream: &str,
    version: u64,
    keys: KeyChanges,
) -> Result<AppendResult, StoreError> {
    store
        .append_with_keys(stream, ExpectedVersion::Exact(version), vec![event()], keys)
        .await
}

#[track_caller]
fn assert_taken(result: Result<AppendResult, StoreError>, value: &str, holder: &str) {
    match result {
        Err(StoreError::UniqueKeyTaken {
            namespace,
            value: taken,
            owner,
        }) => assert_eq!(
            (namespace.as_str(), taken.as_str(), owner.as_str()),
            (NAMESPACE, value, holder)
        ),
        other => panic!("expected {value:?} to be taken by `{holder}`, got {other:?}"),
    }
}

/// A claim succeeds with the events, and the key is then held by the stream.
pub async fn a_claimed_key_is_held_by_its_stream<S: EventStore>(store: &S) {
    let stream = fresh_stream("holder");
    let value = fresh_value("held");
    assert_eq!(owner(store, &value).await, None);
    let result = append(store, &stream, 0, claim(&value))
        .await
        .expect("claim a free key");
    assert_eq!(result.stream_version, 1);
    assert_eq!(owner(store, &value).await, Some(stream.clone()));
    assert_eq!(store.stream_version(&stream).await.expect("version"), 1);
}

/// A key held by another stream refuses the append with `UniqueKeyTaken` naming the holder;
/// neither the events nor any other key of the append are written.
pub async fn a_taken_key_is_refused_and_writes_nothing<S: EventStore>(store: &S) {
    let first = fresh_stream("first");
    let second = fresh_stream("second");
    let value = fresh_value("taken");
    let other = fresh_value("other");
    append(store, &first, 0, claim(&value))
        .await
        .expect("first claim");

    let mut both = claim(&other);
    both.claim(NAMESPACE, value.clone());
    assert_taken(append(store, &second, 0, both).await, &value, &first);
    assert_eq!(store.stream_version(&second).await.expect("version"), 0);
    assert!(
        store
            .load_stream(&second, 1)
            .await
            .expect("load")
            .is_empty(),
        "the refused append wrote events"
    );
    assert_eq!(
        owner(store, &other).await,
        None,
        "the refused append claimed its free key"
    );
    assert_eq!(owner(store, &value).await, Some(first.clone()));

    // The refusal left the second stream writable.
    append(store, &second, 0, claim(&other))
        .await
        .expect("claim after refusal");
    assert_eq!(owner(store, &other).await, Some(second));
}

/// A stream may claim a key it already holds.
pub async fn claiming_a_held_key_again_changes_nothing<S: EventStore>(store: &S) {
    let stream = fresh_stream("again");
    let value = fresh_value("again");
    append(store, &stream, 0, claim(&value))
        .await
        .expect("claim");
    append(store, &stream, 1, claim(&value))
        .await
        .expect("claim again");
    assert_eq!(owner(store, &value).await, Some(stream));
}

/// After its holder releases it, another stream can claim the key.
pub async fn a_released_key_can_be_claimed_by_another_stream<S: EventStore>(store: &S) {
    let first = fresh_stream("releaser");
    let second = fresh_stream("claimer");
    let value = fresh_value("released");
    append(store, &first, 0, claim(&value))
        .await
        .expect("claim");
    append(store, &first, 1, release(&value))
        .await
        .expect("release");
    assert_eq!(owner(store, &value).await, None);
    append(store, &second, 0, claim(&value))
        .await
        .expect("claim a released key");
    assert_eq!(owner(store, &value).await, Some(second));
}

/// A stream cannot release a key it does not hold; the append itself succeeds.
pub async fn releasing_a_key_of_another_stream_changes_nothing<S: EventStore>(store: &S) {
    let holder = fresh_stream("holder");
    let intruder = fresh_stream("intruder");
    let value = fresh_value("kept");
    append(store, &holder, 0, claim(&value))
        .await
        .expect("claim");
    append(store, &intruder, 0, release(&value))
        .await
        .expect("a release of a key not held is not an error");
    assert_eq!(owner(store, &value).await, Some(holder));
    append(store, &intruder, 1, release(&fresh_value("never-claimed")))
        .await
        .expect("a release of a free key is not an error");
}

/// Release the old key and claim the new one in one append: both happen, or (when the new
/// one is taken) neither.
pub async fn a_change_releases_and_claims_in_one_append<S: EventStore>(store: &S) {
    let stream = fresh_stream("changer");
    let rival = fresh_stream("rival");
    let old = fresh_value("old");
    let new = fresh_value("new");
    let rivals = fresh_value("rivals");
    append(store, &stream, 0, claim(&old))
        .await
        .expect("claim old");
    append(store, &rival, 0, claim(&rivals))
        .await
        .expect("rival claims");

    let mut refused = release(&old);
    refused.claim(NAMESPACE, rivals.clone());
    assert_taken(append(store, &stream, 1, refused).await, &rivals, &rival);
    assert_eq!(
        owner(store, &old).await,
        Some(stream.clone()),
        "a refused change released the old key"
    );
    assert_eq!(store.stream_version(&stream).await.expect("version"), 1);

    let mut change = release(&old);
    change.claim(NAMESPACE, new.clone());
    append(store, &stream, 1, change).await.expect("change");
    assert_eq!(owner(store, &old).await, None);
    assert_eq!(owner(store, &new).await, Some(stream.clone()));

    // The freed key is immediately claimable.
    append(store, &rival, 1, claim(&old))
        .await
        .expect("claim the freed key");
    assert_eq!(owner(store, &old).await, Some(rival));
}

/// An append refused for its expected version claims and releases nothing.
pub async fn a_version_conflict_changes_no_key<S: EventStore>(store: &S) {
    let stream = fresh_stream("conflict");
    let held = fresh_value("held");
    let wanted = fresh_value("wanted");
    append(store, &stream, 0, claim(&held))
        .await
        .expect("claim");
    let mut change = release(&held);
    change.claim(NAMESPACE, wanted.clone());
    match append(store, &stream, 5, change).await {
        Err(StoreError::Conflict { actual: 1, .. }) => {}
        other => panic!("expected a conflict at version 1, got {other:?}"),
    }
    assert_eq!(owner(store, &held).await, Some(stream));
    assert_eq!(owner(store, &wanted).await, None);
}

/// The same value in two namespaces is two keys.
pub async fn namespaces_keep_equal_values_apart<S: EventStore>(store: &S) {
    let first = fresh_stream("ns-a");
    let second = fresh_stream("ns-b");
    let value = fresh_value("shared");
    append(store, &first, 0, claim(&value))
        .await
        .expect("claim in one namespace");
    let mut other_namespace = KeyChanges::new();
    other_namespace.claim("conformance.login", value.clone());
    append(store, &second, 0, other_namespace)
        .await
        .expect("claim in another namespace");
    assert_eq!(
        store
            .unique_key_owner("conformance.login", &value)
            .await
            .expect("owner"),
        Some(second)
    );
    assert_eq!(owner(store, &value).await, Some(first));
}

/// `append_with_keys` without key changes behaves as `append`.
pub async fn no_key_changes_is_a_plain_append<S: EventStore>(store: &S) {
    let stream = fresh_stream("plain");
    let result = append(store, &stream, 0, KeyChanges::new())
        .await
        .expect("append without keys");
    assert_eq!(result.stream_version, 1);
    match append(store, &stream, 0, KeyChanges::new()).await {
        Err(StoreError::Conflict { actual: 1, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Many streams claiming one free key at once: exactly one wins, every other append is
/// refused with `UniqueKeyTaken` naming the winner and writes nothing.
pub async fn concurrent_claims_of_one_key_have_one_winner<S: EventStore + Clone>(store: &S) {
    const WRITERS: usize = 16;
    let value = fresh_value("raced");
    let streams: Vec<String> = (0..WRITERS).map(|_| fresh_stream("racer")).collect();
    let tasks: Vec<_> = streams
        .iter()
        .map(|stream| {
            let store = store.clone();
            let stream = stream.clone();
            let keys = claim(&value);
            tokio::spawn(async move {
                let result = append(&store, &stream, 0, keys).await;
                (stream, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (stream, Ok(_)) => winners.push(stream),
            (stream, Err(StoreError::UniqueKeyTaken { owner, .. })) => {
                refused.push((stream, owner));
            }
            (_, Err(other)) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(refused.len(), WRITERS - 1);
    let winner = &winners[0];
    assert_eq!(owner(store, &value).await.as_ref(), Some(winner));
    for (stream, holder) in &refused {
        assert_eq!(holder, winner);
        assert_eq!(store.stream_version(stream).await.expect("version"), 0);
    }
}

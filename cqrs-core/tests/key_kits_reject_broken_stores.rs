//! The unique-key and idempotency checks catch broken stores: each [`Fault`] wraps the
//! in-memory store and breaks one point of those contracts, and the check for that point must
//! fail on it, for that reason. The unbroken in-memory store passes every check of both kits.

use chrono::{DateTime, TimeDelta, Utc};
use cqrs_core::testing::{idempotency, unique_keys};
use cqrs_core::{
    AppendResult, BoxFuture, EventStore, ExpectedVersion, GlobalPosition, IdempotencyRecord,
    IdempotentWrite, InMemoryEventStore, KeyChange, KeyChanges, NewEvent, RecordedEvent, Snapshot,
    StoreError, UniqueKey,
};

/// One way to break the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The key is recorded in a step of its own before the events are appended, so a failed
    /// append leaves its key recorded.
    RecordsBesideTheAppend,
    /// A rejection (an append of no events) records nothing.
    ForgetsRejections,
    /// A key already recorded does not stop the append: it writes, unrecorded.
    WritesOverTakenKeys,
    /// Keys are recorded under one command name whatever the command.
    IgnoresTheCommandName,
    /// A purge deletes every record, whatever the cutoff.
    PurgesEverything,
    /// A claim of a key another stream holds is dropped and the events are appended anyway.
    DropsTakenClaims,
    /// Key changes are made in a step of their own before the events are appended, so an
    /// append refused for its version keeps them.
    ChangesKeysBesideTheAppend,
    /// A release frees the key whichever stream holds it.
    ReleasesAnyHoldersKey,
    /// Every key lands in one namespace.
    IgnoresNamespaces,
}

#[derive(Clone)]
struct Broken {
    inner: InMemoryEventStore,
    fault: Fault,
}

const ONE_NAME: &str = "every-command";

impl Broken {
    fn new(fault: Fault) -> Self {
        Self {
            inner: InMemoryEventStore::new(),
            fault,
        }
    }

    async fn append_with_keys_broken(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
    ) -> Result<AppendResult, StoreError> {
        let mut kept = KeyChanges::new();
        for (key, change) in keys.iter() {
            let owner = self
                .inner
                .unique_key_owner(&key.namespace, &key.value)
                .await?;
            let foreign = owner.as_deref().is_some_and(|owner| owner != stream_id);
            match (self.fault, change) {
                (Fault::DropsTakenClaims, KeyChange::Claim) if foreign => {}
                (Fault::ReleasesAnyHoldersKey, KeyChange::Release) if foreign => {
                    let mut release = KeyChanges::new();
                    release.push(key.clone(), KeyChange::Release);
                    let holder = owner.unwrap_or_default();
                    self.inner
                        .append_with_keys(&holder, ExpectedVersion::Any, Vec::new(), release)
                        .await?;
                }
                (Fault::IgnoresNamespaces, _) => {
                    kept.push(UniqueKey::new(ONE_NAME, key.value.clone()), change);
                }
                _ => kept.push(key.clone(), change),
            }
        }
        if self.fault == Fault::ChangesKeysBesideTheAppend {
            self.inner
                .append_with_keys(stream_id, ExpectedVersion::Any, Vec::new(), kept)
                .await?;
            return self.inner.append(stream_id, expected, events).await;
        }
        self.inner
            .append_with_keys(stream_id, expected, events, kept)
            .await
    }

    async fn append_idempotent_broken(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        mut write: IdempotentWrite,
    ) -> Result<AppendResult, StoreError> {
        match self.fault {
            Fault::RecordsBesideTheAppend => {
                self.inner
                    .append_idempotent(
                        stream_id,
                        ExpectedVersion::Any,
                        Vec::new(),
                        KeyChanges::new(),
                        write,
                    )
                    .await?;
                self.inner
                    .append_with_keys(stream_id, expected, events, keys)
                    .await
            }
            Fault::ForgetsRejections if write.rejection.is_some() => {
                self.inner
                    .append_with_keys(stream_id, expected, events, keys)
                    .await
            }
            Fault::WritesOverTakenKeys => {
                let taken = self
                    .inner
                    .idempotency_record(&write.command_name, &write.key)
                    .await?
                    .is_some();
                if taken {
                    self.inner
                        .append_with_keys(stream_id, expected, events, keys)
                        .await
                } else {
                    self.inner
                        .append_idempotent(stream_id, expected, events, keys, write)
                        .await
                }
            }
            Fault::IgnoresTheCommandName => {
                ONE_NAME.clone_into(&mut write.command_name);
                self.inner
                    .append_idempotent(stream_id, expected, events, keys, write)
                    .await
            }
            _ => {
                self.inner
                    .append_idempotent(stream_id, expected, events, keys, write)
                    .await
            }
        }
    }
}

impl EventStore for Broken {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        self.inner.append(stream_id, expected, events)
    }

    fn append_with_keys<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(self.append_with_keys_broken(stream_id, expected, events, keys))
    }

    fn append_idempotent<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: IdempotentWrite,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(self.append_idempotent_broken(stream_id, expected, events, keys, write))
    }

    fn idempotency_record<'a>(
        &'a self,
        command_name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        if self.fault == Fault::IgnoresTheCommandName {
            self.inner.idempotency_record(ONE_NAME, key)
        } else {
            self.inner.idempotency_record(command_name, key)
        }
    }

    fn purge_idempotency_keys(
        &self,
        older_than: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        if self.fault == Fault::PurgesEverything {
            self.inner
                .purge_idempotency_keys(Utc::now() + TimeDelta::days(365))
        } else {
            self.inner.purge_idempotency_keys(older_than)
        }
    }

    fn unique_key_owner<'a>(
        &'a self,
        namespace: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        if self.fault == Fault::IgnoresNamespaces {
            self.inner.unique_key_owner(ONE_NAME, value)
        } else {
            self.inner.unique_key_owner(namespace, value)
        }
    }

    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.load_stream(stream_id, from_version)
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.stream_version(stream_id)
    }

    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all_from(after, limit)
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream_id)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }

    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_snapshot(stream_id)
    }
}

/// A check of either kit: its name and the function that runs it.
type Check<S> = (&'static str, fn(&S) -> BoxFuture<'_, ()>);

/// Every check of both kits.
fn checks<S: EventStore + Clone>() -> Vec<Check<S>> {
    let mut all = unique_keys::checks::<S>();
    all.extend(idempotency::checks::<S>());
    all
}

/// Runs the check `name` against `store` in a task of its own; `Err` holds its panic message.
async fn run_check<S: EventStore + Clone>(store: &S, name: &str) -> Result<(), String> {
    let Some(check) = checks::<S>().into_iter().find(|(n, _)| *n == name) else {
        panic!("the kit has no check named `{name}`");
    };
    cqrs_core::testing::run_check(check, store).await
}

/// The check `name` fails on a store with `fault`, with a message containing `because`.
async fn assert_fails(fault: Fault, name: &str, because: &str) {
    match run_check(&Broken::new(fault), name).await {
        Ok(()) => panic!("`{name}` passed a store with the fault {fault:?}"),
        Err(message) => assert!(
            message.contains(because),
            "`{name}` failed on {fault:?}, but not because {because:?}: {message}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_passes_every_check() {
    let store = InMemoryEventStore::new();
    for (name, _) in checks::<InMemoryEventStore>() {
        assert_eq!(run_check(&store, name).await, Ok(()), "check `{name}`");
    }
}

#[tokio::test]
async fn a_store_recording_keys_beside_the_append_fails() {
    assert_fails(
        Fault::RecordsBesideTheAppend,
        "a_failed_append_records_no_key",
        "left: Some(",
    )
    .await;
    assert_fails(
        Fault::RecordsBesideTheAppend,
        "a_recorded_key_holds_the_appends_outcome",
        "assertion",
    )
    .await;
}

#[tokio::test]
async fn a_store_forgetting_rejections_fails() {
    assert_fails(
        Fault::ForgetsRejections,
        "a_rejection_is_recorded_without_events",
        "record",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writing_over_taken_keys_fails() {
    assert_fails(
        Fault::WritesOverTakenKeys,
        "a_key_recorded_twice_is_refused_and_writes_nothing",
        "expected the key to be taken",
    )
    .await;
}

#[tokio::test]
async fn a_store_ignoring_the_command_name_fails() {
    assert_fails(
        Fault::IgnoresTheCommandName,
        "keys_are_scoped_by_command_name",
        "one key under another command name",
    )
    .await;
}

#[tokio::test]
async fn a_store_purging_past_the_cutoff_fails() {
    assert_fails(
        Fault::PurgesEverything,
        "purging_frees_the_keys_recorded_before_the_cutoff",
        "created after its cutoff",
    )
    .await;
}

#[tokio::test]
async fn a_store_dropping_claims_of_taken_keys_fails() {
    assert_fails(
        Fault::DropsTakenClaims,
        "a_taken_key_is_refused_and_writes_nothing",
        "to be taken by",
    )
    .await;
}

#[tokio::test]
async fn a_store_changing_keys_beside_the_append_fails() {
    assert_fails(
        Fault::ChangesKeysBesideTheAppend,
        "a_version_conflict_changes_no_key",
        "left: None",
    )
    .await;
}

#[tokio::test]
async fn a_store_releasing_another_streams_key_fails() {
    assert_fails(
        Fault::ReleasesAnyHoldersKey,
        "releasing_a_key_of_another_stream_changes_nothing",
        "assertion",
    )
    .await;
}

#[tokio::test]
async fn a_store_ignoring_namespaces_fails() {
    assert_fails(
        Fault::IgnoresNamespaces,
        "namespaces_keep_equal_values_apart",
        "claim in another namespace",
    )
    .await;
}

//! The conformance kit catches broken stores: each [`Fault`] wraps the in-memory store and
//! breaks one point of the `EventStore` contract, and the kit's check for that point must
//! fail on it, for that reason. The unbroken in-memory store passes every check.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use cqrs_core::testing::conformance::checks;
use cqrs_core::{
    AppendResult, BoxFuture, EventStore, ExpectedVersion, GlobalPosition, InMemoryEventStore,
    NewEvent, RecordedEvent, Snapshot, StoreError,
};
use uuid::Uuid;

/// One way to break the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// An append takes its positions at once but its events become readable a moment later,
    /// and reads go by position: what a naive SQL store does when positions are drawn at
    /// insert and become visible at commit.
    CommitsLate,
    /// `read_all_from` returns one event per page whatever the limit.
    OneEventPages,
    /// `read_all_from` returns one event more than the limit.
    ExceedsTheLimit,
    /// `read_all_from` after a position no event is stored at returns an empty page.
    SilentUnknownPosition,
    /// An append of no events succeeds whatever the expected version.
    EmptyAppendsIgnoreTheExpectedVersion,
    /// `Any` reads the version and appends `Exact` without retrying: a lost race conflicts.
    AnyConflictsWhenRaced,
    /// The same, but a lost race reports success and writes nothing.
    AnyDropsLostRaces,
    /// `NoStream` appends like `Any`.
    NoStreamAppendsAnyway,
    /// Conflicts report the expected version as the actual one.
    ConflictReportsExpectedAsActual,
    /// Conflicts name no stream.
    ConflictNamesNoStream,
    /// A conflict on a missing stream reports `NoStream` as what was expected.
    ConflictOnMissingStreamRewritesExpected,
    /// An event id stored in another stream is accepted (stored under a fresh id).
    DuplicateIdsAcrossStreams,
    /// A snapshot at the stored version is ignored.
    SnapshotKeepsTheEqualVersion,
    /// An older snapshot replaces a newer one.
    SnapshotGoesBack,
    /// All streams share one snapshot slot.
    SnapshotsShareOneSlot,
}

#[derive(Default)]
struct State {
    /// `CommitsLate`: ids appended whose events are not readable yet.
    invisible: HashSet<Uuid>,
    /// `CommitsLate`: a generator for how long each append stays invisible.
    delays: u64,
    /// `DuplicateIdsAcrossStreams`: the stream each stored id went to.
    id_streams: HashMap<Uuid, String>,
    /// `SnapshotGoesBack`: snapshots saved unconditionally.
    snapshots: HashMap<String, Snapshot>,
    /// `SnapshotsShareOneSlot`: the one snapshot of all streams.
    slot: Option<Snapshot>,
}

#[derive(Clone)]
struct Broken {
    inner: InMemoryEventStore,
    fault: Fault,
    state: Arc<Mutex<State>>,
}

impl Broken {
    fn new(fault: Fault) -> Self {
        Self {
            inner: InMemoryEventStore::new(),
            fault,
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn append_late(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        self.state().invisible.extend(&ids);
        let result = self.inner.append(stream_id, expected, events).await;
        let delay = {
            let mut state = self.state();
            state.delays = state
                .delays
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state.delays >> 33) % 3
        };
        if delay == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut state = self.state();
        for id in &ids {
            state.invisible.remove(id);
        }
        result
    }

    /// `Any` as "read the version, then append `Exact`", without a retry.
    async fn append_any_racily(
        &self,
        stream_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let version = self.inner.stream_version(stream_id).await?;
        let count = events.len() as u64;
        tokio::task::yield_now().await;
        match self
            .inner
            .append(stream_id, ExpectedVersion::Exact(version), events)
            .await
        {
            Err(StoreError::Conflict { actual, .. }) if self.fault == Fault::AnyDropsLostRaces => {
                Ok(AppendResult {
                    stream_version: actual + count,
                    positions: Vec::new(),
                    recorded_at: Utc::now(),
                })
            }
            Err(StoreError::Conflict { stream, actual, .. }) => Err(StoreError::Conflict {
                stream,
                expected: ExpectedVersion::Any,
                actual,
            }),
            other => other,
        }
    }

    async fn append_broken(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        match (self.fault, expected) {
            (Fault::CommitsLate, _) => return self.append_late(stream_id, expected, events).await,
            (Fault::EmptyAppendsIgnoreTheExpectedVersion, _) if events.is_empty() => {
                return Ok(AppendResult {
                    stream_version: self.inner.stream_version(stream_id).await?,
                    positions: Vec::new(),
                    recorded_at: Utc::now(),
                });
            }
            (Fault::AnyConflictsWhenRaced | Fault::AnyDropsLostRaces, ExpectedVersion::Any) => {
                return self.append_any_racily(stream_id, events).await;
            }
            (Fault::NoStreamAppendsAnyway, ExpectedVersion::NoStream) => {
                return self
                    .inner
                    .append(stream_id, ExpectedVersion::Any, events)
                    .await;
            }
            (Fault::DuplicateIdsAcrossStreams, _) => {
                {
                    let state = self.state();
                    for event in &mut events {
                        if state
                            .id_streams
                            .get(&event.event_id)
                            .is_some_and(|stream| stream != stream_id)
                        {
                            event.event_id = Uuid::now_v7();
                        }
                    }
                }
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                let result = self.inner.append(stream_id, expected, events).await;
                if result.is_ok() {
                    let mut state = self.state();
                    for id in ids {
                        state.id_streams.insert(id, stream_id.to_owned());
                    }
                }
                return result;
            }
            _ => {}
        }
        match self.inner.append(stream_id, expected, events).await {
            Err(StoreError::Conflict {
                stream,
                expected,
                actual,
            }) => Err(match self.fault {
                Fault::ConflictReportsExpectedAsActual => StoreError::Conflict {
                    stream,
                    expected,
                    actual: match expected {
                        ExpectedVersion::Exact(version) => version,
                        ExpectedVersion::NoStream | ExpectedVersion::Any => 0,
                    },
                },
                Fault::ConflictNamesNoStream => StoreError::Conflict {
                    stream: String::new(),
                    expected,
                    actual,
                },
                Fault::ConflictOnMissingStreamRewritesExpected if actual == 0 => {
                    StoreError::Conflict {
                        stream,
                        expected: ExpectedVersion::NoStream,
                        actual,
                    }
                }
                _ => StoreError::Conflict {
                    stream,
                    expected,
                    actual,
                },
            }),
            other => other,
        }
    }

    async fn read_all_from_broken(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.fault {
            Fault::CommitsLate => {
                let all = self.inner.read_all_from(after, usize::MAX).await?;
                let state = self.state();
                Ok(all
                    .into_iter()
                    .filter(|e| !state.invisible.contains(&e.event_id))
                    .take(limit)
                    .collect())
            }
            Fault::OneEventPages => self.inner.read_all_from(after, limit.min(1)).await,
            Fault::ExceedsTheLimit => self.inner.read_all_from(after, limit + 1).await,
            Fault::SilentUnknownPosition => match self.inner.read_all_from(after, limit).await {
                Err(StoreError::UnknownPosition { .. }) => Ok(Vec::new()),
                other => other,
            },
            _ => self.inner.read_all_from(after, limit).await,
        }
    }

    async fn load_snapshot_broken(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        match self.fault {
            Fault::SnapshotGoesBack => Ok(self.state().snapshots.get(stream_id).cloned()),
            Fault::SnapshotsShareOneSlot => Ok(self
                .state()
                .slot
                .clone()
                .filter(|s| s.stream_id == stream_id)),
            _ => self.inner.load_snapshot(stream_id).await,
        }
    }

    async fn save_snapshot_broken(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        match self.fault {
            Fault::SnapshotGoesBack => {
                self.state()
                    .snapshots
                    .insert(snapshot.stream_id.clone(), snapshot);
                Ok(())
            }
            Fault::SnapshotsShareOneSlot => {
                let mut state = self.state();
                if state
                    .slot
                    .as_ref()
                    .is_none_or(|s| s.stream_version <= snapshot.stream_version)
                {
                    state.slot = Some(snapshot);
                }
                Ok(())
            }
            Fault::SnapshotKeepsTheEqualVersion => {
                let stored = self.inner.load_snapshot(&snapshot.stream_id).await?;
                if stored.is_some_and(|s| s.stream_version >= snapshot.stream_version) {
                    return Ok(());
                }
                self.inner.save_snapshot(snapshot).await
            }
            _ => self.inner.save_snapshot(snapshot).await,
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
        Box::pin(self.append_broken(stream_id, expected, events))
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
        Box::pin(self.read_all_from_broken(after, limit))
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(self.load_snapshot_broken(stream_id))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.save_snapshot_broken(snapshot))
    }

    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut state = self.state();
        state.snapshots.remove(stream_id);
        if state
            .slot
            .as_ref()
            .is_some_and(|s| s.stream_id == stream_id)
        {
            state.slot = None;
        }
        drop(state);
        self.inner.delete_snapshot(stream_id)
    }
}

/// A correct store that is slow to show what it stored: `read_all_from` stops before the
/// first event appended less than [`Lagging::LAG`] ago, as PostgreSQL stops at its read
/// horizon. It delays events, never skips them.
#[derive(Clone, Default)]
struct Lagging {
    inner: InMemoryEventStore,
    appended_at: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl Lagging {
    const LAG: Duration = Duration::from_millis(30);
}

impl EventStore for Lagging {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(async move {
            let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
            let result = self.inner.append(stream_id, expected, events).await;
            if result.is_ok() {
                let now = Instant::now();
                let mut appended_at = self
                    .appended_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                appended_at.extend(ids.into_iter().map(|id| (id, now)));
            }
            result
        })
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
        Box::pin(async move {
            let mut page = self.inner.read_all_from(after, limit).await?;
            let appended_at = self
                .appended_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let settled = page
                .iter()
                .take_while(|e| {
                    appended_at
                        .get(&e.event_id)
                        .is_none_or(|at| at.elapsed() >= Self::LAG)
                })
                .count();
            page.truncate(settled);
            Ok(page)
        })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_shows_events_a_moment_after_their_append_passes_every_check() {
    let store = Lagging::default();
    for (name, _) in checks::<Lagging>() {
        assert_eq!(run_check(&store, name).await, Ok(()), "check `{name}`");
    }
}

#[tokio::test]
async fn a_store_that_passes_over_late_commits_fails_only_the_concurrent_check() {
    assert_fails(
        Fault::CommitsLate,
        "late_visible_events_are_never_skipped",
        "skipped",
    )
    .await;
    // Sequential appends are readable when they return: the other read checks cannot see it.
    let store = Broken::new(Fault::CommitsLate);
    for name in [
        "read_all_from_pages_through_everything_once",
        "read_all_from_fills_each_page_on_a_quiet_store",
    ] {
        assert_eq!(run_check(&store, name).await, Ok(()), "check `{name}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_passes_over_late_commits_fails_on_a_multi_threaded_runtime_too() {
    assert_fails(
        Fault::CommitsLate,
        "late_visible_events_are_never_skipped",
        "skipped",
    )
    .await;
}

#[tokio::test]
async fn a_store_returning_short_pages_fails() {
    assert_fails(
        Fault::OneEventPages,
        "read_all_from_fills_each_page_on_a_quiet_store",
        "min(limit, events left)",
    )
    .await;
}

#[tokio::test]
async fn a_store_exceeding_the_limit_fails() {
    assert_fails(
        Fault::ExceedsTheLimit,
        "read_all_from_fills_each_page_on_a_quiet_store",
        "min(limit, events left)",
    )
    .await;
}

#[tokio::test]
async fn a_store_reading_nothing_after_an_unknown_position_fails() {
    assert_fails(
        Fault::SilentUnknownPosition,
        "reading_after_an_unknown_position_is_an_error",
        "StoreError::UnknownPosition",
    )
    .await;
}

#[tokio::test]
async fn a_store_ignoring_the_expected_version_of_empty_appends_fails() {
    assert_fails(
        Fault::EmptyAppendsIgnoreTheExpectedVersion,
        "empty_appends_check_the_version_and_write_nothing",
        "expected a conflict",
    )
    .await;
}

#[tokio::test]
async fn a_store_whose_any_appends_conflict_when_raced_fails() {
    assert_fails(
        Fault::AnyConflictsWhenRaced,
        "concurrent_any_appends_lose_nothing",
        "never conflicts",
    )
    .await;
}

#[tokio::test]
async fn a_store_whose_any_appends_silently_drop_lost_races_fails() {
    assert_fails(
        Fault::AnyDropsLostRaces,
        "concurrent_any_appends_lose_nothing",
        "updates were lost",
    )
    .await;
}

#[tokio::test]
async fn a_store_letting_two_writers_create_one_stream_fails() {
    assert_fails(
        Fault::NoStreamAppendsAnyway,
        "concurrent_creations_of_one_stream_have_one_winner",
        "exactly one",
    )
    .await;
}

#[tokio::test]
async fn a_store_misreporting_conflicts_fails() {
    for fault in [
        Fault::ConflictReportsExpectedAsActual,
        Fault::ConflictNamesNoStream,
        Fault::ConflictOnMissingStreamRewritesExpected,
    ] {
        assert_fails(
            fault,
            "wrong_expected_version_conflicts_and_writes_nothing",
            "conflict fields",
        )
        .await;
    }
}

#[tokio::test]
async fn a_store_accepting_an_event_id_of_another_stream_fails() {
    assert_fails(
        Fault::DuplicateIdsAcrossStreams,
        "an_event_id_stored_in_one_stream_is_rejected_in_another",
        "must be DuplicateEventId",
    )
    .await;
}

#[tokio::test]
async fn a_store_keeping_a_snapshot_of_the_same_version_fails() {
    assert_fails(
        Fault::SnapshotKeepsTheEqualVersion,
        "snapshots_replace_at_equal_versions_and_stay_per_stream",
        "replaces it",
    )
    .await;
}

#[tokio::test]
async fn a_store_letting_an_older_snapshot_replace_a_newer_fails() {
    assert_fails(
        Fault::SnapshotGoesBack,
        "snapshots_replace_at_equal_versions_and_stay_per_stream",
        "an older snapshot replaced a newer one",
    )
    .await;
}

#[tokio::test]
async fn a_store_sharing_snapshots_between_streams_fails() {
    assert_fails(
        Fault::SnapshotsShareOneSlot,
        "snapshots_replace_at_equal_versions_and_stay_per_stream",
        "another stream",
    )
    .await;
}

//! Behaviour checks every [`EventStore`] must pass; the in-memory store is their reference.
//!
//! Run them all from a test of your store:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = cqrs_core::InMemoryEventStore::new();
//! cqrs_core::testing::conformance::run_all(&store).await;
//! # }
//! ```
//!
//! Each check uses its own fresh stream ids, so the store may already hold events; it must
//! not be written by anything else while the checks run (the global-order checks read
//! everything after the position they start at, and expect full pages once their own appends
//! have returned). Where a check expects events, it reads a short page again for up to three
//! seconds before failing, since a store may hold events back for a moment after their
//! appends returned. The checks drive the store only through the [`EventStore`] trait, and
//! need a Tokio runtime with the time driver (`#[tokio::test]` has one). A failing check
//! panics with its name.
//!
//! # The checks
//!
//! In the order [`run_all`] runs them; each is also a public function, and [`checks`] lists
//! them by name to run one alone.
//!
//! - [`append_then_load_round_trips_every_field`]: every field of an appended event loads
//!   back; versions 1..n; `append` returns the stored positions.
//! - [`versions_continue_without_holes`]: exact and `Any` appends continue the stream.
//! - [`load_stream_from_version_is_inclusive`]: `load_stream(s, v)` starts at version `v`.
//! - [`wrong_expected_version_conflicts_and_writes_nothing`]: an expected version too low, too
//!   high, `NoStream` on an existing stream and `Exact(n > 0)` on a missing one each conflict,
//!   with `Conflict { stream, expected, actual }` naming the stream, the expectation as given
//!   and the stream's real version; nothing is written.
//! - [`empty_appends_check_the_version_and_write_nothing`]: an append of no events under each
//!   expectation (`Exact` right and wrong, `NoStream` on an existing and a new stream, `Any`):
//!   a wrong one conflicts; a right one returns the current version and no positions, writes
//!   nothing and does not create the stream.
//! - [`duplicate_event_id_is_rejected_and_writes_nothing`]: an id already in the stream, or
//!   twice in one batch, is `DuplicateEventId` and the batch writes nothing.
//! - [`an_event_id_stored_in_one_stream_is_rejected_in_another`]: ids are unique across
//!   streams: reusing one in another stream (new or existing, alone or in a batch) is
//!   `DuplicateEventId` and writes nothing.
//! - [`empty_stream_id_is_rejected`]: `""` is `InvalidStreamId`.
//! - [`streams_do_not_leak_into_each_other`]: interleaved appends load back per stream.
//! - [`odd_stream_ids_are_stored_verbatim`]: quotes, SQL and non-ASCII ids round-trip.
//! - [`read_all_from_pages_through_everything_once`]: sequential appends are read back once
//!   each, in append order, honouring the limit.
//! - [`read_all_from_fills_each_page_on_a_quiet_store`]: with no append in flight, a page
//!   holds `min(limit, events left)` (at once, or after a moment), whatever the limit and
//!   from every stored position; a store that keeps returning short pages fails here.
//!   `limit = 0` returns an empty page.
//! - [`reading_after_an_unknown_position_is_an_error`]: `read_all_from` after a position at
//!   which no event was ever stored is [`StoreError::UnknownPosition`] naming it, never an
//!   empty page; after `START` or a stored position (even the last) it reads normally.
//! - [`concurrent_appends_never_both_win`]: of several appends expecting the same version,
//!   one wins and the others get a `Conflict` naming the winner's version.
//! - [`concurrent_creations_of_one_stream_have_one_winner`]: of several concurrent `NoStream`
//!   appends to a new stream, exactly one wins; the others conflict with `actual` = the
//!   winner's version, and the stream holds the winner's events only.
//! - [`concurrent_any_appends_lose_nothing`]: many tasks appending with `Any` to one stream
//!   all succeed (`Any` never conflicts); the stream ends at the total count with versions
//!   `1..=total` each once, each append's events at the versions and positions it returned.
//! - [`late_visible_events_are_never_skipped`]: concurrent appenders on shared streams while
//!   a reader follows `read_all_from` with small pages from its last seen position. Once
//!   caught up, the reader has seen every appended event exactly once, at the position its
//!   append returned, each stream in version order, and in the order a reader sees after
//!   everything settled. A store that reads by position while positions become visible out of
//!   order (an event committed after one with a larger position is passed over) fails here.
//! - [`snapshots_round_trip_and_never_go_back`]: snapshots load back; an older one never
//!   replaces a newer one.
//! - [`snapshots_replace_at_equal_versions_and_stay_per_stream`]: a snapshot at the stored
//!   version replaces it; snapshots of two streams never affect each other; a deleted snapshot
//!   is gone (and only that stream's), after which any version may be saved again.

// Every check reports failure by panicking (it runs inside a test); a `# Panics` section on
// each would only repeat that.
#![allow(clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::{
    AppendResult, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, RecordedEvent,
    Snapshot, StoreError,
};

/// A check: its name and the function that runs it.
pub type Check<S> = (&'static str, fn(&S) -> crate::BoxFuture<'_, ()>);

/// Every check, in the order [`run_all`] runs them.
pub fn checks<S: EventStore + Clone>() -> Vec<Check<S>> {
    vec![
        ("append_then_load_round_trips_every_field", |s| {
            Box::pin(append_then_load_round_trips_every_field(s))
        }),
        ("versions_continue_without_holes", |s| {
            Box::pin(versions_continue_without_holes(s))
        }),
        ("load_stream_from_version_is_inclusive", |s| {
            Box::pin(load_stream_from_version_is_inclusive(s))
        }),
        ("wrong_expected_version_conflicts_and_writes_nothing", |s| {
            Box::pin(wrong_expected_version_conflicts_and_writes_nothing(s))
        }),
        ("empty_appends_check_the_version_and_write_nothing", |s| {
            Box::pin(empty_appends_check_the_version_and_write_nothing(s))
        }),
        ("duplicate_event_id_is_rejected_and_writes_nothing", |s| {
            Box::pin(duplicate_event_id_is_rejected_and_writes_nothing(s))
        }),
        (
            "an_event_id_stored_in_one_stream_is_rejected_in_another",
            |s| Box::pin(an_event_id_stored_in_one_stream_is_rejected_in_another(s)),
        ),
        ("empty_stream_id_is_rejected", |s| {
            Box::pin(empty_stream_id_is_rejected(s))
        }),
        ("streams_do_not_leak_into_each_other", |s| {
            Box::pin(streams_do_not_leak_into_each_other(s))
        }),
        ("odd_stream_ids_are_stored_verbatim", |s| {
            Box::pin(odd_stream_ids_are_stored_verbatim(s))
        }),
        ("read_all_from_pages_through_everything_once", |s| {
            Box::pin(read_all_from_pages_through_everything_once(s))
        }),
        ("read_all_from_fills_each_page_on_a_quiet_store", |s| {
            Box::pin(read_all_from_fills_each_page_on_a_quiet_store(s))
        }),
        ("reading_after_an_unknown_position_is_an_error", |s| {
            Box::pin(reading_after_an_unknown_position_is_an_error(s))
        }),
        ("concurrent_appends_never_both_win", |s| {
            Box::pin(concurrent_appends_never_both_win(s))
        }),
        ("concurrent_creations_of_one_stream_have_one_winner", |s| {
            Box::pin(concurrent_creations_of_one_stream_have_one_winner(s))
        }),
        ("concurrent_any_appends_lose_nothing", |s| {
            Box::pin(concurrent_any_appends_lose_nothing(s))
        }),
        ("late_visible_events_are_never_skipped", |s| {
            Box::pin(late_visible_events_are_never_skipped(s))
        }),
        ("snapshots_round_trip_and_never_go_back", |s| {
            Box::pin(snapshots_round_trip_and_never_go_back(s))
        }),
        (
            "snapshots_replace_at_equal_versions_and_stay_per_stream",
            |s| Box::pin(snapshots_replace_at_equal_versions_and_stay_per_stream(s)),
        ),
    ]
}

/// Runs every check against `store`, panicking with the name of the first that fails.
pub async fn run_all<S: EventStore + Clone>(store: &S) {
    super::run_checks("conformance", checks::<S>(), store).await;
}

fn fresh_stream(label: &str) -> String {
    format!("conformance-{label}-{}", Uuid::now_v7().simple())
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "conformance.happened".into(),
        schema_version: 3,
        payload: json!({ "n": n, "text": "quote ' \" backslash \\ unicode é" }).into(),
        metadata: Metadata {
            correlation_id: Some(Uuid::now_v7()),
            causation_id: Some(Uuid::now_v7()),
            user_id: Some("user-1".into()),
            extra: BTreeMap::from([
                ("tenant".to_owned(), json!("acme")),
                ("n".to_owned(), json!(n)),
            ]),
        },
    }
}

fn events(range: std::ops::RangeInclusive<u64>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn ids(events: &[NewEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn recorded_ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn count(events: &[NewEvent]) -> u64 {
    u64::try_from(events.len()).expect("a batch fits in u64")
}

/// How long a page may stay short after the appends it should hold returned: a store may
/// hold events back for a moment (PostgreSQL's read horizon waits for transactions that
/// could still commit before them, and errs on the side of waiting), never for long.
const SETTLE: Duration = Duration::from_secs(3);

/// A page of `read_all_from(after, limit)`, read again while it holds fewer than `expected`
/// events, until [`SETTLE`] has passed; a page with `expected` events or more at once.
async fn read_page<S: EventStore>(
    store: &S,
    after: GlobalPosition,
    limit: usize,
    expected: usize,
) -> Vec<RecordedEvent> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = store
            .read_all_from(after, limit)
            .await
            .expect("read_all_from");
        if page.len() >= expected || Instant::now() >= deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Everything after `after` in the global order, page by page, waiting (see [`read_page`])
/// for at least `expected` events.
async fn read_from<S: EventStore>(
    store: &S,
    mut after: GlobalPosition,
    expected: usize,
) -> Vec<RecordedEvent> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    loop {
        let left = expected.saturating_sub(all.len());
        let page = read_page(store, after, PAGE, left.min(PAGE)).await;
        match page.last() {
            Some(last) => after = last.position,
            None => return all,
        }
        all.extend(page);
    }
}

/// Appends one event to a stream of its own: reading after its position yields exactly what
/// is appended after it.
async fn mark<S: EventStore>(store: &S) -> GlobalPosition {
    store
        .append(
            &fresh_stream("mark"),
            ExpectedVersion::NoStream,
            events(1..=1),
        )
        .await
        .expect("append")
        .last_position()
}

/// Nothing was written after `before`.
async fn assert_nothing_after<S: EventStore>(store: &S, before: GlobalPosition, what: &str) {
    let written = store
        .read_all_from(before, 10)
        .await
        .expect("read_all_from");
    assert!(
        written.is_empty(),
        "{what} wrote {} event(s) to the global order",
        written.len()
    );
}

/// `outcome` is a conflict naming `stream`, `expected` as given and the `actual` version.
#[track_caller]
fn assert_conflict(
    outcome: Result<AppendResult, StoreError>,
    stream: &str,
    expected: ExpectedVersion,
    actual: u64,
) {
    match outcome {
        Err(StoreError::Conflict {
            stream: reported_stream,
            expected: reported_expected,
            actual: reported_actual,
        }) => assert_eq!(
            (reported_stream.as_str(), reported_expected, reported_actual),
            (stream, expected, actual),
            "conflict fields (stream, expected, actual) for an append expecting {expected:?} \
             to a stream at version {actual}"
        ),
        other => panic!(
            "expected a conflict for an append expecting {expected:?} to a stream at version \
             {actual}, got {other:?}"
        ),
    }
}

fn assert_same(recorded: &RecordedEvent, sent: &NewEvent, stream: &str, version: u64) {
    assert_eq!(recorded.event_id, sent.event_id, "event id");
    assert_eq!(recorded.event_type, sent.event_type, "event type");
    assert_eq!(
        recorded.schema_version, sent.schema_version,
        "schema version"
    );
    assert_eq!(recorded.payload, sent.payload, "payload");
    assert_eq!(recorded.metadata, sent.metadata, "metadata");
    assert_eq!(recorded.stream_id, stream, "stream id");
    assert_eq!(recorded.stream_version, version, "stream version");
    assert!(
        recorded.position > GlobalPosition::START,
        "position must be after START"
    );
}

/// Appended events load back with every field intact, versions 1..n.
pub async fn append_then_load_round_trips_every_field<S: EventStore>(store: &S) {
    let stream = fresh_stream("roundtrip");
    let sent = events(1..=3);
    let result = store
        .append(&stream, ExpectedVersion::NoStream, sent.clone())
        .await
        .expect("append");
    assert_eq!(result.stream_version, 3);
    assert_eq!(result.positions.len(), 3);
    assert!(
        result.positions.windows(2).all(|w| w[0] < w[1]),
        "positions of one append increase"
    );
    let loaded = store.load_stream(&stream, 1).await.expect("load");
    assert_eq!(loaded.len(), 3);
    for (i, (recorded, sent)) in loaded.iter().zip(&sent).enumerate() {
        assert_same(recorded, sent, &stream, i as u64 + 1);
        assert_eq!(
            recorded.position, result.positions[i],
            "append returned the stored positions"
        );
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), 3);
    assert_eq!(
        store
            .stream_version(&fresh_stream("missing"))
            .await
            .expect("version"),
        0
    );
    assert!(
        store
            .load_stream(&fresh_stream("missing"), 1)
            .await
            .expect("load")
            .is_empty()
    );
}

/// Appends with exact versions continue the stream; `Any` appends after whatever is there.
pub async fn versions_continue_without_holes<S: EventStore>(store: &S) {
    let stream = fresh_stream("versions");
    store
        .append(&stream, ExpectedVersion::Exact(0), events(1..=2))
        .await
        .expect("first");
    let r = store
        .append(&stream, ExpectedVersion::Exact(2), events(3..=3))
        .await
        .expect("second");
    assert_eq!(r.stream_version, 3);
    let r = store
        .append(&stream, ExpectedVersion::Any, events(4..=5))
        .await
        .expect("any");
    assert_eq!(r.stream_version, 5);
    let versions: Vec<u64> = store
        .load_stream(&stream, 1)
        .await
        .expect("load")
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let fresh = fresh_stream("any-new");
    let r = store
        .append(&fresh, ExpectedVersion::Any, events(1..=1))
        .await
        .expect("any on new");
    assert_eq!(r.stream_version, 1);
}

/// `load_stream(s, v)` starts at version `v`.
pub async fn load_stream_from_version_is_inclusive<S: EventStore>(store: &S) {
    let stream = fresh_stream("from");
    store
        .append(&stream, ExpectedVersion::NoStream, events(1..=5))
        .await
        .expect("append");
    let tail: Vec<u64> = store
        .load_stream(&stream, 4)
        .await
        .expect("load")
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(tail, vec![4, 5]);
    assert!(
        store
            .load_stream(&stream, 6)
            .await
            .expect("load")
            .is_empty()
    );
    assert_eq!(
        store.load_stream(&stream, 0).await.expect("load").len(),
        5,
        "version 0 loads everything"
    );
}

/// A version mismatch is a typed conflict naming the stream, the expectation and the actual
/// version, and nothing is written.
pub async fn wrong_expected_version_conflicts_and_writes_nothing<S: EventStore>(store: &S) {
    let stream = fresh_stream("conflict");
    let before = store
        .append(&stream, ExpectedVersion::NoStream, events(1..=2))
        .await
        .expect("append")
        .last_position();
    let missing = fresh_stream("conflict-missing");
    for expected in [
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
    ] {
        let outcome = store.append(&stream, expected, events(9..=10)).await;
        assert_conflict(outcome, &stream, expected, 2);
    }
    for expected in [ExpectedVersion::Exact(4), ExpectedVersion::Exact(1)] {
        let outcome = store.append(&missing, expected, events(1..=1)).await;
        assert_conflict(outcome, &missing, expected, 0);
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), 2);
    assert_eq!(store.stream_version(&missing).await.expect("version"), 0);
    assert!(
        store
            .load_stream(&missing, 1)
            .await
            .expect("load")
            .is_empty(),
        "a conflict created the stream"
    );
    assert_nothing_after(store, before, "a conflict").await;
}

/// An append of no events checks the expected version like any other: a wrong expectation
/// conflicts, a right one returns the current version and no positions, and neither writes
/// anything nor creates the stream.
pub async fn empty_appends_check_the_version_and_write_nothing<S: EventStore>(store: &S) {
    let existing = fresh_stream("empty-existing");
    let before = store
        .append(&existing, ExpectedVersion::NoStream, events(1..=2))
        .await
        .expect("append")
        .last_position();
    let new = fresh_stream("empty-new");

    for (stream, expected, version) in [
        (&existing, ExpectedVersion::Exact(2), 2),
        (&existing, ExpectedVersion::Any, 2),
        (&new, ExpectedVersion::NoStream, 0),
        (&new, ExpectedVersion::Exact(0), 0),
        (&new, ExpectedVersion::Any, 0),
    ] {
        match store.append(stream, expected, Vec::new()).await {
            Ok(result) => {
                assert_eq!(
                    result.stream_version, version,
                    "an empty append expecting {expected:?} returns the current version"
                );
                assert!(
                    result.positions.is_empty(),
                    "an empty append returned positions {:?}",
                    result.positions
                );
                assert_eq!(result.last_position(), GlobalPosition::START);
            }
            Err(error) => panic!(
                "an empty append expecting {expected:?} of a stream at version {version} \
                 must succeed, got {error:?}"
            ),
        }
    }
    for (stream, expected, version) in [
        (&existing, ExpectedVersion::Exact(1), 2),
        (&existing, ExpectedVersion::Exact(3), 2),
        (&existing, ExpectedVersion::NoStream, 2),
        (&existing, ExpectedVersion::Exact(0), 2),
        (&new, ExpectedVersion::Exact(2), 0),
    ] {
        let outcome = store.append(stream, expected, Vec::new()).await;
        assert_conflict(outcome, stream, expected, version);
    }
    assert_nothing_after(store, before, "an empty append").await;
    assert_eq!(store.stream_version(&existing).await.expect("version"), 2);
    assert_eq!(
        store.stream_version(&new).await.expect("version"),
        0,
        "an empty append created the stream"
    );
    assert!(store.load_stream(&new, 1).await.expect("load").is_empty());
    let created = store
        .append(&new, ExpectedVersion::NoStream, events(1..=1))
        .await
        .expect("an empty append must not create the stream: NoStream still holds after it");
    assert_eq!(created.stream_version, 1);
}

/// Reusing an event id fails, and the batch containing it writes nothing.
pub async fn duplicate_event_id_is_rejected_and_writes_nothing<S: EventStore>(store: &S) {
    let stream = fresh_stream("dup");
    let first = event(1);
    let before = store
        .append(&stream, ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .expect("append")
        .last_position();
    let mut again = event(2);
    again.event_id = first.event_id;
    match store
        .append(&stream, ExpectedVersion::Exact(1), vec![event(3), again])
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, first.event_id),
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    let other_stream = fresh_stream("dup-batch");
    let twin = event(4);
    match store
        .append(
            &other_stream,
            ExpectedVersion::NoStream,
            vec![twin.clone(), twin.clone()],
        )
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, twin.event_id),
        other => panic!("expected DuplicateEventId within one batch, got {other:?}"),
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), 1);
    assert_eq!(
        store.stream_version(&other_stream).await.expect("version"),
        0
    );
    assert_nothing_after(store, before, "a rejected duplicate").await;
}

/// Event ids are unique across streams: an id stored in one stream is refused in another,
/// new or existing, alone or within a batch, and nothing of the batch is written.
pub async fn an_event_id_stored_in_one_stream_is_rejected_in_another<S: EventStore>(store: &S) {
    let first = fresh_stream("dup-first");
    let stored = event(1);
    store
        .append(&first, ExpectedVersion::NoStream, vec![stored.clone()])
        .await
        .expect("append");
    let existing = fresh_stream("dup-existing");
    let before = store
        .append(&existing, ExpectedVersion::NoStream, events(1..=1))
        .await
        .expect("append")
        .last_position();
    let new = fresh_stream("dup-new");
    let mut again = event(2);
    again.event_id = stored.event_id;

    for (stream, expected, batch) in [
        (
            &new,
            ExpectedVersion::NoStream,
            vec![event(3), again.clone()],
        ),
        (&new, ExpectedVersion::Any, vec![again.clone()]),
        (&existing, ExpectedVersion::Exact(1), vec![again.clone()]),
        (
            &existing,
            ExpectedVersion::Any,
            vec![again.clone(), event(4)],
        ),
    ] {
        match store.append(stream, expected, batch).await {
            Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(
                event_id, stored.event_id,
                "DuplicateEventId names the reused id"
            ),
            other => panic!(
                "an event id stored in another stream must be DuplicateEventId, got {other:?}"
            ),
        }
    }
    assert_nothing_after(store, before, "a batch reusing another stream's event id").await;
    assert_eq!(store.stream_version(&new).await.expect("version"), 0);
    assert_eq!(store.stream_version(&existing).await.expect("version"), 1);
    let kept = store.load_stream(&first, 1).await.expect("load");
    assert_eq!(recorded_ids(&kept), vec![stored.event_id]);
}

/// An empty stream id is refused.
pub async fn empty_stream_id_is_rejected<S: EventStore>(store: &S) {
    match store.append("", ExpectedVersion::Any, events(1..=1)).await {
        Err(StoreError::InvalidStreamId { .. }) => {}
        other => panic!("expected InvalidStreamId, got {other:?}"),
    }
}

/// Interleaved appends to several streams load back per stream.
pub async fn streams_do_not_leak_into_each_other<S: EventStore>(store: &S) {
    let a = fresh_stream("a");
    let b = fresh_stream("b");
    for round in 0..3 {
        store
            .append(&a, ExpectedVersion::Exact(round), events(1..=1))
            .await
            .expect("a");
        store
            .append(&b, ExpectedVersion::Exact(round * 2), events(1..=2))
            .await
            .expect("b");
    }
    let loaded_a = store.load_stream(&a, 1).await.expect("a");
    let loaded_b = store.load_stream(&b, 1).await.expect("b");
    assert_eq!(loaded_a.len(), 3);
    assert_eq!(loaded_b.len(), 6);
    assert!(loaded_a.iter().all(|e| e.stream_id == a));
    assert!(loaded_b.iter().all(|e| e.stream_id == b));
}

/// Stream ids with quotes, SQL and non-ASCII characters are stored and read back verbatim.
pub async fn odd_stream_ids_are_stored_verbatim<S: EventStore>(store: &S) {
    let suffix = Uuid::now_v7().simple().to_string();
    for raw in [
        "it's \"quoted\" \\ back\\slash",
        "x'); DROP TABLE events; --",
        "ünïcödé ☃ 流",
        "percent % underscore _ star *",
    ] {
        let stream = format!("{raw}-{suffix}");
        store
            .append(&stream, ExpectedVersion::NoStream, events(1..=1))
            .await
            .expect("append");
        let loaded = store.load_stream(&stream, 1).await.expect("load");
        assert_eq!(loaded.len(), 1, "stream {stream:?}");
        assert_eq!(loaded[0].stream_id, stream);
        assert_eq!(store.stream_version(&stream).await.expect("version"), 1);
    }
}

/// Paging through the global order with the last seen position yields each event once, in
/// append order for sequential appends, honouring the limit.
pub async fn read_all_from_pages_through_everything_once<S: EventStore>(store: &S) {
    let start = mark(store).await;
    let a = fresh_stream("all-a");
    let b = fresh_stream("all-b");
    let mut sent = Vec::new();
    for round in 0..4u64 {
        let batch_a = events(round * 2 + 1..=round * 2 + 2);
        let batch_b = events(round + 1..=round + 1);
        store
            .append(&a, ExpectedVersion::Exact(round * 2), batch_a.clone())
            .await
            .expect("a");
        store
            .append(&b, ExpectedVersion::Exact(round), batch_b.clone())
            .await
            .expect("b");
        sent.extend(batch_a.into_iter().map(|e| e.event_id));
        sent.extend(batch_b.into_iter().map(|e| e.event_id));
    }
    let mut seen = Vec::new();
    let mut position = start;
    loop {
        let left = sent.len().saturating_sub(seen.len());
        let page = read_page(store, position, 5, left.min(5)).await;
        assert!(page.len() <= 5, "limit ignored");
        let Some(last) = page.last() else { break };
        position = last.position;
        seen.extend(page.iter().map(|e| e.event_id));
    }
    assert_eq!(
        seen, sent,
        "global order differs from append order, or events were skipped/repeated"
    );
    assert!(
        store
            .read_all_from(position, 5)
            .await
            .expect("read")
            .is_empty()
    );
}

/// With no append in flight, every page is as full as the limit allows: `read_all_from(p, n)`
/// returns `min(n, events after p)`, for any limit and from every stored position, and
/// `n = 0` returns an empty page.
pub async fn read_all_from_fills_each_page_on_a_quiet_store<S: EventStore>(store: &S) {
    let start = mark(store).await;
    let a = fresh_stream("page-a");
    let b = fresh_stream("page-b");
    let mut sent = Vec::new();
    for (stream, expected, batch) in [
        (&a, ExpectedVersion::NoStream, events(1..=3)),
        (&b, ExpectedVersion::NoStream, events(1..=2)),
        (&a, ExpectedVersion::Exact(3), events(4..=5)),
    ] {
        sent.extend(ids(&batch));
        store.append(stream, expected, batch).await.expect("append");
    }

    let mut positions = Vec::new();
    for limit in [1, 2, 3, 6, 7, 8, 1000, usize::MAX] {
        let mut after = start;
        let mut read: Vec<RecordedEvent> = Vec::new();
        loop {
            let left = sent.len().saturating_sub(read.len());
            let page = read_page(store, after, limit, limit.min(left)).await;
            assert_eq!(
                page.len(),
                limit.min(left),
                "a page on a quiet store holds min(limit, events left): limit {limit}, {left} \
                 event(s) left after position {after}"
            );
            let Some(last) = page.last() else { break };
            after = last.position;
            read.extend(page);
            assert!(
                read.len() <= sent.len(),
                "read_all_from returned more events than were appended"
            );
        }
        assert_eq!(
            recorded_ids(&read),
            sent,
            "paging with limit {limit} read another sequence than was appended"
        );
        positions = read.iter().map(|e| e.position).collect();
    }

    for (i, &position) in positions.iter().enumerate() {
        let rest = read_page(store, position, 1000, sent.len() - i - 1).await;
        assert_eq!(
            recorded_ids(&rest),
            sent[i + 1..],
            "reading after the event at position {position} must return exactly the events \
             after it"
        );
    }
    for after in [GlobalPosition::START, start, positions[2], positions[6]] {
        assert!(
            store
                .read_all_from(after, 0)
                .await
                .expect("read_all_from with limit 0")
                .is_empty(),
            "limit 0 must return an empty page (after position {after})"
        );
    }
}

/// `read_all_from` after a position at which no event was ever stored is
/// [`StoreError::UnknownPosition`] naming it, not an empty page; after `START` or a stored
/// position, even the last one, it reads normally.
pub async fn reading_after_an_unknown_position_is_an_error<S: EventStore>(store: &S) {
    let stream = fresh_stream("unknown-position");
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, events(1..=2))
        .await
        .expect("append");
    let last = appended.last_position();
    let highest = read_from(store, GlobalPosition::START, 0)
        .await
        .iter()
        .map(|e| e.position)
        .chain(appended.positions)
        .max()
        .expect("the store holds events");
    assert_eq!(
        read_page(store, GlobalPosition::START, 1, 1).await.len(),
        1,
        "reading after START"
    );
    assert!(
        store
            .read_all_from(last, 10)
            .await
            .expect("read_all_from the last stored position")
            .is_empty()
    );
    for unknown in [
        GlobalPosition(highest.0 + 1),
        GlobalPosition(highest.0 + 1_000_000),
    ] {
        match store.read_all_from(unknown, 10).await {
            Err(StoreError::UnknownPosition { position }) => assert_eq!(
                position, unknown,
                "UnknownPosition names the position asked for"
            ),
            other => panic!(
                "reading after position {unknown}, where no event is stored, must be \
                 StoreError::UnknownPosition, got {other:?}"
            ),
        }
    }
}

/// Two appends expecting the same version: exactly one wins, the other gets `Conflict`.
pub async fn concurrent_appends_never_both_win<S: EventStore + Clone>(store: &S) {
    for _ in 0..10 {
        let stream = fresh_stream("race");
        store
            .append(&stream, ExpectedVersion::NoStream, events(1..=1))
            .await
            .expect("seed");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let stream = stream.clone();
                tokio::spawn(async move {
                    store
                        .append(&stream, ExpectedVersion::Exact(1), events(2..=3))
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        let mut conflicts = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(result) => {
                    wins += 1;
                    assert_eq!(result.stream_version, 3);
                }
                outcome @ Err(StoreError::Conflict { .. }) => {
                    assert_conflict(outcome, &stream, ExpectedVersion::Exact(1), 3);
                    conflicts += 1;
                }
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 3));
        assert_eq!(store.stream_version(&stream).await.expect("version"), 3);
    }
}

/// Several `NoStream` appends racing to create one stream: exactly one wins; every other
/// gets a `Conflict` whose `actual` is the winner's version, and the stream holds the
/// winner's events only.
pub async fn concurrent_creations_of_one_stream_have_one_winner<S: EventStore + Clone>(store: &S) {
    const WRITERS: u64 = 6;
    for _ in 0..5 {
        let stream = fresh_stream("create");
        let start = Arc::new(Barrier::new(usize::try_from(WRITERS).expect("small")));
        // Every writer sends a batch of another size, so `actual` tells which one won.
        let tasks: Vec<_> = (1..=WRITERS)
            .map(|size| {
                let store = store.clone();
                let stream = stream.clone();
                let start = Arc::clone(&start);
                let batch = events(1..=size);
                tokio::spawn(async move {
                    start.wait().await;
                    let outcome = store
                        .append(&stream, ExpectedVersion::NoStream, batch.clone())
                        .await;
                    (batch, outcome)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for task in tasks {
            match task.await.expect("writer") {
                (batch, Ok(result)) => winners.push((batch, result)),
                (_, outcome) => losers.push(outcome),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one concurrent NoStream append may create the stream, {} did",
            winners.len()
        );
        let (batch, result) = winners.remove(0);
        let version = count(&batch);
        assert_eq!(result.stream_version, version);
        for outcome in losers {
            assert_conflict(outcome, &stream, ExpectedVersion::NoStream, version);
        }
        assert_eq!(
            recorded_ids(&store.load_stream(&stream, 1).await.expect("load")),
            ids(&batch),
            "the stream holds the winner's events only"
        );
    }
}

/// Many tasks appending with `Any` to one stream: none fails (`Any` never conflicts), and no
/// update is lost: the stream ends at the total count, versions `1..=total` each once, each
/// append's events at the versions and positions it returned.
pub async fn concurrent_any_appends_lose_nothing<S: EventStore + Clone>(store: &S) {
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 5;
    let stream = fresh_stream("any");
    let start = Arc::new(Barrier::new(usize::try_from(WRITERS).expect("small")));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            let stream = stream.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let mut appended = Vec::new();
                for round in 0..APPENDS {
                    let batch = events(1..=1 + (writer + round) % 2);
                    let result = store
                        .append(&stream, ExpectedVersion::Any, batch.clone())
                        .await
                        .unwrap_or_else(|error| {
                            panic!(
                                "an append expecting Any never conflicts or fails, got {error:?}"
                            )
                        });
                    appended.push((batch, result));
                    tokio::task::yield_now().await;
                }
                appended
            })
        })
        .collect();
    let mut appended = Vec::new();
    for task in tasks {
        appended.extend(task.await.expect("writer"));
    }
    let total: u64 = appended.iter().map(|(batch, _)| count(batch)).sum();

    let version = store.stream_version(&stream).await.expect("version");
    assert_eq!(
        version, total,
        "concurrent Any appends of {total} events left the stream at version {version}: \
         updates were lost"
    );
    let loaded = store.load_stream(&stream, 1).await.expect("load");
    let versions: Vec<u64> = loaded.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "the stream's versions are 1..={total}, each once"
    );
    for (batch, result) in &appended {
        assert_eq!(
            result.positions.len(),
            batch.len(),
            "one position per event"
        );
        let first = usize::try_from(result.stream_version - count(batch)).expect("small");
        let stored = &loaded[first..first + batch.len()];
        assert_eq!(
            recorded_ids(stored),
            ids(batch),
            "an append's events are stored at the versions it returned"
        );
        assert_eq!(
            stored.iter().map(|e| e.position).collect::<Vec<_>>(),
            result.positions,
            "an append's events are stored at the positions it returned"
        );
    }
}

/// What an appender of [`late_visible_events_are_never_skipped`] was told it wrote.
struct Written {
    stream: String,
    version: u64,
    position: GlobalPosition,
}

/// Appends `batch` to `stream` at its current version, retrying on conflicts.
async fn append_at_current_version<S: EventStore>(
    store: &S,
    stream: &str,
    batch: &[NewEvent],
) -> AppendResult {
    let mut version = store.stream_version(stream).await.expect("stream_version");
    for _ in 0..1000 {
        match store
            .append(stream, ExpectedVersion::Exact(version), batch.to_vec())
            .await
        {
            Ok(result) => return result,
            Err(StoreError::Conflict { actual, .. }) => {
                version = actual;
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("append failed: {other:?}"),
        }
    }
    panic!("appends to {stream} kept conflicting");
}

/// Follows the global order from `after` with pages of `page_size` while `written` is
/// `usize::MAX` (appenders at work); then until it has read `written` events, or no new
/// event came for [`SETTLE`]. Panics past `at_most` events, which only a store repeating
/// events reaches.
async fn follow<S: EventStore>(
    store: S,
    mut after: GlobalPosition,
    page_size: usize,
    written: Arc<AtomicUsize>,
    at_most: usize,
) -> Vec<RecordedEvent> {
    let mut seen = Vec::new();
    let mut idle_since = Instant::now();
    loop {
        let expected = written.load(Ordering::SeqCst);
        let page = store
            .read_all_from(after, page_size)
            .await
            .expect("read_all_from");
        assert!(
            page.len() <= page_size,
            "read_all_from returned {} events for a limit of {page_size}",
            page.len()
        );
        if let Some(last) = page.last() {
            after = last.position;
            seen.extend(page);
            assert!(
                seen.len() <= at_most,
                "the reader read more events than were appended: events repeat"
            );
            idle_since = Instant::now();
        } else if expected == usize::MAX {
            idle_since = Instant::now();
            tokio::task::yield_now().await;
        } else if seen.len() >= expected || idle_since.elapsed() > SETTLE {
            return seen;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One appender of [`late_visible_events_are_never_skipped`]: `rounds` appends of one to
/// three events, moving from stream to stream; returns what each event was told.
async fn append_rounds<S: EventStore>(
    store: S,
    streams: Arc<Vec<String>>,
    appender: usize,
    rounds: usize,
) -> Vec<(Uuid, Written)> {
    let mut written = Vec::new();
    for round in 0..rounds {
        let stream = &streams[(appender + round) % streams.len()];
        let batch = events(1..=1 + (appender as u64 * 7 + round as u64) % 3);
        let result = append_at_current_version(&store, stream, &batch).await;
        assert_eq!(
            result.positions.len(),
            batch.len(),
            "one position per event"
        );
        let first_version = result.stream_version + 1 - count(&batch);
        for ((event, &position), version) in
            batch.iter().zip(&result.positions).zip(first_version..)
        {
            let told = Written {
                stream: stream.clone(),
                version,
                position,
            };
            written.push((event.event_id, told));
        }
        tokio::task::yield_now().await;
    }
    written
}

/// The reader of [`late_visible_events_are_never_skipped`] saw each written event once, as
/// its append returned it, each stream in version order.
fn assert_each_event_read_once(seen: &[RecordedEvent], written: &HashMap<Uuid, Written>) {
    let mut once = HashSet::new();
    for event in seen {
        assert!(
            once.insert(event.event_id),
            "the reader read {}@{} twice",
            event.stream_id,
            event.stream_version
        );
    }
    let skipped = written.keys().filter(|id| !once.contains(*id)).count();
    assert!(
        skipped == 0,
        "the reader skipped {skipped} of {} events: they became visible after it had read past \
         their positions",
        written.len()
    );
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for event in seen {
        let Some(appended) = written.get(&event.event_id) else {
            panic!(
                "the reader read {}@{}, which no appender wrote",
                event.stream_id, event.stream_version
            )
        };
        assert_eq!(
            (
                event.stream_id.as_str(),
                event.stream_version,
                event.position
            ),
            (
                appended.stream.as_str(),
                appended.version,
                appended.position
            ),
            "an event was read with another stream, version or position than its append \
             returned"
        );
        let last = versions.entry(event.stream_id.as_str()).or_insert(0);
        assert_eq!(
            event.stream_version,
            *last + 1,
            "stream {} was read out of version order",
            event.stream_id
        );
        *last = event.stream_version;
    }
}

/// Concurrent appenders on shared streams while a reader follows `read_all_from` from its
/// last seen position with small pages. Once caught up, the reader has seen every appended
/// event exactly once, at the stream, version and position its append returned, each stream
/// in version order, and in the order a reader sees after everything settled.
///
/// A store whose appends take positions before they become visible, and whose reads go by
/// position, fails: the reader passes a position while a smaller one is still invisible, and
/// never goes back for it.
pub async fn late_visible_events_are_never_skipped<S: EventStore + Clone>(store: &S) {
    const APPENDERS: usize = 6;
    const ROUNDS: usize = 12;
    const STREAMS: usize = 3;
    const PAGE: usize = 3;
    let start = mark(store).await;
    let streams: Arc<Vec<String>> = Arc::new(
        (0..STREAMS)
            .map(|i| fresh_stream(&format!("late-{i}")))
            .collect(),
    );
    let written_count = Arc::new(AtomicUsize::new(usize::MAX));
    let reader = tokio::spawn(follow(
        store.clone(),
        start,
        PAGE,
        Arc::clone(&written_count),
        APPENDERS * ROUNDS * 3,
    ));
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|appender| {
            tokio::spawn(append_rounds(
                store.clone(),
                Arc::clone(&streams),
                appender,
                ROUNDS,
            ))
        })
        .collect();
    let mut written = HashMap::new();
    for appender in appenders {
        written.extend(appender.await.expect("appender"));
    }
    written_count.store(written.len(), Ordering::SeqCst);
    let seen = reader.await.expect("reader");

    assert_each_event_read_once(&seen, &written);
    assert_eq!(
        recorded_ids(&seen),
        recorded_ids(&read_from(store, start, written.len()).await),
        "the reader that followed the appends saw another order than one reading after \
         everything settled"
    );
}

/// Snapshots load back; saving an older one keeps the newer.
pub async fn snapshots_round_trip_and_never_go_back<S: EventStore>(store: &S) {
    let stream = fresh_stream("snap");
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), None);
    let newer = Snapshot {
        stream_id: stream.clone(),
        stream_version: 10,
        schema_version: 2,
        state: json!({ "balance": 10 }),
    };
    store.save_snapshot(newer.clone()).await.expect("save");
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(newer.clone())
    );
    let older = Snapshot {
        stream_version: 5,
        state: json!({ "balance": 5 }),
        ..newer.clone()
    };
    store.save_snapshot(older).await.expect("save older");
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(newer.clone())
    );
    let newest = Snapshot {
        stream_version: 20,
        state: json!({ "balance": 20 }),
        ..newer
    };
    store
        .save_snapshot(newest.clone())
        .await
        .expect("save newest");
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(newest)
    );
}

/// A snapshot at the stored version replaces it; snapshots of two streams never affect each
/// other, whatever their versions.
pub async fn snapshots_replace_at_equal_versions_and_stay_per_stream<S: EventStore>(store: &S) {
    let a = fresh_stream("snap-a");
    let b = fresh_stream("snap-b");
    let snapshot = |stream: &str, version: u64, schema_version: u32, state: u64| Snapshot {
        stream_id: stream.to_owned(),
        stream_version: version,
        schema_version,
        state: json!({ "stream": stream, "state": state }),
    };
    let load = |stream: String| async move { store.load_snapshot(&stream).await.expect("load") };

    store
        .save_snapshot(snapshot(&a, 5, 1, 1))
        .await
        .expect("save");
    let replacement = snapshot(&a, 5, 2, 2);
    store
        .save_snapshot(replacement.clone())
        .await
        .expect("save at the same version");
    assert_eq!(
        load(a.clone()).await,
        Some(replacement.clone()),
        "a snapshot at the stored version replaces it"
    );
    assert_eq!(
        load(b.clone()).await,
        None,
        "a snapshot of another stream leaked"
    );

    let b_low = snapshot(&b, 3, 1, 3);
    store.save_snapshot(b_low.clone()).await.expect("save b");
    assert_eq!(
        load(b.clone()).await,
        Some(b_low),
        "a snapshot is saved even when another stream's covers a later version"
    );
    assert_eq!(
        load(a.clone()).await,
        Some(replacement.clone()),
        "saving a snapshot of another stream changed this one"
    );

    let b_high = snapshot(&b, 20, 1, 4);
    store.save_snapshot(b_high.clone()).await.expect("save b");
    store
        .save_snapshot(snapshot(&a, 4, 1, 5))
        .await
        .expect("save an older a");
    assert_eq!(
        load(a.clone()).await,
        Some(replacement),
        "an older snapshot replaced a newer one"
    );
    assert_eq!(load(b.clone()).await, Some(b_high.clone()));
    assert_eq!(load(fresh_stream("snap-none")).await, None);

    store.delete_snapshot(&a).await.expect("delete");
    assert_eq!(
        load(a.clone()).await,
        None,
        "a deleted snapshot loaded back"
    );
    assert_eq!(
        load(b).await,
        Some(b_high),
        "deleting one stream's snapshot touched another's"
    );
    let older = snapshot(&a, 1, 1, 6);
    store
        .save_snapshot(older.clone())
        .await
        .expect("save after delete");
    assert_eq!(
        load(a).await,
        Some(older),
        "after a delete any version may be saved again"
    );
    store
        .delete_snapshot(&fresh_stream("snap-none"))
        .await
        .expect("deleting a missing snapshot is no error");
}

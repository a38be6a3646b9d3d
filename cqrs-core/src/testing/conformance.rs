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
//! everything after the position they start at). A failing check panics with its name.

// Every check reports failure by panicking (it runs inside a test); a `# Panics` section on
// each would only repeat that.
#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;

use crate::{
    EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, RecordedEvent, Snapshot,
    StoreError,
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
        ("duplicate_event_id_is_rejected_and_writes_nothing", |s| {
            Box::pin(duplicate_event_id_is_rejected_and_writes_nothing(s))
        }),
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
        ("concurrent_appends_never_both_win", |s| {
            Box::pin(concurrent_appends_never_both_win(s))
        }),
        ("snapshots_round_trip_and_never_go_back", |s| {
            Box::pin(snapshots_round_trip_and_never_go_back(s))
        }),
    ]
}

/// Runs every check against `store`, panicking with the name of the first that fails.
pub async fn run_all<S: EventStore + Clone>(store: &S) {
    for (name, check) in checks::<S>() {
        let outcome = tokio::spawn({
            let store = store.clone();
            async move { check(&store).await }
        })
        .await;
        if let Err(error) = outcome {
            if error.is_panic() {
                let payload = error.into_panic();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!("conformance check `{name}` failed: {message}");
            }
            panic!("conformance check `{name}` did not finish: {error}");
        }
    }
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

async fn head<S: EventStore>(store: &S) -> GlobalPosition {
    let mut position = GlobalPosition::START;
    loop {
        let page = store
            .read_all_from(position, 1000)
            .await
            .expect("read_all_from");
        match page.last() {
            Some(last) => position = last.position,
            None => return position,
        }
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

/// A version mismatch is a typed conflict naming both versions, and nothing is written.
pub async fn wrong_expected_version_conflicts_and_writes_nothing<S: EventStore>(store: &S) {
    let stream = fresh_stream("conflict");
    store
        .append(&stream, ExpectedVersion::NoStream, events(1..=2))
        .await
        .expect("append");
    let before = head(store).await;
    for expected in [
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
    ] {
        match store.append(&stream, expected, events(9..=10)).await {
            Err(StoreError::Conflict {
                stream: s,
                expected: e,
                actual,
            }) => {
                assert_eq!(s, stream);
                assert_eq!(e, expected);
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict for {expected:?}, got {other:?}"),
        }
    }
    let missing = fresh_stream("conflict-missing");
    match store
        .append(&missing, ExpectedVersion::Exact(4), events(1..=1))
        .await
    {
        Err(StoreError::Conflict { actual: 0, .. }) => {}
        other => panic!("expected a conflict on a missing stream, got {other:?}"),
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), 2);
    assert_eq!(store.stream_version(&missing).await.expect("version"), 0);
    assert!(
        store
            .read_all_from(before, 10)
            .await
            .expect("read")
            .is_empty(),
        "a conflict wrote events"
    );
}

/// Reusing an event id fails, and the batch containing it writes nothing.
pub async fn duplicate_event_id_is_rejected_and_writes_nothing<S: EventStore>(store: &S) {
    let stream = fresh_stream("dup");
    let first = event(1);
    store
        .append(&stream, ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .expect("append");
    let before = head(store).await;
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
    assert!(
        store
            .read_all_from(before, 10)
            .await
            .expect("read")
            .is_empty()
    );
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
    let start = head(store).await;
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
        let page = store.read_all_from(position, 5).await.expect("read");
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
                Err(StoreError::Conflict { .. }) => conflicts += 1,
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 3));
        assert_eq!(store.stream_version(&stream).await.expect("version"), 3);
    }
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

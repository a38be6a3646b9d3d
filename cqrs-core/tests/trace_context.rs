//! W3C trace context: the `traceparent` type, its propagation from a command's caller to the
//! events the command records, and on to in-process projections.
#![allow(missing_docs)]

#[path = "support/shop.rs"]
mod shop;

use shop::{CALLER, run};

use cqrs_core::prelude::*;
use cqrs_core::trace_context::{SpanId, TraceId};
use cqrs_core::{TraceParent, TraceParentError};

#[test]
fn parse_and_format_round_trip() {
    let parsed: TraceParent = CALLER.parse().unwrap();
    assert_eq!(parsed.to_string(), CALLER);
    assert_eq!(
        parsed.trace_id(),
        TraceId([
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36
        ])
    );
    assert_eq!(
        parsed.parent_id(),
        SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
    );
    assert_eq!(parsed.flags(), 1);
    assert!(parsed.sampled());

    let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        .parse()
        .unwrap();
    assert!(!unsampled.sampled());

    let root = TraceParent::new_root();
    assert_eq!(root.to_string().parse::<TraceParent>(), Ok(root));
}

#[test]
fn malformed_traceparents_are_refused_with_the_reason() {
    let cases: &[(&str, TraceParentError)] = &[
        ("", TraceParentError::Length(0)),
        (&CALLER[..54], TraceParentError::Length(54)),
        (&format!("{CALLER}0"), TraceParentError::Length(56)),
        (
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            TraceParentError::Separator,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            TraceParentError::Separator,
        ),
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            TraceParentError::Version(1),
        ),
        (
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            TraceParentError::Hex("version"),
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            TraceParentError::Hex("trace id"),
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            TraceParentError::Hex("parent id"),
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            TraceParentError::Hex("flags"),
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            TraceParentError::ZeroTraceId,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            TraceParentError::ZeroParentId,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            TraceParentError::Hex("trace id"),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<TraceParent>(), Err(*expected), "{text:?}");
    }
}

#[test]
fn a_child_keeps_the_trace_and_takes_a_new_parent_id() {
    let caller: TraceParent = CALLER.parse().unwrap();
    let child = caller.child();
    assert_eq!(child.trace_id(), caller.trace_id());
    assert_eq!(child.flags(), caller.flags());
    assert_ne!(child.parent_id(), caller.parent_id());
    assert_ne!(child.parent_id(), child.child().parent_id());
    assert_ne!(
        TraceParent::new_root().trace_id(),
        TraceParent::new_root().trace_id()
    );
}

#[test]
fn metadata_holds_the_traceparent_as_header_text() {
    let caller: TraceParent = CALLER.parse().unwrap();
    let metadata = Metadata::default().with_traceparent(caller);
    assert_eq!(metadata.extra["traceparent"], serde_json::json!(CALLER));
    assert_eq!(metadata.traceparent(), Some(caller));
    assert_eq!(Metadata::default().try_traceparent(), Ok(None));
    assert_eq!(
        Metadata::default().with("traceparent", 7).try_traceparent(),
        Err(TraceParentError::NotAString)
    );
    assert_eq!(
        Metadata::default()
            .with("traceparent", "junk")
            .try_traceparent(),
        Err(TraceParentError::Length(4))
    );
}

#[tokio::test]
async fn events_continue_the_callers_trace_as_children_of_the_command() {
    let caller: TraceParent = CALLER.parse().unwrap();
    let (events, seen) = run(Metadata::default().with_traceparent(caller), true).await;
    assert_eq!(events.len(), 2);
    let first = events[0]
        .traceparent()
        .expect("the event carries a traceparent");
    for event in &events {
        let recorded = event.traceparent().expect("every event carries one");
        // One command, one span: every event has the same parent, the command's span.
        assert_eq!(recorded, first);
        assert_eq!(recorded.trace_id(), caller.trace_id());
        assert_ne!(recorded.parent_id(), caller.parent_id());
        assert_eq!(recorded.flags(), caller.flags());
    }
    // The projection fed in process sees the command's trace.
    assert_eq!(seen, vec![Some(first), Some(first)]);
}

#[tokio::test]
async fn a_command_without_a_traceparent_starts_a_trace() {
    let (events, seen) = run(Metadata::default(), true).await;
    let started = events[0].traceparent().expect("a trace was started");
    assert_eq!(events[1].traceparent(), Some(started));
    assert_eq!(seen, vec![Some(started), Some(started)]);
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace_without_failing() {
    let metadata = Metadata::default().with(
        "traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    );
    let (events, _) = run(metadata, true).await;
    let started = events[0].traceparent().expect("a trace was started");
    assert_ne!(started.trace_id(), TraceId([0; 16]));
}

#[tokio::test]
async fn without_the_middleware_events_carry_what_the_caller_gave() {
    let caller: TraceParent = CALLER.parse().unwrap();
    let (events, seen) = run(Metadata::default().with_traceparent(caller), false).await;
    assert_eq!(events[0].traceparent(), Some(caller));
    assert_eq!(seen, vec![Some(caller), Some(caller)]);
    let (events, _) = run(Metadata::default(), false).await;
    assert_eq!(events[0].traceparent(), None);
}

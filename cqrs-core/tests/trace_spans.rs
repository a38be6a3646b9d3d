//! The spans of W3C trace context propagation: an in-process projection handles each event
//! inside an `event_handled` span, a child of the command's span.
//!
//! Alone in its test binary: `tracing` caches per call site whether anything listens, and a
//! test running on another thread while this one installs its collector can cache "no".
#![allow(missing_docs)]

#[path = "support/shop.rs"]
mod shop;

use shop::{CALLER, run};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cqrs_core::TraceParent;
use cqrs_core::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};

/// The spans opened on this thread, with their recorded fields as text (span id `n` is at
/// index `n - 1`), the stack of entered spans, and for each `tracing` event of this file the
/// span it was emitted in.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Captured {
    spans: Vec<(&'static str, HashMap<String, String>)>,
    entered: Vec<u64>,
    events_in: Vec<Option<u64>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let mut fields = HashMap::new();
        attributes.record(&mut Fields(&mut fields));
        let spans = &mut self.0.lock().unwrap().spans;
        spans.push((attributes.metadata().name(), fields));
        Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let spans = &mut self.0.lock().unwrap().spans;
        let index = usize::try_from(span.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[index].1));
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        // Only the events of this test's projection.
        if !event.metadata().target().starts_with(module_path!()) {
            return;
        }
        let mut captured = self.0.lock().unwrap();
        let current = captured.entered.last().copied();
        captured.events_in.push(current);
    }

    fn enter(&self, span: &Id) {
        self.0.lock().unwrap().entered.push(span.into_u64());
    }

    fn exit(&self, _: &Id) {
        self.0.lock().unwrap().entered.pop();
    }
}

#[tokio::test]
async fn the_event_handled_spans_are_children_of_the_command_span() {
    let spans = Spans::default();
    let _default = tracing::subscriber::set_default(spans.clone());
    let caller: TraceParent = CALLER.parse().unwrap();
    let (events, _) = run(Metadata::default().with_traceparent(caller), true).await;
    let recorded = events[0].traceparent().unwrap();

    let captured = spans.0.lock().unwrap();
    let spans = &captured.spans;
    let commands: Vec<_> = spans
        .iter()
        .filter(|(name, _)| *name == "command")
        .collect();
    assert_eq!(commands.len(), 1);
    let command = &commands[0].1;
    assert_eq!(command["trace_id"], caller.trace_id().to_string());
    assert_eq!(command["span_id"], recorded.parent_id().to_string());

    // The projection handled each event inside its `event_handled` span.
    let handled: Vec<_> = captured
        .events_in
        .iter()
        .map(|span| {
            let (name, fields) = &spans[usize::try_from(span.expect("inside a span")).unwrap() - 1];
            assert_eq!(*name, "event_handled");
            fields
        })
        .collect();
    assert_eq!(handled.len(), 2);
    for (span, event) in handled.iter().zip(&events) {
        assert_eq!(span["projection"], "seen");
        assert_eq!(span["event_type"], event.event_type);
        assert_eq!(span["position"], event.position.0.to_string());
        assert_eq!(span["trace_id"], command["trace_id"]);
        assert_eq!(span["parent_span_id"], command["span_id"]);
        assert_ne!(span["span_id"], command["span_id"]);
        assert_eq!(span["span_id"].len(), 16);
    }
}

//! A PostgreSQL subscription continues the trace its events carry: each event is handled
//! inside an `event_handled` span whose trace id and parent span id are the event's
//! `traceparent`'s.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use cqrs_core::{
    BoxFuture, Event, EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionError,
    RecordedEvent, Subscriber, TraceParent,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::Subscription;
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Happened {
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TraceEvent {
    #[event(name = "trace.happened")]
    Happened(Happened),
}

/// Counts the events it handled, logging inside each.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<usize>>);

impl Subscriber for Handled {
    fn name(&self) -> &'static str {
        "traced"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["trace.happened"]
    }

    fn handle<'a>(&'a self, _: &'a RecordedEvent) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            tracing::info!("handled");
            *self.0.lock().unwrap() += 1;
            Ok(())
        })
    }
}

/// Span fields (span id `n` at index `n - 1`), the entered-span stack, and the span each log
/// of this file was emitted in.
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
        if event.metadata().target() != module_path!() {
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

// One thread: the subscription task runs where the test's span collector is the default.
#[tokio::test(flavor = "current_thread")]
async fn an_at_least_once_subscriber_handles_each_event_in_a_child_span_of_its_trace() {
    let spans = Spans::default();
    let _default = tracing::subscriber::set_default(spans.clone());
    let db = TestDb::create(4).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    let store = PostgresEventStore::new(db.pool.clone());

    let command: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let events = (1..=2)
        .map(|n| {
            NewEvent::from_event(
                &TraceEvent::Happened(Happened { n }),
                Metadata::default().with_traceparent(command),
            )
            .unwrap()
        })
        .collect();
    store
        .append("traced-1", ExpectedVersion::Any, events)
        .await
        .expect("append");

    let handled = Handled::default();
    let subscription = Subscription::at_least_once(handled.clone())
        .start(&db.pool)
        .await
        .expect("start");
    tokio::time::timeout(Duration::from_secs(60), async {
        while *handled.0.lock().unwrap() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both events handled");
    subscription.shutdown().await.expect("shutdown");

    let captured = spans.0.lock().unwrap();
    assert_eq!(captured.events_in.len(), 2);
    let mut own_ids = Vec::new();
    for span in &captured.events_in {
        let index = usize::try_from(span.expect("inside a span")).unwrap() - 1;
        let (name, fields) = &captured.spans[index];
        assert_eq!(*name, "event_handled");
        assert_eq!(fields["projection"], "traced");
        assert_eq!(fields["event_type"], "trace.happened");
        assert_eq!(fields["trace_id"], command.trace_id().to_string());
        assert_eq!(fields["parent_span_id"], command.parent_id().to_string());
        assert_ne!(fields["span_id"], fields["parent_span_id"]);
        own_ids.push(fields["span_id"].clone());
    }
    assert_ne!(own_ids[0], own_ids[1], "each delivery is its own span");
}

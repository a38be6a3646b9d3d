//! OpenTelemetry export (feature `otel`): the command span and the `event_handled` spans of
//! its projection are exported in the caller's trace, the projection's spans as children of
//! the command's span, through the SDK's in-memory exporter.
//!
//! Alone in its test binary (see `trace_spans.rs`), and its tests take turns: each installs
//! its own collector, and `tracing` caches per call site whether anything listens.
#![allow(missing_docs)]

#[path = "support/shop.rs"]
mod shop;

use cqrs_core::TraceParent;
use cqrs_core::prelude::*;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use shop::{CALLER, run};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt as _;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `body` with an OpenTelemetry layer exporting to memory; returns its result and the
/// exported spans.
async fn exported<T>(body: impl Future<Output = T>) -> (T, Vec<SpanData>) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("cqrs-test"));
    let collector = tracing_subscriber::registry().with(layer);
    let guard = tracing::subscriber::set_default(collector);
    let out = body.await;
    drop(guard);
    provider.force_flush().unwrap();
    (out, exporter.get_finished_spans().unwrap())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn otel_ids(traceparent: TraceParent) -> (TraceId, SpanId) {
    (
        TraceId::from_bytes(traceparent.trace_id().0),
        SpanId::from_bytes(traceparent.parent_id().0),
    )
}

#[tokio::test]
async fn the_projection_spans_are_exported_as_children_of_the_command_span_in_the_callers_trace() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let caller: TraceParent = CALLER.parse().unwrap();
    let ((events, seen), spans) =
        exported(run(Metadata::default().with_traceparent(caller), true)).await;
    let (caller_trace, caller_span) = otel_ids(caller);

    let commands = named(&spans, "command");
    assert_eq!(commands.len(), 1);
    let command = commands[0];
    assert_eq!(command.span_context.trace_id(), caller_trace);
    assert_eq!(command.parent_span_id, caller_span);
    assert!(command.parent_span_is_remote);

    // The events carry the exported command span's id, so whoever handles them later, in
    // another process, continues from it.
    for event in &events {
        let (trace, parent) = otel_ids(event.traceparent().unwrap());
        assert_eq!(trace, caller_trace);
        assert_eq!(parent, command.span_context.span_id());
    }
    assert_eq!(seen.len(), 2);

    let handled = named(&spans, "event_handled");
    assert_eq!(handled.len(), 2);
    for span in handled {
        assert_eq!(span.span_context.trace_id(), caller_trace);
        assert_eq!(span.parent_span_id, command.span_context.span_id());
        assert_ne!(span.span_context.span_id(), command.span_context.span_id());
    }
}

#[tokio::test]
async fn without_a_callers_traceparent_the_command_continues_the_current_span() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let ((events, _), spans) = exported(async {
        let request = tracing::info_span!("http_request");
        run(Metadata::default(), true).instrument(request).await
    })
    .await;

    let request = named(&spans, "http_request")[0];
    let command = named(&spans, "command")[0];
    assert_eq!(
        command.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(command.parent_span_id, request.span_context.span_id());
    let (trace, parent) = otel_ids(events[0].traceparent().unwrap());
    assert_eq!(trace, request.span_context.trace_id());
    assert_eq!(parent, command.span_context.span_id());
    for span in named(&spans, "event_handled") {
        assert_eq!(span.parent_span_id, command.span_context.span_id());
    }
}

#[tokio::test]
async fn an_event_handled_later_joins_the_trace_it_carries() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Recorded without any collector, as by another process.
    let caller: TraceParent = CALLER.parse().unwrap();
    let (events, _) = run(Metadata::default().with_traceparent(caller), true).await;
    let recorded = events[0].traceparent().unwrap();

    // Handled here, inside an unrelated span: the trace is the event's, not the current one.
    let ((), spans) = exported(async {
        let poll = tracing::info_span!("poll");
        async {
            let span = cqrs_core::trace_context::event_span("later", &events[0]);
            async { tracing::info!("handled") }.instrument(span).await;
        }
        .instrument(poll)
        .await;
    })
    .await;
    let handled = named(&spans, "event_handled")[0];
    let (trace, parent) = otel_ids(recorded);
    assert_eq!(handled.span_context.trace_id(), trace);
    assert_eq!(handled.parent_span_id, parent);
    assert!(handled.parent_span_is_remote);
}

#[tokio::test]
async fn without_an_opentelemetry_layer_the_ids_of_the_trace_context_are_used() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let caller: TraceParent = CALLER.parse().unwrap();
    let (events, _) = run(Metadata::default().with_traceparent(caller), true).await;
    let recorded = events[0].traceparent().unwrap();
    assert_eq!(recorded.trace_id(), caller.trace_id());
    assert_ne!(recorded.parent_id(), caller.parent_id());
}

//! OpenTelemetry export across PostgreSQL (feature `otel`): a command executed with the
//! caller's traceparent, and the events it stored handled by a durable subscription, are
//! exported as one trace; each `event_handled` span is a child of the command's span.
#![allow(missing_docs)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use cqrs_core::middleware::Tracing;
use cqrs_core::prelude::*;
use cqrs_core::{BoxFuture, ProjectionError, Subscriber, TraceParent};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::Subscription;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rang;

#[derive(Debug, Clone, PartialEq, Event)]
pub enum BellEvent {
    #[event(name = "bell.rang")]
    Rang(Rang),
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Bell, id = id)]
pub struct Ring {
    pub id: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug, Default)]
pub struct Bell;

#[aggregate(event = BellEvent, error = Never)]
impl Bell {
    #[command_handler]
    fn ring(&self, _: &Ring) -> Result<Vec<BellEvent>, Never> {
        Ok(vec![BellEvent::Rang(Rang), BellEvent::Rang(Rang)])
    }

    #[event_handler]
    fn on_rang(&mut self, _: &Rang) {}
}

/// Counts the events it handled.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<usize>>);

impl Subscriber for Heard {
    fn name(&self) -> &'static str {
        "heard"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["bell.rang"]
    }

    fn handle<'a>(&'a self, _: &'a RecordedEvent) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            *self.0.lock().unwrap() += 1;
            Ok(())
        })
    }
}

// One thread: the subscription task runs where the test's collector is the default.
#[tokio::test(flavor = "current_thread")]
async fn a_subscription_exports_its_event_spans_as_children_of_the_command_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let collector = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("cqrs-postgres-test")));
    let guard = tracing::subscriber::set_default(collector);

    let db = TestDb::create(4).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    let bus = CommandBus::builder(PostgresEventStore::new(db.pool.clone()))
        .aggregate::<Bell>(())
        .middleware(Tracing)
        .build();
    let caller: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    bus.execute_with(Ring { id: 1 }, Metadata::default().with_traceparent(caller))
        .await
        .expect("ring");

    let heard = Heard::default();
    let subscription = Subscription::at_least_once(heard.clone())
        .start(&db.pool)
        .await
        .expect("start");
    tokio::time::timeout(Duration::from_secs(60), async {
        while *heard.0.lock().unwrap() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both events handled");
    subscription.shutdown().await.expect("shutdown");
    drop(guard);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let trace = TraceId::from_bytes(caller.trace_id().0);
    let commands: Vec<_> = spans.iter().filter(|s| s.name == "command").collect();
    assert_eq!(commands.len(), 1);
    let command = commands[0];
    assert_eq!(command.span_context.trace_id(), trace);
    assert_eq!(
        command.parent_span_id,
        SpanId::from_bytes(caller.parent_id().0)
    );

    let handled: Vec<_> = spans.iter().filter(|s| s.name == "event_handled").collect();
    assert_eq!(handled.len(), 2);
    for span in &handled {
        assert_eq!(span.span_context.trace_id(), trace);
        assert_eq!(span.parent_span_id, command.span_context.span_id());
    }
    assert_ne!(
        handled[0].span_context.span_id(),
        handled[1].span_context.span_id()
    );
}

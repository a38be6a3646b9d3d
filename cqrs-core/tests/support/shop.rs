//! The domain the trace-context tests share: a shop whose one command records two events,
//! and a subscriber that keeps the traceparent of each event it is fed (and logs inside the
//! span it is handled in).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use cqrs_core::middleware::Tracing;
use cqrs_core::prelude::*;
use cqrs_core::{BoxFuture, ProjectionError, RecordedEvent, Subscriber, TraceParent};

/// A caller's `traceparent`, from the W3C specification's example.
pub const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum ShopEvent {
    #[event(name = "shop.opened")]
    Opened(Opened),
    #[event(name = "shop.named")]
    Named(Named),
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Shop, id = id)]
pub struct Open {
    pub id: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug, Default)]
pub struct Shop;

#[aggregate(event = ShopEvent, error = Never)]
impl Shop {
    #[command_handler]
    fn open(&self, _: &Open) -> Result<Vec<ShopEvent>, Never> {
        Ok(vec![
            ShopEvent::Opened(Opened),
            ShopEvent::Named(Named {
                name: "corner".into(),
            }),
        ])
    }

    #[event_handler]
    fn on_opened(&mut self, _: &Opened) {}

    #[event_handler]
    fn on_named(&mut self, _: &Named) {}
}

/// A subscriber that keeps the traceparent of each event it is fed.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<Option<TraceParent>>>>);

impl Subscriber for Seen {
    fn name(&self) -> &'static str {
        "seen"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["shop.opened", "shop.named"]
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            self.0.lock().unwrap().push(event.traceparent());
            tracing::info!("handled");
            Ok(())
        })
    }
}

/// Opens shop 1 with `metadata`, through the `Tracing` middleware or not; returns the stored
/// events and the traceparents the in-process subscriber saw.
pub async fn run(
    metadata: Metadata,
    with_tracing: bool,
) -> (Vec<RecordedEvent>, Vec<Option<TraceParent>>) {
    let store = InMemoryEventStore::new();
    let seen = Seen::default();
    let builder = CommandBus::builder(store.clone())
        .aggregate::<Shop>(())
        .subscribe(seen.clone());
    if with_tracing {
        builder
            .middleware(Tracing)
            .build()
            .execute_with(Open { id: 1 }, metadata)
            .await
            .unwrap();
    } else {
        builder
            .build()
            .execute_with(Open { id: 1 }, metadata)
            .await
            .unwrap();
    }
    let events = store.load_stream("Shop-1", 1).await.unwrap();
    let seen = seen.0.lock().unwrap().clone();
    (events, seen)
}

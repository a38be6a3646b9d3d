//! Metrics through the `metrics` facade (feature `metrics`): whichever recorder the
//! application installs (Prometheus, `StatsD`, `OpenTelemetry`) receives them.

use std::time::Instant;

use metrics::{Gauge, counter, gauge, histogram};

use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::{
    BoxFuture, Command, CommandContext, Event, ProjectionError, Query, QueryError, RecordedEvent,
    Subscriber,
};

/// A counter, a latency histogram and an in-flight gauge per command and query name.
///
/// | metric | kind | labels |
/// |---|---|---|
/// | `cqrs_commands_total` | counter | `command`, `outcome` |
/// | `cqrs_command_duration_seconds` | histogram | `command`, `outcome` |
/// | `cqrs_commands_in_flight` | gauge | `command` |
/// | `cqrs_queries_total` | counter | `query`, `outcome` |
/// | `cqrs_query_duration_seconds` | histogram | `query`, `outcome` |
/// | `cqrs_queries_in_flight` | gauge | `query` |
/// | `cqrs_events_appended_total` | counter | `event_type` ([`EventMetrics`]) |
/// | `cqrs_circuit_transitions_total` | counter | `circuit`, `state` ([`CircuitBreaker`](super::CircuitBreaker)) |
///
/// `outcome` is `ok` or the error's stable code ([`ErrorKind::code`](crate::ErrorKind::code):
/// `rejected`, `conflict`, `rate_limited`, ...), so the label set is small and fixed. The
/// `metrics` crate is the facade most Rust exporters implement; the middleware records
/// nothing until the application installs a recorder.
///
/// ```
/// use cqrs_core::middleware::{EventMetrics, Metrics};
/// # use cqrs_core::prelude::*;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] struct Opened;
/// # #[derive(Debug, Clone, PartialEq, Event)] enum AccountEvent { Opened(Opened) }
/// # #[derive(Debug, Deserialize, Command)] #[command(aggregate = Account, id = id)] struct Open { id: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # #[derive(Debug, Default)] struct Account;
/// # #[aggregate(event = AccountEvent, error = Never)]
/// # impl Account {
/// #     #[command_handler] fn open(&self, _: &Open) -> Result<Opened, Never> { Ok(Opened) }
/// #     #[event_handler] fn on_opened(&mut self, _: &Opened) {}
/// # }
/// let bus = CommandBus::builder(InMemoryEventStore::new())
///     .aggregate::<Account>(())
///     .middleware(Metrics)
///     .subscribe(EventMetrics::of::<AccountEvent>())
///     .build();
/// # let _ = bus;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics;

/// Takes one back off an in-flight gauge when the call ends, also when it is cancelled.
struct InFlight(Gauge);

impl InFlight {
    fn enter(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl CommandMiddleware for Metrics {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        let in_flight = InFlight::enter(gauge!("cqrs_commands_in_flight", "command" => C::NAME));
        let started = Instant::now();
        let result = next.run(command, ctx).await;
        let elapsed = started.elapsed().as_secs_f64();
        drop(in_flight);
        let outcome = result
            .as_ref()
            .map_or_else(crate::CommandError::code, |_| "ok");
        counter!("cqrs_commands_total", "command" => C::NAME, "outcome" => outcome).increment(1);
        histogram!("cqrs_command_duration_seconds", "command" => C::NAME, "outcome" => outcome)
            .record(elapsed);
        result
    }
}

impl QueryMiddleware for Metrics {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        let in_flight = InFlight::enter(gauge!("cqrs_queries_in_flight", "query" => Q::NAME));
        let started = Instant::now();
        let result = next.run(query).await;
        let elapsed = started.elapsed().as_secs_f64();
        drop(in_flight);
        let outcome = result.as_ref().map_or_else(QueryError::code, |_| "ok");
        counter!("cqrs_queries_total", "query" => Q::NAME, "outcome" => outcome).increment(1);
        histogram!("cqrs_query_duration_seconds", "query" => Q::NAME, "outcome" => outcome)
            .record(elapsed);
        result
    }
}

/// Counts the events a command bus appends, per event type (`cqrs_events_appended_total`):
/// subscribe one per event enum with [`CommandBusBuilder::subscribe`](crate::CommandBusBuilder::subscribe).
///
/// It counts what this process commits; events appended by other processes are theirs to
/// count.
#[derive(Debug, Clone, Copy)]
pub struct EventMetrics {
    types: &'static [&'static str],
}

impl EventMetrics {
    /// Counts the events of enum `E`.
    pub fn of<E: Event>() -> Self {
        // Built once per bus at start-up: a few names leaked for the life of the process is
        // what `Subscriber::event_types`' `'static` list asks for.
        let names: Vec<&'static str> = E::TYPES.iter().map(|t| t.name).collect();
        Self {
            types: Box::leak(names.into_boxed_slice()),
        }
    }
}

impl Subscriber for EventMetrics {
    fn name(&self) -> &'static str {
        "cqrs_core::middleware::EventMetrics"
    }

    fn event_types(&self) -> &'static [&'static str] {
        self.types
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        let name = self
            .types
            .iter()
            .find(|name| **name == event.event_type)
            .copied();
        if let Some(name) = name {
            counter!("cqrs_events_appended_total", "event_type" => name).increment(1);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Counts a circuit breaker's change of state.
pub(super) fn circuit_transition(circuit: &'static str, state: &'static str) {
    counter!("cqrs_circuit_transitions_total", "circuit" => circuit, "state" => state).increment(1);
}

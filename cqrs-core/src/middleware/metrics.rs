//! Metrics through the `metrics` facade (feature `metrics`): whichever recorder the
//! application installs (Prometheus, `StatsD`, `OpenTelemetry`) receives them.

use std::marker::PhantomData;
use std::time::Instant;

use metrics::{Gauge, Key, Label, Level, counter, histogram};

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

// The keys of each command and query type, with each outcome, are constants: their labels and
// hashes are computed at compile time, so recording allocates nothing and hashes nothing.

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn gauge(key: &Key) -> Gauge {
    metrics::with_recorder(|recorder| recorder.register_gauge(key, &METADATA))
}

/// The metric and label names of commands or of queries, and the type's name.
trait Named {
    const LABEL: &'static str;
    const NAME: &'static str;
    const IN_FLIGHT: &'static str;
    const TOTAL: &'static str;
    const DURATION: &'static str;
}

struct CommandName<C>(PhantomData<C>);
struct QueryName<Q>(PhantomData<Q>);

impl<C: Command> Named for CommandName<C> {
    const LABEL: &'static str = "command";
    const NAME: &'static str = C::NAME;
    const IN_FLIGHT: &'static str = "cqrs_commands_in_flight";
    const TOTAL: &'static str = "cqrs_commands_total";
    const DURATION: &'static str = "cqrs_command_duration_seconds";
}

impl<Q: Query> Named for QueryName<Q> {
    const LABEL: &'static str = "query";
    const NAME: &'static str = Q::NAME;
    const IN_FLIGHT: &'static str = "cqrs_queries_in_flight";
    const TOTAL: &'static str = "cqrs_queries_total";
    const DURATION: &'static str = "cqrs_query_duration_seconds";
}

struct Keys<N>(PhantomData<N>);

impl<N: Named> Keys<N> {
    const NAME_LABELS: &'static [Label] = &[Label::from_static_parts(N::LABEL, N::NAME)];
    const IN_FLIGHT: Key = Key::from_static_parts(N::IN_FLIGHT, Self::NAME_LABELS);
}

macro_rules! outcome_keys {
    ($($code:literal => $labels:ident, $total:ident, $duration:ident;)*) => {
        impl<N: Named> Keys<N> {
            $(
                const $labels: &'static [Label] = &[
                    Label::from_static_parts(N::LABEL, N::NAME),
                    Label::from_static_parts("outcome", $code),
                ];
                const $total: Key = Key::from_static_parts(N::TOTAL, Self::$labels);
                const $duration: Key = Key::from_static_parts(N::DURATION, Self::$labels);
            )*

            fn record(outcome: &'static str, seconds: f64) {
                match outcome {
                    $($code => record(&Self::$total, &Self::$duration, seconds),)*
                    // A kind added after this list: build its keys at run time.
                    other => {
                        counter!(N::TOTAL, N::LABEL => N::NAME, "outcome" => other).increment(1);
                        histogram!(N::DURATION, N::LABEL => N::NAME, "outcome" => other)
                            .record(seconds);
                    }
                }
            }
        }
    };
}

outcome_keys! {
    "ok" => OK_LABELS, OK_TOTAL, OK_DURATION;
    "rejected" => REJECTED_LABELS, REJECTED_TOTAL, REJECTED_DURATION;
    "validation" => VALIDATION_LABELS, VALIDATION_TOTAL, VALIDATION_DURATION;
    "conflict" => CONFLICT_LABELS, CONFLICT_TOTAL, CONFLICT_DURATION;
    "timeout" => TIMEOUT_LABELS, TIMEOUT_TOTAL, TIMEOUT_DURATION;
    "refused" => REFUSED_LABELS, REFUSED_TOTAL, REFUSED_DURATION;
    "query_failed" => QUERY_FAILED_LABELS, QUERY_FAILED_TOTAL, QUERY_FAILED_DURATION;
    "store_unavailable" => STORE_UNAVAILABLE_LABELS, STORE_UNAVAILABLE_TOTAL, STORE_UNAVAILABLE_DURATION;
    "unique_key_taken" => UNIQUE_KEY_TAKEN_LABELS, UNIQUE_KEY_TAKEN_TOTAL, UNIQUE_KEY_TAKEN_DURATION;
    "circuit_open" => CIRCUIT_OPEN_LABELS, CIRCUIT_OPEN_TOTAL, CIRCUIT_OPEN_DURATION;
    "rate_limited" => RATE_LIMITED_LABELS, RATE_LIMITED_TOTAL, RATE_LIMITED_DURATION;
    "concurrency_limited" => CONCURRENCY_LIMITED_LABELS, CONCURRENCY_LIMITED_TOTAL, CONCURRENCY_LIMITED_DURATION;
    "forbidden" => FORBIDDEN_LABELS, FORBIDDEN_TOTAL, FORBIDDEN_DURATION;
}

fn record(total: &Key, duration: &Key, seconds: f64) {
    metrics::with_recorder(|recorder| {
        recorder.register_counter(total, &METADATA).increment(1);
        recorder
            .register_histogram(duration, &METADATA)
            .record(seconds);
    });
}

impl CommandMiddleware for Metrics {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        let in_flight = InFlight::enter(gauge(&Keys::<CommandName<C>>::IN_FLIGHT));
        let started = Instant::now();
        let result = next.run(command, ctx).await;
        let elapsed = started.elapsed().as_secs_f64();
        drop(in_flight);
        let outcome = result
            .as_ref()
            .map_or_else(crate::CommandError::code, |_| "ok");
        Keys::<CommandName<C>>::record(outcome, elapsed);
        result
    }
}

impl QueryMiddleware for Metrics {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        let in_flight = InFlight::enter(gauge(&Keys::<QueryName<Q>>::IN_FLIGHT));
        let started = Instant::now();
        let result = next.run(query).await;
        let elapsed = started.elapsed().as_secs_f64();
        drop(in_flight);
        let outcome = result.as_ref().map_or_else(QueryError::code, |_| "ok");
        Keys::<QueryName<Q>>::record(outcome, elapsed);
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

//! Metrics through the `metrics` facade (feature `metrics`): whichever recorder the
//! application installs (Prometheus, `StatsD`, `OpenTelemetry`) receives them.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, counter, histogram};

use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::{
    BoxFuture, Command, CommandContext, ErrorKind, Event, ProjectionError, Query, QueryError,
    RecordedEvent, Subscriber,
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
///
/// Handles are registered with the recorder once per command or query type (the first time
/// one passes through this middleware) and kept, so a command costs a few atomic operations
/// on them and two clock reads, not a registry lookup per metric. Install the recorder before
/// the first command runs: handles registered earlier stay with the recorder of that time
/// (the no-op one), as with any handle kept by a `metrics` user.
///
/// `Metrics` is also a constant, so `.middleware(Metrics)` reads as the unit value did; each
/// use of it is a fresh middleware with its own handles.
pub struct Metrics {
    /// Open addressing by `TypeId`, filled once per slot and read without locks.
    table: [OnceLock<Box<Handles>>; SLOTS],
}

/// A fresh [`Metrics`](struct@Metrics) middleware, with no handles registered yet:
/// `.middleware(Metrics)`.
#[allow(non_upper_case_globals)]
// Each use of the constant is a new value with its own empty table, which is the intent.
#[allow(clippy::declare_interior_mutable_const)]
pub const Metrics: Metrics = Metrics::new();

/// Command and query types a [`Metrics`](struct@Metrics) keeps handles for; those past it (an application
/// with more than this many command and query types through one bus) are recorded with a
/// registry lookup per metric.
const SLOTS: usize = 256;

/// Slots tried from a type's own before giving up on caching it.
const PROBES: usize = 16;

impl Metrics {
    /// A metrics middleware with no handles registered yet.
    pub const fn new() -> Self {
        Self {
            table: [const { OnceLock::new() }; SLOTS],
        }
    }

    /// The handles of type `N`, registered on its first use; `None` when the table is full
    /// around its slot.
    fn handles<N: Named>(&self) -> Option<&Handles> {
        let id = TypeId::of::<N>();
        let start = slot_of(id);
        (0..PROBES).find_map(|probe| {
            let handles = self.table[(start + probe) % SLOTS]
                .get_or_init(|| Box::new(Handles::register::<N>(id)));
            (handles.id == id).then_some(&**handles)
        })
    }

    /// Measures `run` as one command or query of type `N`.
    async fn measure<N: Named, T, E>(
        &self,
        run: impl Future<Output = Result<T, E>>,
        kind: impl FnOnce(&E) -> ErrorKind,
    ) -> Result<T, E> {
        let Some(handles) = self.handles::<N>() else {
            return measure_uncached::<N, T, E>(run, kind).await;
        };
        let in_flight = InFlight::enter(&handles.in_flight);
        let started = Instant::now();
        let result = run.await;
        let seconds = started.elapsed().as_secs_f64();
        drop(in_flight);
        let (total, duration) = match &result {
            Ok(_) => &handles.ok,
            Err(error) => {
                let kind = kind(error);
                let Some(handles) = handles.failed::<N>(kind) else {
                    record_uncached::<N>(kind.code(), seconds);
                    return result;
                };
                handles
            }
        };
        total.increment(1);
        duration.record(seconds);
        result
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Metrics {
    /// A middleware recording the same metrics, which registers its own handles.
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registered = self
            .table
            .iter()
            .filter(|slot| slot.get().is_some())
            .count();
        f.debug_struct("Metrics")
            .field("types_registered", &registered)
            .finish()
    }
}

/// The slot a type's handles start looking from.
fn slot_of(id: TypeId) -> usize {
    // `TypeId` is a hash already; keep its bits (the hasher's work folds away for a
    // constant id).
    let mut bits = Bits(0);
    id.hash(&mut bits);
    #[allow(clippy::cast_possible_truncation)] // the low bits pick the slot
    let slot = bits.0 as usize;
    slot % SLOTS
}

/// A hasher that keeps the bits it is given.
struct Bits(u64);

impl Hasher for Bits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// The handles of one command or query type.
struct Handles {
    id: TypeId,
    in_flight: Gauge,
    ok: (Counter, Histogram),
    /// By [`ErrorKind`] (its place in [`ErrorKind::ALL`]), registered on first use.
    failed: [OnceLock<(Counter, Histogram)>; KINDS],
}

const KINDS: usize = ErrorKind::ALL.len();

impl Handles {
    fn register<N: Named>(id: TypeId) -> Self {
        metrics::with_recorder(|recorder| Self {
            id,
            in_flight: recorder.register_gauge(&Keys::<N>::IN_FLIGHT, &METADATA),
            ok: (
                recorder.register_counter(&Keys::<N>::OK_TOTAL, &METADATA),
                recorder.register_histogram(&Keys::<N>::OK_DURATION, &METADATA),
            ),
            failed: [const { OnceLock::new() }; KINDS],
        })
    }

    /// The handles of failures of `kind`; `None` for a kind missing from [`ErrorKind::ALL`].
    fn failed<N: Named>(&self, kind: ErrorKind) -> Option<&(Counter, Histogram)> {
        let slot = self
            .failed
            .get(kind as usize)
            .filter(|_| ErrorKind::ALL.get(kind as usize) == Some(&kind))?;
        Some(slot.get_or_init(|| {
            let labels = vec![
                Label::from_static_parts(N::LABEL, N::NAME),
                Label::from_static_parts("outcome", kind.code()),
            ];
            let total = Key::from_parts(N::TOTAL, labels.clone());
            let duration = Key::from_parts(N::DURATION, labels);
            metrics::with_recorder(|recorder| {
                (
                    recorder.register_counter(&total, &METADATA),
                    recorder.register_histogram(&duration, &METADATA),
                )
            })
        }))
    }
}

/// Takes one back off an in-flight gauge when the call ends, also when it is cancelled.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `Metrics::measure` for a type the table has no room for: registers each metric anew.
async fn measure_uncached<N: Named, T, E>(
    run: impl Future<Output = Result<T, E>>,
    kind: impl FnOnce(&E) -> ErrorKind,
) -> Result<T, E> {
    let gauge = metrics::with_recorder(|recorder| {
        recorder.register_gauge(&Keys::<N>::IN_FLIGHT, &METADATA)
    });
    let in_flight = InFlight::enter(&gauge);
    let started = Instant::now();
    let result = run.await;
    let seconds = started.elapsed().as_secs_f64();
    drop(in_flight);
    let outcome = result
        .as_ref()
        .map_or_else(|error| kind(error).code(), |_| "ok");
    record_uncached::<N>(outcome, seconds);
    result
}

fn record_uncached<N: Named>(outcome: &'static str, seconds: f64) {
    counter!(N::TOTAL, N::LABEL => N::NAME, "outcome" => outcome).increment(1);
    histogram!(N::DURATION, N::LABEL => N::NAME, "outcome" => outcome).record(seconds);
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The metric and label names of commands or of queries, and the type's name.
trait Named: 'static {
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

/// The keys registered with every type: computed at compile time.
struct Keys<N>(PhantomData<N>);

impl<N: Named> Keys<N> {
    const NAME_LABELS: &'static [Label] = &[Label::from_static_parts(N::LABEL, N::NAME)];
    const OK_LABELS: &'static [Label] = &[
        Label::from_static_parts(N::LABEL, N::NAME),
        Label::from_static_parts("outcome", "ok"),
    ];
    const IN_FLIGHT: Key = Key::from_static_parts(N::IN_FLIGHT, Self::NAME_LABELS);
    const OK_TOTAL: Key = Key::from_static_parts(N::TOTAL, Self::OK_LABELS);
    const OK_DURATION: Key = Key::from_static_parts(N::DURATION, Self::OK_LABELS);
}

impl CommandMiddleware for Metrics {
    fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> impl Future<Output = CommandResult<C>> + Send {
        self.measure::<CommandName<C>, _, _>(next.run(command, ctx), crate::CommandError::kind)
    }
}

impl QueryMiddleware for Metrics {
    fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send {
        self.measure::<QueryName<Q>, _, _>(next.run(query), QueryError::kind)
    }
}

/// Counts the events a command bus appends, per event type (`cqrs_events_appended_total`):
/// subscribe one per event enum with [`CommandBusBuilder::subscribe`](crate::CommandBusBuilder::subscribe).
///
/// It counts what this process commits; events appended by other processes are theirs to
/// count. Like [`Metrics`](struct@Metrics), it registers each type's counter once (at the
/// first event of the type) and keeps it.
#[derive(Debug, Clone, Copy)]
pub struct EventMetrics {
    types: &'static [&'static str],
    /// The counter of each of `types`, in the same order.
    counters: &'static [OnceLock<Counter>],
}

impl EventMetrics {
    /// Counts the events of enum `E`.
    pub fn of<E: Event>() -> Self {
        // Built once per bus at start-up: a few names leaked for the life of the process is
        // what `Subscriber::event_types`' `'static` list asks for (and the counters with them).
        let names: Vec<&'static str> = E::TYPES.iter().map(|t| t.name).collect();
        let counters: Vec<OnceLock<Counter>> = names.iter().map(|_| OnceLock::new()).collect();
        Self {
            types: Box::leak(names.into_boxed_slice()),
            counters: Box::leak(counters.into_boxed_slice()),
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
        if let Some(index) = self.types.iter().position(|name| *name == event.event_type) {
            let name = self.types[index];
            self.counters[index]
                .get_or_init(|| counter!("cqrs_events_appended_total", "event_type" => name))
                .increment(1);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Counts a circuit breaker's change of state.
pub(super) fn circuit_transition(circuit: &'static str, state: &'static str) {
    counter!("cqrs_circuit_transitions_total", "circuit" => circuit, "state" => state).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_listed_in_declaration_order() {
        // `Handles::failed` finds a kind's slot by its discriminant.
        for (index, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{kind}");
        }
    }
}

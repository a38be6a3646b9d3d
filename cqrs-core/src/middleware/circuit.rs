//! A circuit breaker: stops calling a failing dependency for a while instead of piling up
//! timeouts, then lets one trial call through to find out whether it recovered.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Clock, CommandMiddleware, CommandResult, Next, SystemClock};
use crate::{CircuitOpen, Command, CommandContext, CommandError, ErrorKind, StoreError};

/// Whether a failure says the dependency is unhealthy (and so counts towards opening a
/// circuit), as opposed to a failure of the request itself.
///
/// Infrastructure failures trip a circuit: the store unavailable or failing transiently, a
/// timeout, an I/O error. Domain rejections, validation errors, conflicts and refusals by
/// other middleware never do: the dependency answered, so it is healthy.
pub trait TripsCircuit {
    /// Whether this failure counts towards opening the circuit.
    fn trips_circuit(&self) -> bool;
}

impl<E> TripsCircuit for CommandError<E> {
    fn trips_circuit(&self) -> bool {
        match self {
            CommandError::Timeout { .. } => true,
            CommandError::Store(error) | CommandError::OutcomeUnknown { source: error, .. } => {
                error.trips_circuit()
            }
            _ => false,
        }
    }
}

impl TripsCircuit for StoreError {
    fn trips_circuit(&self) -> bool {
        self.kind() == ErrorKind::StoreUnavailable
    }
}

impl TripsCircuit for tokio::time::error::Elapsed {
    fn trips_circuit(&self) -> bool {
        true
    }
}

impl TripsCircuit for std::io::Error {
    fn trips_circuit(&self) -> bool {
        true
    }
}

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through; consecutive infrastructure failures are counted.
    Closed,
    /// Calls are refused with [`CircuitOpen`] until the cool-down has passed.
    Open,
    /// The cool-down has passed: one trial call goes through, the others are refused. Its
    /// success closes the circuit, its failure opens it again.
    HalfOpen,
}

/// How often a [`CircuitBreaker`] changed state and refused calls since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitStats {
    /// Transitions to [`CircuitState::Open`].
    pub opened: u64,
    /// Transitions to [`CircuitState::HalfOpen`].
    pub half_opened: u64,
    /// Transitions from [`CircuitState::HalfOpen`] back to [`CircuitState::Closed`].
    pub closed: u64,
    /// Calls refused because the circuit was open (or half-open with its trial running).
    pub refused: u64,
}

/// The failure of a call made through [`CircuitBreaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum CircuitError<E> {
    /// The circuit was open; the call was not made.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The call was made and failed.
    #[error(transparent)]
    Failed(E),
}

/// Closed / open / half-open circuit breaker, as command middleware around the store and as a
/// plain value around any service a handler calls.
///
/// After `failure_threshold` consecutive infrastructure failures ([`TripsCircuit`]) the circuit
/// opens: calls fail at once with [`CircuitOpen`] (code `circuit_open`) carrying how long until
/// a retry may succeed. After the cool-down one trial call goes through; if it succeeds the
/// circuit closes, else it opens for another cool-down. A success, or a failure that is not an
/// infrastructure failure (a domain rejection, a validation error), resets the count.
///
/// State changes are logged (`tracing`, target `cqrs_core::middleware::circuit`) and counted
/// ([`CircuitBreaker::stats`], and with feature `metrics` the counter
/// `cqrs_circuit_transitions_total{circuit, state}`). Clones share one circuit: register a clone on the bus and give
/// another to the services that should stop calling the store while it is down.
///
/// On a bus, add it before [`Timeout`](super::Timeout) (outside it) so that timeouts reach it
/// and count. Time comes from a [`Clock`]; tests give it a
/// [`ManualClock`](super::ManualClock).
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::middleware::{CircuitBreaker, CircuitError, CircuitState, ManualClock};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let clock = ManualClock::new();
/// let breaker = CircuitBreaker::new("payments")
///     .failure_threshold(2)
///     .cool_down(Duration::from_secs(10))
///     .clock(clock.clone());
///
/// let down = || async { Err::<(), _>(std::io::Error::other("connection refused")) };
/// for _ in 0..2 {
///     assert!(matches!(breaker.call(down()).await, Err(CircuitError::Failed(_))));
/// }
/// assert_eq!(breaker.state(), CircuitState::Open);
/// let Err(CircuitError::Open(open)) = breaker.call(down()).await else { panic!() };
/// assert_eq!(open.retry_after, Duration::from_secs(10));
///
/// clock.advance(Duration::from_secs(10));
/// let up = async { Ok::<_, std::io::Error>(42) };
/// assert_eq!(breaker.call(up).await.unwrap(), 42);
/// assert_eq!(breaker.state(), CircuitState::Closed);
/// # });
/// ```
///
/// On a bus it refuses commands while open, before anything is loaded:
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::middleware::CircuitBreaker;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] struct Opened;
/// # #[derive(Debug, Clone, PartialEq, Event)] enum E { Opened(Opened) }
/// # #[derive(Debug, Deserialize, Command)] #[command(aggregate = A, id = id)] struct Open { id: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # #[derive(Debug, Default)] struct A;
/// # #[aggregate(event = E, error = Never)]
/// # impl A {
/// #     #[command_handler] fn open(&self, _: &Open) -> Result<Opened, Never> { Ok(Opened) }
/// #     #[event_handler] fn on_opened(&mut self, _: &Opened) {}
/// # }
/// let breaker = CircuitBreaker::new("event-store");
/// let bus = CommandBus::builder(InMemoryEventStore::new())
///     .aggregate::<A>(())
///     .middleware(breaker.clone())
///     .build();
/// # let _ = bus;
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    failure_threshold: u32,
    cool_down: Duration,
    clock: Arc<dyn Clock>,
    phase: Mutex<Phase>,
    opened: AtomicU64,
    half_opened: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

impl CircuitBreaker {
    /// A closed circuit named `name`: opens after 5 consecutive infrastructure failures, for
    /// 30 seconds.
    pub fn new(name: &'static str) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                failure_threshold: 5,
                cool_down: Duration::from_secs(30),
                clock: Arc::new(SystemClock),
                phase: Mutex::new(Phase::Closed { failures: 0 }),
                opened: AtomicU64::new(0),
                half_opened: AtomicU64::new(0),
                closed: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        let inner =
            Arc::get_mut(&mut self.inner).expect("configure a circuit breaker before cloning it");
        change(inner);
        self
    }

    /// Opens after `failures` consecutive infrastructure failures (at least 1).
    ///
    /// # Panics
    ///
    /// When called on a breaker that was already cloned.
    #[must_use]
    pub fn failure_threshold(self, failures: u32) -> Self {
        self.configure(|inner| inner.failure_threshold = failures.max(1))
    }

    /// Stays open for `cool_down` before letting a trial call through.
    ///
    /// # Panics
    ///
    /// When called on a breaker that was already cloned.
    #[must_use]
    pub fn cool_down(self, cool_down: Duration) -> Self {
        self.configure(|inner| inner.cool_down = cool_down)
    }

    /// Reads time from `clock` instead of the system clock.
    ///
    /// # Panics
    ///
    /// When called on a breaker that was already cloned.
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        self.configure(|inner| inner.clock = Arc::new(clock))
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// The current state. An open circuit whose cool-down has passed reports
    /// [`CircuitState::HalfOpen`]: the next call is its trial.
    pub fn state(&self) -> CircuitState {
        match *self.phase() {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { until } if self.inner.clock.now() < until => CircuitState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// State changes and refusals so far.
    pub fn stats(&self) -> CircuitStats {
        CircuitStats {
            opened: self.inner.opened.load(Ordering::Relaxed),
            half_opened: self.inner.half_opened.load(Ordering::Relaxed),
            closed: self.inner.closed.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    /// Runs `call` unless the circuit is open; its failures count when they
    /// [trip the circuit](TripsCircuit).
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, CircuitError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: TripsCircuit,
    {
        self.call_with(call, TripsCircuit::trips_circuit).await
    }

    /// Runs `call` unless the circuit is open; `trips` says which of its failures count.
    pub async fn call_with<T, E, F>(
        &self,
        call: F,
        trips: impl FnOnce(&E) -> bool,
    ) -> Result<T, CircuitError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut admission = self.admit().map_err(CircuitError::Open)?;
        let result = call.await;
        admission.finish(result.as_ref().err().is_some_and(trips));
        result.map_err(CircuitError::Failed)
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.inner
            .phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> Result<Admission<'_>, CircuitOpen> {
        let mut phase = self.phase();
        let trial = match *phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } => {
                let now = self.inner.clock.now();
                if now < until {
                    drop(phase);
                    return Err(self.refuse(until - now));
                }
                *phase = Phase::HalfOpen {
                    trial_running: true,
                };
                drop(phase);
                self.inner.half_opened.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                super::metrics::circuit_transition(self.inner.name, "half_open");
                tracing::info!(
                    circuit = self.inner.name,
                    "circuit half-open: trying one call"
                );
                true
            }
            Phase::HalfOpen {
                trial_running: false,
            } => {
                *phase = Phase::HalfOpen {
                    trial_running: true,
                };
                true
            }
            Phase::HalfOpen {
                trial_running: true,
            } => {
                drop(phase);
                return Err(self.refuse(self.inner.cool_down));
            }
        };
        Ok(Admission {
            breaker: self,
            trial,
            finished: false,
        })
    }

    fn refuse(&self, retry_after: Duration) -> CircuitOpen {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        CircuitOpen {
            circuit: self.inner.name,
            retry_after,
        }
    }

    fn open(&self, phase: &mut Phase) {
        *phase = Phase::Open {
            until: self.inner.clock.now() + self.inner.cool_down,
        };
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        super::metrics::circuit_transition(self.inner.name, "open");
        tracing::warn!(
            circuit = self.inner.name,
            cool_down_ms = u64::try_from(self.inner.cool_down.as_millis()).unwrap_or(u64::MAX),
            "circuit opened"
        );
    }
}

/// One admitted call; reports its outcome, or, dropped unfinished (the call was cancelled),
/// frees the trial slot.
struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    finished: bool,
}

impl Admission<'_> {
    fn finish(&mut self, failed: bool) {
        self.finished = true;
        let breaker = self.breaker;
        let mut phase = breaker.phase();
        match (*phase, self.trial) {
            (Phase::Closed { failures }, false) => {
                if !failed {
                    if failures != 0 {
                        *phase = Phase::Closed { failures: 0 };
                    }
                } else if failures + 1 >= breaker.inner.failure_threshold {
                    breaker.open(&mut phase);
                } else {
                    *phase = Phase::Closed {
                        failures: failures + 1,
                    };
                }
            }
            (Phase::HalfOpen { .. }, true) => {
                if failed {
                    breaker.open(&mut phase);
                } else {
                    *phase = Phase::Closed { failures: 0 };
                    breaker.inner.closed.fetch_add(1, Ordering::Relaxed);
                    #[cfg(feature = "metrics")]
                    super::metrics::circuit_transition(breaker.inner.name, "closed");
                    tracing::info!(circuit = breaker.inner.name, "circuit closed");
                }
            }
            // A call admitted before the circuit changed state: its outcome is old news.
            _ => {}
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.trial && !self.finished {
            let mut phase = self.breaker.phase();
            if let Phase::HalfOpen { .. } = *phase {
                *phase = Phase::HalfOpen {
                    trial_running: false,
                };
            }
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("failure_threshold", &self.inner.failure_threshold)
            .field("cool_down", &self.inner.cool_down)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CommandMiddleware for CircuitBreaker {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        let mut admission = self.admit().map_err(CommandError::CircuitOpen)?;
        let result = next.run(command, ctx).await;
        admission.finish(
            result
                .as_ref()
                .err()
                .is_some_and(TripsCircuit::trips_circuit),
        );
        result
    }
}

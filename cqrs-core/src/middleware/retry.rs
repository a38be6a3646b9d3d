//! Retrying commands that failed for a passing reason: exponential backoff with full jitter.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::{CommandError, StoreError};

/// Runs a command again when it failed for a passing reason, waiting longer each time.
///
/// Set it on the bus with
/// [`CommandBusBuilder::retry`](crate::CommandBusBuilder::retry). It is a bus option rather
/// than a [`CommandMiddleware`](super::CommandMiddleware): a middleware receives the command
/// by value and hands it on once, while the end of the chain holds it by reference and can
/// run the repository again without requiring `C: Clone`. Middleware of the chain (a
/// [`Timeout`](super::Timeout), for instance) therefore sees one execution, retries included.
///
/// What is retried:
/// - a version conflict ([`CommandError::Conflict`]): the aggregate is reloaded and the
///   handler runs again on the new state;
/// - a transient store failure ([`StoreError::is_retryable`]) that certainly took no effect
///   ([`TransientReason::rolled_back`](crate::TransientReason::rolled_back)), or any transient
///   failure when the command carries an idempotency key (after a lost connection the first
///   attempt may have committed: the key makes the retry return that outcome instead of
///   applying the command twice, see [`idempotency`](crate::idempotency)).
///
/// Nothing else is: a domain rejection, a validation error, a unique key taken, a timeout
/// and a backend error are returned at once. Attempts are bounded by
/// [`max_attempts`](Self::max_attempts) and by [`max_elapsed`](Self::max_elapsed) (no attempt
/// starts after it); when either runs out the error is [`CommandError::RetriesExhausted`],
/// carrying the last attempt's error. Between attempts the bus sleeps a random time between
/// zero and `initial_backoff * 2^(attempt - 1)`, capped at `max_backoff` ("full jitter"), so
/// writers that collided do not collide again in step.
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::middleware::Retry;
/// use cqrs_core::prelude::*;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Counted;
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum CounterEvent { Counted(Counted) }
///
/// #[derive(Debug, Deserialize, Command)]
/// #[command(aggregate = Counter, id = id)]
/// pub struct Count { pub id: u32 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("never")]
/// pub struct Never;
///
/// #[derive(Debug, Default)]
/// pub struct Counter;
///
/// #[aggregate(event = CounterEvent, error = Never)]
/// impl Counter {
///     #[command_handler]
///     fn count(&self, _: &Count) -> Result<Counted, Never> { Ok(Counted) }
///     #[event_handler]
///     fn on_counted(&mut self, _: &Counted) {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let retry = Retry::new()
///     .max_attempts(5)
///     .initial_backoff(Duration::from_millis(10))
///     .max_backoff(Duration::from_millis(500))
///     .max_elapsed(Duration::from_secs(5));
/// let bus = CommandBus::builder(InMemoryEventStore::new())
///     .aggregate::<Counter>(())
///     .retry(retry)
///     .build();
/// // A conflict with another writer, or a serialization failure of the store, is retried
/// // here; a rejection or an exhausted budget comes back as an error.
/// bus.execute(Count { id: 1 }).await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_elapsed: Duration,
}

impl Default for Retry {
    /// 5 attempts, backoff from 10 ms up to 1 s, at most 10 s in all.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The default policy: 5 attempts, backoff from 10 ms up to 1 s, at most 10 s in all.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many attempts in all, the first included (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The longest wait before the second attempt; it doubles for each one after.
    #[must_use]
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The longest wait between two attempts.
    #[must_use]
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// No attempt starts later than this after the first one did.
    #[must_use]
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = elapsed;
        self
    }

    /// Runs `attempt` until it succeeds, fails with an error not worth retrying, or the
    /// budget is spent. `idempotent`: the command carries an idempotency key.
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T, CommandError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CommandError<E>>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match attempt().await {
                Ok(done) => return Ok(done),
                Err(error) => error,
            };
            let last = retryable(error, idempotent)?;
            let wait = self.backoff(attempts);
            if attempts >= self.max_attempts || started.elapsed() + wait > self.max_elapsed {
                return Err(CommandError::RetriesExhausted {
                    attempts,
                    last,
                    idempotency_key: None,
                });
            }
            tracing::debug!(attempts, error = %last, ?wait, "retrying command");
            tokio::time::sleep(wait).await;
        }
    }

    /// A random wait in `[0, min(max_backoff, initial_backoff * 2^(attempts - 1))]`.
    fn backoff(&self, attempts: u32) -> Duration {
        let ceiling = self
            .initial_backoff
            .saturating_mul(1 << (attempts - 1).min(20))
            .min(self.max_backoff);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(random() % (nanos + 1))
    }
}

/// Sorts an error: `Ok(store error)` when it is worth another attempt (as the store error a
/// [`CommandError::RetriesExhausted`] carries), `Err(error)` when not.
fn retryable<E>(error: CommandError<E>, idempotent: bool) -> Result<StoreError, CommandError<E>> {
    match error {
        CommandError::Conflict {
            stream,
            expected,
            actual,
        } => Ok(StoreError::Conflict {
            stream,
            expected,
            actual,
        }),
        CommandError::Store(error @ StoreError::Transient { reason, .. })
            if reason.rolled_back() || idempotent =>
        {
            Ok(error)
        }
        other => Err(other),
    }
}

/// A random number, from the standard library's per-process random hasher keys.
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        Instant::now()
            .elapsed()
            .as_nanos()
            .wrapping_add(u128::from(std::process::id())),
    );
    hasher.finish()
}

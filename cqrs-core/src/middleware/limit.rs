//! Rate limits and concurrency limits, global, per command or query name, or per caller.
//!
//! The rate limit is a small keyed GCRA (a token bucket kept as one timestamp per key) of our
//! own rather than `governor`: its keyed limiter wants an owned key per check (a `String` per
//! command when keyed by user), and brings its own clock abstraction and `dashmap`; ours looks
//! keys up by `&str` under a short lock (one of 16, by the key's hash, so callers with other
//! keys rarely wait for each other) and shares the middleware [`Clock`] with the circuit
//! breaker. The concurrency limit is `tokio::sync::Semaphore`.
//!
//! Keyed tables hash with `foldhash` (the default hasher of `hashbrown`, randomly seeded per
//! table): a key costs a few nanoseconds to hash where the standard library's `SipHash` costs
//! several times that, which is most of what a per-user limit adds to a command.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{
    Clock, CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext, SystemClock,
    current_caller,
};
use crate::{
    Command, CommandContext, CommandError, ConcurrencyLimited, Metadata, Query, QueryError,
    RateLimited,
};

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One budget for everything that passes.
    Global,
    /// One budget per command or query name.
    PerName,
    /// One budget per acting user ([`Metadata::user_id`]); callers without a user share one.
    PerUser,
    /// One budget per value of a string key of [`Metadata::extra`] (a tenant, an API key);
    /// callers without it share one.
    PerMetadata(&'static str),
}

impl Scope {
    /// The budget's key; `None` is the shared budget.
    fn key<'a>(&self, name: &'static str, metadata: Option<&'a Metadata>) -> Option<&'a str> {
        match self {
            Scope::Global => None,
            Scope::PerName => Some(name),
            Scope::PerUser => metadata.and_then(|m| m.user_id.as_deref()),
            Scope::PerMetadata(key) => metadata
                .and_then(|m| m.extra.get(*key))
                .and_then(serde_json::Value::as_str),
        }
    }
}

/// How many calls a rate limit admits: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    interval: Duration,
    burst: u32,
}

impl Quota {
    /// `calls` per second, in bursts of up to `calls` (at least 1).
    pub fn per_second(calls: u32) -> Self {
        Self::per(Duration::from_secs(1), calls)
    }

    /// `calls` per minute, in bursts of up to `calls` (at least 1).
    pub fn per_minute(calls: u32) -> Self {
        Self::per(Duration::from_secs(60), calls)
    }

    /// `calls` per `period`, in bursts of up to `calls` (at least 1).
    pub fn per(period: Duration, calls: u32) -> Self {
        let calls = calls.max(1);
        Self {
            interval: period / calls,
            burst: calls,
        }
    }

    /// Admits up to `burst` calls at once (at least 1) at the same sustained rate.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }
}

/// Refuses commands and queries beyond a [`Quota`], with [`RateLimited`] (code
/// `rate_limited`) carrying how long until one more call would be admitted (an HTTP
/// `Retry-After`).
///
/// Refused calls do not spend the budget. A key's state is one timestamp; keys whose budget is
/// full again are dropped when the table grows past [`max_keys`](Self::max_keys).
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::middleware::{ManualClock, Quota, RateLimit, Scope};
///
/// let clock = ManualClock::new();
/// let limit = RateLimit::new("api", Quota::per_second(2))
///     .scope(Scope::PerUser)
///     .clock(clock.clone());
/// assert!(limit.check(Some("ada")).is_ok());
/// assert!(limit.check(Some("ada")).is_ok());
/// let refused = limit.check(Some("ada")).unwrap_err();
/// assert_eq!(refused.retry_after, Duration::from_millis(500));
/// assert!(limit.check(Some("bob")).is_ok(), "another user's budget");
/// clock.advance(Duration::from_millis(500));
/// assert!(limit.check(Some("ada")).is_ok());
/// ```
///
/// On a bus: `.middleware(RateLimit::new("api", Quota::per_second(100)).scope(Scope::PerUser))`.
/// On the query bus, per-user and per-metadata scopes read the caller from
/// [`as_caller`](super::as_caller).
#[derive(Clone)]
pub struct RateLimit {
    inner: Arc<RateInner>,
}

struct RateInner {
    name: &'static str,
    scope: Scope,
    interval: u64,
    tolerance: u64,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    base: Instant,
    /// Theoretical arrival time of the next call, in nanoseconds since `base`.
    shared: AtomicU64,
    /// The same per key, in shards picked by the key's hash.
    keyed: Shards<u64>,
}

/// Keyed state behind [`SHARDS`] locks, picked by the key's hash.
struct Shards<V> {
    pick: foldhash::quality::RandomState,
    shards: Box<[Mutex<KeyMap<V>>]>,
}

type KeyMap<V> = HashMap<Box<str>, V, foldhash::quality::RandomState>;

/// Locks a keyed table is split into.
const SHARDS: usize = 16;

impl<V> Shards<V> {
    fn new() -> Self {
        Self {
            pick: foldhash::quality::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(KeyMap::default())).collect(),
        }
    }

    /// The locked shard of `key`.
    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, KeyMap<V>> {
        // The high bits: the shard's map probes with the low ones of its own hash.
        #[allow(clippy::cast_possible_truncation)] // 4 bits are kept
        let shard = (self.pick.hash_one(key) >> 60) as usize % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The keys a shard keeps before forgetting idle ones, for `max_keys` in all.
fn per_shard(max_keys: usize) -> usize {
    max_keys.div_ceil(SHARDS).max(1)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl RateLimit {
    /// A global limit named `name`.
    pub fn new(name: &'static str, quota: Quota) -> Self {
        let clock = SystemClock;
        let interval = nanos(quota.interval).max(1);
        Self {
            inner: Arc::new(RateInner {
                name,
                scope: Scope::Global,
                interval,
                tolerance: interval * u64::from(quota.burst - 1),
                max_keys: per_shard(100_000),
                base: clock.now(),
                clock: Arc::new(clock),
                shared: AtomicU64::new(0),
                keyed: Shards::new(),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut RateInner)) -> Self {
        change(Arc::get_mut(&mut self.inner).expect("configure a rate limit before cloning it"));
        self
    }

    /// Counts by `scope` instead of globally.
    ///
    /// # Panics
    ///
    /// When called on a limit that was already cloned.
    #[must_use]
    pub fn scope(self, scope: Scope) -> Self {
        self.configure(|inner| inner.scope = scope)
    }

    /// Past about `max_keys` keys, keys whose budget is full again are forgotten (default
    /// 100 000; counted per shard of the table, a sixteenth each).
    ///
    /// # Panics
    ///
    /// When called on a limit that was already cloned.
    #[must_use]
    pub fn max_keys(self, max_keys: usize) -> Self {
        self.configure(|inner| inner.max_keys = per_shard(max_keys))
    }

    /// Reads time from `clock` instead of the system clock.
    ///
    /// # Panics
    ///
    /// When called on a limit that was already cloned.
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        self.configure(|inner| {
            inner.base = clock.now();
            inner.clock = Arc::new(clock);
        })
    }

    /// Spends one call of `key`'s budget (`None`: the shared budget), or says how long until
    /// one is available. The middleware calls it with the key its [`Scope`] picks.
    pub fn check(&self, key: Option<&str>) -> Result<(), RateLimited> {
        let inner = &*self.inner;
        let now = nanos(inner.clock.now().saturating_duration_since(inner.base));
        let admit = |tat: u64| -> Result<u64, Duration> {
            let tat = tat.max(now);
            if tat - now > inner.tolerance {
                Err(Duration::from_nanos(tat - now - inner.tolerance))
            } else {
                Ok(tat + inner.interval)
            }
        };
        let refused = |retry_after| RateLimited {
            limit: inner.name,
            key: key.map(str::to_owned),
            retry_after,
        };
        match key {
            None => {
                let mut current = inner.shared.load(Ordering::Acquire);
                loop {
                    let next = admit(current).map_err(refused)?;
                    match inner.shared.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(actual) => current = actual,
                    }
                }
            }
            Some(key) => {
                let mut keyed = inner.keyed.lock(key);
                if let Some(tat) = keyed.get_mut(key) {
                    *tat = admit(*tat).map_err(refused)?;
                    return Ok(());
                }
                if keyed.len() >= inner.max_keys {
                    keyed.retain(|_, tat| *tat > now);
                }
                let next = admit(0).map_err(refused)?;
                keyed.insert(key.into(), next);
                Ok(())
            }
        }
    }

    fn check_scoped(
        &self,
        name: &'static str,
        metadata: Option<&Metadata>,
    ) -> Result<(), RateLimited> {
        self.check(self.inner.scope.key(name, metadata))
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.inner.name)
            .field("scope", &self.inner.scope)
            .field("interval", &Duration::from_nanos(self.inner.interval))
            .finish_non_exhaustive()
    }
}

impl CommandMiddleware for RateLimit {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        self.check_scoped(C::NAME, Some(&ctx.metadata))
            .map_err(CommandError::RateLimited)?;
        next.run(command, ctx).await
    }
}

impl QueryMiddleware for RateLimit {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        match self.inner.scope {
            Scope::Global | Scope::PerName => self.check_scoped(Q::NAME, None),
            _ => current_caller(|caller| self.check_scoped(Q::NAME, caller)),
        }
        .map_err(QueryError::RateLimited)?;
        next.run(query).await
    }
}

/// Refuses a command or query while `max` others of its scope are running, with
/// [`ConcurrencyLimited`] (code `concurrency_limited`), after waiting up to
/// [`wait`](Self::wait) for one to finish (by default it does not wait).
///
/// ```
/// use cqrs_core::middleware::{ConcurrencyLimit, Scope};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let limit = ConcurrencyLimit::new("reports", 1).scope(Scope::PerName);
/// let first = limit.acquire(Some("report.monthly")).await.unwrap();
/// let refused = limit.acquire(Some("report.monthly")).await.unwrap_err();
/// assert_eq!(refused.max, 1);
/// assert!(limit.acquire(Some("report.daily")).await.is_ok(), "another name");
/// drop(first);
/// assert!(limit.acquire(Some("report.monthly")).await.is_ok());
/// # });
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimit {
    inner: Arc<ConcurrencyInner>,
}

struct ConcurrencyInner {
    name: &'static str,
    scope: Scope,
    max: usize,
    wait: Duration,
    shared: Arc<Semaphore>,
    keyed: Shards<Arc<Semaphore>>,
    max_keys: usize,
}

/// A place among the running calls of a [`ConcurrencyLimit`]; freed on drop.
pub struct Permit {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl ConcurrencyLimit {
    /// At most `max` (at least 1) running at once, globally.
    pub fn new(name: &'static str, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(ConcurrencyInner {
                name,
                scope: Scope::Global,
                max,
                wait: Duration::ZERO,
                shared: Arc::new(Semaphore::new(max)),
                keyed: Shards::new(),
                max_keys: per_shard(10_000),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut ConcurrencyInner)) -> Self {
        change(
            Arc::get_mut(&mut self.inner).expect("configure a concurrency limit before cloning it"),
        );
        self
    }

    /// Counts by `scope` instead of globally.
    ///
    /// # Panics
    ///
    /// When called on a limit that was already cloned.
    #[must_use]
    pub fn scope(self, scope: Scope) -> Self {
        self.configure(|inner| inner.scope = scope)
    }

    /// Waits up to `wait` for a place before refusing.
    ///
    /// # Panics
    ///
    /// When called on a limit that was already cloned.
    #[must_use]
    pub fn wait(self, wait: Duration) -> Self {
        self.configure(|inner| inner.wait = wait)
    }

    /// Takes a place for `key` (`None`: the shared one), waiting as configured.
    pub async fn acquire(&self, key: Option<&str>) -> Result<Permit, ConcurrencyLimited> {
        let semaphore = match key {
            None => Arc::clone(&self.inner.shared),
            Some(key) => self.keyed_semaphore(key),
        };
        let permit = match Arc::clone(&semaphore).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if self.inner.wait.is_zero() => None,
            Err(_) => tokio::time::timeout(self.inner.wait, semaphore.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        permit
            .map(|permit| Permit { _permit: permit })
            .ok_or_else(|| ConcurrencyLimited {
                limit: self.inner.name,
                key: key.map(str::to_owned),
                max: self.inner.max,
            })
    }

    /// The semaphore of `key`. Past `max_keys` keys (per shard), those nobody holds or waits
    /// for are forgotten, so the table does not grow with every user ever seen.
    fn keyed_semaphore(&self, key: &str) -> Arc<Semaphore> {
        let inner = &*self.inner;
        let mut keyed = inner.keyed.lock(key);
        if let Some(semaphore) = keyed.get(key) {
            return Arc::clone(semaphore);
        }
        if keyed.len() >= inner.max_keys {
            keyed.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
        let semaphore = Arc::new(Semaphore::new(inner.max));
        keyed.insert(key.into(), Arc::clone(&semaphore));
        semaphore
    }

    async fn acquire_scoped(
        &self,
        name: &'static str,
        metadata: Option<&Metadata>,
    ) -> Result<Permit, ConcurrencyLimited> {
        self.acquire(self.inner.scope.key(name, metadata)).await
    }
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("name", &self.inner.name)
            .field("scope", &self.inner.scope)
            .field("max", &self.inner.max)
            .field("wait", &self.inner.wait)
            .finish_non_exhaustive()
    }
}

impl CommandMiddleware for ConcurrencyLimit {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        let _permit = self
            .acquire_scoped(C::NAME, Some(&ctx.metadata))
            .await
            .map_err(CommandError::ConcurrencyLimited)?;
        next.run(command, ctx).await
    }
}

impl QueryMiddleware for ConcurrencyLimit {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        let key = match self.inner.scope {
            Scope::Global | Scope::PerName => {
                self.inner.scope.key(Q::NAME, None).map(str::to_owned)
            }
            _ => current_caller(|caller| self.inner.scope.key(Q::NAME, caller).map(str::to_owned)),
        };
        let _permit = self
            .acquire(key.as_deref())
            .await
            .map_err(QueryError::ConcurrencyLimited)?;
        next.run(query).await
    }
}

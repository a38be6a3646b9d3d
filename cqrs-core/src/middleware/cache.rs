//! A cache of query answers with a time to live and a size bound, never serving an answer
//! older than the read model's last change.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Clock, QueryMiddleware, QueryNext, SystemClock};
use crate::{HandlesQuery, Query, QueryError, ReadModel};

type Answer = Arc<dyn Any + Send + Sync>;

/// How one registered query type is keyed, stored and read back.
struct Registration {
    generation: Arc<AtomicU64>,
    key: fn(&dyn Any) -> Option<String>,
    store: fn(&dyn Any) -> Option<Answer>,
    load: fn(&Answer) -> Option<Box<dyn Any + Send>>,
}

struct Entry {
    answer: Answer,
    generation: u64,
    expires: Instant,
}

/// Caches the answers of the query types registered with [`QueryCache::query`], keyed by
/// query type and the query's JSON, for at most a time to live, and never past a change of
/// the read model that answers them.
///
/// Each registered query type is tied to its [`ReadModel`]. The read model's
/// [generation](ReadModel::generation) moves, under its write lock, before every event of the
/// projection's types ([`Projection::EVENT_TYPES`](crate::Projection::EVENT_TYPES)) is applied;
/// an answer is stored with the generation read before the handler ran and served only while
/// the generation is unchanged. So no answer is served once an event that could change it has
/// started to apply, including while the apply is still running; events of other types leave
/// the cache alone. Failures are not cached. Queries of types not registered pass through at
/// the cost of one map lookup.
///
/// A small map of our own rather than `moka`: what decides whether an answer may be served is
/// the generation check, which `moka` would not do for us, and the remaining work (a time to
/// live, a size bound evicting expired, outdated, then soonest-expiring entries) is a few
/// lines, without a dependency tree.
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::middleware::QueryCache;
/// # use cqrs_core::prelude::*;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] struct Opened;
/// # #[derive(Debug, Clone, PartialEq, Event)] enum AccountEvent { Opened(Opened) }
/// # #[derive(Debug, Clone, Serialize, Deserialize, Query)] #[query(output = usize)] struct CountAccounts;
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # #[derive(Default)] struct Accounts(usize);
/// # #[projection]
/// # impl Accounts {
/// #     #[event_handler] fn on_opened(&mut self, _: &Opened) { self.0 += 1; }
/// #     #[query_handler] fn count(&self, _: &CountAccounts) -> Result<usize, Never> { Ok(self.0) }
/// # }
/// let accounts = ReadModel::new(Accounts::default());
/// let cache = QueryCache::new(Duration::from_secs(5), 10_000)
///     .query::<CountAccounts, _>(&accounts);
/// let queries = QueryBus::builder()
///     .handler(accounts.clone())
///     .middleware(cache)
///     .build();
/// # let _ = queries;
/// ```
#[derive(Clone)]
pub struct QueryCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    ttl: Duration,
    max_entries: usize,
    clock: Arc<dyn Clock>,
    queries: HashMap<TypeId, Registration>,
    entries: Mutex<HashMap<(TypeId, String), Entry>>,
}

fn key_of<Q: Serialize + 'static>(query: &dyn Any) -> Option<String> {
    query
        .downcast_ref::<Q>()
        .and_then(|query| serde_json::to_string(query).ok())
}

fn store_of<T: Clone + Send + Sync + 'static>(answer: &dyn Any) -> Option<Answer> {
    answer
        .downcast_ref::<T>()
        .map(|answer| Arc::new(answer.clone()) as Answer)
}

fn load_of<T: Clone + Send + Sync + 'static>(answer: &Answer) -> Option<Box<dyn Any + Send>> {
    answer
        .downcast_ref::<T>()
        .map(|answer| Box::new(answer.clone()) as Box<dyn Any + Send>)
}

impl QueryCache {
    /// A cache keeping answers up to `ttl` and at most `max_entries` (at least 1) of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                ttl,
                max_entries: max_entries.max(1),
                clock: Arc::new(SystemClock),
                queries: HashMap::new(),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut CacheInner)) -> Self {
        change(Arc::get_mut(&mut self.inner).expect("configure a query cache before cloning it"));
        self
    }

    /// Caches the answers to `Q`, which `read_model` answers; they are dropped when
    /// `read_model` applies an event of its types.
    ///
    /// # Panics
    ///
    /// When called on a cache that was already cloned.
    #[must_use]
    pub fn query<Q, P>(self, read_model: &ReadModel<P>) -> Self
    where
        Q: Query + Serialize,
        Q::Output: Clone + Sync,
        P: HandlesQuery<Q> + Send + Sync,
    {
        let registration = Registration {
            generation: read_model.generation_counter(),
            key: key_of::<Q>,
            store: store_of::<Q::Output>,
            load: load_of::<Q::Output>,
        };
        self.configure(|inner| {
            inner.queries.insert(TypeId::of::<Q>(), registration);
        })
    }

    /// Reads time from `clock` instead of the system clock.
    ///
    /// # Panics
    ///
    /// When called on a cache that was already cloned.
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        self.configure(|inner| inner.clock = Arc::new(clock))
    }

    /// How many answers are held (some may be expired or outdated, not yet evicted).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<(TypeId, String), Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, key: (TypeId, String), entry: Entry, now: Instant) {
        let inner = &*self.inner;
        let mut entries = self.entries();
        if entries.len() >= inner.max_entries && !entries.contains_key(&key) {
            entries.retain(|(type_id, _), entry| {
                entry.expires > now
                    && inner.queries.get(type_id).is_some_and(|registration| {
                        registration.generation.load(Ordering::SeqCst) == entry.generation
                    })
            });
            if entries.len() >= inner.max_entries {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, entry);
    }
}

impl fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCache")
            .field("ttl", &self.inner.ttl)
            .field("max_entries", &self.inner.max_entries)
            .field("queries", &self.inner.queries.len())
            .finish_non_exhaustive()
    }
}

impl QueryMiddleware for QueryCache {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        let type_id = TypeId::of::<Q>();
        let Some(registration) = self.inner.queries.get(&type_id) else {
            return next.run(query).await;
        };
        let Some(key) = (registration.key)(&query) else {
            return next.run(query).await;
        };
        let key = (type_id, key);
        // Read before the handler runs: an answer computed while an apply starts is stored
        // with the older generation, and so never served.
        let generation = registration.generation.load(Ordering::SeqCst);
        let now = self.inner.clock.now();
        let hit = self.entries().get(&key).and_then(|entry| {
            (entry.generation == generation && entry.expires > now)
                .then(|| (registration.load)(&entry.answer))
                .flatten()
        });
        if let Some(answer) = hit.and_then(|answer| answer.downcast::<Q::Output>().ok()) {
            return Ok(*answer);
        }
        let answer = next.run(query).await?;
        // An answer computed across a change is never served: not worth its room.
        if registration.generation.load(Ordering::SeqCst) == generation
            && let Some(stored) = (registration.store)(&answer)
        {
            let entry = Entry {
                answer: stored,
                generation,
                expires: now + self.inner.ttl,
            };
            self.insert(key, entry, now);
        }
        Ok(answer)
    }
}

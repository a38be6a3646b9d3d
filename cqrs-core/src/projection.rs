//! Projections: read models and reactors fed by recorded events.

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::list::AnsweredQueries;
use crate::{
    BoxFuture, Event, EventDecodeError, EventPayload, GlobalPosition, HandlesQuery, Query,
    RecordedEvent,
};

/// A consumer of recorded events that subscribes to a fixed set of event types.
///
/// Implemented by `#[projection]` on an impl block whose `#[event_handler]` methods each take
/// one event payload (and optionally `&RecordedEvent` for its metadata). The generated
/// [`Projection::EVENT_TYPES`] lists exactly the types those handlers take, and registering the
/// projection subscribes it to those and no others.
///
/// [`Projection::Context`] is what handlers borrow mutably besides the event: `()` for
/// in-memory read models, a database connection for a read model that must update its rows
/// in the same transaction as its checkpoint (`#[projection(context = T)]`, handlers take
/// `&mut T`).
///
/// # Which feed for which read model
///
/// What a projection builds lives somewhere, and that decides how it may be fed after a
/// restart:
///
/// | what it builds lives | wrap or declare it as | feed it with | after a restart |
/// |---|---|---|---|
/// | in process memory | [`ReadModel`] | `cqrs_postgres::subscription::Subscription::in_memory`, or [`CommandBusBuilder::subscribe`](crate::CommandBusBuilder::subscribe) with [`InMemoryEventStore`](crate::InMemoryEventStore) | replayed from the first event |
/// | in the event store's database | `#[projection(context = PgConnection)]` | `Subscription::transactional` | resumed from its stored checkpoint, exactly once |
/// | outside the process (mail, broker, another database) | [`Reactor`] | `Subscription::at_least_once` | resumed from its stored checkpoint, at least once |
///
/// A model in process memory is empty again after every restart, so it must see every event
/// from the first one each time. A stored checkpoint says "everything before this point is
/// done", which holds for rows in a database and for mail already sent, but not for a map that
/// died with the last process: resuming such a model from a stored checkpoint leaves it
/// silently without every earlier event (a uniqueness rule that asks it then accepts a
/// duplicate). For the same reason [`CommandBusBuilder::subscribe`](crate::CommandBusBuilder::subscribe)
/// alone is not enough on a durable store: it feeds only what this process commits from now
/// on.
///
/// **How the framework knows.** The wrapper says where the state lives, and it is chosen where
/// the feed is wired: [`ReadModel`] is process memory, [`Reactor`] is outside, and a projection
/// whose context is a database connection writes through the batch's transaction.
/// [`Subscriber::state_location`] reports it to whatever feeds the subscriber; a durable
/// at-least-once subscription refuses to resume an in-memory subscriber from a stored
/// checkpoint past the first event. A marker on [`Projection`] itself would not do: the same
/// projection type may be held in memory in one service and drive outside effects in another,
/// and `#[projection]` writes its `Projection` impl.
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoint key of durable subscriptions.
    const NAME: &'static str;
    /// The stored event types this projection reads: its handlers' type names, their old
    /// names (aliases), and the names of events an upcaster may split into one of them
    /// ([`EventPayload::STORED_TYPES`]). Subscriptions filter on these.
    const EVENT_TYPES: &'static [&'static str];
    /// What handlers borrow mutably besides the event (`()` when nothing).
    type Context: ?Sized + Send;

    /// Applies one recorded event. Events of other types are ignored (`Ok`).
    fn project<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
        ctx: &'a mut Self::Context,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'a;
}

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The stored event does not decode into the handler's payload type.
    #[error(
        "projection `{projection}`: cannot decode event {stream_id}@{stream_version}: {source}"
    )]
    Decode {
        /// The projection's name.
        projection: &'static str,
        /// Stream of the event.
        stream_id: String,
        /// Version of the event in its stream.
        stream_version: u64,
        /// What went wrong.
        #[source]
        source: EventDecodeError,
    },
    /// The handler returned an error.
    #[error("projection `{projection}` failed on `{event_type}` at position {position}: {source}")]
    Handler {
        /// The projection's name.
        projection: &'static str,
        /// Type name of the event.
        event_type: String,
        /// Global position of the event.
        position: GlobalPosition,
        /// The handler's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[doc(hidden)]
pub fn decode_payload<P: EventPayload>(
    projection: &'static str,
    event: &RecordedEvent,
) -> Result<P, ProjectionError> {
    let decode_error = |source| ProjectionError::Decode {
        projection,
        stream_id: event.stream_id.clone(),
        stream_version: event.stream_version,
        source,
    };
    let decoded = event.decode::<P::Event>().map_err(decode_error)?;
    P::from_event(decoded).ok_or_else(|| {
        decode_error(EventDecodeError::UnknownType {
            name: event.event_type.clone(),
        })
    })
}

/// The events an old stored form stands for, for a generated [`Projection::project`]: an
/// event stored under an old name or version, or one an upcaster splits.
///
/// The generated code first tries each handler's current name and version (one string and
/// one integer comparison, then serde straight into the payload). Only when none matches does
/// it come here: the stored event is decoded once per event enum the handlers' payloads
/// belong to, and each resulting event goes to the handler of its payload type, in order.
/// Handlers may take payloads of several enums, which the macro cannot tell apart, so the
/// decoded events are held as `Any` and matched back to their payload type.
#[doc(hidden)]
pub struct UpcastedEvents<'a> {
    projection: &'static str,
    event: &'a RecordedEvent,
    enums: Vec<TypeId>,
    events: Vec<UpcastedEvent>,
}

impl<'a> UpcastedEvents<'a> {
    /// Nothing decoded yet.
    pub fn new(projection: &'static str, event: &'a RecordedEvent) -> Self {
        Self {
            projection,
            event,
            enums: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Decodes the stored event with `P`'s enum, unless that enum was done already or the
    /// stored type name cannot yield `P`.
    pub fn decode<P: EventPayload>(&mut self) -> Result<(), ProjectionError> {
        let event = self.event;
        if !P::STORED_TYPES.contains(&event.event_type.as_str()) {
            return Ok(());
        }
        let id = TypeId::of::<P::Event>();
        if self.enums.contains(&id) {
            return Ok(());
        }
        self.enums.push(id);
        // The current form of a variant is that variant and nothing else; the handlers' own
        // current forms were tried before, so this one is of a variant no handler takes.
        if <P::Event as Event>::is_current(&event.event_type, event.schema_version) {
            return Ok(());
        }
        let decoded = event
            .decode_all::<P::Event>()
            .map_err(|source| ProjectionError::Decode {
                projection: self.projection,
                stream_id: event.stream_id.clone(),
                stream_version: event.stream_version,
                source,
            })?;
        self.events.extend(
            decoded
                .into_iter()
                .map(|e| UpcastedEvent(Some(Box::new(e) as Box<dyn Any + Send>))),
        );
        Ok(())
    }

    /// The decoded events, in order.
    pub fn into_events(self) -> Vec<UpcastedEvent> {
        self.events
    }
}

/// One event of [`UpcastedEvents`], until a handler takes it.
#[doc(hidden)]
pub struct UpcastedEvent(Option<Box<dyn Any + Send>>);

impl UpcastedEvent {
    /// The payload, when the event is `P`'s variant (and not taken yet).
    pub fn take<P: EventPayload>(&mut self) -> Option<P> {
        let event = self.0.as_ref()?.downcast_ref::<P::Event>()?;
        if event.event_type() != P::EVENT_TYPE {
            return None;
        }
        let event = self.0.take()?.downcast::<P::Event>().ok()?;
        P::from_event(*event)
    }
}

#[doc(hidden)]
pub fn handler_error<E>(
    projection: &'static str,
    event: &RecordedEvent,
    error: E,
) -> ProjectionError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ProjectionError::Handler {
        projection,
        event_type: event.event_type.clone(),
        position: event.position,
        source: error.into(),
    }
}

/// A shared, lockable read model in process memory: register one clone with the command bus
/// (or a subscription) to feed it and another with the query bus to answer queries from it.
///
/// It starts empty in every process, so it must be fed every event from the first: see
/// [which feed suits it](Projection#which-feed-for-which-read-model). Its
/// [`Subscriber::state_location`] is [`StateLocation::InMemory`].
pub struct ReadModel<P> {
    inner: Arc<RwLock<P>>,
    generation: Arc<AtomicU64>,
}

impl<P> Clone for ReadModel<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            generation: Arc::clone(&self.generation),
        }
    }
}

impl<P: Send + Sync> ReadModel<P> {
    /// Wraps a read model.
    pub fn new(model: P) -> Self {
        Self {
            inner: Arc::new(RwLock::new(model)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Shared access to the state.
    pub async fn read(&self) -> RwLockReadGuard<'_, P> {
        self.inner.read().await
    }

    /// Exclusive access to the state. Counts as a change ([`Self::generation`]).
    pub async fn write(&self) -> RwLockWriteGuard<'_, P> {
        let guard = self.inner.write().await;
        self.generation.fetch_add(1, Ordering::SeqCst);
        guard
    }

    /// How many times the state may have changed: events of the projection's types applied,
    /// and [`Self::write`] calls. It moves under the write lock *before* the change, so an
    /// answer computed at an earlier generation is never taken for a current one (the
    /// [`QueryCache`](crate::middleware::QueryCache) relies on it).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn generation_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.generation)
    }
}

impl<P: Projection<Context = ()>> ReadModel<P> {
    /// Applies one event under the write lock (events of other types are ignored).
    pub async fn project(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let mut model = self.inner.write().await;
        if P::EVENT_TYPES.contains(&event.event_type.as_ref()) {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        model.project(event, &mut ()).await
    }
}

impl<P: AnsweredQueries> AnsweredQueries for ReadModel<P> {
    const NAMES: &'static [&'static str] = P::NAMES;
}

impl<P, Q> HandlesQuery<Q> for ReadModel<P>
where
    P: HandlesQuery<Q>,
    Q: Query,
{
    type Error = P::Error;

    async fn handle_query(&self, query: &Q) -> Result<Q::Output, Self::Error> {
        self.inner.read().await.handle_query(query).await
    }

    fn domain_code(error: &Self::Error) -> Option<&'static str> {
        P::domain_code(error)
    }
}

/// A projection whose effects leave the process: mail sent, messages published, rows written
/// to another system.
///
/// What it did before a restart stays done, so a durable subscription may resume it from its
/// stored checkpoint (`Subscription::at_least_once` in `cqrs-postgres`): its
/// [`Subscriber::state_location`] is [`StateLocation::Outside`]. Delivery there is at least
/// once, so make each effect idempotent by [`RecordedEvent::event_id`]. Whatever the
/// projection keeps in its fields is not rebuilt after a restart; state that queries must see
/// belongs in a [`ReadModel`].
pub struct Reactor<P> {
    inner: Arc<Mutex<P>>,
}

impl<P> Clone for Reactor<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: Send> Reactor<P> {
    /// Wraps a projection with outside effects.
    pub fn new(projection: P) -> Self {
        Self {
            inner: Arc::new(Mutex::new(projection)),
        }
    }

    /// Exclusive access to the projection; events wait meanwhile.
    pub async fn lock(&self) -> MutexGuard<'_, P> {
        self.inner.lock().await
    }
}

/// Where a subscriber keeps what it built from the events it was given: this decides whether
/// it may be resumed from a stored checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateLocation {
    /// In process memory ([`ReadModel`]): empty again in every new process, so it must be fed
    /// from the first event each time, never resumed from a stored checkpoint.
    InMemory,
    /// Outside the process ([`Reactor`], or a database the subscriber writes to): what was
    /// done before a restart stays done, so resuming from a stored checkpoint is right.
    Outside,
}

/// A projection as the runtime holds it: type-erased so one bus can feed many kinds.
pub trait Subscriber: Send + Sync + 'static {
    /// The projection's name.
    fn name(&self) -> &'static str;
    /// The event types it handles.
    fn event_types(&self) -> &'static [&'static str];
    /// Applies one event.
    fn handle<'a>(&'a self, event: &'a RecordedEvent)
    -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// Where what this subscriber builds lives. [`ReadModel`] answers
    /// [`StateLocation::InMemory`]; the default is [`StateLocation::Outside`], so a
    /// hand-written subscriber that keeps its state in memory must say so.
    fn state_location(&self) -> StateLocation {
        StateLocation::Outside
    }
}

impl<P: Projection<Context = ()>> Subscriber for ReadModel<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        P::EVENT_TYPES
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.project(event))
    }

    fn state_location(&self) -> StateLocation {
        StateLocation::InMemory
    }
}

impl<P: Projection<Context = ()>> Subscriber for Reactor<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        P::EVENT_TYPES
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move { self.inner.lock().await.project(event, &mut ()).await })
    }

    fn state_location(&self) -> StateLocation {
        StateLocation::Outside
    }
}

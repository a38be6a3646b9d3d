//! Projections: read models and reactors fed by recorded events.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::list::AnsweredQueries;
use crate::{
    BoxFuture, EventDecodeError, EventPayload, GlobalPosition, HandlesQuery, Query, RecordedEvent,
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
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoint key of durable subscriptions.
    const NAME: &'static str;
    /// The event types this projection handles.
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

/// A shared, lockable read model: register one clone with the command bus (or a subscription)
/// to feed it and another with the query bus to answer queries from it.
pub struct ReadModel<P> {
    inner: Arc<RwLock<P>>,
}

impl<P> Clone for ReadModel<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: Send + Sync> ReadModel<P> {
    /// Wraps a read model.
    pub fn new(model: P) -> Self {
        Self {
            inner: Arc::new(RwLock::new(model)),
        }
    }

    /// Shared access to the state.
    pub async fn read(&self) -> RwLockReadGuard<'_, P> {
        self.inner.read().await
    }

    /// Exclusive access to the state.
    pub async fn write(&self) -> RwLockWriteGuard<'_, P> {
        self.inner.write().await
    }
}

impl<P: Projection<Context = ()>> ReadModel<P> {
    /// Applies one event under the write lock (events of other types are ignored).
    pub async fn project(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.inner.write().await.project(event, &mut ()).await
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

/// A projection as the runtime holds it: type-erased so one bus can feed many kinds.
pub trait Subscriber: Send + Sync + 'static {
    /// The projection's name.
    fn name(&self) -> &'static str;
    /// The event types it handles.
    fn event_types(&self) -> &'static [&'static str];
    /// Applies one event.
    fn handle<'a>(&'a self, event: &'a RecordedEvent)
    -> BoxFuture<'a, Result<(), ProjectionError>>;
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
}

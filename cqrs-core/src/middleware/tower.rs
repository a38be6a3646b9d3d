//! `tower::Service` for the JSON dispatchers and for typed commands and queries (feature
//! `tower`), so that tower layers wrap them and axum mounts them.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{CommandChain, CommandResult, QueryChain, as_caller};
use crate::bus::HandlerError;
use crate::list::{Contains, Route};
use crate::{
    BoxFuture, Command, CommandBus, CommandDispatcher, Committed, DispatchError, Handles, Metadata,
    Query, QueryBus, QueryDispatcher, QueryError,
};

/// A JSON command or query by wire name, as an HTTP route receives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonRequest {
    /// The command's or query's wire name (`"account.deposit"`).
    pub name: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The caller: the command's metadata, or the query's caller (see
    /// [`as_caller`](super::as_caller)).
    pub metadata: Metadata,
}

impl JsonRequest {
    /// A request for `name` with `body`, from an anonymous caller.
    pub fn new(name: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            body: body.into(),
            metadata: Metadata::default(),
        }
    }

    /// Sets the caller's metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// Always ready: the bus has no capacity of its own (limits are middleware).
fn ready<E>() -> Poll<Result<(), E>> {
    Poll::Ready(Ok(()))
}

impl<R, M> Service<JsonRequest> for CommandDispatcher<R, M>
where
    R: Send + Sync + 'static,
    M: CommandChain,
{
    type Response = Committed;
    type Error = DispatchError;
    type Future = BoxFuture<'static, Result<Committed, DispatchError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready()
    }

    fn call(&mut self, request: JsonRequest) -> Self::Future {
        let dispatcher = self.clone();
        Box::pin(async move {
            dispatcher
                .dispatch_json_with(&request.name, &request.body, request.metadata)
                .await
        })
    }
}

impl<R, M> Service<JsonRequest> for QueryDispatcher<R, M>
where
    R: Send + Sync + 'static,
    M: QueryChain,
{
    type Response = serde_json::Value;
    type Error = DispatchError;
    type Future = BoxFuture<'static, Result<serde_json::Value, DispatchError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready()
    }

    fn call(&mut self, request: JsonRequest) -> Self::Future {
        let dispatcher = self.clone();
        Box::pin(as_caller(request.metadata, async move {
            dispatcher.dispatch_json(&request.name, &request.body).await
        }))
    }
}

/// Command `C` on a [`CommandBus`] as a `tower::Service<C>` (or `Service<(C, Metadata)>`).
///
/// ```
/// # use cqrs_core::prelude::*;
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
/// use cqrs_core::middleware::CommandService;
/// use tower_service::Service;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let bus = CommandBus::builder(InMemoryEventStore::new()).aggregate::<A>(()).build();
/// let mut open = CommandService::<Open, _, _, _>::new(bus);
/// let committed = open.call(Open { id: 1 }).await.unwrap();
/// assert_eq!(committed.events, 1);
/// # });
/// ```
pub struct CommandService<C, R, M, I> {
    bus: CommandBus<R, M>,
    command: PhantomData<fn(C, I)>,
}

impl<C, R, M, I> Clone for CommandService<C, R, M, I> {
    fn clone(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            command: PhantomData,
        }
    }
}

impl<C, R, M, I> CommandService<C, R, M, I>
where
    C: Command,
    C::Aggregate: Handles<C>,
    R: Contains<C::Aggregate, I> + Send + Sync + 'static,
    M: CommandChain,
{
    /// Command `C` on `bus`.
    pub fn new(bus: CommandBus<R, M>) -> Self {
        Self {
            bus,
            command: PhantomData,
        }
    }

    fn execute(&self, command: C, metadata: Metadata) -> BoxFuture<'static, CommandResult<C>>
    where
        I: 'static,
    {
        let bus = self.bus.clone();
        Box::pin(async move { bus.execute_with(command, metadata).await })
    }
}

impl<C, R, M, I> Service<C> for CommandService<C, R, M, I>
where
    C: Command,
    C::Aggregate: Handles<C>,
    R: Contains<C::Aggregate, I> + Send + Sync + 'static,
    M: CommandChain,
    I: 'static,
{
    type Response = Committed;
    type Error = crate::CommandError<<C::Aggregate as crate::Aggregate>::Error>;
    type Future = BoxFuture<'static, CommandResult<C>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready()
    }

    fn call(&mut self, command: C) -> Self::Future {
        self.execute(command, Metadata::default())
    }
}

impl<C, R, M, I> Service<(C, Metadata)> for CommandService<C, R, M, I>
where
    C: Command,
    C::Aggregate: Handles<C>,
    R: Contains<C::Aggregate, I> + Send + Sync + 'static,
    M: CommandChain,
    I: 'static,
{
    type Response = Committed;
    type Error = crate::CommandError<<C::Aggregate as crate::Aggregate>::Error>;
    type Future = BoxFuture<'static, CommandResult<C>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready()
    }

    fn call(&mut self, (command, metadata): (C, Metadata)) -> Self::Future {
        self.execute(command, metadata)
    }
}

/// Query `Q` on a [`QueryBus`] as a `tower::Service<Q>`.
pub struct QueryService<Q, R, M, I> {
    bus: QueryBus<R, M>,
    query: PhantomData<fn(Q, I)>,
}

impl<Q, R, M, I> Clone for QueryService<Q, R, M, I> {
    fn clone(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            query: PhantomData,
        }
    }
}

impl<Q, R, M, I> QueryService<Q, R, M, I>
where
    Q: Query,
    R: Route<Q, I> + Send + Sync + 'static,
    M: QueryChain,
{
    /// Query `Q` on `bus`.
    pub fn new(bus: QueryBus<R, M>) -> Self {
        Self {
            bus,
            query: PhantomData,
        }
    }
}

impl<Q, R, M, I> Service<Q> for QueryService<Q, R, M, I>
where
    Q: Query,
    R: Route<Q, I> + Send + Sync + 'static,
    M: QueryChain,
    I: 'static,
{
    type Response = Q::Output;
    type Error = QueryError<HandlerError<R, Q, I>>;
    type Future = BoxFuture<'static, Result<Q::Output, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready()
    }

    fn call(&mut self, query: Q) -> Self::Future {
        let bus = self.bus.clone();
        Box::pin(async move { bus.execute(query).await })
    }
}

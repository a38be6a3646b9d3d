//! The command bus and the query bus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::list::{
    AnsweredQueries, Append, Contains, HoldsAggregate, Registration, Route, SharedQuery,
};
use crate::middleware::{CommandChain, CommandResult, Next, QueryChain, QueryNext, Retry};
use crate::projection::Subscriber;
use crate::{
    Aggregate, Command, CommandContext, CommandError, EventStore, Handles, HandlesQuery,
    IdempotencyRecord, Metadata, Query, QueryError, RecordedEvent, Repository, RepositoryOptions,
    StoreError,
};

/// Runs commands: middleware, then load, handle, apply, append, publish.
///
/// `R` is the type-level list of registered aggregates, `M` the middleware list; both are
/// built by [`CommandBusBuilder`] and rarely written out. Cloning is cheap (one `Arc`).
pub struct CommandBus<R = (), M = ()> {
    inner: Arc<CommandBusInner<R, M>>,
}

impl<R, M> Clone for CommandBus<R, M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct CommandBusInner<R, M> {
    store: Arc<dyn EventStore>,
    aggregates: R,
    middleware: M,
    subscribers: Subscribers,
    retries: u32,
    retry: Option<Retry>,
    idempotency_retention: Duration,
}

impl CommandBus {
    /// Starts building a bus on `store`.
    pub fn builder(store: impl EventStore) -> CommandBusBuilder<(), ()> {
        Self::builder_shared(Arc::new(store))
    }

    /// Starts building a bus on a shared store.
    pub fn builder_shared(store: Arc<dyn EventStore>) -> CommandBusBuilder<(), ()> {
        CommandBusBuilder {
            store,
            aggregates: (),
            middleware: (),
            subscribers: Vec::new(),
            retries: 0,
            retry: None,
            idempotency_retention: crate::idempotency::DEFAULT_RETENTION,
        }
    }
}

/// Builds a [`CommandBus`].
pub struct CommandBusBuilder<R, M> {
    store: Arc<dyn EventStore>,
    aggregates: R,
    middleware: M,
    subscribers: Vec<Arc<dyn Subscriber>>,
    retries: u32,
    retry: Option<Retry>,
    idempotency_retention: Duration,
}

impl<R, M> CommandBusBuilder<R, M> {
    /// Registers aggregate `A` with the services its handlers borrow (`()` when none).
    ///
    /// Registering an aggregate twice (or two aggregates with one stream category) does not
    /// compile: the error names the aggregate and points at this call. It is reported when the
    /// call is compiled to code (`cargo build`, `cargo test`), not by `cargo check`.
    pub fn aggregate<A: Aggregate>(
        self,
        services: A::Services,
    ) -> CommandBusBuilder<(Repository<A>, R), M>
    where
        R: HoldsAggregate<A>,
    {
        let () = Registration::<A, R>::AGGREGATE_ONCE;
        self.register(services, RepositoryOptions::default())
    }

    /// Registers aggregate `A` with repository options (snapshots, cache size).
    pub fn aggregate_with<A: Aggregate>(
        self,
        services: A::Services,
        options: RepositoryOptions,
    ) -> CommandBusBuilder<(Repository<A>, R), M>
    where
        R: HoldsAggregate<A>,
    {
        // Checked here, not in `register`, so that the error points at the user's call.
        let () = Registration::<A, R>::AGGREGATE_ONCE;
        self.register(services, options)
    }

    fn register<A: Aggregate>(
        self,
        services: A::Services,
        options: RepositoryOptions,
    ) -> CommandBusBuilder<(Repository<A>, R), M> {
        let repository = Repository::new(Arc::clone(&self.store), services, options);
        CommandBusBuilder {
            store: self.store,
            aggregates: (repository, self.aggregates),
            middleware: self.middleware,
            subscribers: self.subscribers,
            retries: self.retries,
            retry: self.retry,
            idempotency_retention: self.idempotency_retention,
        }
    }

    /// Adds a middleware; the first added runs outermost.
    pub fn middleware<X>(self, middleware: X) -> CommandBusBuilder<R, M::Out>
    where
        M: Append<X>,
    {
        CommandBusBuilder {
            store: self.store,
            aggregates: self.aggregates,
            middleware: self.middleware.append(middleware),
            subscribers: self.subscribers,
            retries: self.retries,
            retry: self.retry,
            idempotency_retention: self.idempotency_retention,
        }
    }

    /// Feeds a projection the events this bus commits, in process, right after each append.
    ///
    /// It receives only the event types it declares. A projection error does not undo the
    /// command (the events are committed); it is logged. Durable, resumable delivery is the
    /// job of a store subscription.
    #[must_use]
    pub fn subscribe(mut self, projection: impl Subscriber) -> Self {
        self.subscribers.push(Arc::new(projection));
        self
    }

    /// On a version conflict, reload the aggregate and run the handler again, up to `retries`
    /// more times, before returning the conflict.
    #[must_use]
    pub fn retry_on_conflict(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Retries commands that failed for a passing reason (a conflict, a transient store
    /// failure), with exponential backoff and jitter; see [`Retry`] for what is retried. A
    /// bus without it runs each command once (plus [`retry_on_conflict`](Self::retry_on_conflict)).
    #[must_use]
    pub fn retry(mut self, policy: Retry) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How long idempotency records are kept at least: [`CommandBus::purge_idempotency_keys`]
    /// deletes the older ones (default [`DEFAULT_RETENTION`](crate::idempotency::DEFAULT_RETENTION),
    /// 24 hours).
    #[must_use]
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }

    /// Finishes the bus.
    pub fn build(self) -> CommandBus<R, M> {
        CommandBus {
            inner: Arc::new(CommandBusInner {
                store: self.store,
                aggregates: self.aggregates,
                middleware: self.middleware,
                subscribers: Subscribers::new(self.subscribers),
                retries: self.retries,
                retry: self.retry,
                idempotency_retention: self.idempotency_retention,
            }),
        }
    }
}

impl<R: Send + Sync + 'static, M: CommandChain> CommandBus<R, M> {
    /// Executes a command with empty caller metadata.
    pub async fn execute<C, I>(&self, command: C) -> CommandResult<C>
    where
        C: Command,
        C::Aggregate: Handles<C>,
        R: Contains<C::Aggregate, I>,
    {
        self.execute_with(command, Metadata::default()).await
    }

    /// Executes a command with caller metadata (correlation id, user, custom keys).
    ///
    /// An error of a command with an idempotency key that leaves the outcome open carries
    /// the key ([`CommandError::idempotency_key`]).
    pub async fn execute_with<C, I>(&self, command: C, metadata: Metadata) -> CommandResult<C>
    where
        C: Command,
        C::Aggregate: Handles<C>,
        R: Contains<C::Aggregate, I>,
    {
        let ctx = CommandContext::for_command(&command, metadata);
        // Kept aside: a middleware may change the context's metadata, and the caller's key
        // is the one its error must name.
        let key = ctx.idempotency_key().map(str::to_owned);
        let terminal = Terminal {
            repository: self.inner.aggregates.repository(),
            subscribers: &self.inner.subscribers,
            retries: self.inner.retries,
            retry: self.inner.retry.as_ref(),
            validate: !M::VALIDATES,
        };
        let result = self.inner.middleware.run(command, ctx, terminal).await;
        match key {
            None => result,
            Some(key) => result.map_err(|error| error.with_idempotency_key(key)),
        }
    }

    /// The store this bus appends to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    /// What the execution of command `C` with idempotency key `key` recorded, if it
    /// finished: for a caller that lost the reply (a timeout, a dropped connection). `None`
    /// means no execution of the key committed (or it was purged); executing the command
    /// again with the key is then safe. See [`idempotency`](crate::idempotency).
    pub async fn outcome_of<C: Command>(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.store.idempotency_record(C::NAME, key).await
    }

    /// Deletes the idempotency records older than the bus's retention
    /// ([`CommandBusBuilder::idempotency_retention`]); returns how many. Run it periodically.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, StoreError> {
        let retention = chrono::Duration::from_std(self.inner.idempotency_retention)
            .unwrap_or(chrono::Duration::MAX);
        let older_than = chrono::Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        self.inner.store.purge_idempotency_keys(older_than).await
    }
}

/// The end of the command chain: validation (unless a middleware did it), then the
/// repository, then the in-process subscribers.
struct Terminal<'a, A: Aggregate> {
    repository: &'a Repository<A>,
    subscribers: &'a Subscribers,
    retries: u32,
    retry: Option<&'a Retry>,
    /// Whether to run `Command::validate`: set when no middleware of the chain validates.
    validate: bool,
}

impl<C> Next<C> for Terminal<'_, C::Aggregate>
where
    C: Command,
    C::Aggregate: Handles<C>,
{
    async fn run(self, command: C, ctx: CommandContext) -> CommandResult<C> {
        // A command without rules has the default `validate`, which inlines to nothing.
        if self.validate {
            command.validate().map_err(CommandError::Invalid)?;
        }
        let record = !self.subscribers.is_empty();
        let execute = || {
            self.repository
                .execute(&command, &ctx, self.retries, record)
        };
        let (committed, recorded) = match self.retry {
            None => execute().await?,
            Some(retry) => retry.run(ctx.idempotency_key().is_some(), execute).await?,
        };
        if record {
            self.subscribers.publish(&recorded).await;
        }
        Ok(committed)
    }
}

/// In-process fan-out of committed events to projections, by event type.
struct Subscribers {
    all: Vec<Arc<dyn Subscriber>>,
    by_type: HashMap<&'static str, Vec<usize>>,
}

impl Subscribers {
    fn new(all: Vec<Arc<dyn Subscriber>>) -> Self {
        let mut by_type: HashMap<&'static str, Vec<usize>> = HashMap::new();
        for (index, subscriber) in all.iter().enumerate() {
            for event_type in subscriber.event_types() {
                by_type.entry(event_type).or_default().push(index);
            }
        }
        Self { all, by_type }
    }

    fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    async fn publish(&self, events: &[RecordedEvent]) {
        for event in events {
            let Some(indexes) = self.by_type.get(event.event_type.as_str()) else {
                continue;
            };
            for &index in indexes {
                let subscriber = &self.all[index];
                let span = crate::trace_context::event_span(subscriber.name(), event);
                if let Err(error) = subscriber.handle(event).instrument(span).await {
                    tracing::error!(
                        projection = subscriber.name(),
                        position = event.position.0,
                        %error,
                        "in-process projection failed; the command is committed"
                    );
                }
            }
        }
    }
}

/// Answers queries: middleware, then the registered handler for the query type.
///
/// `R` is the type-level list of handlers, `M` the middleware list. Which handler answers a
/// query is decided at compile time: executing a query no registered handler answers does not
/// compile. Cloning is cheap.
pub struct QueryBus<R = (), M = ()> {
    inner: Arc<QueryBusInner<R, M>>,
}

impl<R, M> Clone for QueryBus<R, M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct QueryBusInner<R, M> {
    handlers: R,
    middleware: M,
}

impl QueryBus {
    /// Starts building a query bus.
    pub fn builder() -> QueryBusBuilder<(), ()> {
        QueryBusBuilder {
            handlers: (),
            middleware: (),
        }
    }
}

/// Builds a [`QueryBus`].
pub struct QueryBusBuilder<R, M> {
    handlers: R,
    middleware: M,
}

impl<R, M> QueryBusBuilder<R, M> {
    /// Registers a query handler (typically a [`ReadModel`](crate::ReadModel) clone).
    ///
    /// A query answered by two registered handlers does not compile: the error names the
    /// query and points at this call. It is reported when the call is compiled to code
    /// (`cargo build`, `cargo test`), not by `cargo check`.
    pub fn handler<H>(self, handler: H) -> QueryBusBuilder<(H, R), M>
    where
        H: AnsweredQueries + Send + Sync + 'static,
        R: SharedQuery<H>,
    {
        let () = Registration::<H, R>::QUERIES_ONCE;
        QueryBusBuilder {
            handlers: (handler, self.handlers),
            middleware: self.middleware,
        }
    }

    /// Adds a middleware; the first added runs outermost.
    pub fn middleware<X>(self, middleware: X) -> QueryBusBuilder<R, M::Out>
    where
        M: Append<X>,
    {
        QueryBusBuilder {
            handlers: self.handlers,
            middleware: self.middleware.append(middleware),
        }
    }

    /// Finishes the bus.
    pub fn build(self) -> QueryBus<R, M> {
        QueryBus {
            inner: Arc::new(QueryBusInner {
                handlers: self.handlers,
                middleware: self.middleware,
            }),
        }
    }
}

/// The error type of the handler that answers `Q` on a bus with handlers `R`.
pub type HandlerError<R, Q, I> = <<R as Route<Q, I>>::Handler as HandlesQuery<Q>>::Error;

impl<R: Send + Sync + 'static, M: QueryChain> QueryBus<R, M> {
    /// Answers a query.
    pub async fn execute<Q, I>(
        &self,
        query: Q,
    ) -> Result<Q::Output, QueryError<HandlerError<R, Q, I>>>
    where
        Q: Query,
        R: Route<Q, I>,
    {
        self.execute_on(self.inner.handlers.handler(), query).await
    }

    /// Answers a query with a given handler, through this bus's middleware.
    pub(crate) async fn execute_on<Q, H>(
        &self,
        handler: &H,
        query: Q,
    ) -> Result<Q::Output, QueryError<H::Error>>
    where
        Q: Query,
        H: HandlesQuery<Q>,
    {
        let terminal = QueryTerminal {
            handler,
            validate: !M::VALIDATES,
        };
        self.inner.middleware.run(query, terminal).await
    }

    /// The registered handlers (for dynamic dispatch tables).
    pub(crate) fn handlers(&self) -> &R {
        &self.inner.handlers
    }
}

/// The end of the query chain: validation (unless a middleware did it), then the handler.
struct QueryTerminal<'a, H> {
    handler: &'a H,
    /// Whether to run `Query::validate`: set when no middleware of the chain validates.
    validate: bool,
}

impl<Q: Query, H: HandlesQuery<Q>> QueryNext<Q, H::Error> for QueryTerminal<'_, H> {
    async fn run(self, query: Q) -> Result<Q::Output, QueryError<H::Error>> {
        if self.validate {
            query.validate().map_err(QueryError::Invalid)?;
        }
        self.handler
            .handle_query(&query)
            .await
            .map_err(QueryError::Handler)
    }
}

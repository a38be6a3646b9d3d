//! Wiring: which aggregates, middleware and read models make up the service.
//!
//! The buses carry their aggregates, handlers and middleware in their types, so that executing
//! a command or query nothing handles is a compile error. `CommandBusOf!` and `QueryBusOf!`
//! name those types from the same lists, in the same order, as the builders in `assemble`;
//! the dispatchers' types follow from the buses'. Every part of [`Service`] is a cheap clone,
//! so it can be an HTTP framework's state as it is.
//!
//! The balances live in process memory, so every run must feed them from the first event.
//! On the in-memory store ([`build`]) store and balances start empty together and the command
//! bus feeds the balances in process. On PostgreSQL ([`build_postgres`]) the store keeps
//! earlier runs' events, so an in-memory subscription replays them into the balances before
//! the service starts, then follows new events. Both return the same [`Service`] type: what
//! a query waits for to read its own writes is a value ([`Consistency`]), not a type.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::middleware::{Timeout, Tracing, Validation};
use cqrs_core::{
    CommandBus, CommandBusOf, CommandDispatcher, CommandDispatcherOf, EventStore,
    InMemoryEventStore, QueryBus, QueryBusOf, QueryDispatcher, QueryDispatcherOf, ReadModel,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{
    Consistency, ReadYourWrites, Subscription, SubscriptionError, SubscriptionHandle,
};
use sqlx::PgPool;

use crate::domain::Account;
use crate::read_model::Balances;

/// The command bus: its aggregates, then its middleware (outermost first).
pub type Commands = CommandBusOf![Account; Tracing, Validation, Timeout];
/// The query bus: its handlers (plain queries, and queries wrapped in
/// [`AfterPosition`](cqrs_postgres::subscription::AfterPosition) that read a command's
/// writes), then its middleware (outermost first).
pub type Queries =
    QueryBusOf![ReadModel<Balances>, ReadYourWrites<ReadModel<Balances>>; Tracing, Validation];

/// The service's buses and read model.
#[derive(Clone)]
pub struct Service {
    /// Typed command execution.
    pub commands: Commands,
    /// JSON command execution by name (HTTP bodies, broker messages).
    pub command_json: CommandDispatcherOf<Commands>,
    /// Typed queries.
    pub queries: Queries,
    /// JSON queries by name.
    pub query_json: QueryDispatcherOf<Queries>,
    /// The balance read model, in process memory.
    pub balances: ReadModel<Balances>,
    /// On PostgreSQL, the subscription feeding `balances`; dropping the last clone of the
    /// service stops it.
    pub feed: Option<Arc<SubscriptionHandle>>,
}

/// Builds the service on the in-memory store: the command bus feeds the balances before
/// `execute` returns, so queries need not wait.
///
/// # Panics
///
/// If two commands or two queries of the service share a wire name (a programming error
/// caught the first time the service starts).
pub fn build(store: InMemoryEventStore) -> Service {
    let balances = ReadModel::new(Balances::default());
    assemble(Arc::new(store), balances, Consistency::Immediate, None)
}

/// Builds the service on PostgreSQL (migrated): replays every stored event into the balances,
/// then keeps them following; queries in [`AfterPosition`](cqrs_postgres::subscription::AfterPosition)
/// wait for the subscription.
///
/// # Panics
///
/// As [`build`].
pub async fn build_postgres(pool: PgPool) -> Result<Service, SubscriptionError> {
    let balances = ReadModel::new(Balances::default());
    let feed = Subscription::in_memory(balances.clone())
        .start(&pool)
        .await?;
    let consistency = Consistency::Progress(feed.progress());
    let store = Arc::new(PostgresEventStore::new(pool));
    Ok(assemble(store, balances, consistency, Some(Arc::new(feed))))
}

/// The buses on `store`. Without a subscription (`feed`), the command bus feeds the balances.
fn assemble(
    store: Arc<dyn EventStore>,
    balances: ReadModel<Balances>,
    consistency: Consistency,
    feed: Option<Arc<SubscriptionHandle>>,
) -> Service {
    let mut commands = CommandBus::builder_shared(store)
        .aggregate::<Account>(())
        .middleware(Tracing)
        .middleware(Validation)
        .middleware(Timeout::new(Duration::from_secs(5)));
    if feed.is_none() {
        commands = commands.subscribe(balances.clone());
    }
    let commands = commands.retry_on_conflict(3).build();
    let queries = QueryBus::builder()
        .handler(balances.clone())
        .handler(ReadYourWrites::with_consistency(
            balances.clone(),
            consistency,
            Duration::from_secs(5),
        ))
        .middleware(Tracing)
        .middleware(Validation)
        .build();
    Service {
        command_json: CommandDispatcher::new(commands.clone())
            .expect("every command of the service has a distinct name"),
        query_json: QueryDispatcher::new(queries.clone())
            .expect("every query of the service has a distinct name"),
        commands,
        queries,
        balances,
        feed,
    }
}

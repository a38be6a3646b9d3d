//! Wiring: the buses, the read model's feed and the store, as one [`Service`] type for both
//! stores.
//!
//! On the in-memory store the command bus feeds the in-memory directory before `execute`
//! returns. On PostgreSQL a durable transactional subscription feeds the `user_directory`
//! table; queries wrapped in [`AfterPosition`](cqrs_postgres::subscription::AfterPosition)
//! wait for it ([`ReadYourWrites`]), so a client that passes the position a command
//! returned reads its own write on either store.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::middleware::{Metrics, Timeout, Tracing, Validation};
use cqrs_core::problem::Problems;
use cqrs_core::{
    CommandBus, CommandBusOf, CommandDispatcher, CommandDispatcherOf, EventStore,
    InMemoryEventStore, QueryBus, QueryBusOf, ReadModel,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{
    Consistency, ReadYourWrites, Subscription, SubscriptionError, SubscriptionHandle,
};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::domain::{StoreUniqueness, User};
use crate::read_model::{Directory, UsersInMemory, UsersTable};

/// The command bus: its aggregate, then its middleware (outermost first).
pub type Commands = CommandBusOf![User; Tracing, Metrics, Validation, Timeout];
/// The query bus: plain directory queries, and those that first wait for a position.
pub type Queries = QueryBusOf![Directory, ReadYourWrites<Directory>; Tracing, Metrics, Validation];

/// How long a query wrapped in `AfterPosition` waits for the read model.
pub const READ_YOUR_WRITES_PATIENCE: Duration = Duration::from_secs(5);

/// How the service's failures become problems: its domain codes' statuses.
pub fn problems() -> Problems {
    Problems::new()
        .type_base("urn:user-service:problem:")
        .domain_status("user_exists", 409)
        .domain_status("email_taken", 409)
        .domain_status("user_deactivated", 409)
        .domain_status("uniqueness_unavailable", 503)
        .domain_status("directory_unavailable", 503)
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database refused a connection, a migration or the table.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store's migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] cqrs_postgres::MigrateError),
    /// The read model's subscription could not start.
    #[error("subscription: {0}")]
    Subscription(#[from] SubscriptionError),
}

/// The service's buses and read model; every part is a cheap clone.
#[derive(Clone)]
pub struct Service {
    /// Typed command execution.
    pub commands: Commands,
    /// JSON command execution by wire name.
    pub command_json: CommandDispatcherOf<Commands>,
    /// Typed queries.
    pub queries: Queries,
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// The database, on PostgreSQL.
    pub pool: Option<PgPool>,
    /// The subscription feeding the table, on PostgreSQL; taken by [`Service::stop`].
    feed: Arc<Mutex<Option<SubscriptionHandle>>>,
}

impl Service {
    /// The service on a fresh in-memory store.
    pub fn in_memory() -> Self {
        Self::on_memory(InMemoryEventStore::new())
    }

    /// The service on `store`, with the directory in memory fed by the command bus.
    pub fn on_memory(store: InMemoryEventStore) -> Self {
        let directory = ReadModel::new(UsersInMemory::default());
        let store: Arc<dyn EventStore> = Arc::new(store);
        let commands = CommandBus::builder_shared(store.clone())
            .aggregate::<User>(Arc::new(StoreUniqueness(store.clone())))
            .middleware(Tracing)
            .middleware(Metrics)
            .middleware(Validation)
            .middleware(Timeout::new(Duration::from_secs(5)))
            .subscribe(directory.clone())
            .retry_on_conflict(3)
            .build();
        Self::assemble(
            commands,
            Directory::Memory(directory),
            Consistency::Immediate,
            store,
            None,
            None,
        )
    }

    /// The service on PostgreSQL: migrates the event store, creates the directory table and
    /// starts its durable subscription (resuming from its checkpoint).
    pub async fn postgres(pool: PgPool) -> Result<Self, StartError> {
        PostgresEventStore::migrate(&pool).await?;
        UsersTable::create_table(&pool).await?;
        let feed = Subscription::transactional(UsersTable).start(&pool).await?;
        let store: Arc<dyn EventStore> = Arc::new(PostgresEventStore::new(pool.clone()));
        let commands = CommandBus::builder_shared(store.clone())
            .aggregate::<User>(Arc::new(StoreUniqueness(store.clone())))
            .middleware(Tracing)
            .middleware(Metrics)
            .middleware(Validation)
            .middleware(Timeout::new(Duration::from_secs(5)))
            .retry_on_conflict(3)
            .build();
        Ok(Self::assemble(
            commands,
            Directory::Postgres(pool.clone()),
            Consistency::Progress(feed.progress()),
            store,
            Some(pool),
            Some(feed),
        ))
    }

    fn assemble(
        commands: Commands,
        directory: Directory,
        consistency: Consistency,
        store: Arc<dyn EventStore>,
        pool: Option<PgPool>,
        feed: Option<SubscriptionHandle>,
    ) -> Self {
        let queries = QueryBus::builder()
            .handler(directory.clone())
            .handler(ReadYourWrites::with_consistency(
                directory,
                consistency,
                READ_YOUR_WRITES_PATIENCE,
            ))
            .middleware(Tracing)
            .middleware(Metrics)
            .middleware(Validation)
            .build();
        Self {
            command_json: CommandDispatcher::new(commands.clone())
                .expect("every command of the service has a distinct name"),
            commands,
            queries,
            store,
            pool,
            feed: Arc::new(Mutex::new(feed)),
        }
    }

    /// Whether the service can take requests: the store answers and the read model's
    /// subscription (on PostgreSQL) is running.
    pub async fn ready(&self) -> Result<(), String> {
        self.store
            .stream_version("user-readiness-probe")
            .await
            .map_err(|error| format!("event store: {error}"))?;
        if let Some(feed) = self.feed.lock().await.as_ref() {
            if feed.is_finished() {
                return Err("the directory's subscription has stopped".to_owned());
            }
        } else if self.pool.is_some() {
            return Err("the directory's subscription is stopped".to_owned());
        }
        Ok(())
    }

    /// Stops the read model's subscription after its current batch (PostgreSQL); nothing to
    /// do in memory. Idempotent.
    pub async fn stop(&self) -> Result<(), SubscriptionError> {
        match self.feed.lock().await.take() {
            Some(feed) => feed.shutdown().await,
            None => Ok(()),
        }
    }
}

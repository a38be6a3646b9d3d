//! Wiring: which aggregates, middleware and read models make up the service.
//!
//! The buses carry their aggregates, handlers and middleware in their types, so that executing
//! a command or query nothing handles is a compile error. The aliases below name those types
//! once, for structs like [`Service`] (or an HTTP framework's state) to hold them.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::middleware::{Timeout, Tracing, Validation};
use cqrs_core::{
    CommandBus, CommandDispatcher, EventStore, QueryBus, QueryDispatcher, ReadModel, Repository,
};

use crate::domain::Account;
use crate::read_model::Balances;

/// The aggregates registered on the command bus.
pub type Aggregates = (Repository<Account>, ());
/// The command middleware, outermost first.
pub type CommandLayers = (Tracing, (Validation, (Timeout, ())));
/// The query handlers registered on the query bus.
pub type Handlers = (ReadModel<Balances>, ());
/// The query middleware, outermost first.
pub type QueryLayers = (Tracing, (Validation, ()));

/// The service's buses and read model.
pub struct Service {
    /// Typed command execution.
    pub commands: CommandBus<Aggregates, CommandLayers>,
    /// JSON command execution by name (HTTP bodies, broker messages).
    pub command_json: CommandDispatcher<Aggregates, CommandLayers>,
    /// Typed queries.
    pub queries: QueryBus<Handlers, QueryLayers>,
    /// JSON queries by name.
    pub query_json: QueryDispatcher<Handlers, QueryLayers>,
    /// The balance read model, fed in process by the command bus.
    pub balances: ReadModel<Balances>,
}

/// Builds the service on `store`.
///
/// # Panics
///
/// If two commands or two queries of the service share a wire name (a programming error
/// caught the first time the service starts).
pub fn build(store: Arc<dyn EventStore>) -> Service {
    let balances = ReadModel::new(Balances::default());
    let commands = CommandBus::builder_shared(store)
        .aggregate::<Account>(())
        .middleware(Tracing)
        .middleware(Validation)
        .middleware(Timeout::new(Duration::from_secs(5)))
        .subscribe(balances.clone())
        .retry_on_conflict(3)
        .build();
    let queries = QueryBus::builder()
        .handler(balances.clone())
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
    }
}

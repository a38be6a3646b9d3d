//! Wiring: which aggregates, middleware and read models make up the service.
//!
//! The buses carry their aggregates, handlers and middleware in their types, so that executing
//! a command or query nothing handles is a compile error. `CommandBusOf!` and `QueryBusOf!`
//! name those types from the same lists, in the same order, as the builders in [`build`];
//! the dispatchers' types follow from the buses'. Every part of [`Service`] is a cheap clone,
//! so it can be an HTTP framework's state as it is.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::middleware::{Timeout, Tracing, Validation};
use cqrs_core::{
    CommandBus, CommandBusOf, CommandDispatcher, CommandDispatcherOf, EventStore, QueryBus,
    QueryBusOf, QueryDispatcher, QueryDispatcherOf, ReadModel,
};

use crate::domain::Account;
use crate::read_model::Balances;

/// The command bus: its aggregates, then its middleware (outermost first).
pub type Commands = CommandBusOf![Account; Tracing, Validation, Timeout];
/// The query bus: its handlers, then its middleware (outermost first).
pub type Queries = QueryBusOf![ReadModel<Balances>; Tracing, Validation];

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

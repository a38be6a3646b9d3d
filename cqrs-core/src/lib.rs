//! CQRS and event sourcing with the wiring generated and checked at compile time.
//!
//! (Crate documentation with a runnable example follows once the macros are in place.)

// Lets the crate's own tests and docs use the derives, whose output names `::cqrs_core`.
#[allow(unused_extern_crates)]
extern crate self as cqrs_core;

mod aggregate;
mod bus;
mod command;
pub mod dispatch;
mod error;
mod event;
pub mod list;
mod metadata;
pub mod middleware;
mod projection;
mod query;
mod repository;
pub mod store;
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

use std::future::Future;
use std::pin::Pin;

pub use aggregate::{Aggregate, stream_id};
pub use bus::{CommandBus, CommandBusBuilder, HandlerError, QueryBus, QueryBusBuilder};
pub use command::{Command, CommandContext, Committed, Handles};
pub use dispatch::{CommandDispatcher, DispatchCommands, DispatchQueries, QueryDispatcher};
pub use error::{
    CommandError, DispatchError, DuplicateName, FieldError, QueryError, ValidationErrors,
};
pub use event::{Apply, ApplyUnit, Event, EventDecodeError, EventPayload, EventType, IntoEvents};
pub use metadata::{GlobalPosition, Metadata, NewEvent, RecordedEvent};
pub use projection::{Projection, ProjectionError, ReadModel, Subscriber};
pub use query::{HandlesQuery, Query};
pub use repository::{Loaded, Repository, RepositoryOptions};
pub use store::{
    AppendResult, EventStore, ExpectedVersion, InMemoryEventStore, Snapshot, StoreError,
};

#[cfg(feature = "macros")]
pub use cqrs_macros::{Command, Event, Query, aggregate, projection};

/// A boxed, sendable future: what object-safe async traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a domain module needs: `use cqrs_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Aggregate, Command, CommandBus, CommandContext, CommandError, Committed, Event, EventStore,
        InMemoryEventStore, Metadata, Projection, Query, QueryBus, QueryError, ReadModel,
        RecordedEvent,
    };
    #[cfg(feature = "macros")]
    pub use cqrs_macros::{aggregate, projection};
    pub use serde::{Deserialize, Serialize};
    pub use uuid::Uuid;
}

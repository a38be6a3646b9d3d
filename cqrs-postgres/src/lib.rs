//! PostgreSQL event store for `cqrs-core`.
//!
//! (Crate documentation with the five-line set-up follows with the store.)

mod error;
mod migrate;
pub mod sql;
mod store;
pub mod subscription;

pub use error::{MigrateError, PostgresStoreError};
pub use migrate::MIGRATIONS;
pub use store::{InlineProjection, MAX_STREAM_ID_BYTES, NotifyMode, PostgresEventStore};

//! Errors specific to the PostgreSQL store.

use cqrs_core::{ProjectionError, StoreError};

/// What went wrong inside the PostgreSQL store.
///
/// Through the [`EventStore`](cqrs_core::EventStore) trait these arrive wrapped in
/// [`StoreError::Backend`]; downcast the source to match on them:
///
/// ```
/// # use cqrs_core::StoreError;
/// # use cqrs_postgres::PostgresStoreError;
/// fn inline_projection_failed(error: &StoreError) -> bool {
///     match error {
///         StoreError::Backend(source) => matches!(
///             source.downcast_ref::<PostgresStoreError>(),
///             Some(PostgresStoreError::InlineProjection { .. })
///         ),
///         _ => false,
///     }
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresStoreError {
    /// The database failed or refused a statement (connection, I/O, a constraint the store
    /// does not translate, a payload PostgreSQL cannot store such as a `\u0000` escape).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An inline projection failed; the append was rolled back (or, with
    /// [`append_in`](crate::PostgresEventStore::append_in), must be rolled back by the caller).
    #[error("inline projection `{name}` failed: {source}")]
    InlineProjection {
        /// The projection's name.
        name: &'static str,
        /// What it reported.
        #[source]
        source: ProjectionError,
    },
    /// A stored event's metadata column does not deserialize into `cqrs_core::Metadata`.
    #[error("event {stream_id}@{stream_version} has unreadable metadata: {source}")]
    Metadata {
        /// The event's stream.
        stream_id: String,
        /// The event's version in its stream.
        stream_version: u64,
        /// The deserializer's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A stored number is outside the range the core types allow (a negative version).
    #[error("stored {column} {value} is out of range")]
    OutOfRange {
        /// The column.
        column: &'static str,
        /// The stored value.
        value: i64,
    },
    /// `cqrs_events` already holds a version the `cqrs_streams` row of the stream does not
    /// account for: events were written around the store. Retrying cannot help.
    #[error(
        "stream `{stream}`: `cqrs_events` holds versions that `cqrs_streams` does not know; \
         events were written without the store"
    )]
    StreamOutOfSync {
        /// The stream.
        stream: String,
    },
}

impl From<PostgresStoreError> for StoreError {
    fn from(error: PostgresStoreError) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

pub(crate) fn database(error: sqlx::Error) -> StoreError {
    PostgresStoreError::Database(error).into()
}

/// Why [`migrate`](crate::PostgresEventStore::migrate) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The connection's `search_path` names no existing schema to create the tables in.
    #[error(
        "no schema to create the tables in: the connection's search_path names no existing \
         schema (create it first)"
    )]
    NoSchema,
    /// A migration's SQL failed; nothing of it (or of the later ones) was applied.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database failed outside a migration (connecting, locking, bookkeeping).
    #[error("database error while migrating: {0}")]
    Database(#[from] sqlx::Error),
}

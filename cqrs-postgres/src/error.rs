//! Errors specific to the PostgreSQL store.

use cqrs_core::{ProjectionError, StoreError, TransientReason};

/// What went wrong inside the PostgreSQL store.
///
/// Through the [`EventStore`](cqrs_core::EventStore) trait these arrive wrapped in
/// [`StoreError::Backend`], or in [`StoreError::Transient`] when retrying may help (see
/// [`PostgresStoreError::transient_reason`]); downcast the source to match on them:
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
    /// An append's version check failed in a `REPEATABLE READ` or `SERIALIZABLE` transaction
    /// whose snapshot is older than the stream: the version the snapshot shows is no longer
    /// the stream's. It arrives as [`StoreError::Transient`] with
    /// [`TransientReason::SerializationFailure`], as PostgreSQL's own SQLSTATE `40001` does:
    /// retry the whole transaction.
    #[error(
        "stream `{stream}` is at version {current}, but the transaction's snapshot shows          version {snapshot}"
    )]
    StaleSnapshot {
        /// The stream.
        stream: String,
        /// The version the transaction's snapshot shows (0 = no stream).
        snapshot: u64,
        /// The stream's version outside the snapshot, read when the check failed.
        current: u64,
    },
    /// A group-commit batch ([`GroupCommit`](crate::GroupCommit)) that held this append
    /// failed as a whole: its connection broke (the outcome is unknown, as `transient` says),
    /// or it could not start.
    #[error("group commit: {reason}")]
    GroupCommit {
        /// What happened to the batch.
        reason: String,
        /// Whether, and why, trying again may help.
        transient: Option<TransientReason>,
    },
}

impl PostgresStoreError {
    /// Why this error is worth retrying, if it is:
    ///
    /// | error | reason |
    /// |---|---|
    /// | SQLSTATE `40001` (`serialization_failure`), [`Self::StaleSnapshot`] | [`TransientReason::SerializationFailure`] |
    /// | SQLSTATE `40P01` (`deadlock_detected`) | [`TransientReason::Deadlock`] |
    /// | an I/O error on the connection, SQLSTATE class `08` (connection exception), `57P01` / `57P02` (the server ended the session) | [`TransientReason::ConnectionLost`] |
    /// | the pool's acquire timeout, SQLSTATE `57P03` (`cannot_connect_now`) | [`TransientReason::Unavailable`] |
    ///
    /// A closed pool is not transient: it stays closed.
    pub fn transient_reason(&self) -> Option<TransientReason> {
        match self {
            PostgresStoreError::Database(error) => transient_reason(error),
            PostgresStoreError::StaleSnapshot { .. } => Some(TransientReason::SerializationFailure),
            PostgresStoreError::GroupCommit { transient, .. } => *transient,
            _ => None,
        }
    }
}

pub(crate) fn transient_reason(error: &sqlx::Error) -> Option<TransientReason> {
    match error {
        sqlx::Error::Database(db) => match db.code().as_deref()? {
            "40001" => Some(TransientReason::SerializationFailure),
            "40P01" => Some(TransientReason::Deadlock),
            "57P03" => Some(TransientReason::Unavailable),
            "57P01" | "57P02" => Some(TransientReason::ConnectionLost),
            code if code.starts_with("08") => Some(TransientReason::ConnectionLost),
            _ => None,
        },
        sqlx::Error::Io(_) => Some(TransientReason::ConnectionLost),
        sqlx::Error::PoolTimedOut => Some(TransientReason::Unavailable),
        _ => None,
    }
}

impl From<PostgresStoreError> for StoreError {
    fn from(error: PostgresStoreError) -> Self {
        match error.transient_reason() {
            Some(reason) => StoreError::Transient {
                reason,
                source: Box::new(error),
            },
            None => StoreError::Backend(Box::new(error)),
        }
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

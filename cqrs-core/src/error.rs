//! Errors of the buses.

use std::fmt;
use std::time::Duration;

use crate::{
    Aggregate, Command, EventDecodeError, ExpectedVersion, HandlesQuery, Query, StoreError,
    TransientReason,
};

/// What kind of failure a framework error is, with a stable machine-readable [`code`].
///
/// Every error of the buses, the dispatchers and the store has one: [`CommandError::kind`],
/// [`QueryError::kind`], [`DispatchError::kind`], [`StoreError::kind`]. The typed path
/// (`bus.execute(..)`) and the JSON path (`dispatcher.dispatch_json(..)`) give the same kind
/// for the same failure, so one function maps failures to HTTP statuses or broker replies for
/// both, without downcasting.
///
/// The codes are stable: they never change meaning once released, and new kinds get new codes
/// (match with a wildcard arm: the enum is `#[non_exhaustive]`). A domain error adds its own
/// code through [`DomainError`], carried next to the kind.
///
/// | kind | code | when | typical HTTP status |
/// |---|---|---|---|
/// | [`Rejected`](Self::Rejected) | `rejected` | the aggregate refused the command (its domain error) | 409 / 422, or by domain code |
/// | [`Validation`](Self::Validation) | `validation` | a field of the command or query is invalid | 400 / 422 |
/// | [`Conflict`](Self::Conflict) | `conflict` | another writer changed the stream first | 409 |
/// | [`Timeout`](Self::Timeout) | `timeout` | the command or query did not finish in time | 504 |
/// | [`Refused`](Self::Refused) | `refused` | a middleware refused it (rate limit, open circuit) | 429 / 503 |
/// | [`QueryFailed`](Self::QueryFailed) | `query_failed` | the query handler returned its error | by domain code (`not_found`: 404), else 500 |
/// | [`UnknownCommand`](Self::UnknownCommand) | `unknown_command` | no command has this wire name | 404 |
/// | [`UnknownQuery`](Self::UnknownQuery) | `unknown_query` | no query has this wire name | 404 |
/// | [`BadRequest`](Self::BadRequest) | `bad_request` | the JSON body does not deserialize | 400 |
/// | [`EventDecode`](Self::EventDecode) | `event_decode` | a stored event cannot be read by this code | 500 |
/// | [`Serialize`](Self::Serialize) | `serialize` | an event or an answer cannot be serialized | 500 |
/// | [`StoreUnavailable`](Self::StoreUnavailable) | `store_unavailable` | the event store's backend failed | 503 |
/// | [`DuplicateEventId`](Self::DuplicateEventId) | `duplicate_event_id` | an event id is already stored | 409 |
/// | [`InvalidStreamId`](Self::InvalidStreamId) | `invalid_stream_id` | the stream id is empty or too long | 400 |
/// | [`UniqueKeyTaken`](Self::UniqueKeyTaken) | `unique_key_taken` | a unique key the events claim is held by another stream | 409 |
/// | [`UnknownPosition`](Self::UnknownPosition) | `unknown_position` | a read of the global order started after a position that holds no event | 400 |
/// | [`Unsupported`](Self::Unsupported) | `unsupported` | the store lacks a capability the command needs (unique keys, idempotency keys), or the command takes no idempotency key | 500 |
/// | [`IdempotencyKeyReused`](Self::IdempotencyKeyReused) | `idempotency_key_reused` | an idempotency key was used before with another command body | 422 |
/// | [`RetriesExhausted`](Self::RetriesExhausted) | `retries_exhausted` | transient failures or conflicts outlasted the retry budget | 503 |
/// | [`CircuitOpen`](Self::CircuitOpen) | `circuit_open` | a circuit breaker is open after repeated infrastructure failures | 503 (`Retry-After`) |
/// | [`RateLimited`](Self::RateLimited) | `rate_limited` | a rate limit is exhausted | 429 (`Retry-After`) |
/// | [`ConcurrencyLimited`](Self::ConcurrencyLimited) | `concurrency_limited` | too many commands or queries of a scope are running | 503 |
/// | [`Forbidden`](Self::Forbidden) | `forbidden` | the authorization policy denied the acting user | 403 |
///
/// [`code`]: ErrorKind::code
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The aggregate rejected the command with its domain error.
    Rejected,
    /// A field of the command or query is invalid.
    Validation,
    /// Another writer changed the stream first.
    Conflict,
    /// The command or query did not finish in time.
    Timeout,
    /// A middleware refused the command or query.
    Refused,
    /// The query handler returned its error.
    QueryFailed,
    /// No command is registered under the requested name.
    UnknownCommand,
    /// No query is registered under the requested name.
    UnknownQuery,
    /// The JSON body does not deserialize into the command or query.
    BadRequest,
    /// A stored event could not be decoded.
    EventDecode,
    /// An event or a query's answer could not be serialized.
    Serialize,
    /// The event store's backend failed (connection, I/O).
    StoreUnavailable,
    /// An event id is already stored.
    DuplicateEventId,
    /// The stream id is not acceptable to the store.
    InvalidStreamId,
    /// A unique key the events claim is held by another stream.
    UniqueKeyTaken,
    /// The store lacks a capability the command needs.
    Unsupported,
    /// A read of the global order started after a position that holds no event.
    UnknownPosition,
    /// An idempotency key was used before with another command body.
    IdempotencyKeyReused,
    /// Transient failures or conflicts outlasted the retry budget.
    RetriesExhausted,
    /// A circuit breaker is open: the dependency it guards failed repeatedly.
    CircuitOpen,
    /// A rate limit is exhausted.
    RateLimited,
    /// Too many commands or queries of one scope are running.
    ConcurrencyLimited,
    /// The authorization policy denied the acting user.
    Forbidden,
}

impl ErrorKind {
    /// Every kind, in the order of the table above.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::Rejected,
        ErrorKind::Validation,
        ErrorKind::Conflict,
        ErrorKind::Timeout,
        ErrorKind::Refused,
        ErrorKind::QueryFailed,
        ErrorKind::UnknownCommand,
        ErrorKind::UnknownQuery,
        ErrorKind::BadRequest,
        ErrorKind::EventDecode,
        ErrorKind::Serialize,
        ErrorKind::StoreUnavailable,
        ErrorKind::DuplicateEventId,
        ErrorKind::InvalidStreamId,
        ErrorKind::UniqueKeyTaken,
        ErrorKind::Unsupported,
        ErrorKind::UnknownPosition,
        ErrorKind::IdempotencyKeyReused,
        ErrorKind::RetriesExhausted,
        ErrorKind::CircuitOpen,
        ErrorKind::RateLimited,
        ErrorKind::ConcurrencyLimited,
        ErrorKind::Forbidden,
    ];

    /// The stable machine-readable code (`"conflict"`, `"rejected"`, ...).
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::Rejected => "rejected",
            ErrorKind::Validation => "validation",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Refused => "refused",
            ErrorKind::QueryFailed => "query_failed",
            ErrorKind::UnknownCommand => "unknown_command",
            ErrorKind::UnknownQuery => "unknown_query",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::EventDecode => "event_decode",
            ErrorKind::Serialize => "serialize",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::DuplicateEventId => "duplicate_event_id",
            ErrorKind::InvalidStreamId => "invalid_stream_id",
            ErrorKind::UniqueKeyTaken => "unique_key_taken",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::UnknownPosition => "unknown_position",
            ErrorKind::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorKind::RetriesExhausted => "retries_exhausted",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ConcurrencyLimited => "concurrency_limited",
            ErrorKind::Forbidden => "forbidden",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A domain error with a stable machine-readable code of its own (`"insufficient_funds"`,
/// `"not_found"`).
///
/// Implement it for an aggregate's error or a query handler's error, and the code travels with
/// the failure: [`CommandError::domain_code`] and [`QueryError::domain_code`] on the typed path,
/// [`DispatchError::domain_code`] on the JSON path (`#[aggregate]` and `#[projection]` find the
/// impl; nothing else is needed). Errors without the impl have no domain code.
///
/// ```
/// use cqrs_core::DomainError;
///
/// #[derive(Debug, thiserror::Error)]
/// pub enum AccountError {
///     #[error("insufficient funds")]
///     InsufficientFunds,
///     #[error("the account is closed")]
///     Closed,
/// }
///
/// impl DomainError for AccountError {
///     fn code(&self) -> &'static str {
///         match self {
///             AccountError::InsufficientFunds => "insufficient_funds",
///             AccountError::Closed => "account_closed",
///         }
///     }
/// }
/// ```
pub trait DomainError: std::error::Error {
    /// The error's stable code; keep it stable once clients depend on it.
    fn code(&self) -> &'static str;
}

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`"address.zip"`, `"items[2].qty"`).
    pub path: String,
    /// Machine-readable code (`"length"`, `"email"`).
    pub code: String,
    /// Human-readable message, when the rule has one.
    pub message: Option<String>,
}

/// The fields of a command or query that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    /// Every failed field, in a stable order.
    pub fields: Vec<FieldError>,
}

impl ValidationErrors {
    /// A single failed field.
    pub fn field(path: impl Into<String>, code: impl Into<String>) -> Self {
        Self {
            fields: vec![FieldError {
                path: path.into(),
                code: code.into(),
                message: None,
            }],
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid ")?;
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{}` ({})", field.path, field.code)?;
            if let Some(message) = &field.message {
                write!(f, ": {message}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

#[cfg(feature = "validator")]
impl From<validator::ValidationErrors> for ValidationErrors {
    fn from(errors: validator::ValidationErrors) -> Self {
        fn walk(prefix: &str, errors: &validator::ValidationErrors, out: &mut Vec<FieldError>) {
            for (field, kind) in errors.errors() {
                let path = if prefix.is_empty() {
                    field.to_string()
                } else {
                    format!("{prefix}.{field}")
                };
                match kind {
                    validator::ValidationErrorsKind::Field(list) => {
                        out.extend(list.iter().map(|e| FieldError {
                            path: path.clone(),
                            code: e.code.to_string(),
                            message: e.message.as_ref().map(ToString::to_string),
                        }));
                    }
                    validator::ValidationErrorsKind::Struct(inner) => walk(&path, inner, out),
                    validator::ValidationErrorsKind::List(items) => {
                        for (index, inner) in items {
                            walk(&format!("{path}[{index}]"), inner, out);
                        }
                    }
                }
            }
        }
        let mut fields = Vec::new();
        walk("", &errors, &mut fields);
        fields.sort_by(|a, b| (&a.path, &a.code).cmp(&(&b.path, &b.code)));
        Self { fields }
    }
}

/// Why a command was not committed. `E` is the aggregate's domain error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate rejected the command.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// The command's fields are invalid; nothing was loaded or written.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// Another writer changed the stream first (after any configured retries).
    #[error("conflict on stream `{stream}`: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The version found.
        actual: u64,
    },
    /// The command did not finish in time.
    #[error("command `{command}` timed out after {after:?}")]
    Timeout {
        /// Name of the command.
        command: &'static str,
        /// The configured limit.
        after: Duration,
        /// The command's idempotency key, when it had one: the command may still have
        /// committed, and [`CommandBus::outcome_of`](crate::CommandBus::outcome_of) with this
        /// key tells.
        idempotency_key: Option<String>,
    },
    /// A stored event of the aggregate's stream could not be decoded.
    #[error("cannot decode event {stream}@{version}: {source}")]
    Decode {
        /// The stream.
        stream: String,
        /// The event's version in the stream.
        version: u64,
        /// What went wrong (names the event type).
        #[source]
        source: EventDecodeError,
    },
    /// An event produced by the handler could not be serialized.
    #[error("cannot serialize event: {0}")]
    Serialize(#[source] serde_json::Error),
    /// A unique key the command's events claim is held by another stream (see
    /// [`UniqueKeys`](crate::UniqueKeys)); nothing was written.
    #[error("{namespace} {value:?} is taken by stream `{owner}`")]
    UniqueKeyTaken {
        /// The key's namespace (`"user.email"`).
        namespace: String,
        /// The key's value.
        value: String,
        /// The stream that holds the key.
        owner: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A middleware refused the command (rate limit, open circuit, ...).
    #[error("command refused by `{middleware}`: {reason}")]
    Refused {
        /// The middleware's name.
        middleware: &'static str,
        /// Why.
        reason: String,
    },
    /// The idempotency key was used before with another command body; nothing ran.
    #[error("idempotency key {key:?} of `{command}` was used with another body")]
    IdempotencyKeyReused {
        /// The command name.
        command: &'static str,
        /// The key.
        key: String,
    },
    /// The command's idempotency key was executed before and the aggregate rejected it then:
    /// this is the recorded rejection, replayed (its kind is [`ErrorKind::Rejected`]). See
    /// [`idempotency`](crate::idempotency).
    #[error("command rejected: {message}")]
    AlreadyRejected {
        /// The key.
        key: String,
        /// The domain error's code, when it had one.
        domain_code: Option<String>,
        /// The domain error's message.
        message: String,
    },
    /// An idempotency key was given for a command that takes none (it is neither
    /// `#[command(idempotent)]` nor `#[command(idempotency_key = ..)]`); nothing ran.
    #[error("command `{command}` does not take idempotency keys")]
    NotIdempotent {
        /// The command name.
        command: &'static str,
    },
    /// A retry policy ([`Retry`](crate::middleware::Retry)) gave up: every attempt failed
    /// with a retryable error, a transient store failure or a version conflict
    /// ([`StoreError::Conflict`]); `last` is the last attempt's.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts ran.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: StoreError,
        /// The command's idempotency key, when it had one: an attempt whose connection was
        /// lost may have committed, and
        /// [`CommandBus::outcome_of`](crate::CommandBus::outcome_of) with this key tells.
        idempotency_key: Option<String>,
    },
    /// The store lost its connection during the append of a command with an idempotency
    /// key, so the append may or may not have committed: ask
    /// [`CommandBus::outcome_of`](crate::CommandBus::outcome_of) with the key, or execute the
    /// key again (it runs at most once). A command without a key gets
    /// [`Store`](Self::Store) for the same failure. Its kind is the store error's
    /// ([`ErrorKind::StoreUnavailable`] for a lost connection).
    #[error("outcome of the command with idempotency key {idempotency_key:?} is unknown: {source}")]
    OutcomeUnknown {
        /// The command's idempotency key.
        idempotency_key: String,
        /// The store's failure.
        #[source]
        source: StoreError,
    },
    /// A circuit breaker is open; nothing was loaded or written.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// A rate limit is exhausted; nothing was loaded or written.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// Too many commands of the limit's scope are running; nothing was loaded or written.
    #[error(transparent)]
    ConcurrencyLimited(ConcurrencyLimited),
    /// The authorization policy denied the command; nothing was loaded or written.
    #[error(transparent)]
    Forbidden(Forbidden),
}

impl<E> From<StoreError> for CommandError<E> {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => CommandError::Conflict {
                stream,
                expected,
                actual,
            },
            StoreError::UniqueKeyTaken {
                namespace,
                value,
                owner,
            } => CommandError::UniqueKeyTaken {
                namespace,
                value,
                owner,
            },
            other => CommandError::Store(other),
        }
    }
}

impl<E> CommandError<E> {
    /// What kind of failure this is; see [`ErrorKind`] for the stable codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommandError::Rejected(_) | CommandError::AlreadyRejected { .. } => ErrorKind::Rejected,
            CommandError::Invalid(_) => ErrorKind::Validation,
            CommandError::Conflict { .. } => ErrorKind::Conflict,
            CommandError::Timeout { .. } => ErrorKind::Timeout,
            CommandError::Decode { .. } => ErrorKind::EventDecode,
            CommandError::Serialize(_) => ErrorKind::Serialize,
            CommandError::Store(error) | CommandError::OutcomeUnknown { source: error, .. } => {
                error.kind()
            }
            CommandError::Refused { .. } => ErrorKind::Refused,
            CommandError::UniqueKeyTaken { .. } => ErrorKind::UniqueKeyTaken,
            CommandError::IdempotencyKeyReused { .. } => ErrorKind::IdempotencyKeyReused,
            CommandError::NotIdempotent { .. } => ErrorKind::Unsupported,
            CommandError::RetriesExhausted { .. } => ErrorKind::RetriesExhausted,
            CommandError::CircuitOpen(_) => ErrorKind::CircuitOpen,
            CommandError::RateLimited(_) => ErrorKind::RateLimited,
            CommandError::ConcurrencyLimited(_) => ErrorKind::ConcurrencyLimited,
            CommandError::Forbidden(_) => ErrorKind::Forbidden,
        }
    }

    /// The stable code of [`Self::kind`] (`"conflict"`, `"rejected"`, ...).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The domain error's own code, when the aggregate rejected the command.
    pub fn domain_code(&self) -> Option<&'static str>
    where
        E: DomainError,
    {
        self.rejection().map(DomainError::code)
    }

    /// Whether retrying the same command after reloading could succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CommandError::Conflict { .. })
    }

    /// The domain error, if the aggregate rejected the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// How long to wait before trying again, when a rate limit or an open circuit refused
    /// the command.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CommandError::RateLimited(limited) => Some(limited.retry_after),
            CommandError::CircuitOpen(open) => Some(open.retry_after),
            _ => None,
        }
    }

    /// The idempotency key the failure concerns: reused with another body, a replayed
    /// rejection, or a failure that leaves the outcome of a keyed command open
    /// ([`Timeout`](Self::Timeout), [`RetriesExhausted`](Self::RetriesExhausted),
    /// [`OutcomeUnknown`](Self::OutcomeUnknown)), for which the caller asks
    /// [`CommandBus::outcome_of`](crate::CommandBus::outcome_of) what happened.
    ///
    /// Failures whose outcome is settled (nothing ran or nothing was written: a rejection,
    /// invalid input, a refusal by a middleware, a conflict) name no key: trying the same
    /// key again simply runs the command.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            CommandError::IdempotencyKeyReused { key, .. }
            | CommandError::AlreadyRejected { key, .. }
            | CommandError::Store(StoreError::IdempotencyKeyTaken { key, .. })
            | CommandError::OutcomeUnknown {
                idempotency_key: key,
                ..
            }
            | CommandError::Timeout {
                idempotency_key: Some(key),
                ..
            }
            | CommandError::RetriesExhausted {
                idempotency_key: Some(key),
                ..
            } => Some(key),
            _ => None,
        }
    }

    /// Names the idempotency key of the command in the failures that leave its outcome open
    /// (see [`idempotency_key`](Self::idempotency_key)); other failures are returned as
    /// they are. The key is a field of those variants rather than a wrapper around the
    /// error, so that a `match` on a variant works alike with and without a key.
    pub(crate) fn with_idempotency_key(self, key: String) -> Self {
        match self {
            CommandError::Timeout {
                command,
                after,
                idempotency_key: None,
            } => CommandError::Timeout {
                command,
                after,
                idempotency_key: Some(key),
            },
            CommandError::RetriesExhausted {
                attempts,
                last,
                idempotency_key: None,
            } => CommandError::RetriesExhausted {
                attempts,
                last,
                idempotency_key: Some(key),
            },
            CommandError::Store(
                source @ StoreError::Transient {
                    reason: TransientReason::ConnectionLost,
                    ..
                },
            ) => CommandError::OutcomeUnknown {
                idempotency_key: key,
                source,
            },
            other => other,
        }
    }
}

/// Why a query was not answered. `E` is the handler's error.
#[derive(Debug, thiserror::Error)]
pub enum QueryError<E> {
    /// The handler failed.
    #[error("query failed: {0}")]
    Handler(#[source] E),
    /// The query's fields are invalid.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// The query did not finish in time.
    #[error("query `{query}` timed out after {after:?}")]
    Timeout {
        /// Name of the query.
        query: &'static str,
        /// The configured limit.
        after: Duration,
    },
    /// A middleware refused the query.
    #[error("query refused by `{middleware}`: {reason}")]
    Refused {
        /// The middleware's name.
        middleware: &'static str,
        /// Why.
        reason: String,
    },
    /// A circuit breaker is open.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// A rate limit is exhausted.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// Too many queries of the limit's scope are running.
    #[error(transparent)]
    ConcurrencyLimited(ConcurrencyLimited),
    /// The authorization policy denied the query.
    #[error(transparent)]
    Forbidden(Forbidden),
}

impl<E> QueryError<E> {
    /// What kind of failure this is; see [`ErrorKind`] for the stable codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Handler(_) => ErrorKind::QueryFailed,
            QueryError::Invalid(_) => ErrorKind::Validation,
            QueryError::Timeout { .. } => ErrorKind::Timeout,
            QueryError::Refused { .. } => ErrorKind::Refused,
            QueryError::CircuitOpen(_) => ErrorKind::CircuitOpen,
            QueryError::RateLimited(_) => ErrorKind::RateLimited,
            QueryError::ConcurrencyLimited(_) => ErrorKind::ConcurrencyLimited,
            QueryError::Forbidden(_) => ErrorKind::Forbidden,
        }
    }

    /// The stable code of [`Self::kind`] (`"query_failed"`, `"validation"`, ...).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The handler's error, if the handler failed.
    pub fn handler_error(&self) -> Option<&E> {
        match self {
            QueryError::Handler(e) => Some(e),
            _ => None,
        }
    }

    /// The handler error's own code, when the handler failed.
    pub fn domain_code(&self) -> Option<&'static str>
    where
        E: DomainError,
    {
        self.handler_error().map(DomainError::code)
    }

    /// How long to wait before trying again, when a rate limit or an open circuit refused
    /// the query.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            QueryError::RateLimited(limited) => Some(limited.retry_after),
            QueryError::CircuitOpen(open) => Some(open.retry_after),
            _ => None,
        }
    }
}

impl StoreError {
    /// What kind of failure this is; see [`ErrorKind`] for the stable codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::DuplicateEventId { .. } => ErrorKind::DuplicateEventId,
            StoreError::InvalidStreamId { .. } => ErrorKind::InvalidStreamId,
            StoreError::Backend(_) | StoreError::Transient { .. } => ErrorKind::StoreUnavailable,
            StoreError::UniqueKeyTaken { .. } => ErrorKind::UniqueKeyTaken,
            StoreError::UniqueKeysUnsupported | StoreError::IdempotencyUnsupported => {
                ErrorKind::Unsupported
            }
            StoreError::IdempotencyKeyTaken { .. } => ErrorKind::IdempotencyKeyReused,
            StoreError::UnknownPosition { .. } => ErrorKind::UnknownPosition,
        }
    }

    /// The stable code of [`Self::kind`] (`"store_unavailable"`, `"conflict"`, ...).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }
}

/// Errors of name-keyed dispatch of JSON commands and queries.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No command or query is registered under this name; nothing was executed.
    #[error("unknown {kind} `{name}`")]
    UnknownName {
        /// `"command"` or `"query"`.
        kind: &'static str,
        /// The name that was asked for.
        name: String,
    },
    /// The JSON body does not deserialize; nothing was executed.
    #[error("malformed {name} at `{path}`: {message}")]
    Malformed {
        /// The command or query name.
        name: &'static str,
        /// The serde path of the offending field (`.` for the root).
        path: String,
        /// The deserializer's message.
        message: String,
    },
    /// The command or query ran and failed. The typed error's kind, message, validation
    /// errors and domain code are copied out, so that a caller matches on them without
    /// downcasting `source`.
    #[error("{name} failed: {source}")]
    Failed {
        /// The command or query name.
        name: &'static str,
        /// The kind of the typed error ([`CommandError::kind`] or [`QueryError::kind`]).
        kind: ErrorKind,
        /// The domain error's [`DomainError::code`], when the aggregate rejected the command
        /// or the query handler failed with an error implementing [`DomainError`].
        domain_code: Option<&'static str>,
        /// The domain error's message when the aggregate rejected the command or the query
        /// handler failed; the typed error's message otherwise.
        message: String,
        /// The invalid fields, when the kind is [`ErrorKind::Validation`].
        validation: Option<ValidationErrors>,
        /// When to try again and with which idempotency key, when the failure says
        /// (boxed: most failures have none, and the error stays small).
        hints: Option<Box<RetryHints>>,
        /// The typed error ([`CommandError`] or [`QueryError`]), for logs and error chains.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The query's answer could not be serialized.
    #[error("cannot serialize the answer of {name}: {source}")]
    Serialize {
        /// The query name.
        name: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}

impl DispatchError {
    /// What kind of failure this is; the same kind the typed bus gives for the same failure.
    /// See [`ErrorKind`] for the stable codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DispatchError::UnknownName { kind: "query", .. } => ErrorKind::UnknownQuery,
            DispatchError::UnknownName { .. } => ErrorKind::UnknownCommand,
            DispatchError::Malformed { .. } => ErrorKind::BadRequest,
            DispatchError::Failed { kind, .. } => *kind,
            DispatchError::Serialize { .. } => ErrorKind::Serialize,
        }
    }

    /// The stable code of [`Self::kind`] (`"unknown_command"`, `"bad_request"`, ...).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The domain error's own code (see [`DomainError`]), when there is one.
    pub fn domain_code(&self) -> Option<&'static str> {
        match self {
            DispatchError::Failed { domain_code, .. } => *domain_code,
            _ => None,
        }
    }

    /// The invalid fields, when the command or query failed validation.
    pub fn validation(&self) -> Option<&ValidationErrors> {
        match self {
            DispatchError::Failed { validation, .. } => validation.as_ref(),
            _ => None,
        }
    }

    /// How long to wait before trying again, when a rate limit or an open circuit refused
    /// the command or query.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DispatchError::Failed {
                hints: Some(hints), ..
            } => hints.retry_after,
            _ => None,
        }
    }

    /// The idempotency key the failure concerns, when there is one.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            DispatchError::Failed {
                hints: Some(hints), ..
            } => hints.idempotency_key.as_deref(),
            _ => None,
        }
    }

    /// The failure of command `C` as the dispatcher reports it.
    pub(crate) fn command<C: Command>(error: CommandError<AggregateError<C>>) -> Self {
        let domain_code = error
            .rejection()
            .and_then(<C::Aggregate as Aggregate>::domain_code);
        let message = match &error {
            CommandError::Rejected(rejection) => rejection.to_string(),
            CommandError::AlreadyRejected { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let validation = match &error {
            CommandError::Invalid(errors) => Some(errors.clone()),
            _ => None,
        };
        DispatchError::Failed {
            name: C::NAME,
            kind: error.kind(),
            domain_code,
            message,
            validation,
            hints: RetryHints::of(error.retry_after(), error.idempotency_key()),
            source: Box::new(error),
        }
    }

    /// The failure of query `Q`, answered by `H`, as the dispatcher reports it.
    pub(crate) fn query<Q: Query, H: HandlesQuery<Q>>(error: QueryError<H::Error>) -> Self {
        let domain_code = error.handler_error().and_then(H::domain_code);
        let message = match &error {
            QueryError::Handler(failure) => failure.to_string(),
            other => other.to_string(),
        };
        let validation = match &error {
            QueryError::Invalid(errors) => Some(errors.clone()),
            _ => None,
        };
        DispatchError::Failed {
            name: Q::NAME,
            kind: error.kind(),
            domain_code,
            message,
            validation,
            hints: RetryHints::of(error.retry_after(), None),
            source: Box::new(error),
        }
    }
}

/// What a failed command or query says about trying again: how long to wait (a rate limit,
/// an open circuit) and the idempotency key concerned (reused with another body, a replayed
/// rejection). Read them with [`DispatchError::retry_after`] and
/// [`DispatchError::idempotency_key`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryHints {
    /// How long to wait before trying again.
    pub retry_after: Option<Duration>,
    /// The idempotency key the failure concerns.
    pub idempotency_key: Option<String>,
}

impl RetryHints {
    fn of(retry_after: Option<Duration>, idempotency_key: Option<&str>) -> Option<Box<Self>> {
        (retry_after.is_some() || idempotency_key.is_some()).then(|| {
            Box::new(Self {
                retry_after,
                idempotency_key: idempotency_key.map(str::to_owned),
            })
        })
    }
}

type AggregateError<C> = <<C as Command>::Aggregate as Aggregate>::Error;

/// Two registered commands or queries share a wire name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("duplicate {kind} name `{name}`")]
pub struct DuplicateName {
    /// `"command"` or `"query"`.
    pub kind: &'static str,
    /// The shared name.
    pub name: &'static str,
}

/// A circuit breaker is open: the dependency it guards failed repeatedly, and calls are refused
/// without trying until `retry_after` has passed (then one trial call is let through).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit `{circuit}` is open; retry after {retry_after:?}")]
pub struct CircuitOpen {
    /// The breaker's name.
    pub circuit: &'static str,
    /// How long until the breaker lets a trial call through.
    pub retry_after: Duration,
}

/// A rate limit is exhausted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit `{limit}` exhausted{}; retry after {retry_after:?}", key_suffix(.key.as_deref()))]
pub struct RateLimited {
    /// The limit's name.
    pub limit: &'static str,
    /// The key the limit counts by (command or query name, user, metadata value); `None`
    /// for a global limit.
    pub key: Option<String>,
    /// How long until one more call would be admitted.
    pub retry_after: Duration,
}

/// Too many commands or queries of one scope are running at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit `{limit}` reached{}: {max} running", key_suffix(.key.as_deref()))]
pub struct ConcurrencyLimited {
    /// The limit's name.
    pub limit: &'static str,
    /// The key the limit counts by; `None` for a global limit.
    pub key: Option<String>,
    /// How many may run at once.
    pub max: usize,
}

/// The authorization policy denied a command or query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} forbidden for {}: {reason}", .user.as_deref().unwrap_or("an anonymous caller"))]
pub struct Forbidden {
    /// The command's or query's name.
    pub name: &'static str,
    /// The acting user, when the caller named one.
    pub user: Option<String>,
    /// Why, as the policy put it.
    pub reason: std::borrow::Cow<'static, str>,
}

fn key_suffix(key: Option<&str>) -> String {
    key.map(|key| format!(" for `{key}`")).unwrap_or_default()
}

macro_rules! refusal_into {
    ($($refusal:ident),*) => {$(
        impl<E> From<$refusal> for CommandError<E> {
            fn from(refusal: $refusal) -> Self {
                CommandError::$refusal(refusal)
            }
        }

        impl<E> From<$refusal> for QueryError<E> {
            fn from(refusal: $refusal) -> Self {
                QueryError::$refusal(refusal)
            }
        }
    )*};
}

refusal_into!(CircuitOpen, RateLimited, ConcurrencyLimited, Forbidden);

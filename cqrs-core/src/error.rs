//! Errors of the buses.

use std::fmt;
use std::time::Duration;

use crate::{EventDecodeError, ExpectedVersion, StoreError};

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
    /// The command or query ran and failed; the typed error, boxed.
    #[error("{name} failed: {source}")]
    Failed {
        /// The command or query name.
        name: &'static str,
        /// The typed error ([`CommandError`] or [`QueryError`]).
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

/// Two registered commands or queries share a wire name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("duplicate {kind} name `{name}`")]
pub struct DuplicateName {
    /// `"command"` or `"query"`.
    pub kind: &'static str,
    /// The shared name.
    pub name: &'static str,
}

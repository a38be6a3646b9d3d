//! Failures as HTTP problems: a status and an RFC 9457 `application/problem+json` body with a
//! stable machine-readable code, for every framework error and every domain error.
//!
//! One mapping serves the typed path (`bus.execute(..)` → [`CommandError`] /
//! [`QueryError`]) and the JSON path (`dispatcher.dispatch_json(..)` → [`DispatchError`]):
//! each error states its facts ([`AsProblem::failure`]: kind, domain code, message, invalid
//! fields, retry delay, idempotency key), and [`Problems::problem`] turns those facts into a
//! [`Problem`]. Nothing is downcast, and the same failure gives the same problem on both
//! paths.
//!
//! This module names no HTTP crate: the status is a `u16` and the body a `serde` type, so a
//! service converts them into its framework's response in a few lines (set the status, the
//! `Content-Type` [`CONTENT_TYPE`], `Retry-After` from [`Problem::retry_after`], and
//! serialize the body).
//!
//! # The body
//!
//! ```json
//! {
//!   "type": "urn:cqrs:problem:rejected:email_taken",
//!   "title": "The command was rejected",
//!   "status": 409,
//!   "detail": "the address ada@example.com is taken",
//!   "code": "rejected",
//!   "domain_code": "email_taken"
//! }
//! ```
//!
//! `type`, `title`, `status`, `detail` and `instance` are RFC 9457's members. The extension
//! members are `code` (the framework's [`ErrorKind::code`], always there), `domain_code` (a
//! [`DomainError::code`], when the aggregate or query handler failed with one), `errors`
//! (the invalid or malformed fields), `retry_after` (seconds, for rate limits and open
//! circuits; send it as the `Retry-After` header too) and `idempotency_key` (when the failure
//! concerns one). `type` is `{type_base}{code}`, or `{type_base}{code}:{domain_code}` for a
//! domain error, so a client can dispatch on `type` alone.
//!
//! # Statuses
//!
//! [`default_status`] maps each kind (see the table on [`ErrorKind`]); a domain code can
//! override it ([`Problems::domain_status`]: `"email_taken"` → 409). `not_found` maps to 404
//! out of the box. Internal failures (a store backend error, an undecodable stored event, a
//! missing store capability) get a generic `detail`: their messages may name tables, hosts or
//! stored data, which belong in the logs, not in a reply to a client.
//!
//! ```
//! use cqrs_core::prelude::*;
//! use cqrs_core::problem::{AsProblem, Problems};
//!
//! #[derive(Debug, thiserror::Error)]
//! pub enum UserError {
//!     #[error("the address is taken")]
//!     EmailTaken,
//! }
//!
//! impl DomainError for UserError {
//!     fn code(&self) -> &'static str {
//!         match self {
//!             UserError::EmailTaken => "email_taken",
//!         }
//!     }
//! }
//!
//! let problems = Problems::new().domain_status("email_taken", 409);
//!
//! // The typed path ...
//! let typed: CommandError<UserError> = CommandError::Rejected(UserError::EmailTaken);
//! let problem = problems.problem(&typed);
//! assert_eq!(problem.status, 409);
//! assert_eq!(problem.code, "rejected");
//! assert_eq!(problem.domain_code.as_deref(), Some("email_taken"));
//! assert_eq!(problem.problem_type, "urn:cqrs:problem:rejected:email_taken");
//!
//! // ... and any framework error, here a rate limit, with the delay for `Retry-After`.
//! let limited: CommandError<UserError> = CommandError::RateLimited(cqrs_core::RateLimited {
//!     limit: "per_user",
//!     key: Some("ada".into()),
//!     retry_after: std::time::Duration::from_millis(1500),
//! });
//! let problem = problems.problem(&limited);
//! assert_eq!((problem.status, problem.retry_after), (429, Some(2)));
//! let body = serde_json::to_value(&problem).unwrap();
//! assert_eq!(body["code"], "rate_limited");
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    CommandError, DispatchError, DomainError, ErrorKind, FieldError, QueryError, StoreError,
    ValidationErrors,
};

/// The media type of a problem body: `application/problem+json`.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// The prefix of `type` URIs unless [`Problems::type_base`] sets another.
pub const DEFAULT_TYPE_BASE: &str = "urn:cqrs:problem:";

/// The `detail` of internal failures, whose own messages stay in the logs.
pub const INTERNAL_DETAIL: &str = "the service failed to complete the request";

/// An RFC 9457 problem: the body of an error reply, with its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem type: `{type_base}{code}` or `{type_base}{code}:{domain_code}`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type, the same for every occurrence of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A URI for this occurrence (the request path, a request id), when the service sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The framework's stable code ([`ErrorKind::code`]).
    pub code: String,
    /// The domain error's stable code ([`DomainError::code`]), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_code: Option<String>,
    /// The invalid or malformed fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
    /// Seconds to wait before trying again (rate limits, open circuits); send it as the
    /// `Retry-After` header as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The idempotency key the failure concerns (reused with another body, a replayed
    /// rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Problem {
    /// Sets `instance`, the URI of this occurrence.
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// The value of a `Retry-After` header (delay in seconds), when the client should wait.
    pub fn retry_after_header(&self) -> Option<String> {
        self.retry_after.map(|seconds| seconds.to_string())
    }

    /// The body as JSON text.
    ///
    /// # Panics
    ///
    /// Never: a problem holds only strings and numbers.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a problem serializes: strings and numbers only")
    }
}

/// One invalid or malformed field of a problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemField {
    /// The field's path (`"email"`, `"address.zip"`, `"."` for the whole body).
    pub field: String,
    /// What is wrong, as a code (`"email"`, `"length"`, `"malformed"`).
    pub code: String,
    /// A human-readable message, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl From<&FieldError> for ProblemField {
    fn from(field: &FieldError) -> Self {
        Self {
            field: field.path.clone(),
            code: field.code.clone(),
            message: field.message.clone(),
        }
    }
}

/// What a failure says about itself: everything a [`Problem`] is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure<'a> {
    /// The framework's kind.
    pub kind: ErrorKind,
    /// The domain error's code.
    pub domain_code: Option<&'a str>,
    /// The message: the domain error's for a rejection, the error's own otherwise.
    pub message: String,
    /// The invalid or malformed fields.
    pub fields: Vec<ProblemField>,
    /// How long to wait before trying again.
    pub retry_after: Option<Duration>,
    /// The idempotency key concerned.
    pub idempotency_key: Option<&'a str>,
}

impl<'a> Failure<'a> {
    /// A failure of `kind` with `message` and nothing else.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            domain_code: None,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
            idempotency_key: None,
        }
    }

    /// Sets the domain code.
    #[must_use]
    pub fn with_domain_code(mut self, code: &'a str) -> Self {
        self.domain_code = Some(code);
        self
    }

    /// The facts of a command error whose domain error has no [`DomainError`] impl (so no
    /// domain code); errors that have one use [`AsProblem`].
    pub fn of_command<E: std::error::Error>(error: &'a CommandError<E>) -> Self {
        let message = match error {
            CommandError::Rejected(rejection) => rejection.to_string(),
            CommandError::AlreadyRejected { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let domain_code = match error {
            CommandError::AlreadyRejected { domain_code, .. } => domain_code.as_deref(),
            _ => None,
        };
        Self {
            kind: error.kind(),
            domain_code,
            message,
            fields: match error {
                CommandError::Invalid(errors) => fields_of(errors),
                _ => Vec::new(),
            },
            retry_after: error.retry_after(),
            idempotency_key: error.idempotency_key(),
        }
    }

    /// The facts of a query error whose handler error has no [`DomainError`] impl.
    pub fn of_query<E: std::error::Error>(error: &'a QueryError<E>) -> Self {
        let message = match error {
            QueryError::Handler(failure) => failure.to_string(),
            other => other.to_string(),
        };
        Self {
            kind: error.kind(),
            domain_code: None,
            message,
            fields: match error {
                QueryError::Invalid(errors) => fields_of(errors),
                _ => Vec::new(),
            },
            retry_after: error.retry_after(),
            idempotency_key: None,
        }
    }
}

fn fields_of(errors: &ValidationErrors) -> Vec<ProblemField> {
    errors.fields.iter().map(ProblemField::from).collect()
}

/// An error that can state its facts for a [`Problem`]. Implemented for every error of the
/// framework: [`CommandError`] and [`QueryError`] (when the domain error implements
/// [`DomainError`]; otherwise use [`Failure::of_command`] / [`Failure::of_query`]),
/// [`DispatchError`] and [`StoreError`].
pub trait AsProblem {
    /// The failure's facts.
    fn failure(&self) -> Failure<'_>;
}

impl<E: DomainError> AsProblem for CommandError<E> {
    fn failure(&self) -> Failure<'_> {
        let mut failure = Failure::of_command(self);
        if let Some(rejection) = self.rejection() {
            failure.domain_code = Some(rejection.code());
        }
        failure
    }
}

impl<E: DomainError> AsProblem for QueryError<E> {
    fn failure(&self) -> Failure<'_> {
        let mut failure = Failure::of_query(self);
        failure.domain_code = self.domain_code();
        failure
    }
}

impl AsProblem for DispatchError {
    fn failure(&self) -> Failure<'_> {
        match self {
            DispatchError::Failed {
                kind,
                domain_code,
                message,
                validation,
                ..
            } => Failure {
                kind: *kind,
                domain_code: *domain_code,
                message: message.clone(),
                fields: validation.as_ref().map(fields_of).unwrap_or_default(),
                retry_after: self.retry_after(),
                idempotency_key: self.idempotency_key(),
            },
            DispatchError::Malformed { path, message, .. } => Failure {
                fields: vec![ProblemField {
                    field: path.clone(),
                    code: "malformed".to_owned(),
                    message: Some(message.clone()),
                }],
                ..Failure::new(self.kind(), self.to_string())
            },
            other => Failure::new(other.kind(), other.to_string()),
        }
    }
}

impl AsProblem for StoreError {
    fn failure(&self) -> Failure<'_> {
        Failure {
            idempotency_key: match self {
                StoreError::IdempotencyKeyTaken { key, .. } => Some(key),
                _ => None,
            },
            ..Failure::new(self.kind(), self.to_string())
        }
    }
}

/// The status of `kind` when no domain code decides otherwise (the table on [`ErrorKind`]).
pub const fn default_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Validation
        | ErrorKind::BadRequest
        | ErrorKind::InvalidStreamId
        | ErrorKind::UnknownPosition => 400,
        ErrorKind::Forbidden => 403,
        ErrorKind::UnknownCommand | ErrorKind::UnknownQuery => 404,
        ErrorKind::Conflict | ErrorKind::UniqueKeyTaken | ErrorKind::DuplicateEventId => 409,
        ErrorKind::Rejected | ErrorKind::IdempotencyKeyReused => 422,
        ErrorKind::RateLimited => 429,
        ErrorKind::StoreUnavailable
        | ErrorKind::Refused
        | ErrorKind::RetriesExhausted
        | ErrorKind::CircuitOpen
        | ErrorKind::ConcurrencyLimited => 503,
        ErrorKind::Timeout => 504,
        _ => 500,
    }
}

/// The `title` of `kind`: a short summary, the same for every occurrence.
pub const fn title(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Rejected => "The command was rejected",
        ErrorKind::Validation => "Invalid fields",
        ErrorKind::Conflict => "Concurrent modification",
        ErrorKind::Timeout => "Timed out",
        ErrorKind::Refused => "Refused",
        ErrorKind::QueryFailed => "The query failed",
        ErrorKind::UnknownCommand => "Unknown command",
        ErrorKind::UnknownQuery => "Unknown query",
        ErrorKind::BadRequest => "Malformed body",
        ErrorKind::StoreUnavailable => "Storage unavailable",
        ErrorKind::DuplicateEventId => "Duplicate event id",
        ErrorKind::InvalidStreamId => "Invalid stream id",
        ErrorKind::UniqueKeyTaken => "Already taken",
        ErrorKind::UnknownPosition => "Unknown position",
        ErrorKind::IdempotencyKeyReused => "Idempotency key reused with another body",
        ErrorKind::RetriesExhausted => "Gave up after retries",
        ErrorKind::CircuitOpen => "Temporarily unavailable",
        ErrorKind::RateLimited => "Too many requests",
        ErrorKind::ConcurrencyLimited => "Too many concurrent requests",
        ErrorKind::Forbidden => "Forbidden",
        _ => "Internal error",
    }
}

/// Whether the messages of `kind` stay in the logs: they may name tables, hosts or stored
/// data.
pub const fn is_internal(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::EventDecode
            | ErrorKind::Serialize
            | ErrorKind::StoreUnavailable
            | ErrorKind::Unsupported
            | ErrorKind::RetriesExhausted
            | ErrorKind::DuplicateEventId
            | ErrorKind::UnknownPosition
            | ErrorKind::InvalidStreamId
    ) || default_status(kind) == 500
}

/// How a service turns failures into problems: the `type` prefix and the statuses of its
/// domain codes. Build it once; it is cheap to clone.
#[derive(Debug, Clone)]
pub struct Problems {
    type_base: Cow<'static, str>,
    domain: Arc<Vec<(Cow<'static, str>, u16)>>,
}

impl Default for Problems {
    fn default() -> Self {
        Self::new()
    }
}

impl Problems {
    /// The defaults: `type` under [`DEFAULT_TYPE_BASE`], the domain code `not_found` as 404.
    pub fn new() -> Self {
        Self {
            type_base: Cow::Borrowed(DEFAULT_TYPE_BASE),
            domain: Arc::new(vec![(Cow::Borrowed("not_found"), 404)]),
        }
    }

    /// The prefix of `type` URIs (`"https://errors.example.com/"`).
    #[must_use]
    pub fn type_base(mut self, base: impl Into<Cow<'static, str>>) -> Self {
        self.type_base = base.into();
        self
    }

    /// Failures carrying domain code `code` get `status` (replacing an earlier entry).
    ///
    /// # Panics
    ///
    /// If `status` is not an HTTP error status (400 to 599): a programming error.
    #[must_use]
    pub fn domain_status(mut self, code: impl Into<Cow<'static, str>>, status: u16) -> Self {
        assert!(
            (400..=599).contains(&status),
            "a problem's status is an error status, not {status}"
        );
        let code = code.into();
        let table = Arc::make_mut(&mut self.domain);
        table.retain(|(known, _)| *known != code);
        table.push((code, status));
        self
    }

    /// The status of a failure of `kind` carrying `domain_code`.
    pub fn status(&self, kind: ErrorKind, domain_code: Option<&str>) -> u16 {
        domain_code
            .and_then(|code| {
                self.domain
                    .iter()
                    .find(|(known, _)| known == code)
                    .map(|(_, status)| *status)
            })
            .unwrap_or_else(|| default_status(kind))
    }

    /// A problem the HTTP layer raises itself, before the framework is reached (a missing
    /// token, a body too large): `code` is the layer's own (`"unauthorized"`), `type` is
    /// `{type_base}{code}`.
    pub fn http(&self, status: u16, code: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            problem_type: format!("{}{code}", self.type_base),
            title: title.to_owned(),
            status,
            detail: Some(detail.into()),
            instance: None,
            code: code.to_owned(),
            domain_code: None,
            errors: Vec::new(),
            retry_after: None,
            idempotency_key: None,
        }
    }

    /// The problem of `error`.
    pub fn problem(&self, error: &(impl AsProblem + ?Sized)) -> Problem {
        self.from_failure(error.failure())
    }

    /// The problem made of `failure`'s facts.
    pub fn from_failure(&self, failure: Failure<'_>) -> Problem {
        let code = failure.kind.code();
        let problem_type = match failure.domain_code {
            Some(domain) => format!("{}{code}:{domain}", self.type_base),
            None => format!("{}{code}", self.type_base),
        };
        let detail = if is_internal(failure.kind) {
            INTERNAL_DETAIL.to_owned()
        } else {
            failure.message
        };
        Problem {
            problem_type,
            title: title(failure.kind).to_owned(),
            status: self.status(failure.kind, failure.domain_code),
            detail: Some(detail),
            instance: None,
            code: code.to_owned(),
            domain_code: failure.domain_code.map(str::to_owned),
            errors: failure.fields,
            retry_after: failure.retry_after.map(seconds_rounded_up),
            idempotency_key: failure.idempotency_key.map(str::to_owned),
        }
    }
}

/// `Retry-After` takes whole seconds: a wait shorter than asked would be refused again.
fn seconds_rounded_up(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

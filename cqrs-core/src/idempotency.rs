//! Idempotent commands: the key a command carries, and the outcome recorded under it.
//!
//! A command executed with an idempotency key runs at most once per key: the store records
//! the key, a hash of the command's body and the outcome in the same atomic step as the
//! events (or, for a rejection or a command that produced no events, in a small write of its
//! own). Executing the key again returns the recorded outcome without running the handler
//! or writing anything.
//!
//! - **Where the key comes from.** A field marked `#[command(idempotency_key = field)]`, or
//!   the caller's metadata ([`Metadata::with_idempotency_key`](crate::Metadata::with_idempotency_key),
//!   for instance from an HTTP `Idempotency-Key` header) for a command declared
//!   `#[command(idempotent)]`. The field wins when both are given. The key travels in the
//!   command's metadata (custom key [`METADATA_KEY`]), so the events it produced carry it.
//! - **Scope.** A key is scoped by the command's name ([`Command::NAME`](crate::Command::NAME)):
//!   the same key on two different commands names two executions.
//! - **Same key, other body.** The body is the command serialized as JSON (the commands
//!   that take keys are `Serialize`, checked at compile time by the derive) and compared by
//!   SHA-256. A key reused with another body is
//!   [`CommandError::IdempotencyKeyReused`](crate::CommandError::IdempotencyKeyReused);
//!   nothing runs.
//! - **Replayed outcomes.** An accepted command replays the same [`Committed`] (the first
//!   execution's command id, version and position). A rejection replays as
//!   [`CommandError::AlreadyRejected`](crate::CommandError::AlreadyRejected), carrying the
//!   domain code and message of the first rejection: the typed domain error is not stored
//!   (aggregates' errors need not be serializable), so "the same rejection" means the same
//!   [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) kind, domain code and message.
//!   Failures that are not the command's outcome (validation, conflicts after retries,
//!   store errors, timeouts) record nothing: trying the key again runs the command.
//! - **Concurrency.** Concurrent executions of one key write once: the store refuses the
//!   second record of a key ([`StoreError::IdempotencyKeyTaken`](crate::StoreError::IdempotencyKeyTaken),
//!   its append undone), and the repository then returns the recorded outcome.
//! - **Lost replies.** A caller that saw a timeout or a dropped connection asks what happened
//!   with [`CommandBus::outcome_of`](crate::CommandBus::outcome_of), or simply executes the
//!   same key again. The error names the key
//!   ([`CommandError::idempotency_key`](crate::CommandError::idempotency_key)), also where it
//!   came from the caller's metadata, on every failure that leaves the outcome open: a
//!   [`Timeout`](crate::CommandError::Timeout), retries given up
//!   ([`RetriesExhausted`](crate::CommandError::RetriesExhausted)), a connection lost
//!   during the append ([`OutcomeUnknown`](crate::CommandError::OutcomeUnknown)).
//! - **Retention.** Records stay until purged:
//!   [`CommandBus::purge_idempotency_keys`](crate::CommandBus::purge_idempotency_keys)
//!   deletes those older than the bus's retention
//!   ([`CommandBusBuilder::idempotency_retention`](crate::CommandBusBuilder::idempotency_retention),
//!   24 hours by default); run it periodically. A key is honoured for at least that long.
//!
//! A command without a key pays nothing: no hashing, no lookup, the plain append.
//!
//! On the JSON path ([`CommandDispatcher`](crate::CommandDispatcher)) a replayed rejection
//! has the kind `rejected` and the first rejection's message; its domain code is in
//! [`CommandError::AlreadyRejected`](crate::CommandError::AlreadyRejected) only.
//!
//! ```
//! use cqrs_core::prelude::*;
//! use cqrs_core::IdempotentOutcome;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Paid { pub cents: u64 }
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum InvoiceEvent { Paid(Paid) }
//!
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[command(aggregate = Invoice, id = invoice, idempotency_key = request_id)]
//! pub struct Pay { pub invoice: u32, pub request_id: String, pub cents: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("never")]
//! pub struct Never;
//!
//! #[derive(Debug, Default)]
//! pub struct Invoice { paid: u64 }
//!
//! #[aggregate(event = InvoiceEvent, error = Never)]
//! impl Invoice {
//!     #[command_handler]
//!     fn pay(&self, cmd: &Pay) -> Result<Paid, Never> { Ok(Paid { cents: cmd.cents }) }
//!     #[event_handler]
//!     fn on_paid(&mut self, e: &Paid) { self.paid += e.cents }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = InMemoryEventStore::new();
//! let bus = CommandBus::builder(store.clone()).aggregate::<Invoice>(()).build();
//! let pay = || Pay { invoice: 7, request_id: "req-1".into(), cents: 500 };
//!
//! let first = bus.execute(pay()).await.unwrap();
//! // The client retries after a timeout: same key, same body, same outcome, nothing written.
//! let again = bus.execute(pay()).await.unwrap();
//! assert_eq!(first, again);
//! assert_eq!(store.len(), 1);
//!
//! // Or it asks what happened.
//! let record = bus.outcome_of::<Pay>("req-1").await.unwrap().unwrap();
//! assert_eq!(record.outcome, IdempotentOutcome::Committed(first));
//!
//! // The same key with another body is refused.
//! let other = Pay { cents: 900, ..pay() };
//! assert!(matches!(
//!     bus.execute(other).await,
//!     Err(CommandError::IdempotencyKeyReused { .. })
//! ));
//! # }
//! ```

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{AppendResult, Committed};

/// The custom metadata key ([`Metadata::extra`](crate::Metadata::extra)) holding a command's
/// idempotency key.
pub const METADATA_KEY: &str = "idempotency_key";

/// How long idempotency records are kept by default: 24 hours.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// What a store records under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The command's name: keys are scoped by it.
    pub command_name: String,
    /// The key.
    pub key: String,
    /// SHA-256 of the command's JSON body, hex.
    pub body_hash: String,
    /// The stream the command targeted.
    pub stream_id: String,
    /// What the execution returned.
    pub outcome: IdempotentOutcome,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// The outcome of an idempotent command, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IdempotentOutcome {
    /// The command was accepted (with or without events).
    Committed(Committed),
    /// The aggregate rejected the command.
    Rejected(RecordedRejection),
}

/// A domain rejection as recorded for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRejection {
    /// The domain error's [`DomainError::code`](crate::DomainError::code), when it has one.
    pub domain_code: Option<String>,
    /// The domain error's message.
    pub message: String,
}

/// What [`EventStore::append_idempotent`](crate::EventStore::append_idempotent) records
/// besides the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentWrite {
    /// The command's name.
    pub command_name: String,
    /// The key.
    pub key: String,
    /// SHA-256 of the command's JSON body, hex.
    pub body_hash: String,
    /// The command execution's id (the recorded [`Committed::command_id`]).
    pub command_id: Uuid,
    /// The rejection to record; `None` records the append's [`Committed`]. A rejection is
    /// recorded with no events.
    pub rejection: Option<RecordedRejection>,
}

impl IdempotentWrite {
    /// The record of this write after `appended` (`events` events) to `stream_id`.
    pub fn into_record(
        self,
        stream_id: &str,
        appended: &AppendResult,
        events: usize,
    ) -> IdempotencyRecord {
        let outcome = match self.rejection {
            Some(rejection) => IdempotentOutcome::Rejected(rejection),
            None => IdempotentOutcome::Committed(Committed {
                command_id: self.command_id,
                stream_id: stream_id.to_owned(),
                stream_version: appended.stream_version,
                position: appended.last_position(),
                events,
            }),
        };
        IdempotencyRecord {
            command_name: self.command_name,
            key: self.key,
            body_hash: self.body_hash,
            stream_id: stream_id.to_owned(),
            outcome,
            created_at: appended.recorded_at,
        }
    }
}

/// SHA-256 of a command's JSON body, as lowercase hex.
pub fn body_hash(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

//! Events of a `cqrs-postgres` store to other services through NATS JetStream.
//!
//! - [`Relay`] follows the store's global order (a durable store subscription, so it
//!   inherits the subscription's gap safety and checkpoint) and publishes every event to a
//!   JetStream stream: subject from [`Subjects`], event id as `Nats-Msg-Id`, metadata as
//!   [`headers`]. It waits for JetStream's acknowledgement before its checkpoint moves, with a
//!   bounded number of publishes in flight, and keeps each stream's order.
//! - [`consumer`] feeds the same `#[projection]` read models and `#[saga]`s a store
//!   subscription and saga runner feed, from a durable JetStream pull consumer, rebuilding
//!   each [`RecordedEvent`](cqrs_core::RecordedEvent) from the headers and payload.
//!
//! The client is [`async_nats`], the NATS project's own Rust client: it speaks JetStream
//! (publish acknowledgements, streams, pull consumers) and runs on Tokio like the rest of the
//! framework.
//!
//! # Subjects
//!
//! The default subject of an event is `<prefix>.<stream category>.<event type>`:
//!
//! ```
//! use cqrs_nats::Subjects;
//!
//! let subjects = Subjects::by_category("bank");
//! assert_eq!(
//!     subjects.subject_for("BankAccount-0190c2e5", "account.deposited"),
//!     "bank.BankAccount.account.deposited",
//! );
//! ```
//!
//! # Publishing
//!
//! ```no_run
//! use cqrs_nats::{Relay, StreamSettings, Subjects};
//!
//! # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let relay = Relay::new(client, "BANK")
//!     .subjects(Subjects::by_category("bank"))
//!     .max_in_flight(512)
//!     .start(&pool)
//!     .await?; // a typed `RelayError` if JetStream is off or the stream does not fit
//! // ... the service runs; the relay publishes in the background ...
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery
//!
//! At least once into JetStream, and no duplicate stored: after a crash the relay
//! re-publishes the events it had not seen acknowledged, and JetStream drops each one whose
//! `Nats-Msg-Id` it stored within the stream's duplicate window
//! ([`StreamSettings::duplicate_window`], checked at start). A relay kept down longer than
//! that window may store a second copy of its last unacknowledged events (at most
//! [`Relay::max_in_flight`] of them) under a new stream sequence; a consumer that must be
//! immune to that as well keys its effects on [`RecordedEvent::event_id`](cqrs_core::RecordedEvent::event_id).
//! [`consumer::PgProjection`] recognises redeliveries of a message by its stream sequence.
//!
//! # Tests
//!
//! The crate's tests run against a real NATS server with JetStream (`NATS_URL`, default
//! `127.0.0.1:4222`, started by `scripts/ensure-nats` when installed) and PostgreSQL; without
//! a NATS server they are skipped, each printing a banner saying so.

pub mod consumer;
pub mod headers;
mod relay;
mod setup;
mod subject;

pub use relay::{DEFAULT_RELAY_NAME, Relay, RelayError};
pub use setup::{SetupError, StreamSettings};
pub use subject::{Subjects, category, is_valid_subject};

pub use async_nats::jetstream::stream::{RetentionPolicy, StorageType};

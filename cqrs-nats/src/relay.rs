//! The relay: the store's global order, published to JetStream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use cqrs_core::{BoxFuture, RecordedEvent};
use cqrs_postgres::subscription::{
    Confirmation, EventTypes, ForwardError, Forwarder, Subscription, SubscriptionError,
    SubscriptionHandle, SubscriptionOptions,
};
use sqlx::PgPool;

use crate::headers;
use crate::setup::{SetupError, StreamSettings, ensure_stream};
use crate::subject::{Subjects, is_valid_subject};

/// The relay's default name: the key of its checkpoint in `cqrs_checkpoints`.
pub const DEFAULT_RELAY_NAME: &str = "cqrs-nats-relay";

/// Why the relay did not start, or why publishing an event failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The JetStream side is not usable: no JetStream, or an incompatible stream.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The store's subscription could not start (database unreachable, migrations not run).
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    /// A custom subject mapping returned a subject NATS cannot publish on.
    #[error("the subject mapping gave `{subject}` for event {event_id}: not a valid subject")]
    InvalidSubject {
        /// The subject.
        subject: String,
        /// The event.
        event_id: uuid::Uuid,
    },
    /// JetStream refused or did not acknowledge a publish.
    #[error("publishing event {event_id} on `{subject}` failed: {reason}")]
    Publish {
        /// The event.
        event_id: uuid::Uuid,
        /// Its subject.
        subject: String,
        /// What the client or server reported.
        reason: String,
    },
    /// A publish was acknowledged by a stream other than the relay's: another stream
    /// captures the subject too.
    #[error(
        "event {event_id} was stored by stream `{stored_by}`, not `{expected}`: another stream captures its subject"
    )]
    WrongStream {
        /// The event.
        event_id: uuid::Uuid,
        /// The stream that acknowledged it.
        stored_by: String,
        /// The relay's stream.
        expected: String,
    },
}

/// Publishes every event of a PostgreSQL store to a JetStream stream, in the store's global
/// order, resumably.
///
/// The relay is a durable subscription of the store ([`Subscription::acknowledged`]): it
/// reads the gap-free global order from its stored checkpoint, publishes each event with
/// its id as `Nats-Msg-Id` and its metadata as headers ([`headers`](crate::headers)), keeps
/// up to [`max_in_flight`](Self::max_in_flight) publishes awaiting their JetStream
/// acknowledgement, and stores its checkpoint only behind acknowledged events. Events are
/// published one after another on one connection, so JetStream stores each stream's events
/// in version order.
///
/// Killed at any point, it resumes from its checkpoint and publishes the unacknowledged tail
/// again; JetStream drops those it already has within the stream's duplicate window. Run one
/// relay per store and stream.
#[derive(Debug)]
#[must_use = "a relay does nothing until started"]
pub struct Relay {
    client: async_nats::Client,
    name: &'static str,
    subjects: Subjects,
    stream: StreamSettings,
    max_in_flight: usize,
    ack_timeout: Duration,
    options: SubscriptionOptions,
}

impl Relay {
    /// A relay over `client` to the stream `stream`, publishing on
    /// [`Subjects::by_category`]`("events")`.
    pub fn new(client: async_nats::Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            name: DEFAULT_RELAY_NAME,
            subjects: Subjects::by_category("events"),
            stream: StreamSettings::new(stream),
            max_in_flight: 1024,
            ack_timeout: Duration::from_secs(10),
            options: SubscriptionOptions {
                batch_size: 1000,
                ..SubscriptionOptions::default()
            },
        }
    }

    /// The relay's name: the key of its checkpoint (default [`DEFAULT_RELAY_NAME`]). Two
    /// relays of one store to different streams need different names.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Where each event is published.
    pub fn subjects(mut self, subjects: Subjects) -> Self {
        self.subjects = subjects;
        self
    }

    /// The stream's settings, checked or applied at start.
    pub fn stream_settings(mut self, settings: StreamSettings) -> Self {
        self.stream = settings;
        self
    }

    /// Most publishes awaiting their acknowledgement at once (default 1024, at least 1).
    pub fn max_in_flight(mut self, publishes: usize) -> Self {
        self.max_in_flight = publishes.max(1);
        self
    }

    /// How long to wait for one publish's acknowledgement before the attempt fails and is
    /// retried from the checkpoint (default 10 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// The store subscription's options: batch size (default 1000), polling, retry backoff,
    /// giving up after consecutive failures.
    pub fn options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks (or creates) the JetStream stream, then starts following the store in a
    /// background task. The returned handle is the store subscription's: `shutdown`, `abort`,
    /// `status` (its checkpoint counts acknowledged events only), and `wait_for` a position
    /// to be in JetStream.
    pub async fn start(self, pool: &PgPool) -> Result<SubscriptionHandle, RelayError> {
        let client = self.client;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .ack_timeout(self.ack_timeout)
            .max_ack_inflight(self.max_in_flight.saturating_mul(2))
            .backpressure_on_inflight(true)
            .build(client.clone());
        ensure_stream(&client, &js, &self.stream, &self.subjects.filter()).await?;
        let forwarder = NatsForwarder {
            name: self.name,
            js,
            subjects: self.subjects,
            stream: Arc::from(self.stream.name),
        };
        Ok(Subscription::acknowledged(forwarder, self.max_in_flight)
            .options(self.options)
            .start(pool)
            .await?)
    }
}

struct NatsForwarder {
    name: &'static str,
    js: Context,
    subjects: Subjects,
    /// Shared with each confirmation, which checks the acknowledging stream against it.
    stream: Arc<str>,
}

impl Forwarder for NatsForwarder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn event_types(&self) -> EventTypes {
        EventTypes::All
    }

    fn forward<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Confirmation, ForwardError>> {
        Box::pin(async move {
            let event_id = event.event_id;
            let subject = self.subjects.subject(event);
            if !is_valid_subject(&subject) {
                return Err(RelayError::InvalidSubject { subject, event_id }.into());
            }
            let message = PublishMessage::build()
                .headers(headers::encode(event))
                .payload(Bytes::copy_from_slice(event.payload.as_str().as_bytes()));
            let publish_failed = move |subject: &str, reason: String| RelayError::Publish {
                event_id,
                subject: subject.to_owned(),
                reason,
            };
            // Kept for an error message: a `Subject` shares its bytes with the one published.
            let subject = async_nats::Subject::from(subject);
            let ack = self
                .js
                .send_publish(subject.clone(), message)
                .await
                .map_err(|e| publish_failed(&subject, e.to_string()))?;
            let expected = Arc::clone(&self.stream);
            let confirmation: Confirmation = Box::pin(async move {
                let ack = ack.await.map_err(|e| {
                    let reason = if e.kind() == PublishErrorKind::StreamNotFound {
                        "no stream captures the subject (was the stream deleted?)".to_owned()
                    } else {
                        e.to_string()
                    };
                    publish_failed(&subject, reason)
                })?;
                if *ack.stream != *expected {
                    return Err(RelayError::WrongStream {
                        event_id,
                        stored_by: ack.stream,
                        expected: expected.to_string(),
                    }
                    .into());
                }
                Ok(())
            });
            Ok(confirmation)
        })
    }
}

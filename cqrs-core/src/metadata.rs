//! What is recorded with every event besides its payload.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The position of an event in a store's global log. `GlobalPosition::START` precedes every
/// event.
///
/// A position identifies an event and is what `read_all_from` resumes after. Whether positions
/// compare like the global order is up to the store: the in-memory store assigns them in
/// commit order, so they do; PostgreSQL orders by `(transaction id, position)`, so two
/// positions from concurrent transactions may compare the other way round. Ask the store (or
/// a subscription's progress) whether one event is before another rather than comparing numbers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GlobalPosition(pub u64);

impl GlobalPosition {
    /// The position before the first event.
    pub const START: GlobalPosition = GlobalPosition(0);
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Metadata travelling with a command and recorded on each event it produces.
///
/// `correlation_id` ties together everything one request caused; `causation_id` names the
/// message that directly caused this one. The command bus fills both for events: the
/// correlation id is the command's (or the command id when it has none), the causation id is
/// the command id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Shared by every message one request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the message that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The acting user, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// User-defined key/values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

impl Metadata {
    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the acting user.
    #[must_use]
    pub fn with_user_id(mut self, user: impl Into<String>) -> Self {
        self.user_id = Some(user.into());
        self
    }

    /// Adds a user-defined key/value.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

/// An event ready to append: serialized, not yet positioned.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id (UUID v7, time-ordered).
    pub event_id: Uuid,
    /// Stable type name.
    pub event_type: Cow<'static, str>,
    /// Payload schema version.
    pub schema_version: u32,
    /// Serialized payload.
    pub payload: Value,
    /// Correlation, causation, user and custom keys.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Serializes a typed event with a fresh v7 id.
    pub fn from_event<E: crate::Event>(
        event: &E,
        metadata: Metadata,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type: Cow::Borrowed(event.event_type()),
            schema_version: event.schema_version(),
            payload: event.to_payload()?,
            metadata,
        })
    }
}

/// An event as the store recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Unique id (UUID v7).
    pub event_id: Uuid,
    /// Stable type name.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: u32,
    /// The stream the event belongs to.
    pub stream_id: String,
    /// 1-based version of the stream after this event.
    pub stream_version: u64,
    /// Position in the store's global order.
    pub position: GlobalPosition,
    /// When the store recorded the event.
    pub recorded_at: DateTime<Utc>,
    /// Serialized payload.
    pub payload: Value,
    /// Correlation, causation, user and custom keys.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// Decodes the payload as event enum `E`.
    pub fn decode<E: crate::Event>(&self) -> Result<E, crate::EventDecodeError> {
        E::from_payload(&self.event_type, self.schema_version, &self.payload)
    }
}

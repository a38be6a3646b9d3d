//! What is recorded with every event besides its payload.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
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

    /// Sets the idempotency key of the command this metadata goes with (custom key
    /// [`idempotency::METADATA_KEY`](crate::idempotency::METADATA_KEY)); see
    /// [`idempotency`](crate::idempotency).
    #[must_use]
    pub fn with_idempotency_key(self, key: impl Into<String>) -> Self {
        self.with(crate::idempotency::METADATA_KEY, key.into())
    }

    /// The idempotency key, if one was set.
    pub fn idempotency_key(&self) -> Option<&str> {
        if self.extra.is_empty() {
            return None;
        }
        self.extra
            .get(crate::idempotency::METADATA_KEY)
            .and_then(Value::as_str)
    }

    /// Sets the W3C `traceparent` (custom key
    /// [`trace_context::METADATA_KEY`](crate::trace_context::METADATA_KEY), stored as its
    /// header text); see [`trace_context`](crate::trace_context).
    #[must_use]
    pub fn with_traceparent(self, traceparent: crate::TraceParent) -> Self {
        self.with(crate::trace_context::METADATA_KEY, traceparent.to_string())
    }

    /// The `traceparent`, if one was set and it parses.
    pub fn traceparent(&self) -> Option<crate::TraceParent> {
        self.try_traceparent().ok().flatten()
    }

    /// The `traceparent`: `Ok(None)` when none was set, an error when the value is not a
    /// well-formed one.
    pub fn try_traceparent(&self) -> Result<Option<crate::TraceParent>, crate::TraceParentError> {
        if self.extra.is_empty() {
            return Ok(None);
        }
        match self.extra.get(crate::trace_context::METADATA_KEY) {
            None => Ok(None),
            Some(Value::String(text)) => text.parse().map(Some),
            Some(_) => Err(crate::TraceParentError::NotAString),
        }
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
    pub payload: Payload,
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
    pub payload: Payload,
    /// Correlation, causation, user and custom keys.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// The W3C `traceparent` the event was recorded with (the one of the command that
    /// produced it), if any; see [`trace_context`](crate::trace_context).
    pub fn traceparent(&self) -> Option<crate::TraceParent> {
        self.metadata.traceparent()
    }

    /// Decodes the payload as event enum `E`, upcasting an old version (see
    /// [`Event::from_payload`](crate::Event::from_payload)); an event an upcaster splits into
    /// several, or none, is [`EventDecodeError::NotOne`](crate::EventDecodeError::NotOne).
    pub fn decode<E: crate::Event>(&self) -> Result<E, crate::EventDecodeError> {
        E::from_payload(&self.event_type, self.schema_version, &self.payload)
    }

    /// Decodes every event of enum `E` this stored event stands for (see
    /// [`Event::decode_all`](crate::Event::decode_all)).
    pub fn decode_all<E: crate::Event>(
        &self,
    ) -> Result<crate::Decoded<E>, crate::EventDecodeError> {
        E::decode_all(&self.event_type, self.schema_version, &self.payload)
    }
}

/// A serialized event payload: one JSON document, kept as text.
///
/// Events are written once and read many times, so the payload stays in the form a store
/// holds it in: serializing an event writes its text directly, and decoding reads the typed
/// variant straight from that text, with no intermediate [`serde_json::Value`] tree on either
/// path. [`Payload::to_value`] builds the tree when one is wanted.
///
/// Equality compares JSON values, not spelling: a store may normalize whitespace and key
/// order (PostgreSQL's `jsonb` does), and `{"a":1,"b":2}` equals `{"b": 2, "a": 1}`.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Serializes `value` into a payload.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// A payload from JSON text; fails unless the text is one valid JSON document.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    /// The JSON `null` payload of unit event variants.
    pub fn null() -> Self {
        Self::encode(&Value::Null).unwrap_or_else(|_| unreachable!("`null` always serializes"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The payload as a JSON value tree.
    pub fn to_value(&self) -> Value {
        // The text was checked to be one JSON document when the payload was made.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// Deserializes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The raw JSON, for encoders that write it verbatim.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        Self::encode(value).expect("a JSON value always serializes")
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

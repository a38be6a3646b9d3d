//! An event as a NATS message: the payload is the event's stored JSON, everything else a
//! header. [`encode`] and [`decode`] are inverse: a consumer rebuilds the same
//! [`RecordedEvent`] the store recorded.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use cqrs_core::{GlobalPosition, Metadata, Payload, RecordedEvent};
use serde_json::Value;
use uuid::Uuid;

/// JetStream's de-duplication header; the relay sets it to the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event's stored type name.
pub const EVENT_TYPE: &str = "Cqrs-Event-Type";
/// The event's schema version.
pub const SCHEMA_VERSION: &str = "Cqrs-Schema-Version";
/// The stream (aggregate instance) the event belongs to, percent-encoded.
pub const STREAM_ID: &str = "Cqrs-Stream-Id";
/// The event's version within its stream.
pub const STREAM_VERSION: &str = "Cqrs-Stream-Version";
/// The event's global position in the store.
pub const POSITION: &str = "Cqrs-Position";
/// When the store recorded the event (RFC 3339).
pub const RECORDED_AT: &str = "Cqrs-Recorded-At";
/// Metadata: the correlation id.
pub const CORRELATION_ID: &str = "Cqrs-Correlation-Id";
/// Metadata: the causation id.
pub const CAUSATION_ID: &str = "Cqrs-Causation-Id";
/// Metadata: the acting user, percent-encoded.
pub const USER_ID: &str = "Cqrs-User-Id";
/// Metadata: the W3C trace context, under its standard header name.
pub const TRACEPARENT: &str = "traceparent";
/// Metadata: the other user-defined key/values, as percent-encoded JSON.
pub const METADATA_EXTRA: &str = "Cqrs-Metadata";

/// Why a message is not an event the relay published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no headers at all.
    #[error("the message has no headers: not published by the relay")]
    NoHeaders,
    /// A required header is missing.
    #[error("header `{0}` is missing")]
    Missing(&'static str),
    /// A header does not hold what it should.
    #[error("header `{header}` is malformed: {reason}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The payload is not valid UTF-8 JSON text.
    #[error("the payload is not UTF-8 JSON text: {0}")]
    Payload(String),
}

/// The headers the relay publishes `event` with.
pub fn encode(event: &RecordedEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = event.event_id.to_string();
    headers.insert(MSG_ID, id.as_str());
    headers.insert(EVENT_TYPE, escape(&event.event_type));
    headers.insert(SCHEMA_VERSION, event.schema_version.to_string());
    headers.insert(STREAM_ID, escape(&event.stream_id));
    headers.insert(STREAM_VERSION, event.stream_version.to_string());
    headers.insert(POSITION, event.position.0.to_string());
    headers.insert(
        RECORDED_AT,
        event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    );
    let metadata = &event.metadata;
    if let Some(id) = metadata.correlation_id {
        headers.insert(CORRELATION_ID, id.to_string());
    }
    if let Some(id) = metadata.causation_id {
        headers.insert(CAUSATION_ID, id.to_string());
    }
    if let Some(user) = &metadata.user_id {
        headers.insert(USER_ID, escape(user));
    }
    let mut extra = metadata.extra.clone();
    if let Some(Value::String(traceparent)) = extra.get(cqrs_core::trace_context::METADATA_KEY) {
        headers.insert(TRACEPARENT, escape(traceparent));
        extra.remove(cqrs_core::trace_context::METADATA_KEY);
    }
    if !extra.is_empty() {
        // A map of JSON values always serializes.
        let json = serde_json::to_string(&extra).unwrap_or_default();
        headers.insert(METADATA_EXTRA, escape(&json));
    }
    headers
}

/// Rebuilds the recorded event from a message's headers and payload.
pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<RecordedEvent, DecodeError> {
    let headers = headers.ok_or(DecodeError::NoHeaders)?;
    let text = |name: &'static str| {
        headers
            .get(name)
            .map(async_nats::HeaderValue::as_str)
            .ok_or(DecodeError::Missing(name))
    };
    let optional = |name: &'static str| headers.get(name).map(async_nats::HeaderValue::as_str);
    let malformed =
        |header: &'static str, reason: String| DecodeError::Malformed { header, reason };
    let number = |name: &'static str| -> Result<u64, DecodeError> {
        text(name)?
            .parse::<u64>()
            .map_err(|e| malformed(name, e.to_string()))
    };
    let uuid = |name: &'static str, value: &str| -> Result<Uuid, DecodeError> {
        value
            .parse()
            .map_err(|e: uuid::Error| malformed(name, e.to_string()))
    };

    let mut metadata = Metadata {
        correlation_id: optional(CORRELATION_ID)
            .map(|v| uuid(CORRELATION_ID, v))
            .transpose()?,
        causation_id: optional(CAUSATION_ID)
            .map(|v| uuid(CAUSATION_ID, v))
            .transpose()?,
        user_id: optional(USER_ID)
            .map(|v| unescape(v).map_err(|e| malformed(USER_ID, e)))
            .transpose()?,
        extra: BTreeMap::new(),
    };
    if let Some(extra) = optional(METADATA_EXTRA) {
        let json = unescape(extra).map_err(|e| malformed(METADATA_EXTRA, e))?;
        metadata.extra =
            serde_json::from_str(&json).map_err(|e| malformed(METADATA_EXTRA, e.to_string()))?;
    }
    if let Some(traceparent) = optional(TRACEPARENT) {
        let traceparent = unescape(traceparent).map_err(|e| malformed(TRACEPARENT, e))?;
        metadata.extra.insert(
            cqrs_core::trace_context::METADATA_KEY.to_owned(),
            Value::String(traceparent),
        );
    }

    let schema_version = number(SCHEMA_VERSION)?;
    let payload = std::str::from_utf8(payload).map_err(|e| DecodeError::Payload(e.to_string()))?;
    Ok(RecordedEvent {
        event_id: uuid(MSG_ID, text(MSG_ID)?)?,
        event_type: unescape(text(EVENT_TYPE)?).map_err(|e| malformed(EVENT_TYPE, e))?,
        schema_version: u32::try_from(schema_version)
            .map_err(|e| malformed(SCHEMA_VERSION, e.to_string()))?,
        stream_id: unescape(text(STREAM_ID)?).map_err(|e| malformed(STREAM_ID, e))?,
        stream_version: number(STREAM_VERSION)?,
        position: GlobalPosition(number(POSITION)?),
        recorded_at: DateTime::parse_from_rfc3339(text(RECORDED_AT)?)
            .map_err(|e| malformed(RECORDED_AT, e.to_string()))?
            .with_timezone(&Utc),
        payload: Payload::from_json(payload.to_owned())
            .map_err(|e| DecodeError::Payload(e.to_string()))?,
        metadata,
    })
}

/// Percent-encodes `%`, whitespace and control characters: a header value keeps any text.
fn escape(text: &str) -> String {
    if !text
        .chars()
        .any(|c| c == '%' || c.is_whitespace() || c.is_control())
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(text: &str) -> Result<String, String> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("a `%` at byte {i} is not followed by two hex digits"))?;
            let byte = u8::from_str_radix(hex, 16)
                .map_err(|_| format!("`%{hex}` at byte {i} is not an escape"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        for text in ["plain", "with space", "50%", "line\r\nbreak", "ünï çødé\t"] {
            let escaped = escape(text);
            assert!(!escaped.contains(['\r', '\n', ' ']));
            assert_eq!(unescape(&escaped).unwrap(), text);
        }
        assert!(unescape("%G1").is_err());
        assert!(unescape("%4").is_err());
    }
}

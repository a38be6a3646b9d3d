//! W3C trace context: the `traceparent` header a command carries in and its events carry on.
//!
//! A [`TraceParent`] is `00-<trace id>-<parent id>-<flags>` in lowercase hex
//! (32, 16 and 2 digits). The [`Tracing`](crate::middleware::Tracing) middleware reads the
//! caller's from [`Metadata::traceparent`](crate::Metadata::traceparent) (custom key
//! [`METADATA_KEY`], a string), starts a trace when there is none, and records the command's
//! own on every event it produces; projections fed those events continue the trace
//! ([`RecordedEvent::traceparent`](crate::RecordedEvent::traceparent), [`event_span`]).
//!
//! # OpenTelemetry export (feature `otel`)
//!
//! The spans stay `tracing` spans; the application installs the `tracing-opentelemetry`
//! layer with the SDK, exporter and sampler of its choice. The framework sets each span's
//! OpenTelemetry parent from the trace context it carries ([`adopt`]):
//!
//! - the `command` span's parent is the caller's traceparent (from the metadata); without
//!   one, the span keeps the parent `tracing` gives it (the current span, for instance an
//!   HTTP request's, or a new trace);
//! - the traceparent recorded on the command's events is the exported command span's own
//!   (its trace id and span id), not an id of this module's;
//! - each `event_handled` span (in-process fan-out, PostgreSQL subscriptions) has the
//!   event's traceparent as parent, whichever span is current where the event is handled.
//!
//! So a projection's span, in this process or another, is a child of the span of the command
//! that recorded its event, in the caller's trace. Without an OpenTelemetry layer, the ids
//! are those of [`TraceParent::new_root`] and [`TraceParent::child`], as without the feature.
//!
//! Why `tracing-opentelemetry`: the framework already describes its work with `tracing`
//! spans, and that bridge (kept by the tokio and OpenTelemetry projects) exports them as they
//! are; the only thing it cannot know is a parent that arrives as text in a command's
//! metadata or an event's, which is what this module supplies. The `opentelemetry` API crate
//! (trace part only) gives the span-context types; the SDK stays the application's choice.
//!
//! ```
//! use cqrs_core::trace_context::{TraceParent, TraceParentError};
//!
//! let caller: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
//!     .parse()
//!     .unwrap();
//! assert_eq!(caller.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(
//!     caller.to_string(),
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
//! );
//!
//! let child = caller.child();
//! assert_eq!(child.trace_id(), caller.trace_id());
//! assert_ne!(child.parent_id(), caller.parent_id());
//!
//! let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>();
//! assert_eq!(zero, Err(TraceParentError::ZeroTraceId));
//! ```

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::str::FromStr;

use crate::RecordedEvent;

/// The custom metadata key ([`Metadata::extra`](crate::Metadata::extra)) holding the
/// `traceparent`, as its header text.
pub const METADATA_KEY: &str = "traceparent";

/// A 16-byte trace id; displays as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (a `traceparent`'s parent id); displays as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// Formats `bytes` as lowercase hex in one write (a tracing field, a header: this runs per
/// command, so not a `write!` per byte).
fn write_hex<const N: usize>(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut out = [0; N];
    hex_into(&mut out, bytes);
    f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex::<32>(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex::<16>(f, &self.0)
    }
}

/// 64 random bits from a generator of this thread (wyrand), seeded from the random keys the
/// standard library draws from the operating system for its hash maps.
///
/// Fast (a multiplication) and, across threads and processes, distinct with overwhelming
/// probability; not for secrets. Trace and span ids need no more, and a command needs up to
/// two.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(u64::from(std::process::id()));
            hasher.finish()
        });
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(next);
        let product = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        #[allow(clippy::cast_possible_truncation)] // the fold keeps 64 bits on purpose
        let folded = ((product >> 64) as u64) ^ (product as u64);
        folded
    })
}

impl SpanId {
    /// A fresh, non-zero span id, from a fast per-thread random generator (see
    /// [`TraceId::random`]).
    pub fn random() -> Self {
        Self(random_u64().max(1).to_be_bytes())
    }
}

impl TraceId {
    /// A fresh, non-zero trace id: 128 bits from a per-thread random generator seeded from
    /// the operating system's randomness (through the standard library's hash-map keys).
    /// Distinct across threads and processes with overwhelming probability; not for secrets.
    pub fn random() -> Self {
        let high = random_u64();
        let low = random_u64().max(1);
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&high.to_be_bytes());
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        Self(bytes)
    }
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Not 55 characters (`00-` + 32 + `-` + 16 + `-` + 2).
    #[error("a traceparent has 55 characters, this one {0}")]
    Length(usize),
    /// The fields are not separated by `-` where they should be.
    #[error("a traceparent separates its fields with `-`")]
    Separator,
    /// A field holds something else than lowercase hex digits.
    #[error("the {0} of a traceparent is not lowercase hex")]
    Hex(&'static str),
    /// A version other than `00` (only version 00 is understood; `ff` is forbidden).
    #[error("unsupported traceparent version {0:02x}")]
    Version(u8),
    /// The trace id is all zeros.
    #[error("a traceparent's trace id must not be all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros.
    #[error("a traceparent's parent id must not be all zeros")]
    ZeroParentId,
    /// The metadata value under [`METADATA_KEY`] is not a string.
    #[error("the traceparent metadata value is not a string")]
    NotAString,
}

/// A W3C `traceparent`: trace id, parent (span) id and trace flags.
///
/// Parse one with [`str::parse`], format it with `to_string`; start a trace with
/// [`TraceParent::new_root`], hand a trace on with [`TraceParent::child`]. See the
/// [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    flags: u8,
}

impl TraceParent {
    /// The `sampled` trace flag.
    pub const SAMPLED: u8 = 0x01;

    /// A traceparent from its parts; refuses all-zero ids.
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: u8) -> Result<Self, TraceParentError> {
        if trace_id.0 == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        if parent_id.0 == [0; 8] {
            return Err(TraceParentError::ZeroParentId);
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Starts a new trace: a fresh trace id and span id, flagged sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            parent_id: SpanId::random(),
            flags: Self::SAMPLED,
        }
    }

    /// The traceparent a child span hands on: the same trace id and flags, a fresh parent id
    /// (the child's span id).
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            parent_id: SpanId::random(),
            flags: self.flags,
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The parent id: the span id of whoever handed this traceparent on.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }
}

fn hex_field<const N: usize>(
    bytes: &[u8],
    field: &'static str,
) -> Result<[u8; N], TraceParentError> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TraceParentError::Hex(field)),
    };
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(out)
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    /// Parses the header text; works on bytes, so a non-ASCII character is refused as a bad
    /// hex digit (or a misplaced separator).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.len() != 55 {
            return Err(TraceParentError::Length(bytes.len()));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(TraceParentError::Separator);
        }
        let [version] = hex_field::<1>(&bytes[0..2], "version")?;
        if version != 0 {
            return Err(TraceParentError::Version(version));
        }
        let trace_id = TraceId(hex_field(&bytes[3..35], "trace id")?);
        let parent_id = SpanId(hex_field(&bytes[36..52], "parent id")?);
        let [flags] = hex_field::<1>(&bytes[53..55], "flags")?;
        Self::new(trace_id, parent_id, flags)
    }
}

impl fmt::Display for TraceParent {
    /// The header text, `00-<trace id>-<parent id>-<flags>`, in one write.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut out[3..35], &self.trace_id.0);
        hex_into(&mut out[36..52], &self.parent_id.0);
        hex_into(&mut out[53..55], &[self.flags]);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// The `event_handled` span of one event delivered to projection (or subscriber)
/// `projection`, a child of the span that recorded the event.
///
/// Fields: `projection`, `event_type`, `position`, and, when the event carries a
/// traceparent, `trace_id`, `parent_span_id` (the event's parent id) and a fresh `span_id`.
/// Nothing is read from the event when the span is disabled.
///
/// With feature `otel`, the span's OpenTelemetry parent is the event's traceparent, so the
/// exported span joins the trace of the command that recorded the event (see
/// [`adopt`]); `span_id` is then the exported span's id.
pub fn event_span(projection: &'static str, event: &RecordedEvent) -> tracing::Span {
    let span = tracing::info_span!(
        "event_handled",
        projection,
        event_type = %event.event_type,
        position = event.position.0,
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if !span.is_disabled()
        && let Some(parent) = event.traceparent()
    {
        let own = adopt(&span, Some(parent)).unwrap_or_else(|| parent.child());
        span.record("trace_id", tracing::field::display(parent.trace_id()));
        span.record(
            "parent_span_id",
            tracing::field::display(parent.parent_id()),
        );
        span.record("span_id", tracing::field::display(own.parent_id()));
    }
    span
}

/// Makes `parent` the OpenTelemetry parent of `span` and returns the traceparent that `span`
/// hands on: its trace id and its own OpenTelemetry span id (feature `otel`).
///
/// `None` when no OpenTelemetry layer records the span (none is installed, or the span is
/// disabled): the caller then keeps to the ids of this module. Without `parent` the span
/// keeps the parent `tracing` gives it (the current span's, or a new trace).
///
/// `parent` must be set before anything reads the span's OpenTelemetry context: the
/// OpenTelemetry span is built then, and its parent cannot change afterwards.
#[cfg(feature = "otel")]
pub fn adopt(span: &tracing::Span, parent: Option<TraceParent>) -> Option<TraceParent> {
    use opentelemetry::trace::{self as otel, TraceContextExt as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    if span.is_disabled() {
        return None;
    }
    if let Some(parent) = parent {
        let remote = otel::SpanContext::new(
            otel::TraceId::from_bytes(parent.trace_id().0),
            otel::SpanId::from_bytes(parent.parent_id().0),
            otel::TraceFlags::new(parent.flags()),
            true,
            otel::TraceState::default(),
        );
        // Fails only when no OpenTelemetry layer is installed; `context` then says so too.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    TraceParent::new(
        TraceId(own.trace_id().to_bytes()),
        SpanId(own.span_id().to_bytes()),
        own.trace_flags().to_u8(),
    )
    .ok()
}

/// Without feature `otel` there is no OpenTelemetry span to adopt: always `None`.
#[cfg(not(feature = "otel"))]
#[inline]
pub fn adopt(_span: &tracing::Span, _parent: Option<TraceParent>) -> Option<TraceParent> {
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn the_header_is_the_fields_in_lowercase_hex() {
        for _ in 0..100 {
            let traceparent = TraceParent::new(TraceId::random(), SpanId::random(), 0x01).unwrap();
            let mut expected = String::from("00-");
            for byte in traceparent.trace_id().0 {
                write!(expected, "{byte:02x}").unwrap();
            }
            expected.push('-');
            for byte in traceparent.parent_id().0 {
                write!(expected, "{byte:02x}").unwrap();
            }
            expected.push_str("-01");
            assert_eq!(traceparent.to_string(), expected);
            assert_eq!(expected.parse::<TraceParent>(), Ok(traceparent));
            assert_eq!(traceparent.trace_id().to_string(), expected[3..35]);
            assert_eq!(traceparent.parent_id().to_string(), expected[36..52]);
        }
    }

    #[test]
    fn random_ids_are_distinct_and_not_zero_across_threads() {
        let ids: Vec<(TraceId, SpanId)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..10_000)
                            .map(|_| (TraceId::random(), SpanId::random()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|thread| thread.join().unwrap())
                .collect()
        });
        let traces: HashSet<_> = ids.iter().map(|(trace, _)| *trace).collect();
        let spans: HashSet<_> = ids.iter().map(|(_, span)| *span).collect();
        assert_eq!(traces.len(), ids.len());
        assert_eq!(spans.len(), ids.len());
        assert!(!traces.contains(&TraceId([0; 16])));
        assert!(!spans.contains(&SpanId([0; 8])));
    }
}

//! Domain events: the [`Event`] trait that `#[derive(Event)]` implements, the per-variant
//! [`EventPayload`] link, and what aggregates implement to apply them.

use crate::Payload;

/// The stable identity of one event variant: its wire name and schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType {
    /// Stable type name stored with every event (`"account.deposited"`).
    pub name: &'static str,
    /// Schema version of the payload the current code writes.
    pub version: u32,
    /// The Rust variant name; used only in diagnostics, never stored.
    pub variant: &'static str,
}

/// An event enum: each variant is one event type with a stable name and schema version.
///
/// Implemented by `#[derive(Event)]`. The stored form of an event is `(name, version, payload)`
/// where the payload is the variant's data serialized as JSON; the Rust variant name never
/// reaches storage, so renaming a variant with a pinned `name` keeps old events readable.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event enum",
    note = "add `#[derive(Event)]` to the enum"
)]
pub trait Event: Sized + Send + Sync + 'static {
    /// Every event type of this enum, in declaration order.
    const TYPES: &'static [EventType];

    /// The stable type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version this event is written with.
    fn schema_version(&self) -> u32;

    /// Serializes the payload (not the enum tag) to JSON.
    fn to_payload(&self) -> Result<Payload, serde_json::Error>;

    /// Rebuilds an event from its stored form.
    ///
    /// Fails with [`EventDecodeError::UnknownType`] for a name this enum does not declare,
    /// [`EventDecodeError::UnsupportedVersion`] for a schema version this code cannot read, and
    /// [`EventDecodeError::Payload`] naming the serde path of the bad field otherwise.
    fn from_payload(
        event_type: &str,
        version: u32,
        payload: &Payload,
    ) -> Result<Self, EventDecodeError>;

    /// Whether `event_type` is one of this enum's type names.
    fn declares(event_type: &str) -> bool {
        Self::TYPES.iter().any(|t| t.name == event_type)
    }
}

/// A payload type carried by exactly one variant of an [`Event`] enum.
///
/// Implemented by `#[derive(Event)]` for every newtype variant's payload type. It links the
/// payload type to its enum and stable name, which is how `#[aggregate]` and `#[projection]`
/// handlers are wired by the type of their argument.
pub trait EventPayload: Sized + Send + Sync + 'static {
    /// The enum this payload belongs to.
    type Event: Event;
    /// The stable type name of the variant carrying this payload.
    const EVENT_TYPE: &'static str;
    /// The schema version of the variant carrying this payload.
    const SCHEMA_VERSION: u32;

    /// Wraps the payload in its enum variant.
    fn into_event(self) -> Self::Event;

    /// Takes the payload out of the enum when the variant matches.
    fn from_event(event: Self::Event) -> Option<Self>;
}

/// Errors turning a stored `(name, version, payload)` back into an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventDecodeError {
    /// The stored type name is not declared by the event enum.
    #[error("unknown event type `{name}`")]
    UnknownType {
        /// The stored type name.
        name: String,
    },
    /// The stored schema version is not the one the code reads.
    #[error("event type `{name}` has schema version {found}; this code reads version {expected}")]
    UnsupportedVersion {
        /// The stored type name.
        name: String,
        /// The stored schema version.
        found: u32,
        /// The version the current code reads.
        expected: u32,
    },
    /// The payload does not deserialize into the variant's type.
    #[error("event type `{name}`: invalid payload at `{path}`: {message}")]
    Payload {
        /// The stored type name.
        name: String,
        /// The serde path of the offending field (`.` for the root).
        path: String,
        /// The deserializer's message.
        message: String,
    },
}

/// What a command handler may return as its events: one event, one payload, several, or none.
///
/// Implemented for the event enum itself, `Vec<E>`, `Option<E>`, `()` (no events), and by
/// `#[derive(Event)]` for each payload type.
#[diagnostic::on_unimplemented(
    message = "a command handler cannot return `{Self}` as events of `{E}`",
    note = "return a payload type of `{E}`, `{E}` itself, `Vec<{E}>`, `Option<{E}>` or `()` inside `Result<_, Error>`"
)]
pub trait IntoEvents<E> {
    /// Converts into the list of events to append, in order.
    fn into_events(self) -> Vec<E>;
}

impl<E: Event> IntoEvents<E> for E {
    fn into_events(self) -> Vec<E> {
        vec![self]
    }
}

impl<E: Event> IntoEvents<E> for Vec<E> {
    fn into_events(self) -> Vec<E> {
        self
    }
}

impl<E: Event> IntoEvents<E> for Option<E> {
    fn into_events(self) -> Vec<E> {
        self.into_iter().collect()
    }
}

impl<E: Event> IntoEvents<E> for () {
    fn into_events(self) -> Vec<E> {
        Vec::new()
    }
}

/// An aggregate's state transition for one event payload type.
///
/// Generated by `#[aggregate]` from each `#[event_handler]` method. The event enum's generated
/// `apply` requires one of these per payload type, which is what makes a forgotten handler a
/// compile error.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no `#[event_handler]` for event `{P}`",
    label = "this event is never applied",
    note = "add `#[event_handler] fn on_...(&mut self, event: &{P})` to the `#[aggregate]` impl, or list it in `#[aggregate(ignore({P}))]`"
)]
pub trait Apply<P> {
    /// Applies the payload to the state.
    fn apply(&mut self, payload: &P);
}

/// An aggregate's state transitions for the unit (payload-less) variants of an event enum.
///
/// Generated by `#[aggregate]` from `#[event_handler(Variant)]` methods that take no payload.
pub trait ApplyUnit<E> {
    /// The Rust names of the unit variants this aggregate handles.
    const HANDLED: &'static [&'static str];
    /// Applies the unit variant named `variant`.
    fn apply_unit(&mut self, variant: &'static str);
}

//! Domain events: the [`Event`] trait that `#[derive(Event)]` implements, the per-variant
//! [`EventPayload`] link, what aggregates implement to apply them, and how old stored
//! versions are read ([`Upcast`], [`Decoded`]).

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

    /// Old type names that stored events may still carry (`#[event(alias = "...")]`): each
    /// is read as the variant it names. Empty unless a variant declares an alias.
    const ALIASES: &'static [EventAlias] = &[];

    /// Rebuilds every event one stored event stands for.
    ///
    /// The same as [`Event::from_payload`] for every stored form but those an upcaster of
    /// the `many` kind turns into several events, or none (`#[event(upcast(from = N, many =
    /// f))]`). [`Event::from_payload`] refuses those with [`EventDecodeError::NotOne`], so
    /// code that reads stored events in general calls this.
    fn decode_all(
        event_type: &str,
        version: u32,
        payload: &Payload,
    ) -> Result<Decoded<Self>, EventDecodeError> {
        Self::from_payload(event_type, version, payload).map(Decoded::One)
    }

    /// Whether `event_type` is one of this enum's type names, or an alias of one.
    fn declares(event_type: &str) -> bool {
        Self::TYPES.iter().any(|t| t.name == event_type)
            || Self::ALIASES.iter().any(|a| a.alias == event_type)
    }

    /// Whether `(event_type, version)` is the current name and version of one of this
    /// enum's variants: a stored event in this form is that variant, read without upcasting.
    fn is_current(event_type: &str, version: u32) -> bool {
        Self::TYPES
            .iter()
            .any(|t| t.name == event_type && t.version == version)
    }
}

/// An old type name of an event variant (`#[event(name = "account.opened", alias =
/// "account.created")]`): events stored under it are read as the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventAlias {
    /// The old name, as stored.
    pub alias: &'static str,
    /// The current name of the variant it stands for.
    pub name: &'static str,
}

/// An old schema version of an event payload, kept as a type of its own, and how it becomes
/// the next version.
///
/// Declared on the variant with `#[event(version = 3, upcast(from = 2, with = OpenedV2))]`:
/// a stored version-2 payload is deserialized into `OpenedV2`, and [`Upcast::upcast`] turns
/// it into the version-3 payload (`Next = Opened`), or into the version the next upcaster
/// reads (`Next = OpenedV3` for `upcast(from = 3, with = OpenedV3)`), so versions chain.
/// The derive checks the chain at compile time: each `Next` is the type the next step
/// reads, at the user's type.
///
/// ```
/// use cqrs_core::Upcast;
/// # use serde::Deserialize;
/// #[derive(Deserialize)]
/// pub struct OpenedV1 { pub owner: String }
/// pub struct Opened { pub owner: String, pub currency: String }
///
/// impl Upcast for OpenedV1 {
///     type Next = Opened;
///     fn upcast(self) -> Opened {
///         Opened { owner: self.owner, currency: "EUR".into() }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is declared as an old payload version (`upcast(with = {Self})`) but does not implement `Upcast`",
    note = "implement `Upcast` for it, with `type Next` the payload the next version reads"
)]
pub trait Upcast {
    /// The payload of the next schema version.
    type Next;
    /// Converts this version's payload into the next version's.
    fn upcast(self) -> Self::Next;
}

/// The events one stored event stands for: [`Event::decode_all`].
///
/// Nearly always one ([`Decoded::One`], no allocation); an upcaster of the `many` kind may
/// turn an old stored event into several, or none ([`Decoded::Many`]). The stored event keeps
/// its one stream version and one global position: an aggregate applies all of them and its
/// version stays the stored event's; a projection or saga handles each in order, and its
/// checkpoint moves past the stored event once.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<E> {
    /// One event.
    One(E),
    /// Any number of events, in the order they are applied.
    Many(Vec<E>),
}

impl<E> Decoded<E> {
    /// How many events.
    pub fn len(&self) -> usize {
        match self {
            Decoded::One(_) => 1,
            Decoded::Many(events) => events.len(),
        }
    }

    /// Whether there is none (an upcaster dropped the stored event).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<E> IntoIterator for Decoded<E> {
    type Item = E;
    type IntoIter = DecodedIter<E>;

    fn into_iter(self) -> DecodedIter<E> {
        match self {
            Decoded::One(event) => DecodedIter::One(Some(event)),
            Decoded::Many(events) => DecodedIter::Many(events.into_iter()),
        }
    }
}

/// The iterator over [`Decoded`] events.
#[derive(Debug)]
pub enum DecodedIter<E> {
    /// What is left of one event.
    One(Option<E>),
    /// What is left of several.
    Many(std::vec::IntoIter<E>),
}

impl<E> Iterator for DecodedIter<E> {
    type Item = E;

    fn next(&mut self) -> Option<E> {
        match self {
            DecodedIter::One(event) => event.take(),
            DecodedIter::Many(events) => events.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self {
            DecodedIter::One(event) => usize::from(event.is_some()),
            DecodedIter::Many(events) => events.len(),
        };
        (n, Some(n))
    }
}

impl<E> ExactSizeIterator for DecodedIter<E> {}

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
    /// Every type name a stored event that may be read as this payload can carry: its own
    /// name, its aliases, and the names (and aliases) of the enum's variants that have an
    /// upcaster of the `many` kind, which may produce any variant. Subscriptions filter on
    /// these, so that events stored under an old name are delivered.
    const STORED_TYPES: &'static [&'static str] = &[Self::EVENT_TYPE];

    /// Wraps the payload in its enum variant.
    fn into_event(self) -> Self::Event;

    /// Takes the payload out of the enum when the variant matches.
    fn from_event(event: Self::Event) -> Option<Self>;
}

/// Errors turning a stored `(name, version, payload)` back into an event.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    /// A raw-JSON upcaster (`upcast(from = N, raw = f)`) refused the stored payload.
    #[error("event type `{name}`: upcasting from version {from} failed: {message}")]
    Upcast {
        /// The stored type name.
        name: String,
        /// The version the failing upcaster reads.
        from: u32,
        /// The upcaster's message.
        message: String,
    },
    /// An upcaster turned the stored event into `count` events, where the caller reads exactly
    /// one ([`Event::from_payload`]); read it with [`Event::decode_all`].
    #[error(
        "event type `{name}` version {version} is upcast into {count} events, not one; read it with `decode_all`"
    )]
    NotOne {
        /// The stored type name.
        name: String,
        /// The stored schema version.
        version: u32,
        /// How many events it stands for.
        count: usize,
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

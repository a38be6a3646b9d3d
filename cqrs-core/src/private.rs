//! What generated code needs and users must not touch.

pub use ::serde;
pub use ::serde_json;
pub use ::std;

pub use crate::dispatch::{CommandVisitor, DispatchCommands, DispatchQueries, QueryVisitor};
pub use crate::list::AnsweredQueries;
pub use crate::projection::{UpcastedEvents, decode_payload, handler_error};
pub use crate::saga::__private as saga;
pub use crate::saga::IdempotentCommand;
pub use crate::{
    Aggregate, Apply, ApplyUnit, Command, CommandContext, Decoded, Event, EventAlias,
    EventDecodeError, EventPayload, EventType, Handles, HandlesQuery, IntoEvents, KeyChanges,
    Payload, Projection, ProjectionError, Query, RecordedEvent, UniqueKeys, ValidationErrors,
};

/// Applies an event enum to an aggregate. Implemented by `#[derive(Event)]` for every
/// aggregate that has an `Apply<P>` per payload type and an `ApplyUnit` for unit variants.
pub trait ApplyTo<A> {
    /// Dispatches to the aggregate's handler for this variant.
    fn apply_to(&self, aggregate: &mut A);
}

/// Holds when `Self` is a payload type of event enum `E`. `#[derive(Event)]` implements it for
/// each payload type; `#[aggregate]` requires it of every `#[event_handler]` argument and
/// `ignore(...)` type, at the user's type: an `Apply` impl for any other type would compile and
/// never be called. (A blanket impl over `EventPayload` would make the compiler report the
/// mismatched `EventPayload::Event` instead of this message.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event of `{E}`",
    label = "not a payload type of `{E}`",
    note = "an aggregate's `#[event_handler]` takes `&Payload` where `Payload` is carried by a variant of its event enum `{E}`; a handler for any other type would never be called"
)]
pub trait PayloadOf<E> {}

/// Compiles only when `P` is a payload type of `E` (see [`PayloadOf`]).
pub const fn payload_of<P: PayloadOf<E>, E>() {}

/// The Rust names of an event enum's unit variants. Implemented by `#[derive(Event)]`;
/// `#[aggregate]` checks that each `#[event_handler(Variant)]` names one of them.
pub trait UnitVariants {
    /// The unit variants, in declaration order.
    const UNIT_VARIANTS: &'static [&'static str];
}

/// Fails to evaluate, with a message naming the variant, when aggregate `A` has no handler for
/// a unit variant of the event enum. Implemented by `#[derive(Event)]`; `#[aggregate]` forces
/// the evaluation with a `const _: () = <E as UnitHandlersCheck<A>>::CHECK;` item.
///
/// A free constant is evaluated while type checking, so `cargo check` reports the mistake. The
/// `const` block inside [`ApplyTo::apply_to`] catches the same mistake only when `apply_to` is
/// compiled to machine code for that aggregate, which `cargo check` never does.
pub trait UnitHandlersCheck<A> {
    /// Evaluating this panics when a unit variant has no handler in `A`.
    const CHECK: ();
}

/// A domain error whose [`DomainError`](crate::DomainError) code `#[aggregate]` and
/// `#[projection]` look up: `(&DomainCode(error)).domain_code()` with both
/// [`ViaDomainError`] and [`ViaAnyError`] in scope finds `Some(code)` when the (concrete)
/// error type implements `DomainError`, and `None` otherwise. Method resolution tries the
/// receiver as written before borrowing it again, so the `DomainError` impl wins when it
/// exists (autoref specialization).
pub struct DomainCode<'a, E>(pub &'a E);

/// The `DomainError` side of [`DomainCode`].
pub trait ViaDomainError {
    /// The error's code.
    fn domain_code(&self) -> Option<&'static str>;
}

impl<E: crate::DomainError> ViaDomainError for DomainCode<'_, E> {
    fn domain_code(&self) -> Option<&'static str> {
        Some(self.0.code())
    }
}

/// The fallback side of [`DomainCode`]: any error, no code.
pub trait ViaAnyError {
    /// `None`.
    fn domain_code(&self) -> Option<&'static str>;
}

impl<E> ViaAnyError for &DomainCode<'_, E> {
    fn domain_code(&self) -> Option<&'static str> {
        None
    }
}

/// How a command handler borrows the aggregate's services (`Self`, as declared with
/// `#[aggregate(services = ...)]`): as `&Self` under any spelling of the type (an alias, a
/// path), or as `&T` when the services are an `Arc<T>` or a `Box<T>` (`&dyn Trait` for
/// `Arc<dyn Trait>`). `#[aggregate]` calls it at the handler's argument type.
#[diagnostic::on_unimplemented(
    message = "the aggregate's services are `{Self}`, which a command handler cannot borrow as `&{T}`",
    label = "not the declared services",
    note = "a handler borrows the type given as `#[aggregate(services = ...)]`, or `&T` when it is `Arc<T>` or `Box<T>`"
)]
pub trait ServicesAs<T: ?Sized> {
    /// Borrows the services as the handler asks.
    fn services_as(&self) -> &T;
}

impl<T: ?Sized> ServicesAs<T> for T {
    fn services_as(&self) -> &T {
        self
    }
}

impl<T: ?Sized> ServicesAs<T> for std::sync::Arc<T> {
    fn services_as(&self) -> &T {
        self
    }
}

impl<T: ?Sized> ServicesAs<T> for Box<T> {
    fn services_as(&self) -> &T {
        self
    }
}

/// Borrows the services `S` as `&T` (see [`ServicesAs`]). A function rather than a method call
/// so that a mismatch is reported where the call is placed, at the handler's argument type.
pub fn services_as<T: ?Sized, S: ServicesAs<T>>(services: &S) -> &T {
    services.services_as()
}

/// Decodes one variant's payload straight from its JSON text.
///
/// The fast path deserializes without tracking the path; only when that fails is the payload
/// read again to name the serde path of the bad field, so a valid payload pays nothing for
/// the error report.
pub fn decode_variant<T: serde::de::DeserializeOwned>(
    name: &str,
    payload: &Payload,
) -> Result<T, EventDecodeError> {
    if let Ok(value) = serde_json::from_str(payload.as_str()) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_str(payload.as_str());
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(e) => Err(EventDecodeError::Payload {
            name: name.to_owned(),
            path: e.path().to_string(),
            message: e.inner().to_string(),
        }),
    }
}

/// Deserializes the JSON value an upcaster of the raw kind produced into the type the next
/// step (or the variant) reads.
pub fn from_json_value<T: serde::de::DeserializeOwned>(
    name: &str,
    value: serde_json::Value,
) -> Result<T, EventDecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| EventDecodeError::Payload {
        name: name.to_owned(),
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Serializes a typed upcaster's output for a raw upcaster reading version `version`.
pub fn to_json_value<T: serde::Serialize>(
    name: &str,
    version: u32,
    value: &T,
) -> Result<serde_json::Value, EventDecodeError> {
    serde_json::to_value(value).map_err(|e| EventDecodeError::Upcast {
        name: name.to_owned(),
        from: version,
        message: e.to_string(),
    })
}

/// The outcome of a raw upcaster reading version `from`.
pub fn raw_step<E: std::fmt::Display>(
    name: &str,
    from: u32,
    result: Result<serde_json::Value, E>,
) -> Result<serde_json::Value, EventDecodeError> {
    result.map_err(|e| EventDecodeError::Upcast {
        name: name.to_owned(),
        from,
        message: e.to_string(),
    })
}

/// The one event a stored event stands for, or [`EventDecodeError::NotOne`].
pub fn exactly_one<E>(
    name: &str,
    version: u32,
    decoded: Decoded<E>,
) -> Result<E, EventDecodeError> {
    let count = decoded.len();
    let mut events = decoded.into_iter();
    match (events.next(), count) {
        (Some(event), 1) => Ok(event),
        _ => Err(EventDecodeError::NotOne {
            name: name.to_owned(),
            version,
            count,
        }),
    }
}

/// One upcast step: `<T as Upcast>::upcast`, a function so that a mismatched `Next` is
/// reported at the user's type.
pub fn upcast<T: crate::Upcast>(value: T) -> T::Next {
    value.upcast()
}

/// The number of distinct names in `groups`; usable in constants.
pub const fn distinct_len(groups: &[&[&str]]) -> usize {
    let mut count = 0;
    let mut g = 0;
    while g < groups.len() {
        let mut i = 0;
        while i < groups[g].len() {
            if !seen_before(groups, g, i) {
                count += 1;
            }
            i += 1;
        }
        g += 1;
    }
    count
}

/// The distinct names of `groups`, in order of first appearance; `N` is
/// [`distinct_len`]`(groups)`. Usable in constants: how `#[projection]` and `#[saga]` build
/// the list of stored type names they read from their handlers' payload types.
pub const fn distinct<const N: usize>(groups: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut n = 0;
    let mut g = 0;
    while g < groups.len() {
        let mut i = 0;
        while i < groups[g].len() {
            if !seen_before(groups, g, i) {
                out[n] = groups[g][i];
                n += 1;
            }
            i += 1;
        }
        g += 1;
    }
    out
}

/// Whether `groups[g][i]` appears earlier in `groups`.
const fn seen_before(groups: &[&[&str]], g: usize, i: usize) -> bool {
    let name = groups[g][i];
    let mut h = 0;
    while h <= g {
        let end = if h == g { i } else { groups[h].len() };
        let mut j = 0;
        while j < end {
            if str_eq(groups[h][j], name) {
                return true;
            }
            j += 1;
        }
        h += 1;
    }
    false
}

/// Serializes one variant's payload.
pub fn encode_variant<T: serde::Serialize>(payload: &T) -> Result<Payload, serde_json::Error> {
    Payload::encode(payload)
}

/// The error for a stored name the enum does not declare.
pub fn unknown_event(name: &str) -> EventDecodeError {
    EventDecodeError::UnknownType {
        name: name.to_owned(),
    }
}

/// The error for a stored version the code cannot read.
pub fn unsupported_version(name: &str, found: u32, expected: u32) -> EventDecodeError {
    EventDecodeError::UnsupportedVersion {
        name: name.to_owned(),
        found,
        expected,
    }
}

/// Whether `list` contains `name`; usable in constants.
pub const fn contains_str(list: &[&str], name: &str) -> bool {
    let mut i = 0;
    while i < list.len() {
        if str_eq(list[i], name) {
            return true;
        }
        i += 1;
    }
    false
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Runs `validator::Validate` and converts its errors.
#[cfg(feature = "validator")]
pub fn validate<T: validator::Validate>(value: &T) -> Result<(), ValidationErrors> {
    value.validate().map_err(ValidationErrors::from)
}

/// Serializes aggregate state for a snapshot.
pub fn to_snapshot<T: serde::Serialize>(
    state: &T,
) -> Option<Result<serde_json::Value, serde_json::Error>> {
    Some(serde_json::to_value(state))
}

/// Deserializes aggregate state from a snapshot.
pub fn from_snapshot<T: serde::de::DeserializeOwned>(
    state: &serde_json::Value,
) -> Option<Result<T, serde_json::Error>> {
    Some(T::deserialize(state))
}

/// Stands in for [`validate`] when the `validator` feature is off, so that
/// `#[command(validate)]` explains what is missing instead of failing to find a function.
#[cfg(not(feature = "validator"))]
pub fn validate<T: ValidatorFeatureIsOff>(_value: &T) -> Result<(), ValidationErrors> {
    Ok(())
}

/// Never implemented: names the missing feature when `validate` is used without it.
#[cfg(not(feature = "validator"))]
#[diagnostic::on_unimplemented(
    message = "`validate` needs the `validator` feature of `cqrs-core`",
    label = "`{Self}` asks for validation",
    note = "enable it in Cargo.toml: `cqrs-core = {{ version = \"...\", features = [\"validator\"] }}`"
)]
pub trait ValidatorFeatureIsOff {}

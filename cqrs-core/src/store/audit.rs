//! An offline check of a whole store against the current code: every stored `(type name,
//! schema version)` pair, how many events carry it, and whether the code reads them.
//!
//! Stored events outlive the code that wrote them. Before a release drops an upcaster or
//! changes a payload type, run [`Audit`] against a copy of production (or, in CI, against a
//! checked-in sample of old rows loaded into a fresh store): a pair that no longer decodes
//! shows up here, not in an aggregate load at run time.
//!
//! ```
//! # use cqrs_core::prelude::*;
//! # use cqrs_core::store::audit::Audit;
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # pub struct Deposited { pub amount: u64 }
//! # #[derive(Debug, Clone, PartialEq, Event)]
//! # pub enum AccountEvent { #[event(name = "account.deposited")] Deposited(Deposited) }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = InMemoryEventStore::new();
//! let report = Audit::new().event::<AccountEvent>().run(&store).await.unwrap();
//! assert!(report.is_clean(), "{report}");
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use crate::{Event, EventDecodeError, EventStore, GlobalPosition, Payload, StoreError};

/// The event enums a store's events are checked against; see the [module](self).
#[derive(Clone, Default)]
pub struct Audit {
    decoders: Vec<Decoder>,
    page: usize,
}

/// One event enum, type-erased.
#[derive(Clone, Copy)]
struct Decoder {
    name: &'static str,
    declares: fn(&str) -> bool,
    decode: fn(&str, u32, &Payload) -> Result<usize, EventDecodeError>,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.decoders.iter().map(|d| d.name).collect();
        f.debug_struct("Audit")
            .field("events", &names)
            .field("page", &self.page)
            .finish()
    }
}

impl Audit {
    /// An audit that reads nothing yet: add every event enum the store's events belong to.
    pub fn new() -> Self {
        Self {
            decoders: Vec::new(),
            page: 1_000,
        }
    }

    /// Checks the events whose type names `E` declares (aliases included) with `E`.
    #[must_use]
    pub fn event<E: Event>(mut self) -> Self {
        self.decoders.push(Decoder {
            name: std::any::type_name::<E>(),
            declares: E::declares,
            decode: |event_type, version, payload| {
                E::decode_all(event_type, version, payload).map(|events| events.len())
            },
        });
        self
    }

    /// How many events each read of the store asks for (1,000 unless set; at least 1).
    #[must_use]
    pub fn page_size(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    /// Reads the whole store in its global order and decodes every event with the enum that
    /// declares its type name (the first added, when several do). A type name no enum
    /// declares is reported as [`EventDecodeError::UnknownType`].
    pub async fn run<S: EventStore + ?Sized>(&self, store: &S) -> Result<AuditReport, StoreError> {
        let mut forms: BTreeMap<(String, u32), StoredForm> = BTreeMap::new();
        let mut after = GlobalPosition::START;
        loop {
            let page = store.read_all_from(after, self.page).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for event in &page {
                let decoder = self
                    .decoders
                    .iter()
                    .find(|d| (d.declares)(&event.event_type));
                let form = forms
                    .entry((event.event_type.clone(), event.schema_version))
                    .or_insert_with(|| StoredForm {
                        event_type: event.event_type.clone(),
                        schema_version: event.schema_version,
                        event_enum: decoder.map(|d| d.name),
                        events: 0,
                        decoded: 0,
                        read_as: 0,
                        first_failure: None,
                    });
                form.events += 1;
                let outcome = match decoder {
                    Some(decoder) => {
                        (decoder.decode)(&event.event_type, event.schema_version, &event.payload)
                    }
                    None => Err(EventDecodeError::UnknownType {
                        name: event.event_type.clone(),
                    }),
                };
                match outcome {
                    Ok(count) => {
                        form.decoded += 1;
                        form.read_as += count as u64;
                    }
                    Err(error) => {
                        form.first_failure.get_or_insert_with(|| AuditFailure {
                            stream_id: event.stream_id.clone(),
                            stream_version: event.stream_version,
                            error,
                        });
                    }
                }
            }
        }
        Ok(AuditReport {
            forms: forms.into_values().collect(),
        })
    }
}

/// What [`Audit::run`] found: one entry per stored `(type name, schema version)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditReport {
    /// Every stored form, by type name then version.
    pub forms: Vec<StoredForm>,
}

impl AuditReport {
    /// Whether every stored event decodes.
    pub fn is_clean(&self) -> bool {
        self.forms.iter().all(StoredForm::is_clean)
    }

    /// The forms with at least one event that does not decode.
    pub fn failures(&self) -> impl Iterator<Item = &StoredForm> {
        self.forms.iter().filter(|form| !form.is_clean())
    }

    /// The entry of one stored form, if the store holds any.
    pub fn form(&self, event_type: &str, schema_version: u32) -> Option<&StoredForm> {
        self.forms
            .iter()
            .find(|f| f.event_type == event_type && f.schema_version == schema_version)
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "type name | version | events | decoded | read as | enum")?;
        for form in &self.forms {
            writeln!(
                f,
                "{} | {} | {} | {} | {} | {}",
                form.event_type,
                form.schema_version,
                form.events,
                form.decoded,
                form.read_as,
                form.event_enum.unwrap_or("-"),
            )?;
            if let Some(failure) = &form.first_failure {
                writeln!(
                    f,
                    "  first failure: {}@{}: {}",
                    failure.stream_id, failure.stream_version, failure.error
                )?;
            }
        }
        Ok(())
    }
}

/// The events stored with one `(type name, schema version)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredForm {
    /// The stored type name.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: u32,
    /// The enum that declares the name (its Rust type name), if any.
    pub event_enum: Option<&'static str>,
    /// How many events are stored in this form.
    pub events: u64,
    /// How many of them decode.
    pub decoded: u64,
    /// How many current events those decode into (upcasters may split or drop events).
    pub read_as: u64,
    /// The first event that does not decode, in the global order.
    pub first_failure: Option<AuditFailure>,
}

impl StoredForm {
    /// Whether every event of this form decodes.
    pub fn is_clean(&self) -> bool {
        self.decoded == self.events
    }
}

/// An event that does not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditFailure {
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Why it does not decode.
    pub error: EventDecodeError,
}

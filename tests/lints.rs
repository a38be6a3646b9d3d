//! The macros' output compiles cleanly under strict lints: users who deny them in their own
//! crates never see a warning they did not cause. Clippy's lints apply when this file is
//! checked with `cargo clippy`; the compiler's apply to every build.
#![deny(
    missing_docs,
    unused_qualifications,
    unused_results,
    unreachable_pub,
    rust_2018_idioms,
    warnings,
    clippy::all,
    clippy::pedantic
)]

// Names that generated code also uses, brought into scope: if generated code spelled any of
// them with a path while it is in scope, `unused_qualifications` would fire.
pub use core::clone::Clone;
pub use cqrs_core::__private::{ApplyTo, UnitHandlersCheck, UnitVariants};
pub use cqrs_core::{
    Aggregate, Apply, ApplyUnit, Command, CommandContext, Decoded, DispatchCommands,
    DispatchQueries, Event, EventAlias, EventDecodeError, EventPayload, EventType, Handles,
    HandlesQuery, IntoEvents, KeyChanges, Payload, Projection, ProjectionError, Query,
    RecordedEvent, UniqueKeys, Upcast, ValidationErrors, aggregate, projection,
};
pub use serde::Serialize;
pub use serde::de::DeserializeOwned;
pub use serde_json::Value;
pub use std::string::{String, ToString};
pub use std::vec::Vec;

use serde::Deserialize;

/// A counter was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// Where it starts.
    pub start: i64,
}

/// A counter moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// By how much.
    pub by: i64,
}

/// Version 1 of [`Moved`], stored as `counter.shifted`.
#[derive(Debug, Deserialize)]
pub struct MovedV1 {
    /// By how much, in tenths.
    pub tenths: i64,
}

/// Version 2 of [`Moved`].
#[derive(Debug, Serialize, Deserialize)]
pub struct MovedV2 {
    /// By how much.
    pub by: i64,
}

impl Upcast for MovedV1 {
    type Next = MovedV2;
    fn upcast(self) -> MovedV2 {
        MovedV2 {
            by: self.tenths / 10,
        }
    }
}

/// Version 2 of [`Moved`] becomes version 3 unchanged in shape (a raw step).
///
/// # Errors
///
/// Never.
pub fn moved_v2(payload: Value) -> Result<Value, String> {
    Ok(payload)
}

/// Version 1 remarks were a list of texts: one event each.
#[must_use]
pub fn remarks_v1(texts: Vec<String>) -> Vec<CounterEvent> {
    texts
        .into_iter()
        .map(|text| CounterEvent::Remarked(Remarked { text }))
        .collect()
}

/// A remark nobody acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remarked {
    /// The remark.
    pub text: String,
}

/// What happens to a counter.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum CounterEvent {
    /// See [`Created`].
    #[event(name = "counter.created")]
    Created(Created),
    /// See [`Moved`].
    #[event(name = "counter.moved", version = 3, alias = "counter.shifted",
            upcast(from = 1, with = MovedV1), upcast(from = 2, raw = moved_v2))]
    Moved(Moved),
    /// See [`Remarked`].
    #[event(version = 2, upcast(from = 1, many = remarks_v1))]
    Remarked(Remarked),
    /// The counter was frozen.
    Frozen,
}

/// Why a counter refuses a command.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// It is frozen.
    #[error("the counter is frozen")]
    Frozen,
}

/// Creates a counter.
#[derive(Debug, Clone, Deserialize, validator::Validate, Command)]
#[command(aggregate = Counter, id = id, name = "counter.create", validate)]
pub struct Create {
    /// Which counter.
    pub id: u32,
    /// Where it starts.
    #[validate(range(min = -100, max = 100))]
    pub start: i64,
}

/// Moves a counter; the caller's metadata may carry an idempotency key.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Counter, id = id, idempotent)]
pub struct Move {
    /// Which counter.
    pub id: u32,
    /// By how much.
    pub by: i64,
}

/// Remarks on a counter.
#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Counter, id = id)]
pub struct Remark {
    /// Which counter.
    pub id: u32,
    /// The remark.
    pub text: String,
}

/// Freezes a counter, once per request.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Counter, id = id, idempotency_key = request)]
pub struct Freeze {
    /// Which counter.
    pub id: u32,
    /// The request's idempotency key.
    pub request: u64,
}

/// The largest step a counter takes.
#[derive(Debug)]
pub struct Limits {
    /// The largest step.
    pub max_step: i64,
}

/// A counter.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
    frozen: bool,
}

#[aggregate(
    event = CounterEvent,
    error = CounterError,
    services = Limits,
    name = "counter",
    snapshot = 1,
    ignore(Remarked)
)]
impl Counter {
    #[command_handler]
    async fn create(
        &self,
        command: Create,
        context: &CommandContext,
    ) -> Result<Created, CounterError> {
        let _ = context.now;
        let start = std::future::ready(command.start).await;
        Ok(Created { start })
    }

    #[command_handler]
    fn r#move(&self, command: &Move, limits: &Limits) -> Result<Moved, CounterError> {
        if self.frozen {
            return Err(CounterError::Frozen);
        }
        Ok(Moved {
            by: command.by.clamp(-limits.max_step, limits.max_step),
        })
    }

    #[command_handler]
    fn remark(&self, command: &Remark) -> Result<Remarked, CounterError> {
        Ok(Remarked {
            text: command.text.clone(),
        })
    }

    #[command_handler]
    fn freeze(&self, _: &Freeze) -> Result<CounterEvent, CounterError> {
        Ok(CounterEvent::Frozen)
    }

    #[event_handler]
    fn on_created(&mut self, event: &Created) {
        self.value = event.start;
    }

    #[event_handler]
    fn on_moved(&mut self, event: &Moved) {
        self.value += event.by;
    }

    #[event_handler(Frozen)]
    fn on_frozen(&mut self) {
        self.frozen = true;
    }
}

/// A label was given a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// The name, unique among labels.
    pub name: String,
}

/// What happens to a label.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum LabelEvent {
    /// It was named.
    Named(Named),
}

/// A label whose name is unique across labels.
#[derive(Debug, Default)]
pub struct Label {
    name: Option<String>,
}

#[aggregate(event = LabelEvent, error = CounterError, unique_keys)]
impl Label {
    #[event_handler]
    fn on_named(&mut self, event: &Named) {
        self.name = Some(event.name.clone());
    }
}

impl UniqueKeys for Label {
    fn unique_keys(&self, event: &LabelEvent, keys: &mut KeyChanges) {
        let LabelEvent::Named(named) = event;
        if let Some(old) = &self.name {
            keys.release("label.name", old.clone());
        }
        keys.claim("label.name", named.name.clone());
    }
}

/// Asks for a counter's value.
#[derive(Debug, Deserialize, Query)]
#[query(output = i64, name = "counter.value")]
pub struct GetValue;

/// Asks for the remarks.
#[derive(Debug, Deserialize, validator::Validate, Query)]
#[query(output = Vec<String>, validate)]
pub struct GetRemarks {
    /// At most this many.
    #[validate(range(min = 1))]
    pub limit: usize,
}

/// The read model does not know the answer.
#[derive(Debug, thiserror::Error)]
#[error("unknown")]
pub struct Unknown;

/// Totals and remarks.
#[derive(Debug, Default)]
pub struct Totals {
    total: i64,
    remarks: Vec<String>,
}

#[projection(name = "totals")]
impl Totals {
    #[event_handler]
    fn on_created(&mut self, event: &Created) {
        self.total += event.start;
    }

    #[event_handler]
    async fn on_moved(&mut self, event: &Moved, recorded: &RecordedEvent) -> Result<(), Unknown> {
        if recorded.stream_version == 0 {
            return Err(Unknown);
        }
        self.total += std::future::ready(event.by).await;
        Ok(())
    }

    #[event_handler]
    fn on_remarked(&mut self, event: &Remarked) {
        self.remarks.push(event.text.clone());
    }

    #[query_handler]
    fn value(&self, _: &GetValue) -> Result<i64, Unknown> {
        Ok(self.total)
    }

    #[query_handler]
    async fn remarks(&self, query: &GetRemarks) -> Result<Vec<String>, Unknown> {
        let limit = std::future::ready(query.limit).await;
        Ok(self.remarks.iter().take(limit).cloned().collect())
    }
}

/// Remarks written to a caller's buffer.
#[derive(Debug, Default)]
pub struct RemarkLog;

#[projection(context = Vec<String>)]
impl RemarkLog {
    #[event_handler]
    fn on_remarked(&self, event: &Remarked, log: &mut Vec<String>) {
        log.push(event.text.clone());
    }
}

/// Moves each new counter once; counts refusals.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Nudger {
    nudged: bool,
    refused: u32,
}

/// Fires when a counter stays still too long.
#[derive(Debug, Serialize, Deserialize)]
pub struct StillTooLong;

#[cqrs_core::saga(commands(Move))]
impl Nudger {
    #[event_handler(key = start, start)]
    fn on_created(
        &mut self,
        created: &Created,
        ctx: &mut cqrs_core::saga::SagaContext<Self>,
    ) -> Move {
        self.nudged = true;
        ctx.schedule(StillTooLong, std::time::Duration::from_secs(60));
        Move {
            id: u32::try_from(created.start).unwrap_or_default(),
            by: 1,
        }
    }

    #[event_handler(key = by, end)]
    fn on_moved(&mut self, _: &Moved, _: &RecordedEvent) -> Result<(), CounterError> {
        if self.refused > 10 {
            return Err(CounterError::Frozen);
        }
        Ok(())
    }

    #[failure_handler]
    fn on_move_failed(&mut self, _: &cqrs_core::saga::CommandFailed<Move>) {
        self.refused += 1;
    }

    #[deadline_handler]
    fn on_still(&mut self, _: &StillTooLong) -> Option<Move> {
        None
    }
}

#[tokio::test]
async fn generated_code_runs_under_strict_lints() {
    let totals = cqrs_core::ReadModel::new(Totals::default());
    let bus = cqrs_core::CommandBus::builder(cqrs_core::InMemoryEventStore::new())
        .aggregate::<Counter>(Limits { max_step: 5 })
        .subscribe(totals.clone())
        .build();
    let created = bus.execute(Create { id: 1, start: 10 }).await.unwrap();
    assert_eq!(created.stream_id, "counter-1");
    let _moved = bus.execute(Move { id: 1, by: 50 }).await.unwrap();
    let _remarked = bus
        .execute(Remark {
            id: 1,
            text: "busy".to_owned(),
        })
        .await
        .unwrap();
    let _frozen = bus.execute(Freeze { id: 1, request: 7 }).await.unwrap();
    let refused = bus.execute(Move { id: 1, by: 1 }).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(&CounterError::Frozen));

    let queries = cqrs_core::QueryBus::builder().handler(totals).build();
    assert_eq!(queries.execute(GetValue).await.unwrap(), 15);
    assert_eq!(
        queries.execute(GetRemarks { limit: 1 }).await.unwrap(),
        vec!["busy".to_owned()]
    );
    assert_eq!(<RemarkLog as Projection>::NAME, "RemarkLog");

    let mut keys = KeyChanges::new();
    let named = LabelEvent::Named(Named {
        name: "x".to_owned(),
    });
    Label::default().key_changes(&named, &mut keys);
    assert_eq!(keys.claims().len(), 1);

    let nudger = cqrs_core::saga::InMemorySagaRunner::<Nudger>::new(&bus);
    let _handled = nudger.run_until_idle().await.unwrap();
}

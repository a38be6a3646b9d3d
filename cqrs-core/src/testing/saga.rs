//! The given/when/then fixture for sagas.

use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::saga::{
    CommandFailed, DeadlineDue, Effects, HandlesDeadline, IntoCommands, OutgoingCommand, Saga,
    SagaContext, SagaError, SagaMessage, handle, route,
};
use crate::{Command, EventPayload, GlobalPosition, Metadata, Payload, RecordedEvent};

/// Given events a saga instance saw, when an event (a command failure, a deadline), then
/// expect these commands, these deadlines, this state — with no store and no bus.
///
/// Each message goes through the saga as a runner would hand it: events find the instance
/// by their key (and are ignored when they neither find nor start one), the handler runs,
/// and what it sent and scheduled is compared by value. Commands are compared in their
/// JSON form, in order; deadlines by type, value and delay.
///
/// ```
/// # use std::time::Duration;
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::saga::{CommandFailed, SagaContext};
/// use cqrs_core::testing::SagaFixture;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # pub struct Placed { pub order: u32 }
/// # #[derive(Debug, Clone, PartialEq, Event)]
/// # pub enum OrderEvent { Placed(Placed) }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
/// # #[command(aggregate = Order, id = order, idempotent)]
/// # pub struct Ship { pub order: u32 }
/// # #[derive(Debug, Default)]
/// # pub struct Order;
/// # #[aggregate(event = OrderEvent, error = std::convert::Infallible)]
/// # impl Order {
/// #     #[command_handler]
/// #     fn ship(&self, _: &Ship) -> Result<(), std::convert::Infallible> { Ok(()) }
/// #     #[event_handler] fn on_placed(&mut self, _: &Placed) {}
/// # }
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// pub struct Shipping { shipped: bool }
///
/// #[saga(commands(Ship))]
/// impl Shipping {
///     #[event_handler(key = order, start)]
///     fn on_placed(&mut self, placed: &Placed) -> Option<Ship> {
///         let first = !self.shipped;
///         self.shipped = true;
///         first.then_some(Ship { order: placed.order })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let shipping = SagaFixture::<Shipping>::new()
///     .when(Placed { order: 1 })
///     .await
///     .then_expect_commands(Ship { order: 1 });
/// assert!(shipping.state().shipped);
///
/// // A repeated event finds the same instance, which sends nothing more.
/// SagaFixture::<Shipping>::new()
///     .given(Placed { order: 1 })
///     .await
///     .when(Placed { order: 1 })
///     .await
///     .then_expect_no_commands();
/// # }
/// ```
pub struct SagaFixture<S> {
    key: Option<String>,
    state: Option<String>,
    ended: bool,
    now: DateTime<Utc>,
    position: u64,
    saga: std::marker::PhantomData<fn() -> S>,
}

impl<S: Saga> Default for SagaFixture<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Saga> SagaFixture<S> {
    /// A fixture with no instance yet.
    pub fn new() -> Self {
        Self {
            key: None,
            state: None,
            ended: false,
            now: Utc::now(),
            position: 0,
            saga: std::marker::PhantomData,
        }
    }

    /// An event the instance already handled.
    ///
    /// # Panics
    ///
    /// When its handler fails.
    pub async fn given<P: EventPayload + Serialize>(mut self, payload: P) -> Self {
        let message = self.event(&payload);
        if let Err(error) = self.run(message).await {
            panic!("a given event failed in the saga: {error}");
        }
        self
    }

    /// A failure the instance already handled.
    ///
    /// # Panics
    ///
    /// When its handler fails.
    pub async fn given_failed<C: Command + Serialize>(mut self, failed: CommandFailed<C>) -> Self {
        let message = Self::failure(&failed);
        if let Err(error) = self.run(message).await {
            panic!("a given failure failed in the saga: {error}");
        }
        self
    }

    /// A deadline the instance already handled.
    ///
    /// # Panics
    ///
    /// When its handler fails.
    pub async fn given_deadline<D>(mut self, deadline: D) -> Self
    where
        S: HandlesDeadline<D>,
        D: Serialize,
    {
        let message = self.deadline(&deadline);
        if let Err(error) = self.run(message).await {
            panic!("a given deadline failed in the saga: {error}");
        }
        self
    }

    /// Hands the instance an event.
    pub async fn when<P: EventPayload + Serialize>(mut self, payload: P) -> SagaOutcome<S> {
        let message = self.event(&payload);
        let result = self.run(message).await;
        self.outcome(result)
    }

    /// Hands the instance the failure of a command it sent.
    pub async fn when_failed<C: Command + Serialize>(
        mut self,
        failed: CommandFailed<C>,
    ) -> SagaOutcome<S> {
        let message = Self::failure(&failed);
        let result = self.run(message).await;
        self.outcome(result)
    }

    /// Hands the instance a deadline that came due.
    pub async fn when_deadline<D>(mut self, deadline: D) -> SagaOutcome<S>
    where
        S: HandlesDeadline<D>,
        D: Serialize,
    {
        let message = self.deadline(&deadline);
        let result = self.run(message).await;
        self.outcome(result)
    }

    fn deadline<D>(&self, deadline: &D) -> SagaMessage
    where
        S: HandlesDeadline<D>,
        D: Serialize,
    {
        SagaMessage::Deadline(DeadlineDue {
            name: <S as HandlesDeadline<D>>::NAME.to_owned(),
            payload: serde_json::to_string(deadline).expect("the deadline serializes"),
            id: Uuid::now_v7(),
            due_at: self.now,
        })
    }

    fn event<P: EventPayload + Serialize>(&mut self, payload: &P) -> SagaMessage {
        self.position += 1;
        SagaMessage::Event(RecordedEvent {
            event_id: Uuid::now_v7(),
            event_type: P::EVENT_TYPE.to_owned(),
            schema_version: P::SCHEMA_VERSION,
            stream_id: "fixture".to_owned(),
            stream_version: self.position,
            position: GlobalPosition(self.position),
            recorded_at: self.now,
            payload: Payload::encode(payload).expect("the event payload serializes"),
            metadata: Metadata::default(),
        })
    }

    fn failure<C: Command + Serialize>(failed: &CommandFailed<C>) -> SagaMessage {
        SagaMessage::Failure(failed.to_failure().expect("the failed command serializes"))
    }

    /// Runs a message; `Ok(None)` when the instance does not take it.
    async fn run(&mut self, message: SagaMessage) -> Result<Option<Effects>, SagaError> {
        let Some(association) = route::<S>(&message, Some(self.key.as_deref().unwrap_or("")))?
        else {
            return Ok(None);
        };
        if let Some(key) = &self.key
            && matches!(message, SagaMessage::Event(_))
            && *key != association.key
        {
            // Another instance's event: this instance never sees it.
            return Ok(None);
        }
        if self.ended || (self.state.is_none() && !association.start) {
            return Ok(None);
        }
        let (state, effects) = handle::<S>(
            self.state.as_deref(),
            &association.key,
            &message,
            association.end,
            self.now,
        )
        .await?;
        self.key = Some(association.key);
        self.state = Some(state);
        self.ended = effects.ended;
        Ok(Some(effects))
    }

    fn outcome(self, result: Result<Option<Effects>, SagaError>) -> SagaOutcome<S> {
        SagaOutcome {
            key: self.key.unwrap_or_default(),
            result,
            state: self
                .state
                .as_deref()
                .map(|json| serde_json::from_str(json).expect("the saga state deserializes")),
        }
    }
}

/// What a message did in a [`SagaFixture`].
pub struct SagaOutcome<S> {
    key: String,
    result: Result<Option<Effects>, SagaError>,
    state: Option<S>,
}

// The `then_expect_*` assertions return the outcome for chaining; ending a chain with one is
// the common case, so they are not `#[must_use]`.
#[allow(clippy::return_self_not_must_use)]
impl<S: Saga> SagaOutcome<S> {
    fn effects_or_panic(&self) -> &Effects {
        match &self.result {
            Ok(Some(effects)) => effects,
            Ok(None) => {
                panic!("the saga did not take the message: no instance was found or started")
            }
            Err(error) => panic!("the saga handler failed: {error}"),
        }
    }

    /// Asserts that the handler sent exactly these commands, in order (a command, a tuple,
    /// an `Option` or a `Vec` of them).
    ///
    /// # Panics
    ///
    /// When it sent others, failed, or did not take the message.
    #[track_caller]
    pub fn then_expect_commands(self, expected: impl IntoCommands<S>) -> Self {
        let mut ctx = SagaContext::<S>::new(
            &self.key,
            &SagaMessage::Deadline(DeadlineDue {
                name: String::new(),
                payload: String::new(),
                id: Uuid::nil(),
                due_at: DateTime::<Utc>::MIN_UTC,
            }),
            Utc::now(),
        );
        expected.send_all(&mut ctx);
        let expected: Vec<(String, serde_json::Value)> = ctx
            .finish()
            .expect("the expected commands serialize")
            .commands
            .iter()
            .map(shape)
            .collect();
        let sent: Vec<(String, serde_json::Value)> =
            self.effects_or_panic().commands.iter().map(shape).collect();
        assert_eq!(sent, expected, "the saga sent other commands");
        self
    }

    /// Asserts that the handler sent no command.
    ///
    /// # Panics
    ///
    /// When it sent one or failed.
    #[track_caller]
    pub fn then_expect_no_commands(self) -> Self {
        if let Ok(Some(effects)) = &self.result {
            let sent: Vec<_> = effects.commands.iter().map(shape).collect();
            assert!(
                sent.is_empty(),
                "expected no commands, the saga sent {sent:?}"
            );
        } else if let Err(error) = &self.result {
            panic!("the saga handler failed: {error}");
        }
        self
    }

    /// Asserts that the handler scheduled `deadline`, `after` from now.
    ///
    /// # Panics
    ///
    /// When it did not.
    #[track_caller]
    pub fn then_expect_scheduled<D>(self, deadline: D, after: Duration) -> Self
    where
        S: HandlesDeadline<D>,
        D: Serialize + Debug,
    {
        let name = <S as HandlesDeadline<D>>::NAME;
        let payload = serde_json::to_string(&deadline).expect("the deadline serializes");
        let effects = self.effects_or_panic();
        let found = effects
            .scheduled
            .iter()
            .any(|d| d.name == name && d.payload == payload && d.after == after);
        let scheduled: Vec<_> = effects
            .scheduled
            .iter()
            .map(|d| format!("{} {} after {:?}", d.name, d.payload, d.after))
            .collect();
        assert!(
            found,
            "expected deadline {deadline:?} after {after:?}; scheduled: {scheduled:?}"
        );
        self
    }

    /// Asserts that the handler cancelled the deadline of type `D` (or ended the instance,
    /// which cancels every deadline).
    ///
    /// # Panics
    ///
    /// When it did not.
    #[track_caller]
    pub fn then_expect_cancelled<D>(self) -> Self
    where
        S: HandlesDeadline<D>,
    {
        let name = <S as HandlesDeadline<D>>::NAME;
        let effects = self.effects_or_panic();
        assert!(
            effects.ended || effects.cancelled.contains(&name),
            "expected deadline `{name}` to be cancelled"
        );
        self
    }

    /// Asserts that the instance ended.
    ///
    /// # Panics
    ///
    /// When it did not.
    #[track_caller]
    pub fn then_expect_ended(self) -> Self {
        assert!(
            self.effects_or_panic().ended,
            "expected the saga instance to end"
        );
        self
    }

    /// Asserts that no instance took the message (it neither found nor started one, or
    /// the instance had ended).
    ///
    /// # Panics
    ///
    /// When one did.
    #[track_caller]
    pub fn then_expect_ignored(self) -> Self {
        match &self.result {
            Ok(None) => {}
            Ok(Some(effects)) => {
                panic!("expected the message to be ignored; the saga handled it: {effects:?}")
            }
            Err(error) => panic!("expected the message to be ignored; the handler failed: {error}"),
        }
        self
    }

    /// Asserts that the handler failed, and returns the error.
    ///
    /// # Panics
    ///
    /// When it did not.
    #[track_caller]
    pub fn then_expect_error(self) -> SagaError {
        match self.result {
            Err(error) => error,
            Ok(effects) => panic!("expected the saga handler to fail; it returned {effects:?}"),
        }
    }

    /// The instance's state after the message.
    ///
    /// # Panics
    ///
    /// When no instance exists.
    #[track_caller]
    pub fn state(&self) -> &S {
        self.state.as_ref().expect("no saga instance exists")
    }

    /// What the handler asked for.
    pub fn effects(&self) -> Option<&Effects> {
        self.result.as_ref().ok().and_then(Option::as_ref)
    }
}

fn shape(command: &OutgoingCommand) -> (String, serde_json::Value) {
    (
        command.command_name.clone(),
        serde_json::from_str(&command.body).unwrap_or(serde_json::Value::Null),
    )
}

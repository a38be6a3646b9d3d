//! Sagas (process managers): long-running processes that react to events of several
//! aggregates, keep their own state, and send commands, with compensation of failed steps
//! and deadlines.
//!
//! A saga is a plain struct (its state, `Default + Serialize + Deserialize`) with
//! `#[saga]` on its impl block. Each `#[event_handler]` takes one event
//! payload and declares how the event finds its saga **instance**: a field of the payload
//! (`key = order_id`) read as text. `start` handlers create the instance when it does not
//! exist yet; events for an instance that does not exist and is not started by them are not
//! this saga's business and are ignored; `end` handlers (or [`SagaContext::end`]) finish it.
//!
//! Handlers change the state and send commands, by returning them (one command, a tuple of
//! commands, an `Option` or a `Vec`) or through [`SagaContext::send`]. The commands a saga may
//! send are declared in `#[saga(commands(...))]`; sending another one does not compile, and
//! neither does registering the saga on a command bus with no aggregate for one of them.
//!
//! A command the target aggregate refuses comes back as a [`CommandFailed<C>`] to the
//! saga's `#[failure_handler]` for that command: the command itself, the failure's
//! [`ErrorKind`] and the domain error's code and message, with no downcast. Compensation is
//! written there, usually in the reverse order of the steps done so far.
//!
//! `ctx.schedule(deadline, after)` arranges for the `#[deadline_handler]` taking that
//! deadline type to run once, `after` from now, for this instance. Scheduling the same type
//! again replaces it; [`SagaContext::cancel`] cancels it; ending the instance cancels all.
//!
//! ```
//! use std::time::Duration;
//! use cqrs_core::prelude::*;
//! use cqrs_core::saga::{CommandFailed, SagaContext};
//! use cqrs_core::testing::SagaFixture;
//!
//! // Events the saga reacts to (from the order and payment aggregates).
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct OrderPlaced { pub order_id: u32, pub cents: u64 }
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct PaymentCaptured { pub order_id: u32 }
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum ShopEvent { OrderPlaced(OrderPlaced), PaymentCaptured(PaymentCaptured) }
//!
//! // Commands it sends; saga commands take idempotency keys.
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
//! #[command(aggregate = Shop, id = order_id, idempotent)]
//! pub struct Charge { pub order_id: u32, pub cents: u64 }
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
//! #[command(aggregate = Shop, id = order_id, idempotent)]
//! pub struct Cancel { pub order_id: u32 }
//!
//! # #[derive(Debug, Default)]
//! # pub struct Shop;
//! # #[aggregate(event = ShopEvent, error = std::convert::Infallible)]
//! # impl Shop {
//! #     #[command_handler]
//! #     fn charge(&self, c: &Charge) -> Result<PaymentCaptured, std::convert::Infallible> {
//! #         Ok(PaymentCaptured { order_id: c.order_id })
//! #     }
//! #     #[command_handler]
//! #     fn cancel(&self, _: &Cancel) -> Result<(), std::convert::Infallible> { Ok(()) }
//! #     #[event_handler] fn on_placed(&mut self, _: &OrderPlaced) {}
//! #     #[event_handler] fn on_captured(&mut self, _: &PaymentCaptured) {}
//! # }
//! /// Fires when payment did not arrive in time.
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct PaymentDue;
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! pub struct Checkout { order_id: u32, paid: bool }
//!
//! #[saga(commands(Charge, Cancel))]
//! impl Checkout {
//!     #[event_handler(key = order_id, start)]
//!     fn on_placed(&mut self, e: &OrderPlaced, ctx: &mut SagaContext<Self>) -> Charge {
//!         self.order_id = e.order_id;
//!         ctx.schedule(PaymentDue, Duration::from_secs(15 * 60));
//!         Charge { order_id: e.order_id, cents: e.cents }
//!     }
//!
//!     #[event_handler(key = order_id, end)]
//!     fn on_captured(&mut self, _: &PaymentCaptured) {
//!         self.paid = true;
//!     }
//!
//!     #[failure_handler]
//!     fn on_charge_failed(&mut self, failed: &CommandFailed<Charge>) -> Cancel {
//!         Cancel { order_id: failed.command.order_id }
//!     }
//!
//!     #[deadline_handler]
//!     fn on_payment_due(&mut self, _: &PaymentDue, ctx: &mut SagaContext<Self>) -> Cancel {
//!         ctx.end();
//!         Cancel { order_id: self.order_id }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! SagaFixture::<Checkout>::new()
//!     .when(OrderPlaced { order_id: 7, cents: 500 })
//!     .await
//!     .then_expect_commands(Charge { order_id: 7, cents: 500 })
//!     .then_expect_scheduled(PaymentDue, Duration::from_secs(900));
//!
//! SagaFixture::<Checkout>::new()
//!     .given(OrderPlaced { order_id: 7, cents: 500 })
//!     .await
//!     .when_failed(CommandFailed::rejected(Charge { order_id: 7, cents: 500 }, "declined", "card declined"))
//!     .await
//!     .then_expect_commands(Cancel { order_id: 7 });
//! # }
//! ```
//!
//! # Running a saga
//!
//! [`InMemorySagaRunner`] runs a saga in process over any [`EventStore`](crate::EventStore):
//! it reads the store's global order from its checkpoint, hands each event to its instance,
//! sends the commands through the command bus, brings failures back, and fires deadlines by
//! an injectable [`Clock`]. Its saga state, outbox and deadlines
//! live in memory: it is for tests, examples and single-process services whose sagas may
//! start over. `cqrs_postgres::saga` keeps all of them in PostgreSQL, in one transaction per
//! event, and survives crashes.
//!
//! # Decisions
//!
//! - **Instances are found by a key in the event's payload**, declared per handler
//!   (Axon's association values, Commanded's `interested?`). The key is the field's text
//!   (`ToString`), so one saga can correlate events whose payloads name the key differently.
//! - **An event for no instance, not starting one, is ignored.** An event that starts an
//!   instance which already exists is handled by it (a duplicate start does not reset it).
//! - **An ended instance is kept as ended** (its state is kept, it handles nothing more):
//!   a late or repeated event can never start the same process again.
//! - **Commands leave with an idempotency key** `saga/instance/trigger/index` (trigger: the
//!   event id, the failed command's key, or the deadline's id), so sending one again after a
//!   crash does not execute it twice. Saga commands must take keys
//!   (`#[command(idempotent)]`); a command with a key field of its own
//!   (`#[command(idempotency_key = field)]`) uses that instead.
//! - **Which failures come back.** A failure that is the command's outcome (a domain
//!   rejection, invalid fields, a unique key taken, forbidden) comes back to the saga as a
//!   [`CommandFailed`]; a passing one (conflict, timeout, store unavailable, rate limit,
//!   open circuit) is retried with backoff and never reaches the saga. A failure with no
//!   `#[failure_handler]` for its command parks the instance.
//! - **Each instance's commands leave in order**; one put off by a passing failure holds
//!   back that instance's later commands (other instances' go on).
//! - **Parking.** A handler that fails `handler_attempts` times in a row (or a failure
//!   nobody handles) parks its instance: its later messages wait, in order, other instances
//!   go on; an operator lists parked instances with their error, then retries or skips the
//!   failed message.
//! - **Deadlines are one per type per instance**: scheduling again replaces the pending one.
//!   They use the runner's clock (wall time on PostgreSQL, stored as `timestamptz`).

mod memory;

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::list::Contains;
use crate::middleware::{Clock, CommandChain, SystemClock};
use crate::{
    Aggregate, BoxFuture, Command, CommandBus, CommandError, Committed, ErrorKind,
    EventDecodeError, Metadata, RecordedEvent,
};

pub use memory::{InMemorySagaRunner, SagaRunnerHandle};

/// Tuning of a saga runner; the defaults suit most sagas.
#[derive(Debug, Clone)]
pub struct SagaOptions {
    /// How many times a failing handler runs for one message before its instance is
    /// parked. Default 3.
    pub handler_attempts: u32,
    /// Most events read per batch. Default 500.
    pub batch_size: usize,
    /// How often a caught-up runner looks for new events, due deadlines and commands to
    /// send again without being woken. Default 1 s.
    pub poll_interval: Duration,
    /// First delay before sending a command again after a passing failure; doubles per
    /// attempt. Default 100 ms.
    pub send_retry_initial: Duration,
    /// Longest delay between sends of one command. Default 30 s.
    pub send_retry_max: Duration,
    /// The time deadlines are measured by. Default: the system clock.
    pub clock: WallClock,
}

impl Default for SagaOptions {
    fn default() -> Self {
        Self {
            handler_attempts: 3,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            send_retry_initial: Duration::from_millis(100),
            send_retry_max: Duration::from_secs(30),
            clock: WallClock::default(),
        }
    }
}

impl SagaOptions {
    /// Measures deadlines by `clock` (a [`ManualClock`](crate::middleware::ManualClock) in tests).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = WallClock::new(clock);
        self
    }

    /// Runs a failing handler `attempts` times (at least once) before parking its instance.
    #[must_use]
    pub fn handler_attempts(mut self, attempts: u32) -> Self {
        self.handler_attempts = attempts.max(1);
        self
    }

    /// Looks for work every `every` without being woken.
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The delay before the `attempt`-th send again of a command (1-based).
    pub fn send_backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.send_retry_initial
            .saturating_mul(factor)
            .min(self.send_retry_max)
    }
}

/// The life of a saga instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    /// Handles its messages.
    Active,
    /// A handler kept failing: its messages wait for an operator.
    Parked,
    /// Finished: it handles nothing more.
    Ended,
}

impl InstanceStatus {
    /// The stored name (`active`, `parked`, `ended`).
    pub const fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Active => "active",
            InstanceStatus::Parked => "parked",
            InstanceStatus::Ended => "ended",
        }
    }

    /// The status of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Active, Self::Parked, Self::Ended]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// A saga instance as stored: its state and status.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaInstance<S> {
    /// The instance key.
    pub key: String,
    /// Its state (`None` for an instance parked on the message that was to start it).
    pub state: Option<S>,
    /// Its status.
    pub status: InstanceStatus,
}

/// A parked instance, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedInstance {
    /// The saga's name.
    pub saga: String,
    /// The instance key.
    pub key: String,
    /// The last error of the failing handler.
    pub error: String,
    /// The message it failed on.
    pub failed_on: String,
    /// How many messages wait, the failed one included.
    pub waiting: usize,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Why a saga runner could not go on.
#[derive(Debug, thiserror::Error)]
pub enum SagaRunError {
    /// The event store failed.
    #[error("saga `{saga}`: {source}")]
    Store {
        /// The saga.
        saga: &'static str,
        /// The store's error.
        #[source]
        source: crate::StoreError,
    },
    /// An event of a type the saga handles does not say which instance it is for (it does
    /// not decode): the runner cannot go past it without an operator.
    #[error(transparent)]
    Route(SagaError),
    /// No parked instance has this key.
    #[error("saga `{saga}`: no parked instance `{key}`")]
    NotParked {
        /// The saga.
        saga: &'static str,
        /// The key asked for.
        key: String,
    },
}

/// A saga: its state type, the events it reacts to, how an event finds its instance, and its
/// handlers. Implemented by `#[saga]`; see the [module docs](self).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a saga",
    note = "add `#[saga(commands(...))]` to an `impl {Self}` block with its `#[event_handler]` methods"
)]
pub trait Saga: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name: the key of its stored instances and checkpoint.
    const NAME: &'static str;
    /// The stored event types it reads: its handlers' type names, their old names, and the
    /// names of events an upcaster may split into one of them
    /// ([`EventPayload::STORED_TYPES`](crate::EventPayload::STORED_TYPES)).
    const EVENT_TYPES: &'static [&'static str];
    /// The [`Command::NAME`]s of the commands it may send.
    const COMMANDS: &'static [&'static str];
    /// The names of its deadline types.
    const DEADLINES: &'static [&'static str];

    /// Which instance `event` is for, and whether its handler starts or ends it; `None`
    /// for an event of a type the saga does not handle.
    fn associate(event: &RecordedEvent) -> Result<Option<Association>, SagaError>;

    /// Runs the `#[event_handler]` for `event`.
    fn handle_event<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
        ctx: &'a mut SagaContext<Self>,
    ) -> impl Future<Output = Result<(), SagaError>> + Send + 'a;

    /// Runs the `#[failure_handler]` for the failed command; fails with
    /// [`SagaError::UnhandledFailure`] when there is none.
    fn handle_failure<'a>(
        &'a mut self,
        failure: &'a CommandFailure,
        ctx: &'a mut SagaContext<Self>,
    ) -> impl Future<Output = Result<(), SagaError>> + Send + 'a;

    /// Runs the `#[deadline_handler]` for the deadline.
    fn handle_deadline<'a>(
        &'a mut self,
        deadline: &'a DeadlineDue,
        ctx: &'a mut SagaContext<Self>,
    ) -> impl Future<Output = Result<(), SagaError>> + Send + 'a;
}

/// The saga may send command `C`: generated for each command in `#[saga(commands(...))]`.
#[diagnostic::on_unimplemented(
    message = "saga `{Self}` does not declare command `{C}`",
    label = "`{C}` is not one of `{Self}`'s commands",
    note = "add `{C}` to `#[saga(commands(...))]` on the impl block of `{Self}`"
)]
pub trait Sends<C: Command>: Saga {}

/// The saga has a `#[deadline_handler]` for deadline type `D`.
#[diagnostic::on_unimplemented(
    message = "saga `{Self}` has no `#[deadline_handler]` for `{D}`",
    label = "`{Self}` cannot receive `{D}`",
    note = "add `#[deadline_handler] fn on_...(&mut self, deadline: &{D})` to the `#[saga]` impl of `{Self}`"
)]
pub trait HandlesDeadline<D>: Saga {
    /// The deadline's stored name.
    const NAME: &'static str;
}

/// A command the idempotent sending of sagas can carry: `#[command(idempotent)]` or
/// `#[command(idempotency_key = field)]`, which `#[derive(Command)]` marks with this trait.
#[diagnostic::on_unimplemented(
    message = "saga command `{Self}` takes no idempotency key",
    label = "a saga sends each command with an idempotency key, so that a repeat after a crash does not execute it twice",
    note = "declare the command `#[command(..., idempotent)]`"
)]
pub trait IdempotentCommand: Command {}

/// A command bus can carry command `C` of saga `S`: its aggregate is registered (at index
/// `I`). Checked when a saga is registered with a bus (a runner is built).
#[diagnostic::on_unimplemented(
    message = "saga `{S}` sends command `{C}`, but no aggregate on this command bus handles it",
    label = "this bus cannot carry `{C}` for `{S}`",
    note = "register the aggregate that handles `{C}` on the `CommandBus` builder with `.aggregate::<...>(services)`"
)]
pub trait SagaRoute<S, C: Command, I>: Contains<C::Aggregate, I> {}

impl<S, C, A, T> SagaRoute<S, C, crate::list::Here> for (crate::Repository<A>, T)
where
    C: Command<Aggregate = A>,
    A: Aggregate,
    T: Send + Sync + 'static,
{
}

impl<S, C, B, T, I> SagaRoute<S, C, crate::list::There<I>> for (crate::Repository<B>, T)
where
    C: Command,
    B: Aggregate,
    T: SagaRoute<S, C, I>,
{
}

/// Sends saga `Self`'s commands through a command bus with aggregates `R` and middleware
/// `M` (`I`: where each command's aggregate sits, inferred). Generated by `#[saga]`: a
/// bus that cannot carry one of the saga's commands does not satisfy it, and the error names
/// the saga and the command.
pub trait SendCommands<R, M, I>: Saga {
    /// Decodes `command` into its type and executes it with `metadata`.
    fn send<'a>(
        bus: &'a CommandBus<R, M>,
        command: &'a OutgoingCommand,
        metadata: Metadata,
    ) -> BoxFuture<'a, Result<Committed, SendFailure>>;
}

/// Executes one outgoing command with its metadata.
type SendFn = dyn Fn(OutgoingCommand, Metadata) -> BoxFuture<'static, Result<Committed, SendFailure>>
    + Send
    + Sync;

/// Sends the outgoing commands of one saga type through its bus; what runners hold.
#[derive(Clone)]
pub struct CommandSender {
    send: Arc<SendFn>,
}

impl fmt::Debug for CommandSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CommandSender")
    }
}

impl CommandSender {
    /// The sender of saga `S`'s commands through `bus`. Does not compile when the bus has
    /// no aggregate for one of them (the error names the saga and the command).
    pub fn new<S, R, M, I>(bus: &CommandBus<R, M>) -> Self
    where
        S: SendCommands<R, M, I>,
        R: Send + Sync + 'static,
        M: CommandChain,
    {
        let bus = bus.clone();
        Self {
            send: Arc::new(move |command, metadata| {
                let bus = bus.clone();
                Box::pin(async move { S::send(&bus, &command, metadata).await })
            }),
        }
    }

    /// Executes `command` with its idempotency key, and the causation of its trigger.
    pub async fn send(
        &self,
        saga: &'static str,
        command: &OutgoingCommand,
    ) -> Result<Committed, SendFailure> {
        let mut metadata = Metadata::default()
            .with_idempotency_key(command.idempotency_key.clone())
            .with("saga", saga)
            .with("saga_instance", command.instance.clone());
        if let Some(correlation) = command.correlation_id {
            metadata = metadata.with_correlation_id(correlation);
        }
        (self.send)(command.clone(), metadata).await
    }
}

/// Which instance an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    /// The instance key (the payload field's text).
    pub key: String,
    /// The handler starts the instance when it does not exist.
    pub start: bool,
    /// The instance ends after the handler.
    pub end: bool,
}

/// A message for a saga instance, as stored while it waits (a parked instance's inbox).
///
/// Stored externally tagged (`{"event": {...}}`): an event's payload is raw JSON, which an
/// internally tagged enum could not read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaMessage {
    /// An event of the store.
    Event(RecordedEvent),
    /// A command the saga sent failed.
    Failure(CommandFailure),
    /// A deadline came due.
    Deadline(DeadlineDue),
}

impl SagaMessage {
    /// What the idempotency keys of the commands this message makes the saga send derive
    /// from: the event's id, the failed command's key, the deadline's id.
    pub fn trigger(&self) -> String {
        match self {
            SagaMessage::Event(event) => event.event_id.to_string(),
            SagaMessage::Failure(failure) => {
                let hash = crate::idempotency::body_hash(&failure.idempotency_key);
                format!("failed-{}", &hash[..32])
            }
            SagaMessage::Deadline(deadline) => format!("deadline-{}", deadline.id),
        }
    }

    /// The correlation id the commands it causes carry: the event's (or its id).
    pub fn correlation_id(&self) -> Option<Uuid> {
        match self {
            SagaMessage::Event(event) => {
                Some(event.metadata.correlation_id.unwrap_or(event.event_id))
            }
            SagaMessage::Failure(failure) => failure.correlation_id,
            SagaMessage::Deadline(_) => None,
        }
    }

    /// A short description for logs and the parked-instance listing.
    pub fn describe(&self) -> String {
        match self {
            SagaMessage::Event(event) => {
                format!(
                    "event `{}` at position {}",
                    event.event_type, event.position
                )
            }
            SagaMessage::Failure(failure) => format!("failure of `{}`", failure.command_name),
            SagaMessage::Deadline(deadline) => format!("deadline `{}`", deadline.name),
        }
    }
}

/// A command a saga sends, as stored in its outbox until it is executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingCommand {
    /// The command's [`Command::NAME`].
    pub command_name: String,
    /// The command as JSON.
    pub body: String,
    /// Its idempotency key: `saga/instance/trigger/index`.
    pub idempotency_key: String,
    /// The key of the instance that sent it.
    pub instance: String,
    /// The correlation id of what caused it.
    pub correlation_id: Option<Uuid>,
}

/// A deadline a handler scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledDeadline {
    /// Its name (the deadline type's).
    pub name: &'static str,
    /// The deadline value as JSON.
    pub payload: String,
    /// How long from now.
    pub after: Duration,
    /// Its id (the trigger of the commands it causes).
    pub id: Uuid,
}

/// A deadline that came due, as delivered to the saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadlineDue {
    /// Its name.
    pub name: String,
    /// The deadline value as JSON.
    pub payload: String,
    /// Its id.
    pub id: Uuid,
    /// When it was due.
    pub due_at: DateTime<Utc>,
}

/// A command a saga sent that failed, as stored and delivered back to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailure {
    /// The command's name.
    pub command_name: String,
    /// The command as JSON.
    pub body: String,
    /// The command's idempotency key.
    pub idempotency_key: String,
    /// The failure's [`ErrorKind::code`].
    pub kind: String,
    /// The domain error's code, when the aggregate rejected it with one.
    pub domain_code: Option<String>,
    /// The error's message.
    pub message: String,
    /// The correlation id of the command.
    pub correlation_id: Option<Uuid>,
}

impl CommandFailure {
    /// The failure of `command` as `failure` said.
    pub fn of(command: &OutgoingCommand, failure: SendFailure) -> Self {
        Self {
            command_name: command.command_name.clone(),
            body: command.body.clone(),
            idempotency_key: command.idempotency_key.clone(),
            kind: failure.kind.code().to_owned(),
            domain_code: failure.domain_code,
            message: failure.message,
            correlation_id: command.correlation_id,
        }
    }
}

/// A typed failure of command `C`, handed to the saga's `#[failure_handler]` for `C`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandFailed<C> {
    /// The command that failed.
    pub command: C,
    /// What kind of failure ([`ErrorKind::Rejected`] for a domain error).
    pub kind: ErrorKind,
    /// The domain error's [`DomainError::code`](crate::DomainError::code), when it has one.
    pub domain_code: Option<String>,
    /// The error's message.
    pub message: String,
    /// The idempotency key the command was sent with.
    pub idempotency_key: String,
}

impl<C> CommandFailed<C> {
    /// A domain rejection of `command` with code `domain_code` (for tests).
    pub fn rejected(command: C, domain_code: &str, message: &str) -> Self {
        Self {
            command,
            kind: ErrorKind::Rejected,
            domain_code: Some(domain_code.to_owned()),
            message: message.to_owned(),
            idempotency_key: String::new(),
        }
    }

    /// Whether the aggregate rejected the command (rather than, say, its validation).
    pub fn is_rejection(&self) -> bool {
        self.kind == ErrorKind::Rejected
    }
}

impl<C: Command + Serialize> CommandFailed<C> {
    /// The stored form of this failure.
    pub fn to_failure(&self) -> Result<CommandFailure, serde_json::Error> {
        Ok(CommandFailure {
            command_name: C::NAME.to_owned(),
            body: serde_json::to_string(&self.command)?,
            idempotency_key: self.idempotency_key.clone(),
            kind: self.kind.code().to_owned(),
            domain_code: self.domain_code.clone(),
            message: self.message.clone(),
            correlation_id: None,
        })
    }
}

/// Why a command a saga sent failed, as the bus said: no downcast needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The domain error's code, when the aggregate rejected it with one.
    pub domain_code: Option<String>,
    /// The error's message.
    pub message: String,
}

impl SendFailure {
    /// The failure of a command that aggregate `A` handles.
    pub fn from_error<A: Aggregate>(error: &CommandError<A::Error>) -> Self {
        let (domain_code, message) = match error {
            CommandError::Rejected(rejection) => (
                A::domain_code(rejection).map(str::to_owned),
                rejection.to_string(),
            ),
            CommandError::AlreadyRejected {
                domain_code,
                message,
                ..
            } => (domain_code.clone(), message.clone()),
            other => (None, other.to_string()),
        };
        Self {
            kind: error.kind(),
            domain_code,
            message,
        }
    }

    /// Whether the failure may pass by itself (a conflict, a timeout, the store being down,
    /// a limit or an open circuit): such a command is sent again later, and the saga never
    /// sees the failure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Conflict
                | ErrorKind::Timeout
                | ErrorKind::Refused
                | ErrorKind::StoreUnavailable
                | ErrorKind::RetriesExhausted
                | ErrorKind::CircuitOpen
                | ErrorKind::RateLimited
                | ErrorKind::ConcurrencyLimited
        )
    }
}

/// What a handler run asked for besides the new state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Commands to send, in order.
    pub commands: Vec<OutgoingCommand>,
    /// Deadlines to (re)schedule, applied after [`cancelled`](Self::cancelled).
    pub scheduled: Vec<ScheduledDeadline>,
    /// Deadline names to cancel.
    pub cancelled: Vec<&'static str>,
    /// The instance ended.
    pub ended: bool,
}

/// What a saga handler may use besides its state and message: send commands, schedule
/// and cancel deadlines, end the instance.
pub struct SagaContext<S> {
    key: String,
    trigger: String,
    correlation_id: Option<Uuid>,
    now: DateTime<Utc>,
    effects: Effects,
    error: Option<SagaError>,
    saga: PhantomData<fn() -> S>,
}

impl<S> fmt::Debug for SagaContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaContext")
            .field("key", &self.key)
            .field("trigger", &self.trigger)
            .field("now", &self.now)
            .field("effects", &self.effects)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaContext<S> {
    /// A context for the instance `key` handling `message` at `now`.
    pub fn new(key: &str, message: &SagaMessage, now: DateTime<Utc>) -> Self {
        Self {
            key: key.to_owned(),
            trigger: message.trigger(),
            correlation_id: message.correlation_id(),
            now,
            effects: Effects::default(),
            error: None,
            saga: PhantomData,
        }
    }

    /// The instance's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The runner's time: use it instead of reading the clock in handlers.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Sends `command` once this handler's changes are saved.
    // Taken by value: the command is handed over, as a returned one is.
    #[allow(clippy::needless_pass_by_value)]
    pub fn send<C>(&mut self, command: C)
    where
        S: Sends<C>,
        C: Command + Serialize,
    {
        match serde_json::to_string(&command) {
            Ok(body) => {
                let index = self.effects.commands.len();
                self.effects.commands.push(OutgoingCommand {
                    command_name: C::NAME.to_owned(),
                    body,
                    idempotency_key: format!("{}/{}/{}/{index}", S::NAME, self.key, self.trigger),
                    instance: self.key.clone(),
                    correlation_id: self.correlation_id,
                });
            }
            Err(error) => self.fail(SagaError::Serialize {
                saga: S::NAME,
                what: C::NAME,
                source: Arc::new(error),
            }),
        }
    }

    /// Schedules `deadline` for this instance, `after` from now, replacing a pending one of
    /// the same type.
    pub fn schedule<D>(&mut self, deadline: D, after: Duration)
    where
        S: HandlesDeadline<D>,
        D: Serialize,
    {
        let name = <S as HandlesDeadline<D>>::NAME;
        match serde_json::to_string(&deadline) {
            Ok(payload) => {
                self.effects.scheduled.retain(|d| d.name != name);
                self.effects.scheduled.push(ScheduledDeadline {
                    name,
                    payload,
                    after,
                    id: Uuid::now_v7(),
                });
            }
            Err(error) => self.fail(SagaError::Serialize {
                saga: <S as Saga>::NAME,
                what: name,
                source: Arc::new(error),
            }),
        }
    }

    /// Cancels the pending deadline of type `D` of this instance, if any.
    pub fn cancel<D>(&mut self)
    where
        S: HandlesDeadline<D>,
    {
        let name = <S as HandlesDeadline<D>>::NAME;
        self.effects.scheduled.retain(|d| d.name != name);
        if !self.effects.cancelled.contains(&name) {
            self.effects.cancelled.push(name);
        }
    }

    /// Ends the instance once this handler's changes are saved: its pending deadlines are
    /// cancelled, and it handles no more messages. The commands sent before are still sent.
    pub fn end(&mut self) {
        self.effects.ended = true;
    }

    /// Whether the instance ends after this handler.
    pub fn is_ending(&self) -> bool {
        self.effects.ended
    }

    /// The effects collected so far.
    pub fn effects(&self) -> &Effects {
        &self.effects
    }

    fn fail(&mut self, error: SagaError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    /// The effects, or the first error a `send` or `schedule` met.
    pub fn finish(self) -> Result<Effects, SagaError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.effects),
        }
    }
}

/// What a saga handler may return as commands to send: a declared command, `()`, an
/// `Option` or `Vec` of them, or a tuple (sent in order).
#[diagnostic::on_unimplemented(
    message = "a saga handler of `{S}` cannot return `{Self}` as commands to send",
    note = "return a command declared in `#[saga(commands(...))]`, `()`, an `Option` or `Vec` of them, or a tuple of them"
)]
pub trait IntoCommands<S> {
    /// Sends each command through `ctx`, in order.
    fn send_all(self, ctx: &mut SagaContext<S>);
}

impl<S> IntoCommands<S> for () {
    fn send_all(self, _: &mut SagaContext<S>) {}
}

impl<S, T: IntoCommands<S>> IntoCommands<S> for Option<T> {
    fn send_all(self, ctx: &mut SagaContext<S>) {
        if let Some(commands) = self {
            commands.send_all(ctx);
        }
    }
}

impl<S, T: IntoCommands<S>> IntoCommands<S> for Vec<T> {
    fn send_all(self, ctx: &mut SagaContext<S>) {
        for commands in self {
            commands.send_all(ctx);
        }
    }
}

macro_rules! tuple_commands {
    ($($t:ident),+) => {
        impl<S, $($t: IntoCommands<S>),+> IntoCommands<S> for ($($t,)+) {
            #[allow(non_snake_case)]
            fn send_all(self, ctx: &mut SagaContext<S>) {
                let ($($t,)+) = self;
                $($t.send_all(ctx);)+
            }
        }
    };
}
tuple_commands!(A);
tuple_commands!(A, B);
tuple_commands!(A, B, C);
tuple_commands!(A, B, C, D);
tuple_commands!(A, B, C, D, E);
tuple_commands!(A, B, C, D, E, F);

/// Why a saga could not handle a message.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// An event does not decode into the handler's payload type.
    #[error("saga `{saga}`: cannot decode event `{event_type}`: {source}")]
    Decode {
        /// The saga.
        saga: &'static str,
        /// The event's type name.
        event_type: String,
        /// What went wrong.
        #[source]
        source: EventDecodeError,
    },
    /// A failed command or a deadline does not decode into its type.
    #[error("saga `{saga}`: cannot decode {what}: {message}")]
    DecodeMessage {
        /// The saga.
        saga: &'static str,
        /// What was decoded.
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// The stored state does not decode into the saga type.
    #[error("saga `{saga}`: stored state of instance `{key}` does not decode: {message}")]
    State {
        /// The saga.
        saga: &'static str,
        /// The instance.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// A command, a deadline or the state could not be serialized.
    #[error("saga `{saga}`: cannot serialize `{what}`: {source}")]
    Serialize {
        /// The saga.
        saga: &'static str,
        /// What was serialized.
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The handler returned its error.
    #[error("saga `{saga}`: handler failed: {source}")]
    Handler {
        /// The saga.
        saga: &'static str,
        /// The handler's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A command the saga sent failed, and it has no `#[failure_handler]` for it.
    #[error(
        "saga `{saga}`: command `{command}` failed ({kind}: {message}) and no `#[failure_handler]` handles it"
    )]
    UnhandledFailure {
        /// The saga.
        saga: &'static str,
        /// The command's name.
        command: String,
        /// The failure's kind code.
        kind: String,
        /// The failure's message.
        message: String,
    },
    /// A deadline with no `#[deadline_handler]` (a stored deadline of a removed handler).
    #[error("saga `{saga}`: no `#[deadline_handler]` for deadline `{name}`")]
    UnknownDeadline {
        /// The saga.
        saga: &'static str,
        /// The deadline's name.
        name: String,
    },
}

/// Runs one message through an instance: decodes the state (`None`: a new instance, from
/// `Default`), runs the handler, and returns the new state as JSON with the effects.
pub async fn handle<S: Saga>(
    stored: Option<&str>,
    key: &str,
    message: &SagaMessage,
    end: bool,
    now: DateTime<Utc>,
) -> Result<(String, Effects), SagaError> {
    let mut state = match stored {
        None => S::default(),
        Some(json) => serde_json::from_str::<S>(json).map_err(|e| SagaError::State {
            saga: S::NAME,
            key: key.to_owned(),
            message: e.to_string(),
        })?,
    };
    let mut ctx = SagaContext::<S>::new(key, message, now);
    match message {
        SagaMessage::Event(event) => state.handle_event(event, &mut ctx).await?,
        SagaMessage::Failure(failure) => state.handle_failure(failure, &mut ctx).await?,
        SagaMessage::Deadline(deadline) => state.handle_deadline(deadline, &mut ctx).await?,
    }
    if end {
        ctx.end();
    }
    let effects = ctx.finish()?;
    let state = serde_json::to_string(&state).map_err(|e| SagaError::Serialize {
        saga: S::NAME,
        what: "state",
        source: Arc::new(e),
    })?;
    Ok((state, effects))
}

/// Whether and how a message finds its instance: events by [`Saga::associate`], failures
/// and deadlines by the instance that sent or scheduled them (never starting one).
pub fn route<S: Saga>(
    message: &SagaMessage,
    instance: Option<&str>,
) -> Result<Option<Association>, SagaError> {
    match message {
        SagaMessage::Event(event) => S::associate(event),
        SagaMessage::Failure(_) | SagaMessage::Deadline(_) => Ok(instance.map(|key| Association {
            key: key.to_owned(),
            start: false,
            end: false,
        })),
    }
}

/// Wall time read through a monotonic [`Clock`]: the wall time of a process-wide anchor
/// instant, plus how far the clock stands past that instant. A
/// [`ManualClock`](crate::middleware::ManualClock) moves it by hand, which is how tests make
/// deadlines come due; every `WallClock` over one manual clock reads the same time, however
/// far the clock was moved before it was made.
#[derive(Clone)]
pub struct WallClock {
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WallClock").field(&self.now()).finish()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new(SystemClock)
    }
}

/// The instant every `WallClock` measures from, and the wall time it stood at.
fn anchor() -> (Instant, DateTime<Utc>) {
    static ANCHOR: std::sync::OnceLock<(Instant, DateTime<Utc>)> = std::sync::OnceLock::new();
    *ANCHOR.get_or_init(|| (Instant::now(), Utc::now()))
}

impl WallClock {
    /// Wall time following `clock`.
    pub fn new(clock: impl Clock) -> Self {
        anchor();
        Self {
            clock: Arc::new(clock),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> DateTime<Utc> {
        let (instant, wall) = anchor();
        let elapsed = self.clock.now().saturating_duration_since(instant);
        wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

/// `now + after`, saturating.
pub fn due_at(now: DateTime<Utc>, after: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(after)
        .ok()
        .and_then(|after| now.checked_add_signed(after))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[doc(hidden)]
pub mod __private {
    //! What `#[saga]`'s generated code calls.

    use super::CommandFailed;
    use serde::de::DeserializeOwned;

    pub use super::{
        Association, CommandFailure, DeadlineDue, HandlesDeadline, IdempotentCommand, IntoCommands,
        OutgoingCommand, Saga, SagaContext, SagaError, SagaRoute, SendCommands, SendFailure, Sends,
    };
    pub use crate::middleware::CommandChain;
    pub use crate::{
        BoxFuture, Command, CommandBus, Committed, ErrorKind, EventPayload, Handles, Metadata,
        RecordedEvent,
    };
    pub use std::string::ToString;

    /// Compiles only for a command a saga can send: it takes idempotency keys and is JSON.
    pub const fn saga_command<C>()
    where
        C: IdempotentCommand + serde::Serialize + DeserializeOwned,
        C::Aggregate: Handles<C>,
    {
    }

    /// Compiles only for a deadline type: JSON both ways.
    pub const fn deadline_type<D: serde::Serialize + DeserializeOwned + Send + Sync + 'static>() {}

    /// Decodes `event` as payload `P`: `None` when it is not one.
    ///
    /// The current name and version go straight to serde. Any other stored form `P` may
    /// come from (an old version, an old name, an event an upcaster splits) is upcast; a
    /// saga takes one event per stored event, so a stored event that stands for more than
    /// one event of the saga's types is an error ([`crate::EventDecodeError::NotOne`]),
    /// never a silent choice of one. `handled` lists the current names of the saga's
    /// handlers' payload types.
    pub fn decode<S: Saga, P: EventPayload>(
        event: &RecordedEvent,
        handled: &[&str],
    ) -> Result<Option<P>, SagaError> {
        let error = |source| SagaError::Decode {
            saga: S::NAME,
            event_type: event.event_type.clone(),
            source,
        };
        let event_type = event.event_type.as_str();
        if event_type == P::EVENT_TYPE && event.schema_version == P::SCHEMA_VERSION {
            let decoded = event.decode::<P::Event>().map_err(error)?;
            return Ok(P::from_event(decoded));
        }
        if !P::STORED_TYPES.contains(&event_type)
            || <P::Event as crate::Event>::is_current(event_type, event.schema_version)
        {
            return Ok(None);
        }
        let decoded = event.decode_all::<P::Event>().map_err(error)?;
        let count = decoded.len();
        let mut handled = decoded
            .into_iter()
            .filter(|e| handled.contains(&crate::Event::event_type(e)));
        match (handled.next(), handled.next()) {
            (None, _) => Ok(None),
            (Some(one), None) => Ok(P::from_event(one)),
            (Some(_), Some(_)) => Err(error(crate::EventDecodeError::NotOne {
                name: event.event_type.clone(),
                version: event.schema_version,
                count,
            })),
        }
    }

    /// The association of an event with key `key`.
    pub fn association(key: String, start: bool, end: bool) -> Association {
        Association { key, start, end }
    }

    /// A handler's error.
    pub fn handler_error<S: Saga, E>(error: E) -> SagaError
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        SagaError::Handler {
            saga: S::NAME,
            source: std::sync::Arc::from(error.into()),
        }
    }

    /// The typed failure of command `C`.
    pub fn failed<S: Saga, C: Command + DeserializeOwned>(
        failure: &CommandFailure,
    ) -> Result<CommandFailed<C>, SagaError> {
        let command =
            serde_json::from_str::<C>(&failure.body).map_err(|e| SagaError::DecodeMessage {
                saga: S::NAME,
                what: format!("failed command `{}`", C::NAME),
                message: e.to_string(),
            })?;
        let kind = ErrorKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.code() == failure.kind)
            .ok_or_else(|| SagaError::DecodeMessage {
                saga: S::NAME,
                what: format!("failure of `{}`", C::NAME),
                message: format!("unknown error kind `{}`", failure.kind),
            })?;
        Ok(CommandFailed {
            command,
            kind,
            domain_code: failure.domain_code.clone(),
            message: failure.message.clone(),
            idempotency_key: failure.idempotency_key.clone(),
        })
    }

    /// A failure no handler takes.
    pub fn unhandled<S: Saga>(failure: &CommandFailure) -> SagaError {
        SagaError::UnhandledFailure {
            saga: S::NAME,
            command: failure.command_name.clone(),
            kind: failure.kind.clone(),
            message: failure.message.clone(),
        }
    }

    /// The deadline value of type `D`.
    pub fn deadline<S: Saga, D: DeserializeOwned>(due: &DeadlineDue) -> Result<D, SagaError> {
        serde_json::from_str(&due.payload).map_err(|e| SagaError::DecodeMessage {
            saga: S::NAME,
            what: format!("deadline `{}`", due.name),
            message: e.to_string(),
        })
    }

    /// A deadline no handler takes.
    pub fn unknown_deadline<S: Saga>(due: &DeadlineDue) -> SagaError {
        SagaError::UnknownDeadline {
            saga: S::NAME,
            name: due.name.clone(),
        }
    }

    /// Decodes and executes one outgoing command of type `C` through `bus`.
    pub async fn send<S, C, R, M, I>(
        bus: &CommandBus<R, M>,
        command: &OutgoingCommand,
        metadata: Metadata,
    ) -> Result<Committed, SendFailure>
    where
        S: Saga,
        C: Command + DeserializeOwned,
        C::Aggregate: Handles<C>,
        R: SagaRoute<S, C, I>,
        M: CommandChain,
    {
        let typed = serde_json::from_str::<C>(&command.body).map_err(|e| SendFailure {
            kind: ErrorKind::BadRequest,
            domain_code: None,
            message: format!("command `{}` does not decode: {e}", C::NAME),
        })?;
        bus.execute_with(typed, metadata)
            .await
            .map_err(|error| SendFailure::from_error::<C::Aggregate>(&error))
    }

    /// The failure for a command name the saga does not declare (a stored outbox row of a
    /// command since removed from the saga).
    pub fn unknown_command<S: Saga>(command: &OutgoingCommand) -> SendFailure {
        SendFailure {
            kind: ErrorKind::UnknownCommand,
            domain_code: None,
            message: format!(
                "saga `{}` does not send command `{}`",
                S::NAME,
                command.command_name
            ),
        }
    }
}

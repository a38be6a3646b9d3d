//! Durable sagas: a saga's instances, outbox of commands and deadlines in PostgreSQL, driven
//! by the store's events, surviving crashes at any point.
//!
//! [`SagaRunner`] runs one saga type (see [`cqrs_core::saga`](mod@cqrs_core::saga) for
//! writing one). Building it with a command bus checks at compile time that the bus carries
//! every command the saga sends. Its [`SagaAdmin`] lists parked instances and retries or
//! skips them, from any process.
//!
//! # The path of an event
//!
//! ```text
//! event committed by a command ─► cqrs_events
//!   runner (the leader for this saga name) reads in (tx, position) order below the read
//!   horizon, from its checkpoint `saga:<name>` (the subscriptions' gap-safe read)
//!   ┌ one transaction per event ───────────────────────────────────────────────────────┐
//!   │ lock the checkpoint row; skip if another runner already passed the event          │
//!   │ find the instance by the handler's key (FOR UPDATE); start / ignore / queue       │
//!   │ run the handler; write state, outbox rows (command + idempotency key), deadlines  │
//!   │ move the checkpoint                                                     COMMIT    │
//!   └───────────────────────────────────────────────────────────────────────────────────┘
//!   outbox (a task of the leader's, beside the event loop, on a connection of its own;
//!   the commands of different instances at once, each instance's in order):
//!   execute each command through the bus with its idempotency key
//!     ok ─► delete the row
//!     passing failure (conflict, store down, limit) ─► keep the row, send again later
//!     failure (rejected, invalid, ...) ─► one transaction: delete the row, run the saga's
//!                                         failure handler, write what it sends   COMMIT
//!   deadlines due by the clock ─► one transaction: take the row, run the handler  COMMIT
//! ```
//!
//! # Guarantees and where they come from
//!
//! - **No step lost or repeated.** The instance's state, the commands it sends, its deadline
//!   changes and the checkpoint commit together; a crash before the commit leaves the event
//!   to be handled again from the old state, a crash after it leaves nothing to redo.
//! - **Each command's effect once.** A command stays in the outbox until its outcome is
//!   recorded, and it carries the idempotency key `saga/instance/trigger/index` stored with it.
//!   A crash between executing it and deleting its row executes it again; the store finds
//!   the key's recorded outcome and returns it (the same commit, or the same rejection)
//!   without running the aggregate again.
//! - **Each failure handled once.** A command's failure is handed to the saga in the
//!   transaction that deletes its outbox row: the delete's row count decides who delivers.
//! - **Deadlines fire once.** Taking a deadline (delete by its id) and running its handler
//!   commit together; rescheduling replaces the id, cancelling and ending delete the row.
//! - **One runner per saga name.** A runner leads while it holds the session-level advisory
//!   lock `pg_try_advisory_lock('cqrs', hashtext(name))` on a connection of its own (out of
//!   the pool, so the lock dies with that connection or the process); other runners of the
//!   name stand by and try again every [`SagaRunner::lead_retry`]. A lock rather than a lease
//!   row: PostgreSQL releases it the moment the session ends, with no expiry to tune and no
//!   clock to trust. Partitioning instances over runners is left out on purpose: one leader
//!   keeps each instance's messages in order without a second lock per instance. The lock is
//!   not what keeps an event from being handled twice: each event's transaction locks the
//!   checkpoint row and gives way when it is already past the event, so a leader that lost
//!   its session unnoticed still cannot handle an event a second time.
//! - **Parking.** A handler that fails [`SagaOptions::handler_attempts`] times parks its
//!   instance in the same transaction (status, error, the message into its inbox); the
//!   instance's later messages join the inbox, other instances go on. [`SagaAdmin::retry`]
//!   and [`SagaAdmin::skip`] hand the inbox back in one transaction.
//!
//! # Commits
//!
//! The runner's own transactions (an event's step, a failure's or a deadline's, an outbox
//! row's delete) commit with `synchronous_commit = off`: PostgreSQL acknowledges them before
//! their WAL reaches the disk, and a crash of the server (not of the runner) can lose the
//! last of them. That never loses a step whose effects survived: a command is executed only
//! after its step committed, and the command's own append commits synchronously, which
//! flushes the WAL up to it, the step's commit included. A step lost with everything after
//! it is handled again from the state before it, as after a runner crash. This holds when
//! the bus's store is this database, as it is meant to be; the commands' appends keep the
//! store's own commit setting.
//!
//! Deadlines use the runner's [`SagaOptions::clock`] (wall time, stored as `timestamptz`), so
//! tests move them with a manual clock. An idle leader sleeps until a notification on
//! `cqrs_events`, the next deadline or delayed send, or the poll interval.
//!
//! ```no_run
//! # use cqrs_core::prelude::*;
//! # use cqrs_core::saga::SagaContext;
//! # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Placed { pub order: u32 }
//! # #[derive(Debug, Clone, Event)] pub enum OrderEvent { Placed(Placed) }
//! # #[derive(Debug, Serialize, Deserialize, Command)]
//! # #[command(aggregate = Order, id = order, idempotent)] pub struct Ship { pub order: u32 }
//! # #[derive(Debug, Default)] pub struct Order;
//! # #[aggregate(event = OrderEvent, error = std::convert::Infallible)]
//! # impl Order {
//! #     #[command_handler] fn ship(&self, _: &Ship) -> Result<(), std::convert::Infallible> { Ok(()) }
//! #     #[event_handler] fn on_placed(&mut self, _: &Placed) {}
//! # }
//! # #[derive(Default, Serialize, Deserialize)] pub struct Shipping;
//! # #[saga(commands(Ship))]
//! # impl Shipping {
//! #     #[event_handler(key = order, start)]
//! #     fn on_placed(&mut self, p: &Placed) -> Ship { Ship { order: p.order } }
//! # }
//! use cqrs_postgres::PostgresEventStore;
//! use cqrs_postgres::saga::{SagaAdmin, SagaRunner};
//!
//! # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let bus = CommandBus::builder(PostgresEventStore::new(pool.clone()))
//!     .aggregate::<Order>(())
//!     .build();
//! let shipping = SagaRunner::<Shipping>::new(&pool, &bus).start().await?;
//!
//! // An operator's view: parked instances, their error, retry or skip.
//! let admin = SagaAdmin::<Shipping>::new(pool.clone());
//! for parked in admin.parked().await? {
//!     println!("{} failed on {}: {}", parked.key, parked.failed_on, parked.error);
//! }
//! shipping.shutdown().await;
//! # Ok(()) }
//! ```

mod run;
mod tx;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_core::middleware::CommandChain;
use cqrs_core::saga::{
    CommandSender, InstanceStatus, ParkedInstance, Saga, SagaInstance, SagaMessage, SagaOptions,
    SendCommands,
};
use cqrs_core::{CommandBus, RecordedEvent};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::sql;
use crate::subscription::checkpoint::{self, Checkpoint};

/// The checkpoint name of saga `S`: `saga:<name>`.
pub fn checkpoint_name<S: Saga>() -> String {
    format!("saga:{}", S::NAME)
}

/// A step of the runner, reported to an observer ([`SagaRunner::observe`]): for tests that
/// stop a runner between two steps, and for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SagaStep {
    /// An event's transaction committed: the instance's state, the commands to send, its
    /// deadlines and the checkpoint.
    StateCommitted {
        /// The event's position.
        position: cqrs_core::GlobalPosition,
    },
    /// A command was executed through the bus (its outcome not recorded yet).
    CommandExecuted {
        /// Its idempotency key.
        idempotency_key: String,
    },
    /// A command's outcome is recorded (its outbox row is gone, a failure handed back).
    ResultRecorded {
        /// Its idempotency key.
        idempotency_key: String,
    },
    /// A deadline's transaction committed.
    DeadlineFired {
        /// The instance.
        key: String,
    },
}

/// Why a saga runner's round failed (it is tried again after a backoff).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SagaRunnerError {
    /// The database failed.
    #[error("saga `{saga}`: database error: {source}")]
    Database {
        /// The saga.
        saga: &'static str,
        /// What the driver said.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// Reading the events failed.
    #[error(transparent)]
    Subscription(Arc<crate::subscription::SubscriptionError>),
    /// An event does not say which instance it is for (its payload does not decode): the
    /// runner cannot pass it.
    #[error("saga `{saga}`: {message}")]
    Route {
        /// The saga.
        saga: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A stored message or command does not (de)serialize.
    #[error("saga `{saga}`: {message}")]
    Serialize {
        /// The saga.
        saga: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// What a running saga runner reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaStatus {
    /// Whether this runner holds the saga's leadership (the others stand by).
    pub leading: bool,
    /// Where its checkpoint stands.
    pub checkpoint: Checkpoint,
    /// The error of the last failed round, until a round succeeds.
    pub last_error: Option<String>,
}

/// A saga runner ready to start: saga `S`, the bus its commands go through, options.
#[must_use = "a saga runner does nothing until started"]
pub struct SagaRunner<S> {
    pool: PgPool,
    sender: CommandSender,
    options: SagaOptions,
    lead_retry: Duration,
    observe: Option<Arc<dyn Fn(SagaStep) + Send + Sync>>,
    saga: PhantomData<fn() -> S>,
}

impl<S: Saga> std::fmt::Debug for SagaRunner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRunner")
            .field("saga", &S::NAME)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaRunner<S> {
    /// A runner of `S` over the database behind `pool`, sending its commands through `bus`
    /// (whose store should be this database's). Does not compile when the bus has no
    /// aggregate for one of the saga's commands.
    pub fn new<R, M, I>(pool: &PgPool, bus: &CommandBus<R, M>) -> Self
    where
        S: SendCommands<R, M, I>,
        R: Send + Sync + 'static,
        M: CommandChain,
    {
        Self {
            pool: pool.clone(),
            sender: CommandSender::new::<S, R, M, I>(bus),
            options: SagaOptions::default(),
            lead_retry: Duration::from_secs(1),
            observe: None,
            saga: PhantomData,
        }
    }

    /// Replaces the options (clock, handler attempts, poll interval, send backoff).
    pub fn options(mut self, options: SagaOptions) -> Self {
        self.options = options;
        self
    }

    /// How often a standby runner tries to take the leadership. Default 1 s.
    pub fn lead_retry(mut self, every: Duration) -> Self {
        self.lead_retry = every;
        self
    }

    /// Calls `observe` after each step (on the runner's task: keep it short).
    pub fn observe(mut self, observe: impl Fn(SagaStep) + Send + Sync + 'static) -> Self {
        self.observe = Some(Arc::new(observe));
        self
    }

    /// Creates the checkpoint if missing and starts the runner in a background task (it
    /// leads, or stands by while another process leads). Must be called within a Tokio
    /// runtime.
    pub async fn start(self) -> Result<SagaHandle, SagaRunnerError> {
        self.start_with(false, Arc::new(Notify::new())).await
    }

    /// Starts the runner for a saga fed from outside the store (a message broker's consumer):
    /// it sends the outbox's commands and fires deadlines, as [`start`](Self::start) does, but
    /// reads no events of the store. The returned [`SagaInput`] hands it events, each in a
    /// transaction of the caller's, where the caller also records how far its source is read.
    ///
    /// Feed a saga from one place only: a runner of the same saga started with
    /// [`start`](Self::start) would hand it the store's events a second time. The saga's
    /// store checkpoint does not move, so [`SagaAdmin::is_idle`] never holds for it: wait on
    /// the feeding consumer's progress and [`SagaAdmin::outbox_len`] instead.
    pub async fn start_external(self) -> Result<(SagaHandle, SagaInput<S>), SagaRunnerError> {
        let wake = Arc::new(Notify::new());
        let input = SagaInput {
            options: self.options.clone(),
            wake: Arc::clone(&wake),
            saga: PhantomData,
        };
        Ok((self.start_with(true, wake).await?, input))
    }

    async fn start_with(
        self,
        external: bool,
        wake: Arc<Notify>,
    ) -> Result<SagaHandle, SagaRunnerError> {
        checkpoint::ensure(&self.pool, &checkpoint_name::<S>())
            .await
            .map_err(|e| SagaRunnerError::Database {
                saga: S::NAME,
                source: Arc::new(e),
            })?;
        let (status, watch_status) = watch::channel(SagaStatus::default());
        let (shutdown, watch_shutdown) = watch::channel(false);
        let runner = run::Runner::<S> {
            pool: self.pool,
            sender: self.sender,
            options: self.options,
            lead_retry: self.lead_retry,
            observe: self.observe,
            status,
            external,
            wake,
            saga: PhantomData,
        };
        let task = tokio::spawn(Arc::new(runner).supervise(watch_shutdown));
        Ok(SagaHandle {
            saga: S::NAME,
            shutdown,
            status: watch_status,
            task,
        })
    }
}

/// Hands events from outside the store to saga `S`, one step per event inside the caller's
/// transaction: the same step a [`SagaRunner`] takes for a store event (the instance's row
/// and state, the commands it sends into the outbox with their idempotency keys, its
/// deadlines), written through the caller's connection. The caller records how far its source
/// is read in that same transaction and commits; after the commit,
/// [`committed`](Self::committed) has the runner send the new commands at once.
///
/// Made by [`SagaRunner::start_external`], whose runner sends the commands and fires the
/// deadlines. A message broker's consumer uses it so that a saga moved to another service
/// keeps its code and its guarantees: each event's step and the consumer's offset commit
/// together, so a redelivered message is recognised by the offset and nothing is sent twice.
///
/// The idempotency keys of the commands a step sends derive from the event's id: an event
/// handed in twice (a broker storing a second copy after its duplicate window) sends
/// commands that the store recognises and executes once, but the instance's state takes the
/// step twice. Skip repeats by the offset, as the consumer does.
///
/// ```no_run
/// # use cqrs_core::prelude::*;
/// # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Placed { pub order: u32 }
/// # #[derive(Debug, Clone, Event)] pub enum OrderEvent { Placed(Placed) }
/// # #[derive(Debug, Serialize, Deserialize, Command)]
/// # #[command(aggregate = Order, id = order, idempotent)] pub struct Ship { pub order: u32 }
/// # #[derive(Debug, Default)] pub struct Order;
/// # #[aggregate(event = OrderEvent, error = std::convert::Infallible)]
/// # impl Order {
/// #     #[command_handler] fn ship(&self, _: &Ship) -> Result<(), std::convert::Infallible> { Ok(()) }
/// #     #[event_handler] fn on_placed(&mut self, _: &Placed) {}
/// # }
/// # #[derive(Default, Serialize, Deserialize)] pub struct Shipping;
/// # #[saga(commands(Ship))]
/// # impl Shipping {
/// #     #[event_handler(key = order, start)]
/// #     fn on_placed(&mut self, p: &Placed) -> Ship { Ship { order: p.order } }
/// # }
/// use cqrs_postgres::PostgresEventStore;
/// use cqrs_postgres::saga::SagaRunner;
///
/// # async fn doc(pool: sqlx::PgPool, event: RecordedEvent) -> Result<(), Box<dyn std::error::Error>> {
/// let bus = CommandBus::builder(PostgresEventStore::new(pool.clone()))
///     .aggregate::<Order>(())
///     .build();
/// let (shipping, input) = SagaRunner::<Shipping>::new(&pool, &bus).start_external().await?;
///
/// // For each event received from elsewhere:
/// let mut tx = pool.begin().await?;
/// input.handle(&mut tx, &event).await?;
/// // ... record the source's offset through `tx` ...
/// tx.commit().await?;
/// input.committed();
/// # shipping.shutdown().await;
/// # Ok(()) }
/// ```
pub struct SagaInput<S> {
    options: SagaOptions,
    wake: Arc<Notify>,
    saga: PhantomData<fn() -> S>,
}

impl<S> Clone for SagaInput<S> {
    fn clone(&self) -> Self {
        Self {
            options: self.options.clone(),
            wake: Arc::clone(&self.wake),
            saga: PhantomData,
        }
    }
}

impl<S: Saga> std::fmt::Debug for SagaInput<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaInput")
            .field("saga", &S::NAME)
            .finish_non_exhaustive()
    }
}

/// What became of an event handed to a [`SagaInput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputOutcome {
    /// No instance takes it (none started, or it ended).
    Ignored,
    /// Its instance is parked: it waits in the instance's inbox.
    Queued,
    /// The handler ran: state, commands and deadlines are written.
    Handled,
    /// The handler kept failing ([`SagaOptions::handler_attempts`]): the instance is parked
    /// on this event.
    Parked,
}

/// Why an event handed to a [`SagaInput`] was not taken; roll the transaction back.
#[derive(Debug, thiserror::Error)]
pub enum SagaInputError {
    /// The database failed: worth trying again.
    #[error("saga `{saga}`: database error: {source}")]
    Database {
        /// The saga.
        saga: &'static str,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The event cannot be handed to an instance: its payload does not decode into the
    /// handler's type (so it names no instance), or a message does not serialize. Trying
    /// again does not help.
    #[error("saga `{saga}`: {message}")]
    Undeliverable {
        /// The saga.
        saga: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl<S: Saga> SagaInput<S> {
    /// Takes `event`'s step for its instance through `conn`, which should be inside the
    /// caller's transaction: nothing is committed here. Events of types the saga does not
    /// handle are [`InputOutcome::Ignored`].
    pub async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<InputOutcome, SagaInputError> {
        let message = SagaMessage::Event(event.clone());
        let delivered = tx::deliver::<S>(
            conn,
            &message,
            None,
            self.options.clock.now(),
            self.options.handler_attempts,
        )
        .await
        .map_err(|error| match error {
            tx::DeliverError::Database(source) => SagaInputError::Database {
                saga: S::NAME,
                source,
            },
            other => SagaInputError::Undeliverable {
                saga: S::NAME,
                message: other.to_string(),
            },
        })?;
        Ok(match delivered {
            tx::Delivered::Ignored => InputOutcome::Ignored,
            tx::Delivered::Queued => InputOutcome::Queued,
            tx::Delivered::Handled => InputOutcome::Handled,
            tx::Delivered::Parked => InputOutcome::Parked,
        })
    }

    /// Tells this process's runner that steps were committed, so it sends their commands now
    /// rather than at its next poll ([`SagaOptions::poll_interval`]). A runner in another
    /// process finds them by that poll.
    pub fn committed(&self) {
        self.wake.notify_one();
    }
}

/// A running saga runner.
#[derive(Debug)]
pub struct SagaHandle {
    saga: &'static str,
    shutdown: watch::Sender<bool>,
    status: watch::Receiver<SagaStatus>,
    task: JoinHandle<()>,
}

impl SagaHandle {
    /// The saga's name.
    pub fn saga(&self) -> &'static str {
        self.saga
    }

    /// What the runner reports now.
    pub fn status(&self) -> SagaStatus {
        self.status.borrow().clone()
    }

    /// Waits until the runner leads, or `timeout` passes (`false`).
    pub async fn wait_leading(&self, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        tokio::time::timeout(timeout, status.wait_for(|s| s.leading))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops after the current step and waits; the leadership passes to a standby runner.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Stops at once, wherever the runner is (as a crash would): what was not committed is
    /// rolled back and done again by the next leader.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// A handle that aborts the runner's task from anywhere (for crash tests: an observer
    /// that aborts between two steps).
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// A row of [`sql::SAGA_PARKED`]: key, error, parked at, waiting, first message.
type ParkedRow = (String, String, DateTime<Utc>, i64, Option<String>);

/// Reads and repairs saga `S`'s stored instances, from any process: parked instances,
/// their retry or skip, an instance's state, what waits to be sent.
#[derive(Debug, Clone)]
pub struct SagaAdmin<S> {
    pool: PgPool,
    options: SagaOptions,
    saga: PhantomData<fn() -> S>,
}

impl<S: Saga> SagaAdmin<S> {
    /// The admin of `S` in the database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            options: SagaOptions::default(),
            saga: PhantomData,
        }
    }

    /// With the runner's options (the clock and handler attempts a retry runs with).
    #[must_use]
    pub fn with_options(mut self, options: SagaOptions) -> Self {
        self.options = options;
        self
    }

    /// The parked instances: key, error, the message they failed on, how many wait.
    pub async fn parked(&self) -> Result<Vec<ParkedInstance>, sqlx::Error> {
        let rows: Vec<ParkedRow> = sqlx::query_as(sql::SAGA_PARKED)
            .bind(S::NAME)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, error, parked_at, waiting, first)| ParkedInstance {
                saga: S::NAME.to_owned(),
                key,
                error,
                failed_on: first
                    .and_then(|m| serde_json::from_str::<SagaMessage>(&m).ok())
                    .map(|m| m.describe())
                    .unwrap_or_default(),
                waiting: usize::try_from(waiting).unwrap_or(0),
                parked_at,
            })
            .collect())
    }

    /// Hands the parked instance `key` its waiting messages again, the failed one first, in
    /// one transaction; it stays parked with the new error if the handler fails again.
    /// Returns `false` when `key` is not parked.
    pub async fn retry(&self, key: &str) -> Result<bool, SagaRunnerError> {
        self.release(key, false).await
    }

    /// Drops the message the parked instance `key` failed on, then hands it the others.
    /// Returns `false` when `key` is not parked.
    pub async fn skip(&self, key: &str) -> Result<bool, SagaRunnerError> {
        self.release(key, true).await
    }

    async fn release(&self, key: &str, skip: bool) -> Result<bool, SagaRunnerError> {
        let database = |e| SagaRunnerError::Database {
            saga: S::NAME,
            source: Arc::new(e),
        };
        let mut tx = self.pool.begin().await.map_err(database)?;
        let released = tx::release::<S>(
            &mut tx,
            key,
            skip,
            self.options.clock.now(),
            self.options.handler_attempts,
        )
        .await
        .map_err(|e| match e {
            tx::DeliverError::Database(e) => database(e),
            other => SagaRunnerError::Serialize {
                saga: S::NAME,
                message: other.to_string(),
            },
        })?;
        tx.commit().await.map_err(database)?;
        Ok(released)
    }

    /// The instance `key`, if it exists.
    pub async fn instance(&self, key: &str) -> Result<Option<SagaInstance<S>>, sqlx::Error> {
        let row: Option<(Option<String>, String)> = sqlx::query_as(sql::SAGA_INSTANCE)
            .bind(S::NAME)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(state, status)| SagaInstance {
            key: key.to_owned(),
            state: state.and_then(|json| serde_json::from_str(&json).ok()),
            status: InstanceStatus::parse(&status).unwrap_or(InstanceStatus::Active),
        }))
    }

    /// How many commands wait to be sent.
    pub async fn outbox_len(&self) -> Result<u64, sqlx::Error> {
        let count: i64 = sqlx::query_scalar(sql::SAGA_OUTBOX_LEN)
            .bind(S::NAME)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The pending deadlines: instance key, deadline name, when due.
    pub async fn deadlines(&self) -> Result<Vec<(String, String, DateTime<Utc>)>, sqlx::Error> {
        sqlx::query_as(sql::SAGA_DEADLINES)
            .bind(S::NAME)
            .fetch_all(&self.pool)
            .await
    }

    /// Whether the saga has caught up: its checkpoint at the last visible event, no command
    /// waiting, no deadline due by `now`.
    pub async fn is_idle(&self, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(sql::SAGA_IDLE)
            .bind(S::NAME)
            .bind(checkpoint_name::<S>())
            .bind(now)
            .fetch_one(&self.pool)
            .await
    }

    /// Waits until [`is_idle`](Self::is_idle) by the options' clock, or `timeout` passes
    /// (`false`).
    pub async fn wait_idle(&self, timeout: Duration) -> Result<bool, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_idle(self.options.clock.now()).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

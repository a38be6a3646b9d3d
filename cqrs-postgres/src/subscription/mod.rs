//! Subscriptions to the global order of events: durable and checkpointed, or in memory.
//!
//! A [`Subscription`] feeds one projection every event of the types it handles, in the
//! store's global order: it catches up from its [`Checkpoint`], then follows new events live.
//! A durable subscription stores its checkpoint under the projection's
//! [`Projection::NAME`] and resumes from it after a restart; an in-memory one keeps its
//! checkpoint beside the model and replays from the first event in every process.
//!
//! # Which mode for which read model
//!
//! | the projection's state lives | start it with | the projection's context | after a restart | guarantee |
//! |---|---|---|---|---|
//! | in process memory ([`ReadModel`]) | [`Subscription::in_memory`] | `()` | replayed from the first event into the new, empty model | every event applied **exactly once** per process |
//! | in this database | [`Subscription::transactional`] | `sqlx::PgConnection`: the batch's transaction | resumed from the stored checkpoint | every event applied **exactly once** |
//! | outside the process: mail, a broker, another system ([`Reactor`](cqrs_core::Reactor) or any [`Subscriber`]) | [`Subscription::at_least_once`] | `()` | resumed from the stored checkpoint | every event delivered **at least once** |
//!
//! A stored checkpoint means "everything before this point is done". That holds for rows in
//! this database and for mail already sent, but not for a map in memory that died with the
//! last process: a new, empty model resumed from there never sees the earlier events, and a
//! rule that asks it (is this e-mail address taken?) silently gives the wrong answer. So:
//!
//! - [`Subscription::in_memory`] takes a [`ReadModel`] and stores nothing. Every start reads
//!   the store from the first event into the model, returns once the model holds every event
//!   committed before it (so nothing answers from a half-built model), then follows live;
//!   waiting for its progress ([`SubscriptionHandle::wait_for`], [`ReadYourWrites`]) works as
//!   for the others.
//!   Its checkpoint is not in `cqrs_checkpoints`, so [`Checkpoints::wait_for`] cannot see it.
//!   The price is the replay on every start: for a large history, keep the model in the
//!   database instead ([`Subscription::transactional`]).
//! - [`Subscription::at_least_once`] refuses, at [`start`](Subscription::start), a subscriber
//!   whose state is in memory ([`Subscriber::state_location`] is
//!   [`StateLocation::InMemory`](cqrs_core::StateLocation::InMemory), as for every
//!   [`ReadModel`]) when its stored checkpoint is past the start, with
//!   [`SubscriptionError::InMemoryBehindCheckpoint`]. From a fresh checkpoint it starts (the
//!   model does see every event) with a warning, since the next start will be refused. Wrap a
//!   projection with outside effects in a [`Reactor`](cqrs_core::Reactor) instead.
//!
//! The framework learns where the state lives from the wrapper chosen where the feed is wired
//! ([`ReadModel`]: memory; [`Reactor`](cqrs_core::Reactor): outside; a database context:
//! this database), not from a marker on the projection type: see
//! [`Projection`](cqrs_core::Projection#which-feed-for-which-read-model). The command bus's
//! in-process feed ([`CommandBusBuilder::subscribe`](cqrs_core::CommandBusBuilder::subscribe)) hands a model
//! only what this process commits, so on PostgreSQL a read model in memory needs
//! [`Subscription::in_memory`] (and not also the in-process feed, which would apply each
//! event twice).
//!
//! # Delivery guarantees
//!
//! **Transactional projections** keep their read model in the same database. Their handlers
//! receive the batch's transaction as `&mut PgConnection` and write their rows through it;
//! the checkpoint is moved in the same transaction, which then commits. Rows and checkpoint
//! cannot disagree: after a crash at any point (mid-batch, mid-commit, the process killed)
//! the subscription resumes from the last committed checkpoint, and every event's effect is
//! in the read model exactly once. Keep such projections free of in-memory state and outside
//! effects: a batch that fails is rolled back and applied again.
//!
//! **In-memory read models** are fed by one task from the first event on; the checkpoint is a
//! value beside the model, moved after each event, so a failed handler is retried from the
//! failed event and nothing before it is applied again. A new process starts over with a new
//! model.
//!
//! **At-least-once subscribers** do something outside the database (send mail, publish to a
//! broker, call another service). The handler runs first and the checkpoint is stored after
//! each batch, so a crash between the two delivers the events of
//! that batch again when the subscription restarts. **Delivery is at least once: the same
//! event can arrive more than once, and [`RecordedEvent::event_id`](cqrs_core::RecordedEvent::event_id)
//! is the idempotency key** — record it with the side effect (or pass it to the receiving
//! system) and skip events already seen. After a handler error, the events before the failed
//! one are checkpointed, so a retry starts at the failed event.
//!
//! # The global order: `(tx, position)`
//!
//! Every event row records the id of the transaction that wrote it (`tx`, an `xid8`) next to
//! its `position`. A position is drawn when the row is inserted but becomes visible when the
//! transaction commits, so reading "everything after position P" can pass over an event
//! that commits a moment later with a smaller position: it would be lost for good. The
//! subscription therefore reads in `(tx, position)` order, and only events whose transaction
//! is below the store's read horizon ([`sql::READ_HORIZON`](crate::sql::READ_HORIZON): the
//! snapshot's oldest running transaction, leaving out those of other databases). Every
//! transaction below it has finished, and any transaction that commits later has an id at or
//! above it, so nothing can ever appear behind what was read. The catch-up query is, in
//! essence,
//!
//! ```sql
//! SELECT ... FROM cqrs_events
//! WHERE (tx, position) > ($checkpoint_tx, $checkpoint_position)
//!   AND tx < $horizon
//!   AND event_type = ANY($types)
//! ORDER BY tx, position
//! LIMIT $batch_size
//! ```
//!
//! written as a row-value comparison so that it is a range scan of the `(tx, position)`
//! index (`Index Cond: ((ROW(tx, position) > ROW(...)) AND (tx < ...))`, with the type test
//! as a filter on that scan). The price: an event is delivered only once every transaction
//! of this database that started before it has ended, so one long-running writing
//! transaction delays every subscription; it never makes one lose or reorder anything. The
//! store refuses an append that would put a stream's versions out of `(tx, position)`
//! order, so each stream arrives in version order.
//!
//! # Checkpoints
//!
//! The `cqrs_checkpoints` table (migration `0002_subscriptions.sql`) holds one row per
//! subscription name: `(name, tx, position, updated_at)`. The checkpoint means "every event
//! at or before `(tx, position)` is processed". It also moves past events of types the
//! subscription does not handle: each read also returns the last settled event of any type,
//! and when a batch is not full the checkpoint advances to it. A projection that handles one
//! rare event type still keeps up with the head of the store, so waiting for it to reach any
//! position (below) finishes.
//!
//! A transactional batch locks its checkpoint row (`SELECT ... FOR UPDATE`) and checks it is
//! still where the batch was read from; two instances of the same subscription therefore
//! never both apply a batch — the second one adopts the stored checkpoint and goes on.
//!
//! # One worker per name, across processes
//!
//! A durable subscription (transactional, at-least-once, acknowledged) delivers only while
//! it holds its name's lease: a session-level advisory lock on a connection of its own
//! (DECISIONS.md says why a lock and not a lease row). Start it in every
//! process: one worker leads, the others stand by (their [`SubscriptionStatus::leading`]
//! is `false`, and their progress follows the stored checkpoint, so
//! [`SubscriptionHandle::wait_for`] works in every process), and when the leader dies, a
//! standby takes over within [`Subscription::lead_retry`] (default 1 s). An in-memory
//! subscription takes no lease: each process feeds its own model.
//!
//! # Rebuilds
//!
//! To rebuild a read model in place, stop its subscription, then in one transaction empty
//! its rows and reset it ([`ProjectionAdmin::reset_in`], which refuses while a worker runs
//! and also forgets parked streams and skipped events; [`Checkpoints::reset_in`] resets the
//! checkpoint alone), and start it again. To rebuild while the old model keeps serving
//! (blue/green), give the projection a new table (as data) and the subscription a new name
//! ([`Subscription::named`]), start it beside the old one, wait with
//! [`ProjectionAdmin::wait_caught_up`], then point the query side at the new table and stop
//! the old subscription. A rebuild's batches are short transactions like any other; a
//! handler that holds its batch transaction open for long holds back every subscription of
//! the database (the read horizon waits for it), so keep rebuild handlers to plain writes.
//!
//! # Following live
//!
//! Appends run `pg_notify('cqrs_events', ...)` in their transaction. A caught-up
//! subscription `LISTEN`s on that channel (on a connection of its own, opened before the
//! first read so that nothing committed in between is missed) and reads as soon as a
//! notification arrives. Notifications are only a wake-up call: a subscription also reads
//! every [`SubscriptionOptions::poll_interval`], so a lost notification (listener connection
//! dropped, notifications turned off) only delays delivery, never loses an event. When
//! committed events are waiting behind an older, still-open transaction, it looks again
//! within milliseconds, backing off while that transaction stays open.
//!
//! # Failures
//!
//! Nothing is swallowed. A failing read, handler or commit stops the attempt; the error is
//! logged (`tracing`), published in [`SubscriptionHandle::status`], and the subscription
//! retries from its stored checkpoint after an exponential backoff
//! ([`Subscription::retry_backoff`]). With
//! [`SubscriptionOptions::max_consecutive_failures`] it gives up after that many failures in
//! a row and [`SubscriptionHandle::join`] / [`SubscriptionHandle::shutdown`] return the last
//! error.
//!
//! An event the projection itself keeps failing on is judged by its [`FaultPolicy`]
//! ([`Subscription::fault_policy`]): after [`FaultPolicy::attempts`] attempts in a row the
//! subscription stops (the default, with the error), skips the event (recorded in
//! `cqrs_skipped_events`), or parks the event's stream (it and the stream's later events
//! wait in `cqrs_parked_events` while other streams go on). [`ProjectionAdmin`] lists parked
//! streams and skipped events, asks the running worker to retry or skip a parked stream,
//! and reports each projection's checkpoint, head, lag and state (also as `metrics` gauges,
//! feature `metrics`). The decisions are written down on [`FaultPolicy`].
//!
//! # Read your writes
//!
//! A command's [`Committed::position`](cqrs_core::Committed::position) is the global
//! position of its last event. Before a query that must see that command's effect, wait for
//! the projection to pass it: [`Progress::wait_for`] in the process running the subscription
//! (no polling), [`Checkpoints::wait_for`] from anywhere. Both take a timeout and fail with
//! the typed [`WaitError::Timeout`]. Both compare in `(tx, position)` order, looking up the
//! transaction id of the awaited position. On the query bus, register a [`ReadYourWrites`]
//! handler and send the query wrapped in [`AfterPosition`]: it waits, then answers. What it
//! waits for is a value, [`Consistency`]: a subscription's progress on PostgreSQL, nothing
//! ([`Consistency::Immediate`]) where the command bus feeds the model in process, as on the
//! in-memory store. So both builds of one service have one query bus type, and callers send
//! `AfterPosition` queries to either.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use cqrs_core::prelude::*;
//! use cqrs_postgres::subscription::{Subscription, WaitError};
//! use sqlx::{PgConnection, PgPool};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Deposited { pub amount: u64 }
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum AccountEvent {
//!     #[event(name = "account.deposited")]
//!     Deposited(Deposited),
//! }
//!
//! /// Counts deposits per account, in a table of the same database. It subscribes to
//! /// `account.deposited` only: the types its handlers take.
//! struct DepositCounts;
//!
//! #[projection(context = PgConnection)]
//! impl DepositCounts {
//!     #[event_handler]
//!     async fn on_deposited(
//!         &mut self,
//!         _: &Deposited,
//!         event: &RecordedEvent,
//!         db: &mut PgConnection, // the batch's transaction
//!     ) -> Result<(), sqlx::Error> {
//!         sqlx::query(
//!             "INSERT INTO deposit_counts (account, deposits) VALUES ($1, 1) \
//!              ON CONFLICT (account) DO UPDATE SET deposits = deposit_counts.deposits + 1",
//!         )
//!         .bind(&event.stream_id)
//!         .execute(db)
//!         .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn doc(pool: PgPool, committed: cqrs_core::Committed) -> Result<(), Box<dyn std::error::Error>> {
//! let counts = Subscription::transactional(DepositCounts).start(&pool).await?;
//!
//! // ... a command was executed and returned `committed` ...
//! match counts.wait_for(committed.position, Duration::from_secs(5)).await {
//!     Ok(()) => {
//!         let deposits: i64 =
//!             sqlx::query_scalar("SELECT deposits FROM deposit_counts WHERE account = $1")
//!                 .bind(&committed.stream_id)
//!                 .fetch_one(&pool)
//!                 .await?;
//!         println!("{deposits} deposits, including the one just made");
//!     }
//!     Err(WaitError::Timeout { .. }) => println!("the read model is lagging; try again"),
//!     Err(other) => return Err(other.into()),
//! }
//!
//! counts.shutdown().await?;
//! # Ok(()) }
//! ```

mod acknowledged;
mod admin;
pub(crate) mod checkpoint;
mod consistency;
mod fault;
mod handle;
mod lease;
pub(crate) mod read;
pub(crate) mod run;

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::{GlobalPosition, Projection, ProjectionError, ReadModel, Subscriber};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

pub use acknowledged::{Confirmation, ForwardError, Forwarder};
pub use admin::{
    AdminError, HeldEvent, ParkedStream, ProjectionAdmin, ProjectionState, ProjectionStatus,
    SkippedEvent,
};
pub use checkpoint::{Checkpoint, Checkpoints};
pub use consistency::{AfterPosition, Consistency, ReadYourWrites, ReadYourWritesError};
pub use fault::{FaultPolicy, GiveUp};
pub use handle::{Progress, SubscriptionHandle, SubscriptionStatus};

/// The channel appends notify and subscriptions listen on.
pub const NOTIFY_CHANNEL: &str = "cqrs_events";

/// Why a subscription attempt failed. Cheap to clone: the sources are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscriptionError {
    /// The database failed: connection, query, commit, or the `LISTEN` connection.
    #[error("subscription `{name}`: database error: {source}")]
    Database {
        /// The subscription.
        name: &'static str,
        /// What the driver reported.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The projection's handler failed (or the event did not decode for it).
    #[error(transparent)]
    Projection(Arc<ProjectionError>),
    /// A stored event row cannot be turned into a [`RecordedEvent`](cqrs_core::RecordedEvent).
    #[error("subscription `{name}`: stored event at position {position} is malformed: {reason}")]
    MalformedEvent {
        /// The subscription.
        name: &'static str,
        /// Where the row is.
        position: GlobalPosition,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Subscription::at_least_once`] was given a subscriber whose state lives in process
    /// memory, and the stored checkpoint is past the first event: the new, empty model would
    /// never see the events before it. Start it with [`Subscription::in_memory`] instead (or,
    /// to replay once into a durable subscriber, [`Checkpoints::reset`] its checkpoint).
    #[error(
        "subscription `{name}`: its state lives in process memory, but its stored checkpoint is \
         at {checkpoint}; resuming there would leave out every earlier event. Start it with \
         `Subscription::in_memory`"
    )]
    InMemoryBehindCheckpoint {
        /// The subscription.
        name: &'static str,
        /// The stored checkpoint.
        checkpoint: Checkpoint,
    },
    /// A [`Forwarder`] failed to send an event, or the receiver did not confirm it. The
    /// checkpoint stays behind the first event not confirmed.
    #[error("subscription `{name}`: forwarding event {event_id} failed: {source}")]
    Forward {
        /// The subscription.
        name: &'static str,
        /// The event that was not sent or not confirmed.
        event_id: uuid::Uuid,
        /// What the forwarder reported.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The subscription was asked for something its delivery mode does not offer: a
    /// [`FaultPolicy`] that skips or parks (transactional and at-least-once only), or a
    /// name of its own ([`Subscription::named`]; not for an acknowledged subscription,
    /// whose forwarder names it). Nothing was started.
    #[error("subscription `{name}`: {what} is not available in this delivery mode")]
    Unsupported {
        /// The subscription.
        name: &'static str,
        /// What was asked for.
        what: &'static str,
    },
    /// A handler panicked; the subscription stopped.
    #[error("subscription `{name}` panicked: {message}")]
    Panicked {
        /// The subscription.
        name: &'static str,
        /// The panic message.
        message: String,
    },
}

impl SubscriptionError {
    fn database(name: &'static str, source: sqlx::Error) -> Self {
        Self::Database {
            name,
            source: Arc::new(source),
        }
    }
}

/// Which event types a subscription reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTypes {
    /// Every event, whatever its type: a relay to another system.
    All,
    /// Only these types: a projection's [`Projection::EVENT_TYPES`].
    Only(&'static [&'static str]),
}

/// Why waiting for a projection's progress did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The projection had not processed the position when the timeout passed.
    #[error("projection `{projection}` did not reach position {position} within {after:?}")]
    Timeout {
        /// The projection (subscription name).
        projection: String,
        /// The awaited position.
        position: GlobalPosition,
        /// The timeout.
        after: Duration,
    },
    /// The subscription stopped before reaching the position.
    #[error("subscription `{projection}` stopped before reaching position {position}")]
    Stopped {
        /// The projection (subscription name).
        projection: &'static str,
        /// The awaited position.
        position: GlobalPosition,
    },
    /// The database failed while looking up the position or the checkpoint.
    #[error("waiting for a projection: database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// Tuning of a [`Subscription`]; the defaults suit most projections.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// Most events read and applied per batch (and per transaction). Default 500.
    pub batch_size: usize,
    /// `LISTEN` for appends (default `true`). Without it, new events are found by polling.
    pub notifications: bool,
    /// How often a caught-up subscription reads even without a notification. Default 1 s.
    pub poll_interval: Duration,
    /// First delay before retrying a failed attempt; doubles per failure. Default 100 ms.
    pub retry_initial: Duration,
    /// Longest delay between retries. Default 30 s.
    pub retry_max: Duration,
    /// Give up after this many failed attempts in a row, whatever failed. Default `None`:
    /// outages are retried forever (the projection's own failures follow `fault_policy`).
    pub max_consecutive_failures: Option<u32>,
    /// What to do with an event the projection keeps failing on. Default
    /// [`FaultPolicy::stop`].
    pub fault_policy: FaultPolicy,
    /// How often a standby worker tries to take the lease of a durable subscription whose
    /// worker runs elsewhere: it takes over within this long of that worker's death.
    /// Default 1 s.
    pub lead_retry: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            notifications: true,
            poll_interval: Duration::from_secs(1),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            max_consecutive_failures: None,
            fault_policy: FaultPolicy::default(),
            lead_retry: Duration::from_secs(1),
        }
    }
}

/// A subscription ready to start: a projection, how it is delivered to, and its options.
///
/// ```no_run
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::Reactor;
/// # use cqrs_postgres::subscription::Subscription;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # pub struct Opened { pub owner: String }
/// # #[derive(Debug, Clone, PartialEq, Event)]
/// # pub enum AccountEvent { #[event(name = "account.opened")] Opened(Opened) }
/// # #[derive(Default)] struct MailService;
/// # impl MailService {
/// #     async fn send_once(&self, key: Uuid, to: &str) -> Result<(), std::io::Error> { Ok(()) }
/// # }
/// use std::time::Duration;
///
/// /// Welcomes each new account holder by mail: a side effect outside the database.
/// #[derive(Default)]
/// struct Welcome {
///     mail: MailService,
/// }
///
/// #[projection]
/// impl Welcome {
///     #[event_handler]
///     async fn on_opened(
///         &mut self,
///         opened: &Opened,
///         event: &RecordedEvent,
///     ) -> Result<(), std::io::Error> {
///         // Delivery is at least once: the event id lets the mail service drop a repeat.
///         self.mail.send_once(event.event_id, &opened.owner).await
///     }
/// }
///
/// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// // Mail sent stays sent: a `Reactor`, resumed from its stored checkpoint.
/// let welcome = Subscription::at_least_once(Reactor::new(Welcome::default()))
///     .batch_size(100)
///     .poll_interval(Duration::from_millis(500))
///     .start(&pool)
///     .await?;
/// # welcome.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "a subscription does nothing until started"]
pub struct Subscription {
    delivery: Box<dyn run::Deliver>,
    options: SubscriptionOptions,
    /// A name the delivery refused to take ([`Subscription::named`]).
    refused_name: Option<&'static str>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.delivery.name())
            .field("event_types", &self.delivery.event_types())
            .field("options", &self.options)
            .field("refused_name", &self.refused_name)
            .finish()
    }
}

impl Subscription {
    /// A projection whose read model lives in this database: each batch's events are applied
    /// through one transaction that also moves the checkpoint. Exactly once.
    pub fn transactional<P>(projection: P) -> Self
    where
        P: Projection<Context = PgConnection>,
    {
        Self {
            delivery: Box::new(run::Transactional::new(projection)),
            options: SubscriptionOptions::default(),
            refused_name: None,
        }
    }

    /// A subscriber with effects outside this process (a [`Reactor`](cqrs_core::Reactor), or
    /// any [`Subscriber`]): handler first, stored checkpoint after each batch. At least once:
    /// use the event id to recognize a repeat.
    ///
    /// Not for a [`ReadModel`]: [`start`](Self::start) refuses one whose stored checkpoint is
    /// past the first event ([`SubscriptionError::InMemoryBehindCheckpoint`]); use
    /// [`in_memory`](Self::in_memory).
    pub fn at_least_once<S: Subscriber>(subscriber: S) -> Self {
        Self {
            delivery: Box::new(run::AtLeastOnce::new(subscriber)),
            options: SubscriptionOptions::default(),
            refused_name: None,
        }
    }

    /// A read model in process memory: every start replays the store from the first event
    /// into it, then follows live. No checkpoint is stored (and none is read), so the model
    /// and its checkpoint can never disagree: a new process with a new, empty model sees
    /// every event. Each event is applied once per start; a handler that fails is retried
    /// from the failed event.
    ///
    /// Feed a model from one subscription only, and not also from the command bus.
    ///
    /// ```no_run
    /// # use cqrs_core::prelude::*;
    /// # use cqrs_postgres::subscription::Subscription;
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// # pub struct Registered { pub email: String }
    /// # #[derive(Debug, Clone, PartialEq, Event)]
    /// # pub enum UserEvent { #[event(name = "user.registered")] Registered(Registered) }
    /// use std::collections::HashSet;
    ///
    /// /// The e-mail addresses in use, asked before registering a new user.
    /// #[derive(Default)]
    /// struct Emails(HashSet<String>);
    ///
    /// #[projection]
    /// impl Emails {
    ///     #[event_handler]
    ///     fn on_registered(&mut self, registered: &Registered) {
    ///         self.0.insert(registered.email.clone());
    ///     }
    /// }
    ///
    /// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let emails = ReadModel::new(Emails::default());
    /// let feed = Subscription::in_memory(emails.clone()).start(&pool).await?;
    /// // Every address registered by earlier runs is in `emails` once the feed has caught up;
    /// // `feed.wait_for(position, timeout)` waits for a given write.
    /// # feed.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn in_memory<P: Projection<Context = ()>>(model: ReadModel<P>) -> Self {
        Self {
            delivery: Box::new(run::InMemory::new(model)),
            options: SubscriptionOptions::default(),
            refused_name: None,
        }
    }

    /// A [`Forwarder`] to a system that confirms each event later (a broker's
    /// acknowledgement): events are forwarded in order with up to `max_in_flight` (at least 1)
    /// confirmations outstanding, and the stored checkpoint moves only behind events confirmed
    /// together with every earlier one. At least once: after a crash the unconfirmed tail is
    /// forwarded again, and the receiver drops a repeat by
    /// [`RecordedEvent::event_id`](cqrs_core::RecordedEvent::event_id).
    ///
    /// The window spans batches: the next batch is read while this one is forwarded and
    /// while its confirmations are still arriving, and once caught up the subscription awaits every
    /// outstanding confirmation before it waits for new events. Its progress
    /// ([`SubscriptionHandle::wait_for`], [`SubscriptionStatus::checkpoint`]) counts only
    /// confirmed events.
    pub fn acknowledged<F: Forwarder>(forwarder: F, max_in_flight: usize) -> Self {
        Self {
            delivery: Box::new(acknowledged::Acknowledged::new(forwarder, max_in_flight)),
            options: SubscriptionOptions::default(),
            refused_name: None,
        }
    }

    /// The subscription's name: the projection's, and for a durable subscription its
    /// checkpoint key.
    pub fn name(&self) -> &'static str {
        self.delivery.name()
    }

    /// Replaces all options.
    pub fn options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }

    /// Most events per batch (at least 1).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.options.batch_size = events.max(1);
        self
    }

    /// Whether to `LISTEN` for appends; without, new events are found by polling only.
    pub fn notifications(mut self, listen: bool) -> Self {
        self.options.notifications = listen;
        self
    }

    /// How often a caught-up subscription reads without a notification.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.options.poll_interval = every;
        self
    }

    /// The first and the longest delay between retries of a failed attempt.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.options.retry_initial = initial;
        self.options.retry_max = max.max(initial);
        self
    }

    /// Give up after `failures` failed attempts in a row (default: retry forever). A read
    /// that succeeds ends the row, whether it finds events or not, unless delivering what it
    /// found fails: separate outages of a quiet store do not add up.
    pub fn max_consecutive_failures(mut self, failures: u32) -> Self {
        self.options.max_consecutive_failures = Some(failures.max(1));
        self
    }

    /// Runs the subscription under `name` instead of the projection's
    /// [`Projection::NAME`]: its checkpoint, lease, parked streams and skipped events are
    /// kept under `name`. This is how a projection is rebuilt blue/green: give the new
    /// instance (writing to a new table, taken as data by the projection) a new name, let
    /// it catch up from the first event while the old one keeps serving, wait for it with
    /// [`ProjectionAdmin::wait_caught_up`], then point the query side at the new table.
    /// Transactional and at-least-once subscriptions only ([`start`](Self::start) fails
    /// with [`SubscriptionError::Unsupported`] otherwise).
    ///
    /// ```no_run
    /// # use cqrs_core::prelude::*;
    /// # use sqlx::PgConnection;
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// # pub struct Placed { pub total: i64 }
    /// # #[derive(Debug, Clone, PartialEq, Event)]
    /// # pub enum OrderEvent { #[event(name = "order.placed")] Placed(Placed) }
    /// use std::time::Duration;
    ///
    /// use cqrs_postgres::subscription::{FaultPolicy, ProjectionAdmin, Subscription};
    ///
    /// /// Order totals, in the table it is given.
    /// struct OrderTotals {
    ///     table: &'static str,
    /// }
    ///
    /// #[projection(context = PgConnection)]
    /// impl OrderTotals {
    ///     #[event_handler]
    ///     async fn on_placed(
    ///         &mut self,
    ///         placed: &Placed,
    ///         event: &RecordedEvent,
    ///         db: &mut PgConnection,
    ///     ) -> Result<(), sqlx::Error> {
    ///         let insert = format!("INSERT INTO {} (id, total) VALUES ($1, $2)", self.table);
    ///         sqlx::query(&insert)
    ///             .bind(&event.stream_id)
    ///             .bind(placed.total)
    ///             .execute(db)
    ///             .await?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// // Blue serves from `order_totals`; green rebuilds `order_totals_v2` from the first event.
    /// let green = Subscription::transactional(OrderTotals { table: "order_totals_v2" })
    ///     .named("OrderTotals_v2")
    ///     .fault_policy(FaultPolicy::park())
    ///     .start(&pool)
    ///     .await?;
    /// ProjectionAdmin::new(pool.clone())
    ///     .wait_caught_up("OrderTotals_v2", Duration::from_secs(600))
    ///     .await?;
    /// // Now point the query side at `order_totals_v2`, then stop the blue subscription.
    /// # green.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn named(mut self, name: &'static str) -> Self {
        if !self.delivery.rename(name) {
            self.refused_name = Some(name);
        }
        self
    }

    /// What to do with an event the projection keeps failing on (default
    /// [`FaultPolicy::stop`]). Skipping and parking need a durable subscription with a
    /// checkpoint of its own (transactional or at-least-once); [`start`](Self::start) fails
    /// with [`SubscriptionError::Unsupported`] otherwise.
    pub fn fault_policy(mut self, policy: FaultPolicy) -> Self {
        self.options.fault_policy = policy;
        self
    }

    /// How often a standby worker tries to take over the subscription (default 1 s): the
    /// longest a durable subscription goes without a worker after its worker dies.
    pub fn lead_retry(mut self, every: Duration) -> Self {
        self.options.lead_retry = every;
        self
    }

    /// Durable: creates the checkpoint if this name has none, loads it, and returns once the
    /// subscription follows in a background task. In memory: starts the background task at
    /// the first event and returns once the model holds every event committed before the
    /// call, so that nothing answers from a half-built model. Must be called within a Tokio
    /// runtime.
    ///
    /// Fails if the checkpoint cannot be read (database unreachable, migrations not run), with
    /// [`SubscriptionError::InMemoryBehindCheckpoint`] for an in-memory subscriber behind a
    /// stored checkpoint, and, in memory, with the error that stopped the replay (after
    /// [`max_consecutive_failures`](Self::max_consecutive_failures); by default a failing
    /// replay is retried and `start` waits).
    pub async fn start(mut self, pool: &PgPool) -> Result<SubscriptionHandle, SubscriptionError> {
        let name = self.delivery.name();
        if self.refused_name.is_some() {
            return Err(SubscriptionError::Unsupported {
                name,
                what: "a name of its own",
            });
        }
        if self.options.fault_policy.needs_dead_letters() && self.delivery.dead_letters().is_none()
        {
            return Err(SubscriptionError::Unsupported {
                name,
                what: "a fault policy that skips or parks",
            });
        }
        let database = |e| SubscriptionError::database(name, e);
        let checkpoint = self.delivery.resume(pool).await.map_err(database)?;
        self.delivery.check_start(checkpoint)?;
        let replay_to = if self.delivery.waits_for_replay() {
            checkpoint::head(pool).await.map_err(database)?
        } else {
            None
        };
        let (status, watch_status) = watch::channel(SubscriptionStatus {
            checkpoint,
            ..SubscriptionStatus::default()
        });
        let (shutdown, watch_shutdown) = watch::channel(false);
        let task = tokio::spawn(run::supervise(
            self.delivery,
            pool.clone(),
            self.options,
            watch_shutdown,
            status,
        ));
        let mut handle = SubscriptionHandle::new(
            Progress::new(name, pool.clone(), watch_status),
            shutdown,
            task,
        );
        if let Some(head) = replay_to {
            handle.reach(head).await?;
        }
        Ok(handle)
    }
}

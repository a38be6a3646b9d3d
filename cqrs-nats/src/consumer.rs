//! Feeding projections in another service from JetStream.
//!
//! A [`Consumer`] reads the relay's stream through a durable JetStream pull consumer,
//! rebuilds each [`RecordedEvent`] from the message's headers and payload
//! ([`headers::decode`]), and hands the events in stream order to an [`EventSink`]. The sink
//! shipped here, [`PgProjection`], applies them to the same `#[projection(context =
//! PgConnection)]` read model a store subscription ([`Subscription::transactional`]) feeds:
//! moving a read model to another service changes its wiring, not its code.
//!
//! [`Subscription::transactional`]: cqrs_postgres::subscription::Subscription::transactional
//!
//! # Exactly once in effect
//!
//! [`PgProjection`] applies a batch of events and records the last applied JetStream stream
//! sequence (and its event id) in `cqrs_nats_offsets`, in one transaction; the messages are
//! acknowledged after the commit. A message delivered again (the process died between commit
//! and acknowledgement, or an acknowledgement was lost) has a sequence at or below the
//! recorded one and is acknowledged and skipped. The database, not the JetStream consumer, is
//! the truth about what was applied: when the durable consumer has delivered beyond it (a
//! crash with messages in hand), [`Consumer::start`] recreates the consumer at the first
//! sequence not applied, so nothing is redelivered out of order behind newer messages.
//!
//! # Poison messages
//!
//! A message that does not decode (not published by the relay, malformed headers, a payload
//! that is not JSON) or whose event the projection cannot apply (a payload that no longer
//! decodes into the handler's type, a handler error) is poison. [`PoisonPolicy`] decides: stop
//! loudly (the default: the consumer ends with [`ConsumerError::Poison`] and the message stays
//! unacknowledged), skip it (logged, its sequence recorded), park it (recorded in
//! `cqrs_nats_parked` with the reason, then terminated in JetStream), or retry it with backoff
//! before one of those. Database failures of the sink are not poison: they are retried with
//! backoff, the messages kept in order.
//!
//! # Sagas
//!
//! [`SagaSink`] feeds a `#[saga]` the same way: each batch's saga steps (instance state, the
//! commands sent into the outbox, deadlines) and the offset in one transaction, acknowledged
//! after the commit. The steps are the PostgreSQL saga runner's own ([`SagaInput`]), and a
//! runner started with
//! [`SagaRunner::start_external`](cqrs_postgres::saga::SagaRunner::start_external) sends the
//! commands with their idempotency keys and fires the deadlines.
//!
//! # Other sinks
//!
//! [`EventSink`] is the seam: anything that applies recorded events in order and remembers the
//! last stream sequence applied, atomically with its effects, can be fed.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message};
use cqrs_core::saga::Saga;
use cqrs_core::{BoxFuture, Projection, ProjectionError, RecordedEvent};
use cqrs_postgres::saga::{SagaInput, SagaInputError};
use futures_util::StreamExt;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::headers::{self, DecodeError};

/// One event as the sink receives it: the JetStream stream sequence it was stored at, and the
/// event.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message's sequence in the JetStream stream: what the sink records as applied.
    pub sequence: u64,
    /// The event, as the store recorded it.
    pub event: RecordedEvent,
}

/// A message passed over without being applied: skipped, or parked with its content.
#[derive(Debug, Clone)]
pub struct Passed {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Its event id, when the headers held one.
    pub event_id: Option<Uuid>,
    /// Its event type, when the headers held one.
    pub event_type: Option<String>,
    /// Why it was not applied.
    pub reason: String,
    /// Its headers as a JSON object of lists, for a parked message.
    pub headers: serde_json::Value,
    /// Its payload, for a parked message.
    pub payload: Vec<u8>,
}

/// Why a sink did not apply a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The event at `index` of the batch could not be applied (its handler failed or its
    /// payload did not decode); nothing of the batch was applied.
    #[error("event {index} of the batch: {source}")]
    Event {
        /// Where in the batch.
        index: usize,
        /// What the projection reported.
        #[source]
        source: ProjectionError,
    },
    /// The sink's database failed; the batch is retried.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What a [`Consumer`] feeds: applies events in stream order and remembers the last stream
/// sequence applied, atomically with what it did.
///
/// [`PgProjection`] is the one for read models in PostgreSQL, [`SagaSink`] the one for
/// sagas: their rows (a saga's state, the commands it sends) and the offset recorded
/// together.
pub trait EventSink: Send + 'static {
    /// The sink's name: the durable consumer's name and the key of its offset.
    fn name(&self) -> &'static str;

    /// The event types it applies; messages of other types are passed over (their sequence
    /// still recorded).
    fn event_types(&self) -> &'static [&'static str];

    /// The last stream sequence applied (0: none).
    fn applied(&mut self) -> BoxFuture<'_, Result<u64, SinkError>>;

    /// Applies `events` in order and records `through` (at or past the last event's sequence)
    /// as applied, all or nothing. Events at or below the recorded sequence are left out: they
    /// were applied before.
    fn apply<'a>(
        &'a mut self,
        events: &'a [Delivery],
        through: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Records `message.sequence` as applied without applying it; with `park`, also keeps the
    /// message for a later look.
    fn pass<'a>(
        &'a mut self,
        message: &'a Passed,
        park: bool,
    ) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// A `#[projection(context = PgConnection)]` read model fed from JetStream: rows and offset in
/// one transaction per batch.
pub struct PgProjection<P> {
    projection: P,
    pool: PgPool,
}

impl<P> std::fmt::Debug for PgProjection<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgProjection").finish_non_exhaustive()
    }
}

impl<P: Projection<Context = PgConnection>> PgProjection<P> {
    /// `projection`, writing to the database behind `pool` (where [`migrate`] has run).
    pub fn new(projection: P, pool: PgPool) -> Self {
        Self { projection, pool }
    }
}

impl<P: Projection<Context = PgConnection>> EventSink for PgProjection<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        P::EVENT_TYPES
    }

    fn applied(&mut self) -> BoxFuture<'_, Result<u64, SinkError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            Ok(offset(&mut conn, P::NAME, false).await?)
        })
    }

    fn apply<'a>(
        &'a mut self,
        events: &'a [Delivery],
        through: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let stored = offset(&mut tx, P::NAME, true).await?;
            if stored >= through {
                // Applied before (a redelivery, or another instance): nothing to do.
                tx.rollback().await?;
                return Ok(());
            }
            let mut last_id = None;
            for (index, delivery) in events.iter().enumerate() {
                if delivery.sequence <= stored {
                    continue;
                }
                self.projection
                    .project(&delivery.event, &mut tx)
                    .await
                    .map_err(|source| SinkError::Event { index, source })?;
                last_id = Some(delivery.event.event_id);
            }
            record(&mut tx, P::NAME, through, last_id).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn pass<'a>(
        &'a mut self,
        message: &'a Passed,
        park: bool,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(pass(&self.pool, P::NAME, message, park))
    }
}

/// Records `message` as passed over for `consumer` (parking it when `park`), unless already
/// past it: the [`EventSink::pass`] of the sinks kept in PostgreSQL.
async fn pass(
    pool: &PgPool,
    consumer: &'static str,
    message: &Passed,
    park: bool,
) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    let stored = offset(&mut tx, consumer, true).await?;
    if stored >= message.sequence {
        tx.rollback().await?;
        return Ok(());
    }
    if park {
        sqlx::query(
            "INSERT INTO cqrs_nats_parked \
             (consumer, stream_sequence, subject, event_id, event_type, headers, payload, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (consumer, stream_sequence) DO NOTHING",
        )
        .bind(consumer)
        .bind(to_sql(message.sequence))
        .bind(&message.subject)
        .bind(message.event_id)
        .bind(&message.event_type)
        .bind(sqlx::types::Json(&message.headers))
        .bind(&message.payload)
        .bind(&message.reason)
        .execute(&mut *tx)
        .await?;
    }
    record(&mut tx, consumer, message.sequence, message.event_id).await?;
    tx.commit().await?;
    Ok(())
}

/// A `#[saga]` fed from JetStream: each batch's steps (instance rows and state, the commands
/// sent into the outbox, deadlines) and the consumer's offset in one transaction, the
/// messages acknowledged after the commit.
///
/// The steps are [`SagaInput::handle`]'s, the very code a [`SagaRunner`] runs for a store
/// event; the runner started with [`SagaRunner::start_external`] sends the outbox's commands
/// through the bus with their idempotency keys and fires the deadlines. A message delivered
/// again (the consumer died between the commit and the acknowledgement) is at or below the
/// recorded offset and is skipped, so no step runs twice and no command is sent twice.
///
/// An event whose payload names no instance (it does not decode into the handler's type) is
/// poison, handled by the consumer's [`PoisonPolicy`]; a handler that keeps failing parks its
/// instance, as under the store's runner, and the consumer goes on.
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
/// use cqrs_nats::consumer::{Consumer, SagaSink};
/// use cqrs_postgres::PostgresEventStore;
/// use cqrs_postgres::saga::SagaRunner;
///
/// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// cqrs_nats::consumer::migrate(&pool).await?;
/// let bus = CommandBus::builder(PostgresEventStore::new(pool.clone()))
///     .aggregate::<Order>(())
///     .build();
/// // Sends the commands and fires the deadlines; reads no events of the store.
/// let (runner, input) = SagaRunner::<Shipping>::new(&pool, &bus).start_external().await?;
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let feed = Consumer::new(client, "SHOP")
///     .start(SagaSink::new(input, pool))
///     .await?;
/// // ...
/// feed.shutdown().await?;
/// runner.shutdown().await;
/// # Ok(()) }
/// ```
///
/// [`SagaRunner`]: cqrs_postgres::saga::SagaRunner
/// [`SagaRunner::start_external`]: cqrs_postgres::saga::SagaRunner::start_external
pub struct SagaSink<S> {
    input: SagaInput<S>,
    pool: PgPool,
}

impl<S: Saga> std::fmt::Debug for SagaSink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaSink")
            .field("saga", &S::NAME)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaSink<S> {
    /// Saga `S`, its steps taken by `input` in transactions on `pool` (where the store's and
    /// this crate's [`migrate`] have run).
    pub fn new(input: SagaInput<S>, pool: PgPool) -> Self {
        Self { input, pool }
    }
}

impl<S: Saga> EventSink for SagaSink<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        S::EVENT_TYPES
    }

    fn applied(&mut self) -> BoxFuture<'_, Result<u64, SinkError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            Ok(offset(&mut conn, S::NAME, false).await?)
        })
    }

    fn apply<'a>(
        &'a mut self,
        events: &'a [Delivery],
        through: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // The offset row's lock orders two instances of this consumer; the comparison
            // makes the later one skip what the earlier one committed.
            let stored = offset(&mut tx, S::NAME, true).await?;
            if stored >= through {
                tx.rollback().await?;
                return Ok(());
            }
            let mut last_id = None;
            for (index, delivery) in events.iter().enumerate() {
                if delivery.sequence <= stored {
                    continue;
                }
                let event = &delivery.event;
                match self.input.handle(&mut tx, event).await {
                    Ok(_) => {}
                    Err(SagaInputError::Database { source, .. }) => {
                        return Err(SinkError::Database(source));
                    }
                    Err(error @ SagaInputError::Undeliverable { .. }) => {
                        return Err(SinkError::Event {
                            index,
                            source: ProjectionError::Handler {
                                projection: S::NAME,
                                event_type: event.event_type.clone(),
                                position: event.position,
                                source: Box::new(error),
                            },
                        });
                    }
                }
                last_id = Some(event.event_id);
            }
            record(&mut tx, S::NAME, through, last_id).await?;
            tx.commit().await?;
            self.input.committed();
            Ok(())
        })
    }

    fn pass<'a>(
        &'a mut self,
        message: &'a Passed,
        park: bool,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(pass(&self.pool, S::NAME, message, park))
    }
}

fn to_sql(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

/// The recorded offset of `consumer` (0 when none), locking its row when `lock`.
///
/// To lock, the row is created first when missing: `FOR UPDATE` on a row that does not exist
/// locks nothing, and two instances applying their first batch at once would both go ahead.
/// The insert makes the second wait for the first's commit, then read its offset.
async fn offset(conn: &mut PgConnection, consumer: &str, lock: bool) -> Result<u64, sqlx::Error> {
    if lock {
        sqlx::query(
            "INSERT INTO cqrs_nats_offsets (consumer, stream_sequence) VALUES ($1, 0) \
             ON CONFLICT (consumer) DO NOTHING",
        )
        .bind(consumer)
        .execute(&mut *conn)
        .await?;
    }
    let statement = if lock {
        "SELECT stream_sequence FROM cqrs_nats_offsets WHERE consumer = $1 FOR UPDATE"
    } else {
        "SELECT stream_sequence FROM cqrs_nats_offsets WHERE consumer = $1"
    };
    let stored: Option<i64> = sqlx::query_scalar(statement)
        .bind(consumer)
        .fetch_optional(conn)
        .await?;
    Ok(stored.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
}

async fn record(
    conn: &mut PgConnection,
    consumer: &str,
    sequence: u64,
    event_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cqrs_nats_offsets (consumer, stream_sequence, event_id) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer) DO UPDATE SET stream_sequence = excluded.stream_sequence, \
         event_id = coalesce(excluded.event_id, cqrs_nats_offsets.event_id), updated_at = now() \
         WHERE cqrs_nats_offsets.stream_sequence < excluded.stream_sequence",
    )
    .bind(consumer)
    .bind(to_sql(sequence))
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The tables the consumer's sinks keep in PostgreSQL (offsets and parked messages), as one
/// migration of this crate's own set, recorded in `cqrs_nats_schema_migrations`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "consumers",
    include_str!("../migrations/0001_consumers.sql"),
)];

/// Applies the migrations of [`MIGRATIONS`] the database behind `pool` has not recorded; safe
/// to run from several processes at once.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    // `pg_advisory_xact_lock` key: the ASCII bytes of `cqrsnats`.
    const LOCK_KEY: i64 = 0x6371_7273_6e61_7473;
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS cqrs_nats_schema_migrations (\
         version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let recorded: Vec<i64> = sqlx::query_scalar("SELECT version FROM cqrs_nats_schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if recorded.contains(&version) {
            continue;
        }
        (&mut *tx).execute(sqlx::raw_sql(sql)).await?;
        sqlx::query("INSERT INTO cqrs_nats_schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// What to do with a poison message; see the [module docs](self#poison-messages).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// Stop the consumer with [`ConsumerError::Poison`], leaving the message unacknowledged.
    #[default]
    Stop,
    /// Log it, record its sequence as applied, acknowledge it.
    Skip,
    /// Record it in `cqrs_nats_parked` with the reason (and its sequence as applied), then
    /// terminate it in JetStream (`+TERM`): it is never redelivered.
    Park,
    /// Apply it again up to `attempts` more times, waiting `backoff` (doubling) in between;
    /// then do what `then` says.
    Retry {
        /// Further attempts.
        attempts: u32,
        /// The first wait.
        backoff: Duration,
        /// What to do once the attempts are used up.
        then: Box<PoisonPolicy>,
    },
}

/// Why a consumer did not start, or stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsumerError {
    /// The JetStream stream or consumer could not be read or created.
    #[error("consumer `{name}`: JetStream: {reason}")]
    JetStream {
        /// The consumer.
        name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The sink's database failed at start.
    #[error("consumer `{name}`: database error at start: {reason}")]
    Database {
        /// The consumer.
        name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A poison message under [`PoisonPolicy::Stop`]; the message stays unacknowledged.
    #[error(
        "consumer `{name}` stopped at poison message {sequence} on `{subject}` (event {event_id:?}): {reason}"
    )]
    Poison {
        /// The consumer.
        name: &'static str,
        /// The message's stream sequence.
        sequence: u64,
        /// Its subject.
        subject: String,
        /// Its event id, when known.
        event_id: Option<Uuid>,
        /// Why it could not be applied.
        reason: String,
    },
    /// The consumer's task panicked.
    #[error("consumer `{name}` panicked: {message}")]
    Panicked {
        /// The consumer.
        name: &'static str,
        /// The panic message.
        message: String,
    },
}

/// A JetStream consumer feeding an [`EventSink`].
///
/// ```no_run
/// use cqrs_core::prelude::*;
/// use cqrs_nats::consumer::{Consumer, PgProjection, PoisonPolicy};
/// use sqlx::PgConnection;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # pub struct Deposited { pub amount: u64 }
/// # #[derive(Debug, Clone, PartialEq, Event)]
/// # pub enum AccountEvent { #[event(name = "account.deposited")] Deposited(Deposited) }
///
/// /// The same read model a store subscription would feed.
/// struct Totals;
///
/// #[projection(context = PgConnection)]
/// impl Totals {
///     #[event_handler]
///     async fn on_deposited(&mut self, d: &Deposited, e: &RecordedEvent, db: &mut PgConnection)
///         -> Result<(), sqlx::Error> {
///         sqlx::query("INSERT INTO totals (account, total) VALUES ($1, $2) \
///                      ON CONFLICT (account) DO UPDATE SET total = totals.total + $2")
///             .bind(&e.stream_id).bind(d.amount as i64).execute(db).await?;
///         Ok(())
///     }
/// }
///
/// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// cqrs_nats::consumer::migrate(&pool).await?;
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let feed = Consumer::new(client, "BANK")
///     .poison(PoisonPolicy::Park)
///     .start(PgProjection::new(Totals, pool))
///     .await?;
/// // ...
/// feed.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a consumer does nothing until started"]
pub struct Consumer {
    client: async_nats::Client,
    stream: String,
    filter_subject: String,
    batch: usize,
    poison: PoisonPolicy,
    retry_max: Duration,
    ack_wait: Duration,
}

impl Consumer {
    /// A consumer of the JetStream stream `stream`, reading every subject.
    pub fn new(client: async_nats::Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
            filter_subject: String::new(),
            batch: 500,
            poison: PoisonPolicy::Stop,
            retry_max: Duration::from_secs(30),
            ack_wait: Duration::from_secs(60),
        }
    }

    /// Reads only the messages on subjects matching `subject` (such as
    /// `events.BankAccount.>`).
    ///
    /// Events are published under the type name they were stored with, which for old events
    /// may be an alias (`#[event(alias = "...")]`): a filter naming event types must name the
    /// old ones too, or those events never arrive. Filtering by category, as above, keeps them.
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = subject.into();
        self
    }

    /// Most messages applied in one transaction (default 500, at least 1).
    pub fn batch(mut self, messages: usize) -> Self {
        self.batch = messages.max(1);
        self
    }

    /// How long JetStream waits for a delivered message's acknowledgement before it delivers
    /// the message again (default 60 s): after a consumer died between applying messages and
    /// acknowledging them, the time before they come again (and are skipped). Applies when
    /// the durable consumer is created.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// What to do with a poison message (default [`PoisonPolicy::Stop`]).
    pub fn poison(mut self, policy: PoisonPolicy) -> Self {
        self.poison = policy;
        self
    }

    /// Prepares the durable consumer (named after the sink) at the first sequence the sink has
    /// not applied, then feeds the sink in a background task.
    pub async fn start<S: EventSink>(self, mut sink: S) -> Result<ConsumerHandle, ConsumerError> {
        let name = sink.name();
        let jetstream_error = |reason: String| ConsumerError::JetStream { name, reason };
        let applied = sink.applied().await.map_err(|e| ConsumerError::Database {
            name,
            reason: e.to_string(),
        })?;
        let js = jetstream::new(self.client);
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| jetstream_error(format!("stream `{}`: {e}", self.stream)))?;
        let config = PullConfig {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: if applied == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: applied + 1,
                }
            },
            filter_subject: self.filter_subject.clone(),
            ack_wait: self.ack_wait,
            max_ack_pending: i64::try_from(self.batch.saturating_mul(4)).unwrap_or(i64::MAX),
            ..PullConfig::default()
        };
        let consumer: PullConsumer = match stream.get_consumer::<PullConfig>(name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| jetstream_error(e.to_string()))?;
                // Delivered past what was applied: those messages would come again only after
                // their ack wait, behind newer ones. Start over where the database stands.
                if info.delivered.stream_sequence > applied
                    || info.config.filter_subject != self.filter_subject
                {
                    tracing::info!(
                        consumer = name,
                        delivered = info.delivered.stream_sequence,
                        applied,
                        "recreating the durable consumer at the first sequence not applied"
                    );
                    stream
                        .delete_consumer(name)
                        .await
                        .map_err(|e| jetstream_error(e.to_string()))?;
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(|e| jetstream_error(e.to_string()))?
                } else {
                    existing
                }
            }
            Err(_) => stream
                .create_consumer(config)
                .await
                .map_err(|e| jetstream_error(e.to_string()))?,
        };
        let (progress, watch_progress) = watch::channel(applied);
        let (shutdown, watch_shutdown) = watch::channel(false);
        let task = tokio::spawn(
            Feed {
                sink,
                poison: self.poison,
                batch: self.batch,
                retry_max: self.retry_max,
                progress,
            }
            .run(consumer, watch_shutdown),
        );
        Ok(ConsumerHandle {
            name,
            applied: watch_progress,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running [`Consumer`].
#[derive(Debug)]
#[must_use = "dropping the handle stops the consumer"]
pub struct ConsumerHandle {
    name: &'static str,
    applied: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), ConsumerError>>>,
}

impl ConsumerHandle {
    /// The last stream sequence applied (or passed over).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the stream sequence `sequence` is applied, or `timeout` passes (`false`).
    pub async fn wait_for(&self, sequence: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        matches!(
            tokio::time::timeout(timeout, applied.wait_for(|a| *a >= sequence)).await,
            Ok(Ok(_))
        )
    }

    /// Whether the consumer has stopped (a poison message under [`PoisonPolicy::Stop`]).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops after the current batch and waits; returns what stopped it before, if anything.
    pub async fn shutdown(mut self) -> Result<(), ConsumerError> {
        self.shutdown.send_replace(true);
        self.finish().await
    }

    /// Waits until the consumer stops by itself, returning why.
    pub async fn join(mut self) -> Result<(), ConsumerError> {
        self.finish().await
    }

    /// Stops at once, as a crash would.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn finish(&mut self) -> Result<(), ConsumerError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => Err(ConsumerError::Panicked {
                name: self.name,
                message: format!("{error}"),
            }),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

struct Feed<S> {
    sink: S,
    poison: PoisonPolicy,
    batch: usize,
    retry_max: Duration,
    progress: watch::Sender<u64>,
}

/// A message taken apart: its event, or why it is poison.
struct Received {
    message: Message,
    sequence: u64,
    event: Result<RecordedEvent, DecodeError>,
}

impl<S: EventSink> Feed<S> {
    async fn run(
        mut self,
        consumer: PullConsumer,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        let name = self.sink.name();
        let mut failures = 0u32;
        loop {
            let stream = consumer
                .stream()
                .max_messages_per_batch(self.batch)
                .messages()
                .await;
            let mut messages = match stream {
                Ok(messages) => messages.ready_chunks(self.batch),
                Err(error) => {
                    failures += 1;
                    let delay = self.backoff(failures);
                    tracing::warn!(consumer = name, %error, retry_in = ?delay, "cannot pull messages; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return Ok(()),
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            loop {
                let chunk = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    chunk = messages.next() => chunk,
                };
                let Some(chunk) = chunk else { break };
                let mut received = Vec::with_capacity(chunk.len());
                let mut broken = false;
                for message in chunk {
                    match message {
                        Ok(message) => received.push(take_apart(message)),
                        Err(error) => {
                            tracing::warn!(consumer = name, %error, "pull failed; pulling again");
                            broken = true;
                        }
                    }
                }
                self.process(received, &mut shutdown).await?;
                failures = 0;
                if broken {
                    break;
                }
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        Duration::from_millis(100)
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.retry_max)
    }

    /// Applies a chunk of messages in order: runs of good events in one transaction each, a
    /// poison message by the policy. Returns only when all are settled, or with the error
    /// that stops the consumer.
    async fn process(
        &mut self,
        received: Vec<Received>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        let applied = *self.progress.borrow();
        let mut pending: Vec<Received> = Vec::with_capacity(received.len());
        for item in received {
            if item.sequence <= applied {
                // Delivered again after it was applied: acknowledge, skip.
                ack(&item.message, AckKind::Ack).await;
                continue;
            }
            pending.push(item);
        }
        let mut start = 0;
        while start < pending.len() {
            // The run of decodable messages from `start`.
            let end = pending[start..]
                .iter()
                .position(|r| r.event.is_err())
                .map_or(pending.len(), |p| start + p);
            if end > start {
                match self.apply_run(&pending[start..end], shutdown).await? {
                    None => {
                        for item in &pending[start..end] {
                            ack(&item.message, AckKind::Ack).await;
                        }
                        start = end;
                        continue;
                    }
                    Some((index, error)) => {
                        // Apply what precedes the failed event, then treat it as poison.
                        let failed = start + index;
                        if failed > start {
                            let done = self.apply_run(&pending[start..failed], shutdown).await?;
                            if let Some((_, error)) = done {
                                return Err(self.stop(&pending[failed], error.to_string()));
                            }
                            for item in &pending[start..failed] {
                                ack(&item.message, AckKind::Ack).await;
                            }
                        }
                        self.poisoned(&pending[failed], error.to_string(), shutdown)
                            .await?;
                        start = failed + 1;
                        continue;
                    }
                }
            }
            // `pending[start]` does not decode.
            let reason = pending[start]
                .event
                .as_ref()
                .err()
                .map_or_else(String::new, ToString::to_string);
            self.poisoned(&pending[start], reason, shutdown).await?;
            start += 1;
        }
        Ok(())
    }

    /// Applies `run` (all decoded) in one transaction, retrying database failures. `Some`:
    /// the event at that index could not be applied, and nothing was.
    async fn apply_run(
        &mut self,
        run: &[Received],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<(usize, ProjectionError)>, ConsumerError> {
        let types = self.sink.event_types();
        let mut indices = Vec::with_capacity(run.len());
        let mut deliveries = Vec::with_capacity(run.len());
        for (index, item) in run.iter().enumerate() {
            if let Ok(event) = &item.event
                && types.contains(&event.event_type.as_str())
            {
                indices.push(index);
                deliveries.push(Delivery {
                    sequence: item.sequence,
                    event: event.clone(),
                });
            }
        }
        let through = run.last().map_or(0, |r| r.sequence);
        let mut failures = 0u32;
        loop {
            match self.sink.apply(&deliveries, through).await {
                Ok(()) => {
                    self.progress.send_replace(through);
                    return Ok(None);
                }
                Err(SinkError::Event { index, source }) => {
                    return Ok(Some((indices[index], source)));
                }
                Err(SinkError::Database(error)) => {
                    failures += 1;
                    let delay = self.backoff(failures);
                    tracing::warn!(consumer = self.sink.name(), %error, retry_in = ?delay, "applying a batch failed; retrying");
                    for item in run {
                        ack(&item.message, AckKind::Progress).await;
                    }
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return Err(ConsumerError::Database {
                            name: self.sink.name(),
                            reason: format!("shut down while retrying: {error}"),
                        }),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn stop(&self, item: &Received, reason: String) -> ConsumerError {
        let error = ConsumerError::Poison {
            name: self.sink.name(),
            sequence: item.sequence,
            subject: item.message.subject.to_string(),
            event_id: item.event.as_ref().ok().map(|e| e.event_id),
            reason,
        };
        tracing::error!(%error, "consumer stopped on a poison message");
        error
    }

    /// Applies the poison policy to one message.
    async fn poisoned(
        &mut self,
        item: &Received,
        mut reason: String,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        let mut policy = self.poison.clone();
        loop {
            match policy {
                PoisonPolicy::Stop => return Err(self.stop(item, reason)),
                PoisonPolicy::Skip | PoisonPolicy::Park => {
                    let park = policy == PoisonPolicy::Park;
                    let passed = passed(item, reason.clone());
                    let mut failures = 0u32;
                    while let Err(error) = self.sink.pass(&passed, park).await {
                        failures += 1;
                        tracing::warn!(consumer = self.sink.name(), %error, "recording a passed message failed; retrying");
                        tokio::time::sleep(self.backoff(failures)).await;
                    }
                    if park {
                        tracing::warn!(consumer = self.sink.name(), sequence = item.sequence, %reason, "poison message parked");
                        ack(&item.message, AckKind::Term).await;
                    } else {
                        tracing::warn!(consumer = self.sink.name(), sequence = item.sequence, %reason, "poison message skipped");
                        ack(&item.message, AckKind::Ack).await;
                    }
                    self.progress.send_replace(item.sequence);
                    return Ok(());
                }
                PoisonPolicy::Retry {
                    attempts,
                    backoff,
                    then,
                } => {
                    let mut delay = backoff;
                    for _ in 0..attempts {
                        tokio::select! {
                            _ = shutdown.wait_for(|s| *s) => return Err(self.stop(item, format!("shut down while retrying: {reason}"))),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = delay.saturating_mul(2).min(self.retry_max);
                        if item.event.is_err() {
                            continue;
                        }
                        match self.apply_run(std::slice::from_ref(item), shutdown).await? {
                            None => {
                                ack(&item.message, AckKind::Ack).await;
                                return Ok(());
                            }
                            Some((_, error)) => reason = error.to_string(),
                        }
                    }
                    policy = *then;
                }
            }
        }
    }
}

fn take_apart(message: Message) -> Received {
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    let event = headers::decode(message.headers.as_ref(), &message.payload);
    Received {
        message,
        sequence,
        event,
    }
}

fn passed(item: &Received, reason: String) -> Passed {
    let headers = item.message.headers.as_ref().map_or_else(
        || serde_json::Value::Object(serde_json::Map::new()),
        |headers| {
            let mut object = serde_json::Map::new();
            for (name, values) in headers.iter() {
                object.insert(
                    name.to_string(),
                    serde_json::Value::Array(
                        values
                            .iter()
                            .map(|v| serde_json::Value::String(v.as_str().to_owned()))
                            .collect(),
                    ),
                );
            }
            serde_json::Value::Object(object)
        },
    );
    let text = |name: &str| {
        item.message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    Passed {
        sequence: item.sequence,
        subject: item.message.subject.to_string(),
        event_id: text(headers::MSG_ID).and_then(|id| id.parse().ok()),
        event_type: text(headers::EVENT_TYPE),
        reason,
        headers,
        payload: item.message.payload.to_vec(),
    }
}

/// Acknowledges (or terminates, or extends) a message. A lost acknowledgement only means a
/// redelivery, which the recorded offset recognises, so failures are logged, not fatal.
async fn ack(message: &Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::debug!(%error, "acknowledgement not sent; the message will be redelivered and skipped");
    }
}

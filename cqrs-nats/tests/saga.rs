//! A `#[saga]` fed from JetStream against the real servers: the store and the saga's tables
//! in one fresh database, the relay publishing the store's events, a consumer feeding the
//! saga through `SagaSink`, and a saga runner started with `start_external` sending its
//! commands and firing its deadlines.
//!
//! What they pin down: the relayed events drive the saga, its commands execute once and
//! their own events come back to it; deadlines fire once; a consumer killed between its
//! commit and its acknowledgement skips the redelivered messages and nothing is sent twice;
//! the same batch applied twice takes each step once; an event that names no instance is a
//! typed error with nothing written.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestDb, TestStream};
use cqrs_core::middleware::ManualClock;
use cqrs_core::prelude::*;
use cqrs_core::saga::{SagaContext, SagaOptions};
use cqrs_core::{BoxFuture, GlobalPosition, Payload};
use cqrs_nats::consumer::{
    Consumer, ConsumerError, Delivery, EventSink, Passed, SagaSink, SinkError,
};
use cqrs_nats::{Relay, Subjects};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::saga::{SagaAdmin, SagaHandle, SagaInput, SagaRunner, SagaStep};
use cqrs_postgres::subscription::SubscriptionHandle;
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(60);
const TICKETS: u32 = 12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noted {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TicketEvent {
    #[event(name = "ticket.opened")]
    Opened(Opened),
    #[event(name = "ticket.noted")]
    Noted(Noted),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Ticket, id = id)]
pub struct Open {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Ticket, id = id, idempotent)]
pub struct Note {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct Ticket;

#[aggregate(event = TicketEvent, error = std::convert::Infallible, name = "ticket")]
impl Ticket {
    #[command_handler]
    fn open(&self, c: &Open) -> Result<Opened, std::convert::Infallible> {
        Ok(Opened { id: c.id })
    }
    #[command_handler]
    fn note(&self, c: &Note) -> Result<Noted, std::convert::Infallible> {
        Ok(Noted {
            id: c.id,
            text: c.text.clone(),
        })
    }
    #[event_handler]
    fn on_opened(&mut self, _: &Opened) {}
    #[event_handler]
    fn on_noted(&mut self, _: &Noted) {}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remind;

/// Notes "triaged" on each opened ticket and "reminder" a minute later; keeps the notes it
/// sees come back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Triage {
    opened: u32,
    notes: Vec<String>,
}

#[saga(commands(Note), name = "nats-triage")]
impl Triage {
    #[event_handler(key = id, start)]
    fn on_opened(&mut self, e: &Opened, ctx: &mut SagaContext<Self>) -> Note {
        self.opened += 1;
        ctx.schedule(Remind, Duration::from_secs(60));
        Note {
            id: e.id,
            text: "triaged".into(),
        }
    }

    #[event_handler(key = id)]
    fn on_noted(&mut self, e: &Noted) {
        self.notes.push(e.text.clone());
    }

    #[deadline_handler]
    fn on_remind(&mut self, _: &Remind, ctx: &mut SagaContext<Self>) -> Note {
        Note {
            id: ctx.key().parse().unwrap_or_default(),
            text: "reminder".into(),
        }
    }
}

type Bus = cqrs_core::CommandBusOf![Ticket];

struct Setup {
    db: TestDb,
    bus: Bus,
    clock: ManualClock,
    admin: SagaAdmin<Triage>,
    /// Commands the runners executed, counted by their observer.
    executed: Arc<AtomicUsize>,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDb::create(10).await;
        PostgresEventStore::migrate(&db.pool)
            .await
            .expect("store migrations");
        cqrs_nats::consumer::migrate(&db.pool)
            .await
            .expect("consumer migrations");
        let bus: Bus = CommandBus::builder(PostgresEventStore::new(db.pool.clone()))
            .aggregate::<Ticket>(())
            .build();
        let clock = ManualClock::new();
        let admin = SagaAdmin::<Triage>::new(db.pool.clone()).with_options(Self::options(&clock));
        Self {
            db,
            bus,
            clock,
            admin,
            executed: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn options(clock: &ManualClock) -> SagaOptions {
        SagaOptions::default()
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(20))
    }

    /// A runner fed from outside the store, counting the commands it executes.
    async fn runner(&self) -> (SagaHandle, SagaInput<Triage>) {
        let executed = Arc::clone(&self.executed);
        SagaRunner::<Triage>::new(&self.db.pool, &self.bus)
            .options(Self::options(&self.clock))
            .lead_retry(Duration::from_millis(20))
            .observe(move |step| {
                if matches!(step, SagaStep::CommandExecuted { .. }) {
                    executed.fetch_add(1, Ordering::SeqCst);
                }
            })
            .start_external()
            .await
            .expect("runner starts")
    }

    async fn relay(&self, client: async_nats::Client, stream: &TestStream) -> SubscriptionHandle {
        Relay::new(client, stream.name.clone())
            .subjects(Subjects::by_category(stream.prefix.clone()))
            .start(&self.db.pool)
            .await
            .expect("relay starts")
    }

    async fn open_tickets(&self) -> GlobalPosition {
        let mut last = GlobalPosition::START;
        for id in 1..=TICKETS {
            last = self.bus.execute(Open { id }).await.expect("open").position;
        }
        last
    }

    /// The notes in ticket `id`'s stream.
    async fn texts(&self, id: u32) -> Vec<String> {
        self.bus
            .store()
            .load_stream(&format!("ticket-{id}"), 1)
            .await
            .expect("load")
            .iter()
            .filter_map(|e| match e.decode::<TicketEvent>().expect("decodes") {
                TicketEvent::Noted(n) => Some(n.text),
                TicketEvent::Opened(_) => None,
            })
            .collect()
    }

    async fn state(&self, id: u32) -> Option<Triage> {
        self.admin
            .instance(&id.to_string())
            .await
            .expect("instance")
            .and_then(|i| i.state)
    }

    /// Waits until every ticket's stream holds `notes` and its instance has seen them come
    /// back, with nothing left in the outbox.
    async fn settled_on(&self, notes: &[&str]) {
        let done = async {
            loop {
                let mut all = self.admin.outbox_len().await.expect("outbox") == 0;
                for id in 1..=TICKETS {
                    all = all
                        && self.texts(id).await == notes
                        && self.state(id).await.is_some_and(|s| s.notes == notes);
                }
                if all {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, done).await.is_err() {
            let mut seen = Vec::new();
            for id in 1..=TICKETS {
                seen.push((id, self.texts(id).await, self.state(id).await));
            }
            panic!(
                "the saga did not settle on {notes:?}; outbox {}; seen {seen:?}",
                self.admin.outbox_len().await.unwrap()
            );
        }
    }

    async fn offset(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT coalesce((SELECT stream_sequence FROM cqrs_nats_offsets WHERE consumer = $1), 0)",
        )
        .bind("nats-triage")
        .fetch_one(&self.db.pool)
        .await
        .expect("offset")
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_events_drive_a_saga_whose_commands_and_deadlines_execute_once() {
    let test = "relayed_events_drive_a_saga_whose_commands_and_deadlines_execute_once";
    let Some(client) = common::connect(test).await else {
        return;
    };
    let s = Setup::new().await;
    let stream = TestStream::new();
    s.open_tickets().await;
    let relay = s.relay(client.clone(), &stream).await;
    let (runner, input) = s.runner().await;
    let feed = Consumer::new(client.clone(), stream.name.clone())
        .start(SagaSink::new(input, s.db.pool.clone()))
        .await
        .expect("consumer starts");

    // Opened (relayed) → step → Note (sent by the runner) → Noted (relayed) → back to the saga.
    s.settled_on(&["triaged"]).await;
    assert_eq!(s.executed.load(Ordering::SeqCst), TICKETS as usize);
    assert_eq!(
        s.admin.deadlines().await.unwrap().len(),
        TICKETS as usize,
        "one reminder pending per ticket"
    );

    // The runner fires the deadlines by its clock; their notes come back through JetStream.
    s.clock.advance(Duration::from_secs(61));
    s.settled_on(&["triaged", "reminder"]).await;
    assert!(s.admin.deadlines().await.unwrap().is_empty());
    assert_eq!(s.executed.load(Ordering::SeqCst), 2 * TICKETS as usize);
    for id in 1..=TICKETS {
        assert_eq!(s.state(id).await.unwrap().opened, 1);
    }
    // Every message of the stream (opened, triaged, reminder per ticket) is recorded.
    assert!(feed.wait_for(3 * u64::from(TICKETS), PATIENCE).await);
    assert_eq!(s.offset().await, 3 * i64::from(TICKETS));

    feed.shutdown().await.expect("consumer shutdown");
    relay.shutdown().await.expect("relay shutdown");
    runner.shutdown().await;
}

/// Delegates to a [`SagaSink`], then dies (panics on the consumer's task) right after the
/// commit of a batch that reaches `crash_at`: before the consumer acknowledges it.
struct CrashAfterCommit {
    inner: SagaSink<Triage>,
    crash_at: u64,
}

impl EventSink for CrashAfterCommit {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn event_types(&self) -> &'static [&'static str] {
        self.inner.event_types()
    }

    fn applied(&mut self) -> BoxFuture<'_, Result<u64, SinkError>> {
        self.inner.applied()
    }

    fn apply<'a>(
        &'a mut self,
        events: &'a [Delivery],
        through: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.inner.apply(events, through).await?;
            assert!(
                through < self.crash_at,
                "the consumer dies after committing through {through}, before acknowledging"
            );
            Ok(())
        })
    }

    fn pass<'a>(
        &'a mut self,
        message: &'a Passed,
        park: bool,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        self.inner.pass(message, park)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_between_commit_and_ack_skips_the_redelivery_and_sends_nothing_twice() {
    let test =
        "a_consumer_killed_between_commit_and_ack_skips_the_redelivery_and_sends_nothing_twice";
    let Some(client) = common::connect(test).await else {
        return;
    };
    let s = Setup::new().await;
    let stream = TestStream::new();
    let last = s.open_tickets().await;
    let relay = s.relay(client.clone(), &stream).await;
    relay
        .wait_for(last, PATIENCE)
        .await
        .expect("every event in JetStream");

    // No runner yet: the steps' commands stay in the outbox while the consumer dies.
    let (runner, input) = s.runner().await;
    runner.shutdown().await;
    let consumer =
        || Consumer::new(client.clone(), stream.name.clone()).ack_wait(Duration::from_millis(500));
    let feed = consumer()
        .start(CrashAfterCommit {
            inner: SagaSink::new(input, s.db.pool.clone()),
            crash_at: u64::from(TICKETS),
        })
        .await
        .expect("consumer starts");
    match feed.join().await {
        Err(ConsumerError::Panicked { message, .. }) => {
            assert!(message.contains("before acknowledging"), "{message}");
        }
        other => panic!("expected the consumer to die, got {other:?}"),
    }
    // Committed: every step and the offset; nothing sent.
    assert_eq!(s.offset().await, i64::from(TICKETS));
    assert_eq!(s.admin.outbox_len().await.unwrap(), u64::from(TICKETS));
    assert!(s.texts(1).await.is_empty());

    // Restarted: the unacknowledged messages come again after the ack wait and are skipped.
    let (runner, input) = s.runner().await;
    let feed = consumer()
        .start(SagaSink::new(input, s.db.pool.clone()))
        .await
        .expect("consumer restarts");
    s.settled_on(&["triaged"]).await;
    let redelivered = tokio::time::timeout(PATIENCE, async {
        loop {
            let info = consumer_info(&client, &stream).await;
            if info.num_ack_pending == 0 && info.delivered.stream_sequence >= 2 * u64::from(TICKETS)
            {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every message acknowledged");
    assert!(
        redelivered.delivered.consumer_sequence > redelivered.delivered.stream_sequence,
        "some message was delivered twice: {:?}",
        redelivered.delivered
    );
    assert_eq!(
        s.executed.load(Ordering::SeqCst),
        TICKETS as usize,
        "each command executed once"
    );
    for id in 1..=TICKETS {
        assert_eq!(s.state(id).await.unwrap().opened, 1, "ticket {id}");
    }

    feed.shutdown().await.expect("consumer shutdown");
    relay.shutdown().await.expect("relay shutdown");
    runner.shutdown().await;
}

async fn consumer_info(
    client: &async_nats::Client,
    stream: &TestStream,
) -> async_nats::jetstream::consumer::Info {
    let mut durable = TestStream::js(client)
        .get_stream(&stream.name)
        .await
        .expect("stream")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("nats-triage")
        .await
        .expect("the durable consumer");
    durable.info().await.expect("consumer info").clone()
}

/// The sink without NATS: deliveries built from the store's events, as the consumer builds
/// them from messages.
async fn deliveries(s: &Setup) -> Vec<Delivery> {
    s.bus
        .store()
        .read_all_from(GlobalPosition::START, 1000)
        .await
        .expect("read")
        .into_iter()
        .enumerate()
        .map(|(i, event)| Delivery {
            sequence: i as u64 + 1,
            event,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_applied_twice_or_by_two_sinks_takes_each_step_once() {
    let s = Setup::new().await;
    s.open_tickets().await;
    let (runner, input) = s.runner().await;
    // The runner is stopped so that the outbox shows what the steps wrote.
    runner.shutdown().await;
    let batch = deliveries(&s).await;
    let through = batch.len() as u64;
    let mut first = SagaSink::new(input.clone(), s.db.pool.clone());
    let mut second = SagaSink::new(input, s.db.pool.clone());
    let (a, b) = tokio::join!(first.apply(&batch, through), second.apply(&batch, through));
    a.expect("first");
    b.expect("second");
    first.apply(&batch, through).await.expect("again");
    // A batch overlapping the applied one takes only the new part: here, nothing new.
    first
        .apply(&batch[TICKETS as usize / 2..], through)
        .await
        .expect("overlap");

    assert_eq!(s.admin.outbox_len().await.unwrap(), u64::from(TICKETS));
    assert_eq!(s.admin.deadlines().await.unwrap().len(), TICKETS as usize);
    for id in 1..=TICKETS {
        assert_eq!(s.state(id).await.unwrap().opened, 1);
    }
    assert_eq!(s.offset().await, i64::from(TICKETS));
    assert_eq!(first.applied().await.unwrap(), through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_names_no_instance_is_a_typed_error_and_nothing_is_written() {
    let s = Setup::new().await;
    s.open_tickets().await;
    let (runner, input) = s.runner().await;
    runner.shutdown().await;
    let mut batch = deliveries(&s).await;
    // The second event's payload no longer decodes into `Opened`: no key, no instance.
    batch[1].event.payload = Payload::from_json(r#"{"id":"seven"}"#).unwrap();
    let mut sink = SagaSink::new(input, s.db.pool.clone());
    match sink.apply(&batch, batch.len() as u64).await {
        Err(SinkError::Event { index, source }) => {
            assert_eq!(index, 1);
            assert!(source.to_string().contains("nats-triage"), "{source}");
        }
        other => panic!("expected a typed event error, got {other:?}"),
    }
    // All or nothing: not even the first event's step, nor the offset.
    assert_eq!(s.offset().await, 0);
    assert_eq!(
        count(&s.db.pool, "SELECT count(*) FROM cqrs_saga_instances").await,
        0
    );
    assert_eq!(s.admin.outbox_len().await.unwrap(), 0);
    assert_eq!(sink.applied().await.unwrap(), 0);
}

//! The in-memory saga runner: routing, idempotent sending, failures, deadlines by an injected
//! clock, parking with retry and skip.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cqrs_core::middleware::ManualClock;
use cqrs_core::prelude::*;
use cqrs_core::saga::{
    CommandFailed, InMemorySagaRunner, InstanceStatus, SagaContext, SagaOptions,
};
use cqrs_core::{DomainError, GlobalPosition, saga};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub id: u32,
    pub fail: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noted {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TicketEvent {
    Opened(Opened),
    Noted(Noted),
    Closed(Closed),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Ticket, id = id)]
pub struct Open {
    pub id: u32,
    pub fail: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Ticket, id = id, idempotent)]
pub struct Note {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Ticket, id = id, idempotent)]
pub struct Close {
    pub id: u32,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is closed")]
    Closed,
}

impl DomainError for TicketError {
    fn code(&self) -> &'static str {
        "ticket_closed"
    }
}

#[derive(Debug, Default)]
pub struct Ticket {
    closed: bool,
}

#[aggregate(event = TicketEvent, error = TicketError)]
impl Ticket {
    #[command_handler]
    fn open(&self, c: &Open) -> Result<Opened, TicketError> {
        Ok(Opened {
            id: c.id,
            fail: c.fail,
        })
    }
    #[command_handler]
    fn note(&self, c: &Note) -> Result<Noted, TicketError> {
        if self.closed {
            return Err(TicketError::Closed);
        }
        Ok(Noted {
            id: c.id,
            text: c.text.clone(),
        })
    }
    #[command_handler]
    fn close(&self, c: &Close) -> Result<Closed, TicketError> {
        if self.closed {
            return Err(TicketError::Closed);
        }
        Ok(Closed { id: c.id })
    }
    #[event_handler]
    fn on_opened(&mut self, _: &Opened) {}
    #[event_handler]
    fn on_noted(&mut self, _: &Noted) {}
    #[event_handler]
    fn on_closed(&mut self, _: &Closed) {
        self.closed = true;
    }
}

/// Makes the saga's `Opened` handler fail while set.
static BROKEN: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remind;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Triage {
    notes: Vec<String>,
    failures: Vec<String>,
    reminded: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("the triage service is down")]
pub struct Down;

#[saga(commands(Note, Close))]
impl Triage {
    #[event_handler(key = id, start)]
    fn on_opened(&mut self, e: &Opened, ctx: &mut SagaContext<Self>) -> Result<Note, Down> {
        if e.fail && BROKEN.load(Ordering::SeqCst) {
            return Err(Down);
        }
        ctx.schedule(Remind, Duration::from_secs(60));
        Ok(Note {
            id: e.id,
            text: "triaged".into(),
        })
    }

    #[event_handler(key = id)]
    fn on_noted(&mut self, e: &Noted) {
        self.notes.push(e.text.clone());
    }

    #[event_handler(key = id, end)]
    fn on_closed(&mut self, _: &Closed) {}

    #[failure_handler]
    fn on_note_failed(&mut self, failed: &CommandFailed<Note>) {
        self.failures.push(format!(
            "{}/{}/{}",
            failed.kind,
            failed.domain_code.as_deref().unwrap_or("-"),
            failed.message
        ));
    }

    #[deadline_handler]
    fn on_remind(&mut self, _: &Remind, ctx: &mut SagaContext<Self>) -> Note {
        self.reminded += 1;
        Note {
            id: ctx.key().parse().unwrap_or_default(),
            text: "reminder".into(),
        }
    }
}

type Bus = cqrs_core::CommandBusOf![Ticket];

fn setup() -> (
    Bus,
    InMemorySagaRunner<Triage>,
    ManualClock,
    InMemoryEventStore,
) {
    let store = InMemoryEventStore::new();
    let bus: Bus = CommandBus::builder(store.clone())
        .aggregate::<Ticket>(())
        .build();
    let clock = ManualClock::new();
    let runner = InMemorySagaRunner::with_options(
        &bus,
        SagaOptions::default()
            .clock(clock.clone())
            .handler_attempts(2),
    );
    (bus, runner, clock, store)
}

async fn texts(store: &InMemoryEventStore, id: u32) -> Vec<String> {
    let events = store.load_stream(&format!("Ticket-{id}"), 1).await.unwrap();
    events
        .iter()
        .filter_map(|e| match e.decode::<TicketEvent>().unwrap() {
            TicketEvent::Noted(n) => Some(n.text),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_event_starts_an_instance_whose_command_is_sent_with_a_derived_key() {
    let (bus, runner, _clock, store) = setup();
    bus.execute(Open { id: 1, fail: false }).await.unwrap();
    runner.run_until_idle().await.unwrap();

    assert_eq!(texts(&store, 1).await, ["triaged"]);
    let instance = runner.instance("1").await.unwrap();
    assert_eq!(instance.status, InstanceStatus::Active);
    assert_eq!(instance.state.unwrap().notes, ["triaged"]);

    // The event that sent the command carries the saga's metadata and its key.
    let all = store
        .read_all_from(GlobalPosition::START, 10)
        .await
        .unwrap();
    let opened = &all[0];
    let noted = &all[1];
    let key = noted.metadata.idempotency_key().unwrap();
    assert_eq!(key, format!("Triage/1/{}/0", opened.event_id));
    assert_eq!(noted.metadata.extra["saga"], "Triage");
    assert_eq!(
        noted.metadata.correlation_id,
        opened.metadata.correlation_id
    );

    // Sent again (as after a crash), the key makes it a replay: nothing new is written.
    let record = bus.outcome_of::<Note>(key).await.unwrap();
    assert!(record.is_some());
}

#[tokio::test]
async fn events_of_no_instance_that_do_not_start_one_are_ignored() {
    let (bus, runner, _clock, store) = setup();
    // A note for a ticket the saga never saw opened.
    bus.execute(Note {
        id: 9,
        text: "stray".into(),
    })
    .await
    .unwrap();
    runner.run_until_idle().await.unwrap();
    assert!(runner.instance("9").await.is_none());
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_rejected_command_comes_back_typed_and_an_ended_instance_handles_nothing() {
    let (bus, runner, clock, store) = setup();
    // Closed before it is opened: the saga's note is rejected by the aggregate.
    bus.execute(Close { id: 2 }).await.unwrap();
    bus.execute(Open { id: 2, fail: false }).await.unwrap();
    runner.run_until_idle().await.unwrap();
    let instance = runner.instance("2").await.unwrap();
    assert_eq!(instance.status, InstanceStatus::Active);
    assert_eq!(
        instance.state.unwrap().failures,
        ["rejected/ticket_closed/the ticket is closed"]
    );

    // An instance that ends cancels its deadline and handles nothing more.
    bus.execute(Open {
        id: 10,
        fail: false,
    })
    .await
    .unwrap();
    runner.run_until_idle().await.unwrap();
    bus.execute(Close { id: 10 }).await.unwrap();
    runner.run_until_idle().await.unwrap();
    assert_eq!(
        runner.instance("10").await.unwrap().status,
        InstanceStatus::Ended
    );
    assert!(runner.deadlines().await.iter().all(|(key, ..)| key != "10"));
    clock.advance(Duration::from_secs(120));
    runner.run_until_idle().await.unwrap();
    assert_eq!(texts(&store, 10).await, ["triaged"]);
}

#[tokio::test]
async fn a_deadline_fires_once_by_the_injected_clock() {
    let (bus, runner, clock, store) = setup();
    bus.execute(Open { id: 3, fail: false }).await.unwrap();
    runner.run_until_idle().await.unwrap();
    assert_eq!(runner.deadlines().await.len(), 1);

    clock.advance(Duration::from_secs(59));
    runner.run_until_idle().await.unwrap();
    assert_eq!(texts(&store, 3).await, ["triaged"]);

    clock.advance(Duration::from_secs(1));
    runner.run_until_idle().await.unwrap();
    clock.advance(Duration::from_secs(3600));
    runner.run_until_idle().await.unwrap();
    assert_eq!(texts(&store, 3).await, ["triaged", "reminder"]);
    assert_eq!(
        runner.instance("3").await.unwrap().state.unwrap().reminded,
        1
    );
}

#[tokio::test]
async fn a_failing_handler_parks_its_instance_and_others_go_on_then_retry_or_skip() {
    let (bus, runner, _clock, store) = setup();
    BROKEN.store(true, Ordering::SeqCst);
    bus.execute(Open { id: 4, fail: true }).await.unwrap();
    bus.execute(Open { id: 5, fail: false }).await.unwrap();
    bus.execute(Open { id: 6, fail: true }).await.unwrap();
    runner.run_until_idle().await.unwrap();

    let parked = runner.parked().await;
    let keys: Vec<_> = parked.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["4", "6"]);
    assert!(parked[0].error.contains("the triage service is down"));
    assert!(parked[0].failed_on.contains("Opened"));
    // The other instance went on.
    assert_eq!(texts(&store, 5).await, ["triaged"]);

    // A later event for a parked instance waits behind the failed one.
    bus.execute(Note {
        id: 4,
        text: "by hand".into(),
    })
    .await
    .unwrap();
    runner.run_until_idle().await.unwrap();
    assert_eq!(runner.parked().await[0].waiting, 2);

    // Retrying while still broken parks it again, with nothing lost.
    runner.retry("4").await.unwrap();
    assert_eq!(runner.parked().await[0].waiting, 2);

    BROKEN.store(false, Ordering::SeqCst);
    runner.retry("4").await.unwrap();
    runner.run_until_idle().await.unwrap();
    let state = runner.instance("4").await.unwrap().state.unwrap();
    assert_eq!(state.notes, ["by hand", "triaged"]);

    // Skipping drops the failed start: no instance, nothing sent.
    runner.skip("6").await.unwrap();
    runner.run_until_idle().await.unwrap();
    assert!(runner.instance("6").await.is_none());
    assert!(runner.parked().await.is_empty());
    assert!(texts(&store, 6).await.is_empty());

    // An instance that is not parked cannot be retried.
    assert!(runner.retry("5").await.is_err());
}

#[tokio::test]
async fn a_background_runner_follows_new_events() {
    let (bus, _, _clock, store) = setup();
    let runner = InMemorySagaRunner::<Triage>::with_options(
        &bus,
        SagaOptions::default().poll_interval(Duration::from_millis(5)),
    );
    let handle = runner.start();
    bus.execute(Open { id: 7, fail: false }).await.unwrap();
    let store = Arc::new(store);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while texts(&store, 7).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner did not send"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown().await;
}

/// Sends two notes per ticket, in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Pair;

#[saga(commands(Note))]
impl Pair {
    #[event_handler(key = id, start)]
    fn on_opened(&mut self, e: &Opened) -> (Note, Note) {
        let note = |text: &str| Note {
            id: e.id,
            text: text.into(),
        };
        (note("first"), note("second"))
    }
}

/// Refuses the first command sent with an idempotency key ending in `/0`, once, as a rate
/// limit would: a passing failure.
struct RefuseOnce(Arc<AtomicBool>);

impl cqrs_core::middleware::CommandMiddleware for RefuseOnce {
    async fn handle<C: Command, N: cqrs_core::middleware::Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> cqrs_core::middleware::CommandResult<C> {
        if ctx.idempotency_key().is_some_and(|key| key.ends_with("/0"))
            && self.0.swap(false, Ordering::SeqCst)
        {
            return Err(CommandError::Refused {
                middleware: "refuse-once",
                reason: "try again later".into(),
            });
        }
        next.run(command, ctx).await
    }
}

#[tokio::test]
async fn a_command_put_off_by_a_passing_failure_is_sent_again_and_not_overtaken() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Ticket>(())
        .middleware(RefuseOnce(Arc::new(AtomicBool::new(true))))
        .build();
    let clock = ManualClock::new();
    let runner =
        InMemorySagaRunner::<Pair>::with_options(&bus, SagaOptions::default().clock(clock.clone()));
    bus.execute(Open {
        id: 11,
        fail: false,
    })
    .await
    .unwrap();
    runner.run_until_idle().await.unwrap();
    // The first note was refused for now; the second waits behind it.
    assert!(texts(&store, 11).await.is_empty());
    assert_eq!(runner.outbox_len().await, 2);

    clock.advance(Duration::from_secs(1));
    runner.run_until_idle().await.unwrap();
    assert_eq!(texts(&store, 11).await, ["first", "second"]);
    assert_eq!(runner.outbox_len().await, 0);
}

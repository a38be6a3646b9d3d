//! Durable sagas against a real PostgreSQL: what commits together, what survives a runner
//! aborted between steps, failures and deadlines handled once, parking, one leader.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::TestDb;
use cqrs_core::middleware::ManualClock;
use cqrs_core::prelude::*;
use cqrs_core::saga::{CommandFailed, InstanceStatus, SagaContext, SagaOptions};
use cqrs_core::{DomainError, saga};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::saga::{SagaAdmin, SagaHandle, SagaRunner, SagaStep, checkpoint_name};
use cqrs_postgres::subscription::Checkpoints;
use sqlx::PgPool;

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
    #[event(name = "ticket.opened")]
    Opened(Opened),
    #[event(name = "ticket.noted")]
    Noted(Noted),
    #[event(name = "ticket.closed")]
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
#[error("the ticket is closed")]
pub struct TicketClosed;

impl DomainError for TicketClosed {
    fn code(&self) -> &'static str {
        "ticket_closed"
    }
}

#[derive(Debug, Default)]
pub struct Ticket {
    closed: bool,
}

#[aggregate(event = TicketEvent, error = TicketClosed, name = "ticket")]
impl Ticket {
    #[command_handler]
    fn open(&self, c: &Open) -> Result<Opened, TicketClosed> {
        Ok(Opened {
            id: c.id,
            fail: c.fail,
        })
    }
    #[command_handler]
    fn note(&self, c: &Note) -> Result<Noted, TicketClosed> {
        if self.closed {
            return Err(TicketClosed);
        }
        Ok(Noted {
            id: c.id,
            text: c.text.clone(),
        })
    }
    #[command_handler]
    fn close(&self, c: &Close) -> Result<Closed, TicketClosed> {
        if self.closed {
            return Err(TicketClosed);
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

/// Makes the saga's `Opened` handler fail (for `fail: true` tickets) while set.
static BROKEN: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remind;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Triage {
    opened: u32,
    notes: Vec<String>,
    failures: Vec<String>,
    reminded: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("the triage service is down")]
pub struct Down;

#[saga(commands(Note, Close), name = "triage")]
impl Triage {
    #[event_handler(key = id, start)]
    fn on_opened(&mut self, e: &Opened, ctx: &mut SagaContext<Self>) -> Result<Note, Down> {
        if e.fail && BROKEN.load(Ordering::SeqCst) {
            return Err(Down);
        }
        self.opened += 1;
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

struct Setup {
    db: TestDb,
    bus: Bus,
    clock: ManualClock,
    admin: SagaAdmin<Triage>,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDb::create(10).await;
        PostgresEventStore::migrate(&db.pool)
            .await
            .expect("migrate");
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
        }
    }

    fn options(clock: &ManualClock) -> SagaOptions {
        SagaOptions::default()
            .clock(clock.clone())
            .handler_attempts(2)
            .poll_interval(Duration::from_millis(20))
    }

    fn runner(&self) -> SagaRunner<Triage> {
        SagaRunner::<Triage>::new(&self.db.pool, &self.bus)
            .options(Self::options(&self.clock))
            .lead_retry(Duration::from_millis(20))
    }

    /// A runner that dies right after its `nth` step that `matches` (1-based), as a crash
    /// there would: the observer panics on the runner's task, so nothing after the step runs.
    /// (An abort from the observer would take effect only at the task's next suspension,
    /// which a busy machine may postpone past the next step.)
    async fn runner_aborted_after(&self, nth: usize, matches: fn(&SagaStep) -> bool) -> SagaHandle {
        let seen = Arc::new(AtomicUsize::new(0));
        self.runner()
            .observe(move |step| {
                let dies = matches(&step) && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth;
                assert!(!dies, "the runner dies after step {nth}: {step:?}");
            })
            .start()
            .await
            .expect("start")
    }

    async fn settle(&self) {
        assert!(
            self.admin
                .wait_idle(Duration::from_secs(20))
                .await
                .expect("idle"),
            "the saga did not settle"
        );
    }

    async fn texts(&self, id: u32) -> Vec<String> {
        let events = self
            .bus
            .store()
            .load_stream(&format!("ticket-{id}"), 1)
            .await
            .unwrap();
        events
            .iter()
            .filter_map(|e| match e.decode::<TicketEvent>().unwrap() {
                TicketEvent::Noted(n) => Some(n.text),
                _ => None,
            })
            .collect()
    }

    async fn state(&self, id: u32) -> Triage {
        self.admin
            .instance(&id.to_string())
            .await
            .unwrap()
            .expect("the instance exists")
            .state
            .expect("it has a state")
    }
}

async fn wait_finished(handle: &SagaHandle) {
    for _ in 0..1000 {
        if handle.is_finished() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the runner was not aborted");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn an_event_commits_state_outbox_deadline_and_checkpoint_in_one_step() {
    let s = Setup::new().await;
    let committed = s.bus.execute(Open { id: 1, fail: false }).await.unwrap();

    // Aborted right after the event's transaction: nothing sent yet, everything else there.
    let runner = s
        .runner_aborted_after(1, |step| matches!(step, SagaStep::StateCommitted { .. }))
        .await;
    wait_finished(&runner).await;
    assert_eq!(s.state(1).await.opened, 1);
    assert_eq!(s.admin.outbox_len().await.unwrap(), 1);
    assert_eq!(s.admin.deadlines().await.unwrap().len(), 1);
    assert!(
        Checkpoints::new(s.db.pool.clone())
            .has_reached(&checkpoint_name::<Triage>(), committed.position)
            .await
            .unwrap()
    );
    assert!(s.texts(1).await.is_empty());

    // The next runner sends the command from the outbox; the event is not handled again.
    let runner = s.runner().start().await.unwrap();
    s.settle().await;
    assert_eq!(s.texts(1).await, ["triaged"]);
    let state = s.state(1).await;
    assert_eq!(
        (state.opened, state.notes.as_slice()),
        (1, &["triaged".to_owned()][..])
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn a_runner_aborted_between_executing_a_command_and_recording_it_does_not_execute_it_twice() {
    let s = Setup::new().await;
    s.bus.execute(Open { id: 2, fail: false }).await.unwrap();
    let runner = s
        .runner_aborted_after(1, |step| matches!(step, SagaStep::CommandExecuted { .. }))
        .await;
    wait_finished(&runner).await;
    // Executed, not recorded: the event is in the store, the row still in the outbox.
    assert_eq!(s.texts(2).await, ["triaged"]);
    assert_eq!(s.admin.outbox_len().await.unwrap(), 1);

    let runner = s.runner().start().await.unwrap();
    s.settle().await;
    assert_eq!(s.texts(2).await, ["triaged"], "executed once in effect");
    assert_eq!(s.state(2).await.notes, ["triaged"]);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_rejection_comes_back_typed_once_even_when_the_runner_dies_before_recording_it() {
    let s = Setup::new().await;
    s.bus.execute(Close { id: 3 }).await.unwrap();
    s.bus.execute(Open { id: 3, fail: false }).await.unwrap();
    let runner = s
        .runner_aborted_after(1, |step| matches!(step, SagaStep::CommandExecuted { .. }))
        .await;
    wait_finished(&runner).await;
    assert!(s.state(3).await.failures.is_empty());

    let runner = s.runner().start().await.unwrap();
    s.settle().await;
    assert_eq!(
        s.state(3).await.failures,
        ["rejected/ticket_closed/the ticket is closed"]
    );
    assert!(s.texts(3).await.is_empty());
    runner.shutdown().await;
}

#[tokio::test]
async fn deadlines_fire_once_by_the_clock_and_ending_cancels_them() {
    let s = Setup::new().await;
    let runner = s.runner().start().await.unwrap();
    s.bus.execute(Open { id: 4, fail: false }).await.unwrap();
    s.bus.execute(Open { id: 5, fail: false }).await.unwrap();
    s.settle().await;
    s.bus.execute(Close { id: 5 }).await.unwrap();
    s.settle().await;
    assert_eq!(
        s.admin.instance("5").await.unwrap().unwrap().status,
        InstanceStatus::Ended
    );
    let pending: Vec<_> = s
        .admin
        .deadlines()
        .await
        .unwrap()
        .into_iter()
        .map(|(key, name, _)| (key, name))
        .collect();
    assert_eq!(pending, [("4".to_owned(), "Remind".to_owned())]);

    s.clock.advance(Duration::from_secs(61));
    s.settle().await;
    s.clock.advance(Duration::from_secs(3600));
    s.settle().await;
    assert_eq!(s.texts(4).await, ["triaged", "reminder"]);
    assert_eq!(s.state(4).await.reminded, 1);
    assert_eq!(s.texts(5).await, ["triaged"]);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_failing_handler_parks_its_instance_while_others_go_on_until_retried_or_skipped() {
    let s = Setup::new().await;
    BROKEN.store(true, Ordering::SeqCst);
    let runner = s.runner().start().await.unwrap();
    s.bus.execute(Open { id: 6, fail: true }).await.unwrap();
    s.bus.execute(Open { id: 7, fail: false }).await.unwrap();
    s.bus.execute(Open { id: 8, fail: true }).await.unwrap();
    s.bus
        .execute(Note {
            id: 6,
            text: "by hand".into(),
        })
        .await
        .unwrap();
    s.settle().await;

    let parked = s.admin.parked().await.unwrap();
    let summary: Vec<_> = parked
        .iter()
        .map(|p| {
            (
                p.key.as_str(),
                p.waiting,
                p.failed_on.contains("ticket.opened"),
            )
        })
        .collect();
    assert_eq!(summary, [("6", 2, true), ("8", 1, true)]);
    assert!(parked[0].error.contains("the triage service is down"));
    assert_eq!(s.texts(7).await, ["triaged"], "the other instance went on");

    // Bad input writes nothing: an instance that is not parked.
    assert!(!s.admin.retry("7").await.unwrap());
    assert!(!s.admin.skip("no-such-ticket").await.unwrap());

    // Still broken: parked again, nothing lost.
    assert!(s.admin.retry("6").await.unwrap());
    assert_eq!(s.admin.parked().await.unwrap()[0].waiting, 2);

    BROKEN.store(false, Ordering::SeqCst);
    assert!(s.admin.retry("6").await.unwrap());
    assert!(s.admin.skip("8").await.unwrap());
    s.settle().await;
    assert!(s.admin.parked().await.unwrap().is_empty());
    assert_eq!(s.state(6).await.notes, ["by hand", "triaged"]);
    assert!(s.admin.instance("8").await.unwrap().is_none());
    assert!(s.texts(8).await.is_empty());
    runner.shutdown().await;
}

#[tokio::test]
async fn two_runners_lead_one_at_a_time_and_never_handle_an_event_twice() {
    let s = Setup::new().await;
    let first = s.runner().start().await.unwrap();
    assert!(first.wait_leading(Duration::from_secs(5)).await);
    let second = s.runner().start().await.unwrap();
    assert!(!second.wait_leading(Duration::from_millis(200)).await);

    for id in 100..140 {
        s.bus.execute(Open { id, fail: false }).await.unwrap();
    }
    s.settle().await;
    // The leader goes away mid-stream; the standby takes over.
    for id in 140..160 {
        s.bus.execute(Open { id, fail: false }).await.unwrap();
    }
    first.abort();
    assert!(second.wait_leading(Duration::from_secs(10)).await);
    for id in 160..180 {
        s.bus.execute(Open { id, fail: false }).await.unwrap();
    }
    s.settle().await;
    for id in 100..180 {
        let state = s.state(id).await;
        assert_eq!(state.opened, 1, "ticket {id} opened once in the saga");
        assert_eq!(state.notes, ["triaged"], "ticket {id}");
        assert_eq!(s.texts(id).await, ["triaged"], "ticket {id}");
    }
    assert_eq!(
        count(&s.db.pool, "SELECT count(*) FROM cqrs_saga_outbox").await,
        0
    );
    second.shutdown().await;
}

#[tokio::test]
async fn the_runner_aborted_after_every_step_still_sends_each_command_once() {
    let s = Setup::new().await;
    // Ticket 0 is closed first so that its note is rejected and comes back.
    s.bus.execute(Close { id: 0 }).await.unwrap();
    let mut step = 1;
    loop {
        let base = 1000 * step;
        let id = u32::try_from(base).unwrap();
        s.bus.execute(Close { id: id + 2 }).await.unwrap();
        for offset in 0..3 {
            s.bus
                .execute(Open {
                    id: id + offset,
                    fail: false,
                })
                .await
                .unwrap();
        }
        let runner = s.runner_aborted_after(step, |_| true).await;
        let mut aborted = false;
        for _ in 0..500 {
            if runner.is_finished() {
                aborted = true;
                break;
            }
            if s.admin
                .is_idle(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH)
                .await
                .unwrap()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runner.abort();
        let runner = s.runner().start().await.unwrap();
        s.settle().await;
        runner.shutdown().await;
        for offset in 0..2 {
            assert_eq!(s.texts(id + offset).await, ["triaged"], "step {step}");
            assert_eq!(s.state(id + offset).await.notes, ["triaged"], "step {step}");
        }
        assert_eq!(
            s.state(id + 2).await.failures.len(),
            1,
            "step {step}: the rejection came back once"
        );
        if !aborted {
            break;
        }
        step += 1;
    }
    assert!(step > 5, "the flow has more than five steps: {step}");
}

/// Sends two notes per ticket, in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Pair;

#[saga(commands(Note), name = "pair")]
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
    let s = Setup::new().await;
    let bus = CommandBus::builder(PostgresEventStore::new(s.db.pool.clone()))
        .aggregate::<Ticket>(())
        .middleware(RefuseOnce(Arc::new(AtomicBool::new(true))))
        .build();
    let options = Setup::options(&s.clock);
    let admin = SagaAdmin::<Pair>::new(s.db.pool.clone()).with_options(options.clone());
    let runner = SagaRunner::<Pair>::new(&s.db.pool, &bus)
        .options(options)
        .start()
        .await
        .unwrap();
    bus.execute(Open {
        id: 12,
        fail: false,
    })
    .await
    .unwrap();
    // The first note is refused and put off (by the manual clock); the second waits.
    for _ in 0..500 {
        if admin.outbox_len().await.unwrap() == 2
            && s.admin.deadlines().await.unwrap().is_empty()
            && sqlx::query_scalar::<_, i32>(
                "SELECT attempts FROM cqrs_saga_outbox ORDER BY id LIMIT 1",
            )
            .fetch_optional(&s.db.pool)
            .await
            .unwrap()
                == Some(1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        s.texts(12).await.is_empty(),
        "nothing overtook the refused note"
    );
    assert_eq!(admin.outbox_len().await.unwrap(), 2);

    s.clock.advance(Duration::from_secs(1));
    assert!(admin.wait_idle(Duration::from_secs(20)).await.unwrap());
    assert_eq!(s.texts(12).await, ["first", "second"]);
    runner.shutdown().await;
}

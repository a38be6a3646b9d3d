//! The order saga killed at every step on PostgreSQL: each command's effect and each
//! compensation happen exactly once.
//!
//! - The runner task is aborted right after its n-th step, for every n of the three stories
//!   (fulfilled, declined, timed out), then a new runner finishes the work.
//! - A child process (this test binary run again as `child_runner`) runs the saga and is
//!   killed with SIGKILL between "state committed" and "command executed", and between
//!   "command executed" and "result recorded"; this process then finishes the work.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Orders, PAST_THE_WINDOW, TestDb, assert_exactly_once, connect, place};
use cqrs_core::CommandBus;
use cqrs_core::middleware::ManualClock;
use cqrs_core::saga::{SagaOptions, WallClock};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::saga::{SagaAdmin, SagaStep};
use order_fulfilment::saga::OrderFulfilment;
use order_fulfilment::wire::{Shop, bus};

fn options(clock: &ManualClock) -> SagaOptions {
    SagaOptions::default()
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(20))
}

/// Waits until the saga is idle by `clock` (every event, command and due deadline done).
async fn settle(admin: &SagaAdmin<OrderFulfilment>, context: &str) {
    if !admin
        .wait_idle(Duration::from_secs(30))
        .await
        .expect("idle")
    {
        panic!(
            "{context}: the saga did not settle; outbox {:?}, deadlines {:?}, parked {:?}",
            admin.outbox_len().await,
            admin.deadlines().await,
            admin.parked().await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_aborted_after_any_step_leaves_every_effect_exactly_once() {
    let db = TestDb::create().await;
    let clock = ManualClock::new();
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    let commands = bus(CommandBus::builder(PostgresEventStore::new(
        db.pool.clone(),
    )));
    let admin = SagaAdmin::<OrderFulfilment>::new(db.pool.clone()).with_options(options(&clock));

    // The runner's time: the same manual clock.
    let wall = WallClock::new(clock.clone());
    let mut step: usize = 1;
    loop {
        let orders = Orders::starting_at(u64::try_from(step).expect("step") * 10);
        place(&commands, orders, true).await;

        // A runner that aborts itself right after its `step`-th step.
        let seen = Arc::new(AtomicUsize::new(0));
        let abort: Arc<Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
        let shop = Shop::on_pool_with(&db.pool, options(&clock), {
            let abort = Arc::clone(&abort);
            move |runner| {
                runner.observe(move |_| {
                    if seen.fetch_add(1, Ordering::SeqCst) + 1 == step
                        && let Some(abort) = abort.lock().unwrap().as_ref()
                    {
                        abort.abort();
                    }
                })
            }
        })
        .await
        .expect("shop");
        let handle = shop.handle().expect("postgres");
        *abort.lock().unwrap() = Some(handle.abort_handle());

        // Drive the stories until they end or the runner is aborted: settle, then let the
        // payment window pass, then settle again.
        let started = Instant::now();
        let mut window_passed = false;
        let aborted = loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "step {step} hangs"
            );
            if handle.is_finished() {
                break true;
            }
            if admin.is_idle(wall.now()).await.expect("idle") {
                if window_passed {
                    break false;
                }
                clock.advance(PAST_THE_WINDOW);
                window_passed = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        shop.stop().await;

        // A new runner finishes what is left.
        let shop = Shop::on_pool(&db.pool, options(&clock))
            .await
            .expect("shop");
        let context = format!("aborted after step {step}");
        settle(&admin, &context).await;
        if !window_passed {
            clock.advance(PAST_THE_WINDOW);
        }
        settle(&admin, &context).await;
        shop.stop().await;

        assert_exactly_once(
            &commands,
            orders,
            true,
            &format!("aborted after step {step}"),
        )
        .await;
        if !aborted {
            break;
        }
        step += 1;
    }
    // Three stories: 12 events, 11 commands sent and recorded, one deadline.
    assert!(step > 30, "every step was tried: {step}");
}

/// Where the child stops, waiting for its SIGKILL.
const STOP_AT: &str = "ORDER_SAGA_CHILD_STOP_AT";
const CHILD_DB: &str = "ORDER_SAGA_CHILD_DB";
const REACHED: &str = "ORDER_SAGA_CHILD_REACHED";

/// Not a test on its own: the child process of
/// `a_runner_killed_between_two_steps_leaves_every_effect_exactly_once`. Runs the saga and
/// stops at the step it is told, then waits to be killed.
#[test]
fn child_runner() {
    let (Ok(db), Ok(stop_at)) = (std::env::var(CHILD_DB), std::env::var(STOP_AT)) else {
        return;
    };
    let (kind, nth) = stop_at.split_once(':').expect("kind:n");
    let nth: usize = nth.parse().expect("n");
    let kind = kind.to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let pool = connect(&db).await;
        let seen = AtomicUsize::new(0);
        let _shop = Shop::on_pool_with(&pool, options(&ManualClock::new()), move |runner| {
            runner.observe(move |step| {
                let matches = match kind.as_str() {
                    "state_committed" => matches!(step, SagaStep::StateCommitted { .. }),
                    "command_executed" => matches!(step, SagaStep::CommandExecuted { .. }),
                    other => panic!("unknown step {other}"),
                };
                if matches && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                    println!("{REACHED}");
                    // Held here, between this step and the next, until SIGKILL.
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
            })
        })
        .await
        .expect("shop");
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("the child was not killed");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_between_two_steps_leaves_every_effect_exactly_once() {
    for stop_at in [
        "state_committed:1",
        "state_committed:3",
        "command_executed:1",
        "command_executed:2",
        "command_executed:4",
    ] {
        let db = TestDb::create().await;
        PostgresEventStore::migrate(&db.pool)
            .await
            .expect("migrate");
        let commands = bus(CommandBus::builder(PostgresEventStore::new(
            db.pool.clone(),
        )));
        let orders = Orders::starting_at(0);
        place(&commands, orders, false).await;

        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child_runner", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, &db.name)
            .env(STOP_AT, stop_at)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child runner");
        let stdout = child.stdout.take().expect("stdout");
        let reached = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.contains(REACHED))
        });
        let reached = tokio::time::timeout(Duration::from_secs(20), reached)
            .await
            .expect("the child reaches its step")
            .expect("reader");
        // SIGKILL, mid-flow.
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(reached, "{stop_at}: the child stopped where told");

        // This process finishes the work.
        let clock = ManualClock::new();
        let shop = Shop::on_pool(&db.pool, options(&clock))
            .await
            .expect("shop");
        let admin =
            SagaAdmin::<OrderFulfilment>::new(db.pool.clone()).with_options(options(&clock));
        settle(&admin, stop_at).await;
        shop.stop().await;
        assert_exactly_once(&commands, orders, false, &format!("killed at {stop_at}")).await;
    }
}

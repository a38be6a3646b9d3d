//! A command through the bus versus the same work called by hand, in the same run.
//!
//! `bus`: `CommandBus::execute` on the in-memory store (no middleware, no subscribers): context,
//! repository load (cached state + empty tail read), handler, apply, serialize, append.
//! `direct`: the same handler, apply, serialization and in-memory append, called in a loop
//! with the state kept in a local variable. The ratio `bus / direct` is printed at the end;
//! the goal is at most 1.5.
//!
//! `cargo bench -p cqrs-core --bench dispatch`

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cqrs_core::prelude::*;
use cqrs_core::{CommandContext, ExpectedVersion, Handles, NewEvent};
use criterion::{Criterion, criterion_group};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum CounterEvent {
    #[event(name = "counter.deposited")]
    Deposited(Deposited),
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Counter, id = id)]
struct Deposit {
    id: u64,
    amount: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("overflow")]
struct Overflow;

#[derive(Debug, Default)]
struct Counter {
    total: u64,
}

#[aggregate(event = CounterEvent, error = Overflow)]
impl Counter {
    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, Overflow> {
        self.total.checked_add(cmd.amount).ok_or(Overflow)?;
        Ok(Deposited { amount: cmd.amount })
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.total += e.amount;
    }
}

static TOTALS: Mutex<[(Duration, u64); 2]> = Mutex::new([(Duration::ZERO, 0); 2]);

fn record(slot: usize, elapsed: Duration, iters: u64) {
    let mut totals = TOTALS.lock().unwrap();
    totals[slot].0 += elapsed;
    totals[slot].1 += iters;
}

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("dispatch");

    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Counter>(())
        .build();
    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let committed = bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
                    std::hint::black_box(committed);
                }
                let elapsed = start.elapsed();
                record(0, elapsed, iters);
                elapsed
            })
        });
    });

    let store = InMemoryEventStore::new();
    let ctx = CommandContext::for_command(&Deposit { id: 2, amount: 1 }, Metadata::default());
    let mut state = Counter::default();
    let mut version = 0;
    group.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let cmd = Deposit { id: 2, amount: 1 };
                    let events = state.handle(&cmd, &(), &ctx).await.unwrap();
                    let metadata = ctx.event_metadata();
                    let new_events: Vec<NewEvent> = events
                        .iter()
                        .map(|e| NewEvent::from_event(e, metadata.clone()).unwrap())
                        .collect();
                    for event in &events {
                        state.apply(event);
                    }
                    let appended = store
                        .append(&ctx.stream_id, ExpectedVersion::Exact(version), new_events)
                        .await
                        .unwrap();
                    version = appended.stream_version;
                    std::hint::black_box(appended);
                }
                let elapsed = start.elapsed();
                record(1, elapsed, iters);
                elapsed
            })
        });
    });
    group.finish();
}

criterion_group!(benches, dispatch);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let totals = *TOTALS.lock().unwrap();
    // Iteration counts stay far below 2^52, where the cast would round.
    #[allow(clippy::cast_precision_loss)]
    let per_op = |(elapsed, iters): (Duration, u64)| {
        if iters == 0 {
            f64::NAN
        } else {
            elapsed.as_secs_f64() * 1e9 / iters as f64
        }
    };
    let (bus, direct) = (per_op(totals[0]), per_op(totals[1]));
    println!(
        "dispatch: bus {bus:.0} ns/command, direct {direct:.0} ns/command, ratio bus/direct = {:.2} (goal <= 1.50)",
        bus / direct
    );
}

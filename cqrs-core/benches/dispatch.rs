//! A command through the bus versus the same work called by hand, in the same run.
//!
//! `bus`: `CommandBus::execute` on the in-memory store (no middleware, no subscribers): context,
//! repository load (cached state + empty tail read), handler, apply, serialize, append.
//! `direct`: the same handler, apply, serialization and in-memory append, called in a loop
//! with the state kept in a local variable. The ratio `bus / direct` is printed at the end;
//! the goal is at most 1.5.
//!
//! The middleware variants run the same command through a bus with one middleware each (and
//! one with all of them), against `none`: the same bus and the same caller metadata without
//! middleware. `middleware - none` is what a middleware costs per command; the goal for each
//! one that does no I/O is at most 100 ns. `query` / `query+cache` compare a query answered
//! by its read model with one answered from the cache. The `chain:` variants run the
//! middleware around a terminal that does nothing, which isolates their cost from the noise
//! of the store and repository (a few microseconds that vary more than a middleware costs).
//!
//! `cargo bench -p cqrs-core --bench dispatch --features metrics`

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cqrs_core::middleware::{
    Authorize, CircuitBreaker, CommandChain, CommandResult, ConcurrencyLimit, Next, QueryCache,
    Quota, RateLimit, Request, Scope,
};
use cqrs_core::prelude::*;
use cqrs_core::{CommandContext, ExpectedVersion, Handles, NewEvent};
use criterion::{BenchmarkGroup, Criterion, criterion_group, measurement::WallTime};

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

#[derive(Debug, Clone, Serialize, Deserialize, Query)]
#[query(output = u64)]
struct Total {
    id: u64,
}

#[derive(Default)]
struct Totals {
    total: u64,
}

#[projection]
impl Totals {
    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.total += e.amount;
    }

    #[query_handler]
    fn total(&self, _q: &Total) -> Result<u64, Overflow> {
        Ok(self.total)
    }
}

static TOTALS: Mutex<[(Duration, u64); 2]> = Mutex::new([(Duration::ZERO, 0); 2]);

fn record(slot: usize, elapsed: Duration, iters: u64) {
    let mut totals = TOTALS.lock().unwrap();
    totals[slot].0 += elapsed;
    totals[slot].1 += iters;
}

/// Nanoseconds per operation of each middleware variant, in the order run.
static VARIANTS: Mutex<Vec<(&'static str, Duration, u64)>> = Mutex::new(Vec::new());

fn record_variant(name: &'static str, elapsed: Duration, iters: u64) {
    let mut variants = VARIANTS.lock().unwrap();
    if let Some(slot) = variants.iter_mut().find(|(n, ..)| *n == name) {
        slot.1 += elapsed;
        slot.2 += iters;
    } else {
        variants.push((name, elapsed, iters));
    }
}

fn allow_tellers(request: &Request<'_>) -> Result<(), Cow<'static, str>> {
    if request.has_role("teller") {
        Ok(())
    } else {
        Err("tellers only".into())
    }
}

/// Runs `bus.execute_with(Deposit, metadata)` as benchmark `name`.
macro_rules! bench_commands {
    ($group:expr, $runtime:expr, $name:literal, $bus:expr, $metadata:expr) => {{
        let bus = $bus;
        let metadata: &Metadata = $metadata;
        $group.bench_function($name, |b| {
            b.iter_custom(|iters| {
                $runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let deposit = Deposit { id: 1, amount: 1 };
                        let committed = bus.execute_with(deposit, metadata.clone()).await.unwrap();
                        std::hint::black_box(committed);
                    }
                    let elapsed = start.elapsed();
                    record_variant($name, elapsed, iters);
                    elapsed
                })
            });
        });
    }};
}

/// The end of a chain that does nothing: isolates what the middleware themselves cost.
struct Done;

impl Next<Deposit> for Done {
    async fn run(self, _command: Deposit, ctx: CommandContext) -> CommandResult<Deposit> {
        Ok(Committed {
            command_id: ctx.command_id,
            stream_id: String::new(),
            stream_version: 1,
            position: cqrs_core::GlobalPosition(1),
            events: 1,
        })
    }
}

/// Runs `chain` around [`Done`] as benchmark `name`.
fn bench_chain<M: CommandChain>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &'static str,
    chain: &M,
    ctx: &CommandContext,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let deposit = Deposit { id: 1, amount: 1 };
                    let committed = chain.run(deposit, ctx.clone(), Done).await.unwrap();
                    std::hint::black_box(committed);
                }
                let elapsed = start.elapsed();
                record_variant(name, elapsed, iters);
                elapsed
            })
        });
    });
}

fn chains(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("chain");
    let metadata = Metadata::default()
        .with_user_id("ada")
        .with("roles", serde_json::json!(["teller"]));
    let ctx = CommandContext::for_command(&Deposit { id: 1, amount: 1 }, metadata);
    let rate_limit = || RateLimit::new("bench", Quota::per_second(u32::MAX)).scope(Scope::PerUser);
    let concurrency = || ConcurrencyLimit::new("bench", 1_000).scope(Scope::PerUser);
    bench_chain(&mut group, &runtime, "chain:none", &(), &ctx);
    bench_chain(
        &mut group,
        &runtime,
        "chain:circuit",
        &(CircuitBreaker::new("bench"), ()),
        &ctx,
    );
    bench_chain(
        &mut group,
        &runtime,
        "chain:rate_limit",
        &(rate_limit(), ()),
        &ctx,
    );
    bench_chain(
        &mut group,
        &runtime,
        "chain:rate_limit_global",
        &(RateLimit::new("bench", Quota::per_second(u32::MAX)), ()),
        &ctx,
    );
    bench_chain(
        &mut group,
        &runtime,
        "chain:concurrency",
        &(concurrency(), ()),
        &ctx,
    );
    bench_chain(
        &mut group,
        &runtime,
        "chain:concurrency_global",
        &(ConcurrencyLimit::new("bench", 1_000), ()),
        &ctx,
    );
    bench_chain(
        &mut group,
        &runtime,
        "chain:authorize",
        &(Authorize::new(allow_tellers), ()),
        &ctx,
    );
    #[cfg(feature = "metrics")]
    bench_chain(
        &mut group,
        &runtime,
        "chain:metrics",
        &(cqrs_core::middleware::Metrics, ()),
        &ctx,
    );
    let all = (
        Authorize::new(allow_tellers),
        (
            rate_limit(),
            (concurrency(), (CircuitBreaker::new("bench"), ())),
        ),
    );
    bench_chain(&mut group, &runtime, "chain:all", &all, &ctx);
    group.finish();
}

fn middleware(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("middleware");
    let metadata = Metadata::default()
        .with_user_id("ada")
        .with("roles", serde_json::json!(["teller"]));
    let builder = || CommandBus::builder(InMemoryEventStore::new()).aggregate::<Counter>(());
    let rate_limit = || RateLimit::new("bench", Quota::per_second(u32::MAX)).scope(Scope::PerUser);
    let concurrency = || ConcurrencyLimit::new("bench", 1_000).scope(Scope::PerUser);

    bench_commands!(group, runtime, "none", builder().build(), &metadata);
    bench_commands!(
        group,
        runtime,
        "circuit",
        builder().middleware(CircuitBreaker::new("bench")).build(),
        &metadata
    );
    bench_commands!(
        group,
        runtime,
        "rate_limit",
        builder().middleware(rate_limit()).build(),
        &metadata
    );
    bench_commands!(
        group,
        runtime,
        "concurrency",
        builder().middleware(concurrency()).build(),
        &metadata
    );
    bench_commands!(
        group,
        runtime,
        "authorize",
        builder().middleware(Authorize::new(allow_tellers)).build(),
        &metadata
    );
    #[cfg(feature = "metrics")]
    bench_commands!(
        group,
        runtime,
        "metrics",
        builder().middleware(cqrs_core::middleware::Metrics).build(),
        &metadata
    );
    let all = builder()
        .middleware(Authorize::new(allow_tellers))
        .middleware(rate_limit())
        .middleware(concurrency())
        .middleware(CircuitBreaker::new("bench"));
    #[cfg(feature = "metrics")]
    let all = all.middleware(cqrs_core::middleware::Metrics);
    bench_commands!(group, runtime, "all", all.build(), &metadata);

    let totals = ReadModel::new(Totals::default());
    let plain = QueryBus::builder().handler(totals.clone()).build();
    let cached = QueryBus::builder()
        .handler(totals.clone())
        .middleware(QueryCache::new(Duration::from_secs(60), 1_000).query::<Total, _>(&totals))
        .build();
    bench_queries(&mut group, &runtime, "query", &plain);
    bench_queries(&mut group, &runtime, "query+cache", &cached);
    group.finish();
}

fn bench_queries<M: cqrs_core::middleware::QueryChain>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &'static str,
    queries: &QueryBus<(ReadModel<Totals>, ()), M>,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let total = queries.execute(Total { id: 1 }).await.unwrap();
                    std::hint::black_box(total);
                }
                let elapsed = start.elapsed();
                record_variant(name, elapsed, iters);
                elapsed
            })
        });
    });
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

criterion_group!(benches, dispatch, middleware, chains);

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
    let variants = VARIANTS.lock().unwrap().clone();
    let baseline = |name: &str| {
        variants
            .iter()
            .find(|(n, ..)| *n == name)
            .map_or(f64::NAN, |&(_, elapsed, iters)| per_op((elapsed, iters)))
    };
    let (none, chain_none) = (baseline("none"), baseline("chain:none"));
    for (name, elapsed, iters) in &variants {
        let ns = per_op((*elapsed, *iters));
        let base = if name.starts_with("chain:") {
            chain_none
        } else {
            none
        };
        if name.starts_with("query") {
            println!("middleware: {name:<26} {ns:>7.0} ns/query");
        } else {
            println!(
                "middleware: {name:<26} {ns:>7.0} ns/command, {:>+6.0} ns over no middleware",
                ns - base
            );
        }
    }
}

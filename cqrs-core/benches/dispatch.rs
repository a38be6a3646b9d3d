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
//! `Metrics` is measured with a real recorder installed (the Prometheus exporter's, drained
//! between batches, outside the timed loops): the no-op recorder a program without an
//! exporter has would flatter it. `Tracing` is measured without a `tracing` collector, so
//! its spans are disabled: what it costs itself, not what a log or an exporter costs.
//!
//! At the end the chain variants run again, interleaved round by round (see [`interleaved`]):
//! on a shared machine those are the figures to read.
//!
//! `cargo bench -p cqrs-core --bench dispatch` (the crate's dev-dependencies turn on
//! feature `metrics`); `-- 'chain|middleware'` runs the middleware variants only, and
//! `-- interleaved` (a filter no criterion benchmark matches) the interleaved part alone.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cqrs_core::middleware::{
    Authorize, CircuitBreaker, CommandChain, CommandResult, ConcurrencyLimit, Metrics, Next,
    QueryCache, Quota, RateLimit, Request, Retry, Scope, Timeout, Tracing, Validation,
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
    drain_metrics();
    let mut variants = VARIANTS.lock().unwrap();
    if let Some(slot) = variants.iter_mut().find(|(n, ..)| *n == name) {
        slot.1 += elapsed;
        slot.2 += iters;
    } else {
        variants.push((name, elapsed, iters));
    }
}

/// The installed Prometheus recorder's handle.
static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs a Prometheus recorder, as a service exposing `/metrics` would.
fn install_recorder() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no recorder installed yet");
    PROMETHEUS.set(handle).ok();
}

/// Folds the samples recorded since the last call into the histograms (the exporter's
/// periodic upkeep), so that memory does not grow with the iterations; outside timed loops.
fn drain_metrics() {
    if let Some(handle) = PROMETHEUS.get() {
        handle.run_upkeep();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
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

/// Every middleware, in the order a service would stack them.
fn all_middleware() -> impl CommandChain {
    (
        Tracing,
        (
            Metrics::new(),
            (
                Authorize::new(allow_tellers),
                (
                    RateLimit::new("bench", Quota::per_second(u32::MAX)).scope(Scope::PerUser),
                    (
                        ConcurrencyLimit::new("bench", 1_000).scope(Scope::PerUser),
                        (
                            CircuitBreaker::new("bench"),
                            (Timeout::new(Duration::from_secs(10)), (Validation, ())),
                        ),
                    ),
                ),
            ),
        ),
    )
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
    let runtime = runtime();
    let mut group = c.benchmark_group("chain");
    let metadata = Metadata::default()
        .with_user_id("ada")
        .with("roles", serde_json::json!(["teller"]));
    let ctx = CommandContext::for_command(&Deposit { id: 1, amount: 1 }, metadata);
    let rate_limit = || RateLimit::new("bench", Quota::per_second(u32::MAX)).scope(Scope::PerUser);
    let concurrency = || ConcurrencyLimit::new("bench", 1_000).scope(Scope::PerUser);
    bench_chain(&mut group, &runtime, "chain:none", &(), &ctx);
    bench_chain(&mut group, &runtime, "chain:tracing", &(Tracing, ()), &ctx);
    bench_chain(
        &mut group,
        &runtime,
        "chain:validation",
        &(Validation, ()),
        &ctx,
    );
    bench_chain(
        &mut group,
        &runtime,
        "chain:timeout",
        &(Timeout::new(Duration::from_secs(10)), ()),
        &ctx,
    );
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
    bench_chain(
        &mut group,
        &runtime,
        "chain:metrics",
        &(Metrics::new(), ()),
        &ctx,
    );
    let all = all_middleware();
    bench_chain(&mut group, &runtime, "chain:all", &all, &ctx);
    group.finish();
}

fn middleware(c: &mut Criterion) {
    let runtime = runtime();
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
        "tracing",
        builder().middleware(Tracing).build(),
        &metadata
    );
    bench_commands!(
        group,
        runtime,
        "validation",
        builder().middleware(Validation).build(),
        &metadata
    );
    bench_commands!(
        group,
        runtime,
        "timeout",
        builder()
            .middleware(Timeout::new(Duration::from_secs(10)))
            .build(),
        &metadata
    );
    bench_commands!(
        group,
        runtime,
        "retry",
        builder().retry(Retry::new()).build(),
        &metadata
    );
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
    bench_commands!(
        group,
        runtime,
        "metrics",
        builder().middleware(Metrics::new()).build(),
        &metadata
    );
    let all = builder()
        .middleware(Tracing)
        .middleware(Metrics::new())
        .middleware(Authorize::new(allow_tellers))
        .middleware(rate_limit())
        .middleware(concurrency())
        .middleware(CircuitBreaker::new("bench"))
        .middleware(Timeout::new(Duration::from_secs(10)))
        .middleware(Validation)
        .retry(Retry::new());
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
    let runtime = runtime();
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

/// Runs a chain `iters` times around [`Done`]; returns the time taken.
type Runner<'a> = Box<dyn Fn(u64) -> Duration + 'a>;

fn chain_runner<'a, M: CommandChain>(
    runtime: &'a tokio::runtime::Runtime,
    chain: M,
    ctx: &'a CommandContext,
) -> Runner<'a> {
    Box::new(move |iters| {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let deposit = Deposit { id: 1, amount: 1 };
                let committed = chain.run(deposit, ctx.clone(), Done).await.unwrap();
                std::hint::black_box(committed);
            }
            start.elapsed()
        })
    })
}

/// Nanoseconds this thread has spent on a CPU: unlike wall time, it leaves out the time
/// other processes had the CPU, which on a shared machine is most of the noise.
fn thread_cpu_nanos() -> f64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    // Far below 2^52 ns of CPU time, where the cast would round.
    #[allow(clippy::cast_precision_loss)]
    let nanos = now.tv_sec as f64 * 1e9 + now.tv_nsec as f64;
    nanos
}

/// The chain variants again, interleaved: each round runs every variant for `DISPATCH_CHUNK`
/// commands (default 50000), in an order that rotates from round to round, and a variant's
/// cost in a round is its on-CPU time per command minus the empty chain's in that round.
/// Printed: the median (min–max) over `DISPATCH_ROUNDS` rounds (default 40), which a busy
/// shared machine moves much less than the wall-clock runs above.
fn interleaved() {
    let rounds: usize = env_or("DISPATCH_ROUNDS", 40);
    let chunk: u64 = env_or("DISPATCH_CHUNK", 50_000);
    let runtime = runtime();
    let metadata = Metadata::default()
        .with_user_id("ada")
        .with("roles", serde_json::json!(["teller"]));
    let ctx = CommandContext::for_command(&Deposit { id: 1, amount: 1 }, metadata);
    let rate_limit = || RateLimit::new("bench", Quota::per_second(u32::MAX)).scope(Scope::PerUser);
    let concurrency = || ConcurrencyLimit::new("bench", 1_000).scope(Scope::PerUser);
    let all = all_middleware();
    let variants: Vec<(&str, Runner<'_>)> = vec![
        ("none", chain_runner(&runtime, (), &ctx)),
        ("tracing", chain_runner(&runtime, (Tracing, ()), &ctx)),
        ("validation", chain_runner(&runtime, (Validation, ()), &ctx)),
        (
            "timeout",
            chain_runner(&runtime, (Timeout::new(Duration::from_secs(10)), ()), &ctx),
        ),
        (
            "circuit",
            chain_runner(&runtime, (CircuitBreaker::new("bench"), ()), &ctx),
        ),
        (
            "rate_limit (per user)",
            chain_runner(&runtime, (rate_limit(), ()), &ctx),
        ),
        (
            "rate_limit (global)",
            chain_runner(
                &runtime,
                (RateLimit::new("bench", Quota::per_second(u32::MAX)), ()),
                &ctx,
            ),
        ),
        (
            "concurrency (per user)",
            chain_runner(&runtime, (concurrency(), ()), &ctx),
        ),
        (
            "concurrency (global)",
            chain_runner(&runtime, (ConcurrencyLimit::new("bench", 1_000), ()), &ctx),
        ),
        (
            "authorize",
            chain_runner(&runtime, (Authorize::new(allow_tellers), ()), &ctx),
        ),
        (
            "metrics",
            chain_runner(&runtime, (Metrics::new(), ()), &ctx),
        ),
        ("all", chain_runner(&runtime, all, &ctx)),
    ];
    for (_, run) in &variants {
        run(chunk);
    }
    drain_metrics();
    let mut per_op = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        for turn in 0..variants.len() {
            let index = (turn + round) % variants.len();
            let started = thread_cpu_nanos();
            std::hint::black_box((variants[index].1)(chunk));
            let on_cpu = thread_cpu_nanos() - started;
            drain_metrics();
            // Chunks are far below 2^52 commands, where the cast would round.
            #[allow(clippy::cast_precision_loss)]
            per_op[index].push(on_cpu / chunk as f64);
        }
    }
    println!(
        "chain, interleaved: {rounds} rounds of {chunk} commands per variant; on-CPU ns/command, and over the empty chain, median (min–max) of the rounds"
    );
    for (index, (name, _)) in variants.iter().enumerate() {
        let mut over: Vec<f64> = per_op[index]
            .iter()
            .zip(&per_op[0])
            .map(|(variant, none)| variant - none)
            .collect();
        over.sort_by(f64::total_cmp);
        let mut own = per_op[index].clone();
        own.sort_by(f64::total_cmp);
        println!(
            "interleaved: {name:<24} {:>7.0} ns/command, {:>+6.0} ns ({:+.0} – {:+.0}) over none",
            own[own.len() / 2],
            over[over.len() / 2],
            over[0],
            over[over.len() - 1],
        );
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    install_recorder();
    benches();
    Criterion::default().configure_from_args().final_summary();
    interleaved();
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

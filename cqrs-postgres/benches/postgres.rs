//! Throughput and latency of the PostgreSQL store, in one run:
//!
//! 1. commands/s through the framework (`CommandBus` on `PostgresEventStore`) against a
//!    hand-written sqlx loop doing the same work, with 1 and 8 concurrent clients on
//!    distinct aggregates;
//! 2. the time to load an aggregate of 10 and of 100,000 events through the repository, with
//!    and without a snapshot;
//! 3. the catch-up rate of `read_all_from` in events/s, next to a plain position scan.
//!
//! It creates a database of its own and drops it at the end. Sizes come from environment
//! variables (defaults in brackets): `BENCH_SECONDS` per throughput run [3], `BENCH_ROUNDS`
//! of each throughput variant, median kept [3], `BENCH_CLIENTS` [1,8], `BENCH_HISTORY` events
//! of the long aggregate [100000], `BENCH_LOADS` repetitions of a load [5], `BENCH_PARTS`
//! [commands,loads,catch-up], `BENCH_VARIANTS` [0,1,2,3: hand-written, framework notifying
//! in the transaction, after commit, not at all], `BENCH_PING` [1: sqlx's default
//! `test_before_acquire`, a round trip per pool checkout; 0 turns it off]. `DATABASE_URL` names the server (default the
//! local one).
//!
//! ```text
//! cargo bench -p cqrs-postgres --bench postgres
//! ```
#![allow(missing_docs)]

#[path = "../tests/common/bank.rs"]
mod bank;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bank::{Account, BankEvent, Deposit, Deposited, Opened};
use cqrs_core::{
    CommandBus, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, RecordedEvent,
    Repository, RepositoryOptions, Snapshot,
};
use cqrs_postgres::{NotifyMode, PostgresEventStore};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL is not a postgres URL")
        .disable_statement_logging()
}

/// The bench's own database, dropped when this goes away.
struct BenchDb {
    name: String,
}

impl BenchDb {
    async fn create() -> (BenchDb, PgConnectOptions) {
        let name = format!("cqrs_bench_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect_with(&admin_options())
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the bench database");
        admin.close().await.ok();
        let options = admin_options().database(&name);
        (BenchDb { name }, options)
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    if let Ok(mut admin) = PgConnection::connect_with(&admin_options()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut admin)
                                .await;
                    }
                });
        })
        .join();
    }
}

// ---------------------------------------------------------------- commands/s

// Counts here stay far below 2^52, where `f64` starts to round integers.
#[allow(clippy::cast_precision_loss)]
fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Runs `clients` loops for `seconds`; each returns how many commands it completed.
async fn throughput<F, Fut>(clients: usize, seconds: u64, client: F) -> f64
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(c, deadline)))
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("client");
    }
    per_second(done, started.elapsed())
}

async fn framework(store: PostgresEventStore, label: &str, clients: usize, seconds: u64) -> f64 {
    let bus = CommandBus::builder(store).aggregate::<Account>(()).build();
    let run = Uuid::now_v7().simple().to_string();
    let label = label.to_owned();
    throughput(clients, seconds, move |client, deadline| {
        let bus = bus.clone();
        let account = format!("{label}-{run}-{client}");
        async move {
            let mut done = 0;
            while Instant::now() < deadline {
                bus.execute(Deposit {
                    account: account.clone(),
                    amount: 1,
                })
                .await
                .expect("command");
                done += 1;
            }
            done
        }
    })
    .await
}

/// The same work written directly against sqlx: per command, in one transaction, read the
/// stream's new events (after the version this client has folded, as the framework's cached
/// repository does), fold them, decide, serialize the event and its metadata, and insert it
/// with the next version (the unique `(stream_id, stream_version)` key is the version check).
async fn hand_written(pool: PgPool, clients: usize, seconds: u64) -> f64 {
    let run = Uuid::now_v7().simple().to_string();
    throughput(clients, seconds, move |client, deadline| {
        let pool = pool.clone();
        let stream = format!("Account-hand-{run}-{client}");
        async move {
            let mut done = 0;
            let mut state = Account::default();
            let mut version = 0_i64;
            while Instant::now() < deadline {
                let mut tx = pool.begin().await.expect("begin");
                let rows = sqlx::query(
                    "SELECT stream_version, event_type, payload FROM cqrs_events
                     WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version",
                )
                .bind(&stream)
                .bind(version)
                .fetch_all(&mut *tx)
                .await
                .expect("load");
                for row in &rows {
                    let event_type: String = row.get(1);
                    let payload: Value = row.get(2);
                    if event_type == bank::DEPOSITED {
                        let deposited: Deposited = serde_json::from_value(payload).expect("decode");
                        state.balance += deposited.amount;
                        state.deposits += 1;
                    } else {
                        let _: Opened = serde_json::from_value(payload).expect("decode");
                        state.open = true;
                    }
                    version = row.get(0);
                }
                // The decision the aggregate makes: a deposit needs an open account's state.
                let event = Deposited { amount: 1 };
                assert!(state.balance < u64::MAX - event.amount);
                let metadata = Metadata::default()
                    .with_correlation_id(Uuid::now_v7())
                    .with_causation_id(Uuid::now_v7());
                sqlx::query(
                    "INSERT INTO cqrs_events (stream_id, stream_version, event_id, event_type,
                                              schema_version, payload, metadata)
                     VALUES ($1, $2, $3, $4, 1, $5, $6)",
                )
                .bind(&stream)
                .bind(version + 1)
                .bind(Uuid::now_v7())
                .bind(bank::DEPOSITED)
                .bind(serde_json::to_value(&event).expect("serialize"))
                .bind(serde_json::to_value(&metadata).expect("serialize"))
                .execute(&mut *tx)
                .await
                .expect("insert");
                tx.commit().await.expect("commit");
                version += 1;
                state.balance += event.amount;
                state.deposits += 1;
                done += 1;
            }
            done
        }
    })
    .await
}

const VARIANTS: [&str; 4] = [
    "hand-written sqlx",
    "framework, notify in transaction",
    "framework, notify after commit (default)",
    "framework, no notify",
];

async fn run_variant(
    variant: usize,
    pool: &PgPool,
    store: &PostgresEventStore,
    clients: usize,
    seconds: u64,
) -> f64 {
    match variant {
        0 => hand_written(pool.clone(), clients, seconds).await,
        1 => {
            let store = store.clone().with_notify(NotifyMode::InTransaction);
            framework(store, "tx", clients, seconds).await
        }
        2 => {
            let store = store.clone().with_notify(NotifyMode::AfterCommit);
            framework(store, "after", clients, seconds).await
        }
        _ => {
            let store = store.clone().with_notify(NotifyMode::Off);
            framework(store, "off", clients, seconds).await
        }
    }
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Each variant runs `rounds` times for `seconds`, the variants taking turns (in a rotating
/// order) so that a slow spell of the machine does not land on one of them; medians count.
async fn commands(pool: &PgPool, store: &PostgresEventStore) {
    let seconds: u64 = env_or("BENCH_SECONDS", 3);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let clients: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    // Indexes into `VARIANTS`; running one alone is how to measure its process CPU per
    // command (`perf stat`).
    let selected: Vec<usize> = std::env::var("BENCH_VARIANTS")
        .unwrap_or_else(|_| "0,1,2,3".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    println!("## commands/s (median of {rounds} runs of {seconds} s, variants taking turns)\n");
    println!(
        "| clients | {} | {} | ratio | {} | ratio | {} | ratio |",
        VARIANTS[0], VARIANTS[1], VARIANTS[2], VARIANTS[3]
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &clients {
        let mut runs = vec![Vec::new(); VARIANTS.len()];
        for round in 0..rounds {
            for turn in 0..VARIANTS.len() {
                let variant = (round + turn) % VARIANTS.len();
                if selected.contains(&variant) {
                    runs[variant].push(run_variant(variant, pool, store, n, seconds).await);
                }
            }
        }
        let rates: Vec<Option<f64>> = runs
            .into_iter()
            .map(|runs| (!runs.is_empty()).then(|| median(runs)))
            .collect();
        let cell = |rate: Option<f64>| rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"));
        let ratio = |rate: Option<f64>| match (rate, rates[0]) {
            (Some(rate), Some(hand)) => format!("{:.2}", rate / hand),
            _ => "-".to_owned(),
        };
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} |",
            cell(rates[0]),
            cell(rates[1]),
            ratio(rates[1]),
            cell(rates[2]),
            ratio(rates[2]),
            cell(rates[3]),
            ratio(rates[3]),
        );
    }
    println!();
}

// ---------------------------------------------------------------- loading an aggregate

async fn seed_history(store: &PostgresEventStore, stream: &str, events: u64) -> Account {
    let mut state = Account::default();
    let mut version = 0;
    let mut batch = Vec::new();
    let mut pending: Vec<BankEvent> = Vec::new();
    for n in 0..events {
        let event = if n == 0 {
            BankEvent::Opened(Opened {
                owner: stream.to_owned(),
            })
        } else {
            BankEvent::Deposited(Deposited { amount: 1 })
        };
        batch.push(NewEvent::from_event(&event, Metadata::default()).expect("serialize"));
        pending.push(event);
        if batch.len() == 1000 || n + 1 == events {
            let appended = store
                .append(
                    stream,
                    ExpectedVersion::Exact(version),
                    std::mem::take(&mut batch),
                )
                .await
                .expect("seed");
            version = appended.stream_version;
            for event in pending.drain(..) {
                cqrs_core::Aggregate::apply(&mut state, &event);
            }
        }
    }
    state
}

async fn loads(store: &PostgresEventStore) {
    let history: u64 = env_or("BENCH_HISTORY", 100_000);
    let repetitions: u32 = env_or("BENCH_LOADS", 5);
    let repository = Repository::<Account>::new(
        Arc::new(store.clone()),
        (),
        RepositoryOptions {
            snapshot_every: None,
            cache_capacity: 0,
        },
    );
    println!("## loading one aggregate through the repository (mean of {repetitions})\n");
    println!("| events in the stream | without a snapshot | with a snapshot at the head |");
    println!("|---:|---:|---:|");
    for events in [10, history] {
        let plain = format!("Account-load-{events}-plain");
        let snapped = format!("Account-load-{events}-snapshot");
        let state = seed_history(store, &plain, events).await;
        seed_history(store, &snapped, events).await;
        store
            .save_snapshot(Snapshot {
                stream_id: snapped.clone(),
                stream_version: events,
                schema_version: 2,
                state: serde_json::to_value(&state).expect("state"),
            })
            .await
            .expect("snapshot");
        let mut times = Vec::new();
        for stream in [&plain, &snapped] {
            let started = Instant::now();
            for _ in 0..repetitions {
                let loaded = repository.load(stream).await.expect("load");
                assert_eq!((loaded.version, &loaded.state), (events, &state));
            }
            times.push(started.elapsed() / repetitions);
        }
        println!("| {events} | {:.2?} | {:.2?} |", times[0], times[1]);
    }
    println!();
}

// ---------------------------------------------------------------- catch-up

/// The plain scan that is *not* gap-safe, decoded the same way, for comparison.
const PLAIN_SCAN: &str = "\
SELECT position, stream_id, stream_version, event_id, event_type, schema_version,
       payload, metadata, recorded_at
FROM cqrs_events WHERE position > $1 ORDER BY position LIMIT $2";

fn decode(row: &PgRow) -> RecordedEvent {
    let metadata: Value = row.get(7);
    RecordedEvent {
        position: GlobalPosition(u64::try_from(row.get::<i64, _>(0)).expect("position")),
        stream_id: row.get(1),
        stream_version: u64::try_from(row.get::<i64, _>(2)).expect("version"),
        event_id: row.get(3),
        event_type: row.get(4),
        schema_version: u32::try_from(row.get::<i32, _>(5)).expect("schema version"),
        payload: row.get::<Value, _>(6).into(),
        metadata: serde_json::from_value(metadata).expect("metadata"),
        recorded_at: row.get(8),
    }
}

async fn catch_up(pool: &PgPool, store: &PostgresEventStore) {
    let page = 1000;
    let started = Instant::now();
    let mut after = GlobalPosition::START;
    let mut read = 0_usize;
    loop {
        let events = store.read_all_from(after, page).await.expect("read");
        let Some(last) = events.last() else { break };
        after = last.position;
        read += events.len();
    }
    let ordered = per_second(read as u64, started.elapsed());

    let started = Instant::now();
    let mut after = 0_i64;
    let mut plain = 0_usize;
    loop {
        let rows = sqlx::query(PLAIN_SCAN)
            .bind(after)
            .bind(i64::try_from(page).expect("page"))
            .fetch_all(pool)
            .await
            .expect("scan");
        let events: Vec<RecordedEvent> = rows.iter().map(decode).collect();
        let Some(last) = events.last() else { break };
        after = i64::try_from(last.position.0).expect("position");
        plain += events.len();
    }
    let scan = per_second(plain as u64, started.elapsed());
    assert_eq!(read, plain, "both reads see every event");
    println!("## catch-up: reading all {read} events, {page} per page\n");
    println!("| read | events/s |");
    println!("|---|---:|");
    println!("| `read_all_from`: (tx, position) order below the settled horizon | {ordered:.0} |");
    println!("| plain `position > $1` scan (not gap-safe), same decoding | {scan:.0} |");
    println!("| ratio | {:.2} |", ordered / scan);
    println!();
}

/// The machine's 1-minute load average, when the OS tells it: other work skews the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this binary ignores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (db, options) = BenchDb::create().await;
        // sqlx pings every connection it hands out unless told not to; `BENCH_PING=0` turns
        // that off for both the framework and the hand-written loop.
        let ping = env_or("BENCH_PING", 1) != 0;
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .test_before_acquire(ping)
            .connect_with(options)
            .await
            .expect("connect");
        PostgresEventStore::migrate(&pool).await.expect("migrate");
        let store = PostgresEventStore::new(pool.clone());
        let server: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .expect("version");
        println!(
            "PostgreSQL {server}, {} cores, load average at the start: {}, \
             pool test_before_acquire: {ping}\n",
            std::thread::available_parallelism().map_or(0, usize::from),
            load_average()
        );
        let parts: String = env_or("BENCH_PARTS", "commands,loads,catch-up".to_owned());
        if parts.contains("commands") {
            commands(&pool, &store).await;
        }
        if parts.contains("loads") {
            loads(&store).await;
        }
        if parts.contains("catch-up") {
            catch_up(&pool, &store).await;
        }
        println!("load average at the end: {}", load_average());
        pool.close().await;
        drop(db);
    });
}

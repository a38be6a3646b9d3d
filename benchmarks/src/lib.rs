//! The comparison benchmarks published in `BENCHMARKS.md`: this framework, with the settings
//! a user gets by default, against baselines doing exactly the same work — hand-written sqlx
//! loops and the cqrs-es + postgres-es framework — measured in one run.
//!
//! ```text
//! cargo bench -p cqrs-benchmarks --bench compare
//! BENCH_PARTS=a,h cargo bench -p cqrs-benchmarks --bench compare
//! ```
//!
//! | part | workload |
//! |---|---|
//! | `a` | deposits on many accounts at several client counts: ours, two hand-written loops, cqrs-es |
//! | `b` | one hot account, one client: ours, hand-written with state in memory, hand-written replaying |
//! | `c` | loading an aggregate of many events without a snapshot: `Repository::load`, hand-written |
//! | `d` | batches appended by many clients on distinct streams: `EventStore::append`, one multi-row INSERT |
//! | `e` | catching up with the log: `read_all_from`, a plain keyset scan |
//! | `f` | WAL bytes per event: ours, the hand-written one-INSERT loop |
//! | `g` | one-event commands on many accounts through our store: group commit, one transaction per command |
//! | `h` | in memory: `CommandBus::execute` against the same work called directly; `Uuid::now_v7()` |
//!
//! Each Postgres part creates a database of its own on `DATABASE_URL` (default
//! [`db::DEFAULT_URL`]) and drops it. Every figure is the median of `BENCH_ROUNDS` rounds with
//! its range; the variants of a row take turns within each round, in a rotating order, and
//! the ratios come from the same run. The sizes are read from environment variables: see
//! [`Settings::from_env`].

// A benchmark stops at the first failure it meets: its functions panic rather than return
// errors, and saying so on each would only repeat this.
#![allow(clippy::missing_panics_doc)]

pub mod db;
pub mod domain;
pub mod hand;
pub mod measure;
pub mod parts;

use measure::{env_list, env_or};

/// Sizes and choices of one run, from environment variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The parts to run, as letters (`BENCH_PARTS`, default `a,b,c,d,e,f,g,h`).
    pub parts: Vec<char>,
    /// Rounds per variant (`BENCH_ROUNDS`, default 3).
    pub rounds: usize,
    /// Seconds per timed round (`BENCH_SECONDS`, default 5).
    pub seconds: f64,
    /// Connections in the pool (`BENCH_POOL`, default 10).
    pub pool: u32,
    /// a: accounts (`BENCH_ACCOUNTS`, default 1000).
    pub accounts: u64,
    /// a: client tasks, one row each (`BENCH_CLIENTS`, default `1,8,32`).
    pub clients: Vec<usize>,
    /// c: events in the loaded aggregate (`BENCH_LOAD_EVENTS`, default 1000).
    pub load_events: u64,
    /// c: loads per round (`BENCH_LOADS`, default 50).
    pub loads: u64,
    /// d: client tasks (`BENCH_APPEND_CLIENTS`, default 32).
    pub append_clients: usize,
    /// d: events per append (`BENCH_BATCH`, default 10).
    pub batch: u64,
    /// e: events in the log (`BENCH_CATCH_UP_EVENTS`, default 100000).
    pub catch_up_events: u64,
    /// e: events per page (`BENCH_PAGE`, default 1000).
    pub page: usize,
    /// f: commands per round (`BENCH_WAL_COMMANDS`, default 500).
    pub wal_commands: u64,
    /// g: client tasks, one row each (`BENCH_GROUP_CLIENTS`, default `1,8,32`).
    pub group_clients: Vec<usize>,
    /// d, g: batches in flight under group commit (`BENCH_GROUP_WRITERS`, default the
    /// store's default); 0 keeps the default.
    pub group_writers: usize,
    /// h: commands per round (`BENCH_MEMORY_COMMANDS`, default 200000).
    pub memory_commands: u64,
}

impl Settings {
    /// Reads the settings from the environment, with the defaults above (a whole run takes
    /// about five minutes on two cores).
    pub fn from_env() -> Settings {
        let parts: String = env_or("BENCH_PARTS", "a,b,c,d,e,f,g,h".to_owned());
        Settings {
            parts: parts
                .split(',')
                .filter_map(|p| p.trim().chars().next())
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            rounds: env_or("BENCH_ROUNDS", 3_usize).max(1),
            seconds: env_or("BENCH_SECONDS", 5.0),
            pool: env_or("BENCH_POOL", 10),
            accounts: env_or("BENCH_ACCOUNTS", 1000_u64).max(1),
            clients: env_list("BENCH_CLIENTS", &[1, 8, 32]),
            load_events: env_or("BENCH_LOAD_EVENTS", 1000_u64).max(1),
            loads: env_or("BENCH_LOADS", 50_u64).max(1),
            append_clients: env_or("BENCH_APPEND_CLIENTS", 32),
            batch: env_or("BENCH_BATCH", 10_u64).max(1),
            catch_up_events: env_or("BENCH_CATCH_UP_EVENTS", 100_000),
            page: env_or("BENCH_PAGE", 1000_usize).max(1),
            wal_commands: env_or("BENCH_WAL_COMMANDS", 500_u64).max(1),
            group_clients: env_list("BENCH_GROUP_CLIENTS", &[1, 8, 32]),
            group_writers: env_or("BENCH_GROUP_WRITERS", 0),
            memory_commands: env_or("BENCH_MEMORY_COMMANDS", 200_000_u64).max(1),
        }
    }

    /// The group-commit options of parts d and g.
    pub fn group_commit(&self) -> cqrs_postgres::GroupCommit {
        let options = cqrs_postgres::GroupCommit::new();
        if self.group_writers == 0 {
            options
        } else {
            options.writers(self.group_writers)
        }
    }

    fn runs(&self, part: char) -> bool {
        self.parts.contains(&part)
    }
}

/// The parts this benchmark has, by letter.
pub const KNOWN_PARTS: &str = "abcdefgh";

/// The machine's 1-minute load average, when the OS tells it: other work skews the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// What the server is and how it commits, for the header.
async fn server() -> String {
    let db = db::BenchDb::create(1).await;
    let mut facts = Vec::new();
    for setting in ["server_version", "fsync", "synchronous_commit"] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&db.pool)
            .await
            .expect("read a server setting");
        facts.push(format!("{setting} {value}"));
    }
    db.drop_now().await;
    facts.join(", ")
}

/// Counters the bench binary reads for part h; a library cannot install them itself.
#[derive(Debug, Clone, Copy)]
pub struct Probes {
    /// Allocations made by the process so far (a counting global allocator).
    pub allocations: fn() -> u64,
    /// Nanoseconds the calling thread has spent on a CPU (`CLOCK_THREAD_CPUTIME_ID`):
    /// unlike wall time it leaves out the time other processes had the CPU, which on a
    /// shared machine is most of the noise.
    pub thread_cpu_nanos: fn() -> u64,
}

/// Runs the parts `BENCH_PARTS` selects and prints their tables as Markdown. Without
/// `probes`, part h leaves its allocation and CPU-time columns empty.
pub fn main(probes: Option<Probes>) {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let unknown: String = settings
            .parts
            .iter()
            .filter(|p| !KNOWN_PARTS.contains(**p))
            .collect();
        if !unknown.is_empty() {
            eprintln!("BENCH_PARTS: no such part: {unknown} (known: {KNOWN_PARTS})");
        }
        let needs_server = settings.parts.iter().any(|p| "abcdefg".contains(*p));
        let server = if needs_server {
            server().await
        } else {
            "not used".to_owned()
        };
        println!(
            "# cqrs comparison benchmarks\n\n\
             PostgreSQL: {server}; {} cores; load average at the start {}.\n\n\
             Settings: {settings:?}\n",
            std::thread::available_parallelism().map_or(0, usize::from),
            load_average(),
        );
        if settings.runs('a') {
            parts::commands::run(&settings).await;
        }
        if settings.runs('b') {
            parts::hot::run(&settings).await;
        }
        if settings.runs('c') {
            parts::load::run(&settings).await;
        }
        if settings.runs('d') {
            parts::append::run(&settings).await;
        }
        if settings.runs('e') {
            parts::catch_up::run(&settings).await;
        }
        if settings.runs('f') {
            parts::wal::run(&settings).await;
        }
        if settings.runs('g') {
            parts::group::run(&settings).await;
        }
        if settings.runs('h') {
            parts::memory::run(&settings, probes).await;
        }
        println!("Load average at the end: {}.", load_average());
    });
}

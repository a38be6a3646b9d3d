//! Part h: what the command bus itself costs, on the in-memory store.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::{
    CommandBus, CommandContext, InMemoryEventStore, Metadata, Repository, RepositoryOptions,
};
use uuid::Uuid;

use crate::domain::{Account, Bus, Deposit, OpenAccount};
use crate::measure::{Summary, cell, nanos_each, table, turns};
use crate::{Probes, Settings};

const BUS: usize = 0;
const DIRECT: usize = 1;

/// Commands a variant runs before the other takes its turn.
const CHUNK: u64 = 1000;

/// The account every command of this part deposits into.
const ACCOUNT: u64 = 1;

/// Part h. Without `probes` the allocation and CPU-time columns stay empty.
pub async fn run(settings: &Settings, probes: Option<Probes>) {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(())
        .build();
    let repository = Repository::<Account>::new(
        Arc::new(InMemoryEventStore::new()),
        (),
        RepositoryOptions::default(),
    );
    let open = OpenAccount {
        account: ACCOUNT,
        owner: "memory".to_owned(),
    };
    bus.execute(open.clone()).await.expect("open");
    let ctx = CommandContext::for_command(&open, Metadata::default());
    repository
        .execute(&open, &ctx, 0, false)
        .await
        .expect("open");

    let measured = measure(settings, probes, &bus, &repository).await;
    let id_nanos = id_cost(settings.memory_commands * 10, settings.rounds, probes);
    print(settings, probes.is_some(), &measured, &id_nanos);
}

/// What part h measured, a value per round in each list.
struct Measured {
    /// ns per command of each variant.
    nanos: [Vec<f64>; 2],
    /// On-CPU ns per command of each variant (empty where the OS does not tell).
    cpu: [Vec<f64>; 2],
    /// Allocations per command of each variant.
    allocs: [Vec<f64>; 2],
    /// ns the bus adds per command: the median, over the round's chunks, of the bus's time
    /// minus the direct call's in the same chunk.
    added_nanos: Vec<f64>,
    /// The same for on-CPU time.
    added_cpu: Vec<f64>,
    /// Allocations the bus adds per command.
    added_allocs: Vec<f64>,
}

/// What one chunk of commands cost.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: Duration,
    cpu: Option<u64>,
    allocations: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.wall += other.wall;
        self.cpu = self.cpu.zip(other.cpu).map(|(a, b)| a + b);
        self.allocations += other.allocations;
    }
}

/// Runs `CHUNK` commands of `variant`.
async fn chunk(
    variant: usize,
    bus: &Bus,
    repository: &Repository<Account>,
    probes: Option<Probes>,
) -> Cost {
    let allocated = probes.map(|p| (p.allocations)());
    let cpu = probes.map(|p| (p.thread_cpu_nanos)());
    let started = Instant::now();
    for _ in 0..CHUNK {
        let command = Deposit {
            account: ACCOUNT,
            amount: 1,
        };
        if variant == BUS {
            black_box(bus.execute(command).await.expect("deposit"));
        } else {
            // What the bus does for a command without middleware: a fresh context (command
            // id, stream id, metadata, time), then the repository.
            let ctx = CommandContext::for_command(&command, Metadata::default());
            black_box(
                repository
                    .execute(&command, &ctx, 0, false)
                    .await
                    .expect("deposit"),
            );
        }
    }
    let wall = started.elapsed();
    let cpu = cpu
        .zip(probes)
        .map(|(start, p)| (p.thread_cpu_nanos)() - start);
    let allocations = allocated
        .zip(probes)
        .map_or(0, |(start, p)| (p.allocations)() - start);
    Cost {
        wall,
        cpu,
        allocations,
    }
}

// Counts here stay far below 2^52, where `f64` starts to round integers.
#[allow(clippy::cast_precision_loss)]
async fn measure(
    settings: &Settings,
    probes: Option<Probes>,
    bus: &Bus,
    repository: &Repository<Account>,
) -> Measured {
    let chunks = settings.memory_commands.div_ceil(CHUNK);
    let commands = chunks * CHUNK;
    let mut measured = Measured {
        nanos: [Vec::new(), Vec::new()],
        cpu: [Vec::new(), Vec::new()],
        allocs: [Vec::new(), Vec::new()],
        added_nanos: Vec::new(),
        added_cpu: Vec::new(),
        added_allocs: Vec::new(),
    };
    let per_command = |nanos: f64| nanos / CHUNK as f64;
    // The first round warms up (the state cache, the stores' vectors) and is not kept.
    for round in 0..=settings.rounds {
        // The variants alternate every `CHUNK` commands, so a slow spell hits both.
        let mut spent = [Cost {
            cpu: Some(0),
            ..Cost::default()
        }; 2];
        let mut added_wall = Vec::new();
        let mut added_cpu = Vec::new();
        for _ in 0..chunks {
            let mut this = [Cost::default(); 2];
            for variant in turns(round, 2) {
                this[variant] = chunk(variant, bus, repository, probes).await;
                spent[variant] += this[variant];
            }
            added_wall.push(per_command(
                this[BUS].wall.as_nanos() as f64 - this[DIRECT].wall.as_nanos() as f64,
            ));
            if let (Some(bus), Some(direct)) = (this[BUS].cpu, this[DIRECT].cpu) {
                added_cpu.push(per_command(bus as f64 - direct as f64));
            }
        }
        if round == 0 {
            continue;
        }
        for (variant, cost) in spent.into_iter().enumerate() {
            measured.nanos[variant].push(nanos_each(cost.wall, commands));
            if let Some(cpu) = cost.cpu {
                measured.cpu[variant].push(cpu as f64 / commands as f64);
            }
            measured.allocs[variant].push(cost.allocations as f64 / commands as f64);
        }
        let median = |values: &[f64]| Summary::of(values).map(|s| s.median);
        measured.added_nanos.extend(median(&added_wall));
        measured.added_cpu.extend(median(&added_cpu));
        measured.added_allocs.push(
            (spent[BUS].allocations as f64 - spent[DIRECT].allocations as f64) / commands as f64,
        );
    }
    measured
}

/// ns per `Uuid::now_v7()` over `ids` calls, wall and on-CPU, for each of `rounds` rounds.
// Counts here stay far below 2^52, where `f64` starts to round integers.
#[allow(clippy::cast_precision_loss)]
fn id_cost(ids: u64, rounds: usize, probes: Option<Probes>) -> (Vec<f64>, Vec<f64>) {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..rounds {
        let cpu_start = probes.map(|p| (p.thread_cpu_nanos)());
        let started = Instant::now();
        for _ in 0..ids {
            black_box(Uuid::now_v7());
        }
        wall.push(nanos_each(started.elapsed(), ids));
        if let Some((start, p)) = cpu_start.zip(probes) {
            cpu.push(((p.thread_cpu_nanos)() - start) as f64 / ids as f64);
        }
    }
    (wall, cpu)
}

fn print(settings: &Settings, counted: bool, measured: &Measured, id_nanos: &(Vec<f64>, Vec<f64>)) {
    let commands = settings.memory_commands.div_ceil(CHUNK) * CHUNK;
    let ids = settings.memory_commands * 10;
    let n: Vec<Option<Summary>> = measured.nanos.iter().map(|v| Summary::of(v)).collect();
    let c: Vec<Option<Summary>> = measured.cpu.iter().map(|v| Summary::of(v)).collect();
    let a: Vec<Option<Summary>> = measured.allocs.iter().map(|v| Summary::of(v)).collect();
    let alloc_cell = |s: Option<Summary>| {
        if counted { cell(s, 2) } else { "-".to_owned() }
    };
    println!(
        "## h. In memory: the bus against the same work called directly \
         (median (min–max) of {} rounds of {commands} commands on one account, the variants \
         alternating every {CHUNK} commands)\n",
        settings.rounds
    );
    table(
        &[
            "variant",
            "ns/command",
            "on-CPU ns/command",
            "allocations/command",
        ],
        1,
        &[
            vec![
                "ours: `CommandBus::execute` on `InMemoryEventStore`".to_owned(),
                cell(n[BUS], 0),
                cell(c[BUS], 0),
                alloc_cell(a[BUS]),
            ],
            vec![
                "direct: `CommandContext::for_command` (fresh per command) + \
                 `Repository::execute`"
                    .to_owned(),
                cell(n[DIRECT], 0),
                cell(c[DIRECT], 0),
                alloc_cell(a[DIRECT]),
            ],
            vec![
                format!(
                    "what the bus adds (per round, the median over its {CHUNK}-command chunks \
                     of bus minus direct)"
                ),
                cell(Summary::of(&measured.added_nanos), 0),
                cell(Summary::of(&measured.added_cpu), 0),
                alloc_cell(Summary::of(&measured.added_allocs)),
            ],
            vec![
                format!("`Uuid::now_v7()` alone ({ids} per round)"),
                cell(Summary::of(&id_nanos.0), 1),
                cell(Summary::of(&id_nanos.1), 1),
                "-".to_owned(),
            ],
        ],
    );
}

//! Part h: what the command bus itself costs, on the in-memory store.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use cqrs_core::{
    CommandBus, CommandContext, InMemoryEventStore, Metadata, Repository, RepositoryOptions,
};
use uuid::Uuid;

use crate::Settings;
use crate::domain::{Account, Bus, Deposit, OpenAccount};
use crate::measure::{Summary, cell, nanos_each, table, turns};

const BUS: usize = 0;
const DIRECT: usize = 1;

/// Part h. `allocations` reads the process's allocation count (the bench binary's counting
/// allocator); without it the allocation columns stay empty.
pub async fn run(settings: &Settings, allocations: Option<fn() -> u64>) {
    let account = 1;
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(())
        .build();
    let repository = Repository::<Account>::new(
        Arc::new(InMemoryEventStore::new()),
        (),
        RepositoryOptions::default(),
    );
    let open = OpenAccount {
        account,
        owner: "memory".to_owned(),
    };
    bus.execute(open.clone()).await.expect("open");
    let ctx = CommandContext::for_command(&open, Metadata::default());
    repository
        .execute(&open, &ctx, 0, false)
        .await
        .expect("open");

    let (nanos, allocs) = measure(settings, allocations, &bus, &repository).await;
    let id_nanos = id_cost(settings.memory_commands * 10, settings.rounds);
    print(settings, allocations.is_some(), &nanos, &allocs, &id_nanos);
}

/// ns per command and allocations per command of each variant, a list of rounds each.
async fn measure(
    settings: &Settings,
    allocations: Option<fn() -> u64>,
    bus: &Bus,
    repository: &Repository<Account>,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let account = 1;
    let commands = settings.memory_commands;
    let count = || allocations.map_or(0, |read| read());
    let mut nanos = vec![Vec::new(); 2];
    let mut allocs = vec![Vec::new(); 2];
    // The first round warms up (the state cache, the stores' vectors) and is not kept.
    for round in 0..=settings.rounds {
        for variant in turns(round, 2) {
            let allocated = count();
            let started = Instant::now();
            for _ in 0..commands {
                let command = Deposit { account, amount: 1 };
                if variant == BUS {
                    black_box(bus.execute(command).await.expect("deposit"));
                } else {
                    // What the bus does for a command without middleware: a fresh context
                    // (command id, stream id, metadata, time), then the repository.
                    let ctx = CommandContext::for_command(&command, Metadata::default());
                    black_box(
                        repository
                            .execute(&command, &ctx, 0, false)
                            .await
                            .expect("deposit"),
                    );
                }
            }
            let elapsed = started.elapsed();
            let allocated = count() - allocated;
            if round > 0 {
                nanos[variant].push(nanos_each(elapsed, commands));
                // Counts here stay far below 2^52, where `f64` starts to round integers.
                #[allow(clippy::cast_precision_loss)]
                allocs[variant].push(allocated as f64 / commands as f64);
            }
        }
    }

    (nanos, allocs)
}

/// ns per `Uuid::now_v7()`, over `ids` calls, for each of `rounds` rounds.
fn id_cost(ids: u64, rounds: usize) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ids {
                black_box(Uuid::now_v7());
            }
            nanos_each(started.elapsed(), ids)
        })
        .collect()
}

fn print(
    settings: &Settings,
    counted: bool,
    nanos: &[Vec<f64>],
    allocs: &[Vec<f64>],
    id_nanos: &[f64],
) {
    let commands = settings.memory_commands;
    let ids = commands * 10;
    let n: Vec<Option<Summary>> = nanos.iter().map(|v| Summary::of(v)).collect();
    let a: Vec<Option<Summary>> = allocs.iter().map(|v| Summary::of(v)).collect();
    let alloc_cell = |s: Option<Summary>| {
        if counted { cell(s, 2) } else { "-".to_owned() }
    };
    let difference = |of: &[Option<Summary>], decimals: usize| match (of[BUS], of[DIRECT]) {
        (Some(bus), Some(direct)) => format!("{:+.decimals$}", bus.median - direct.median),
        _ => "-".to_owned(),
    };
    println!(
        "## h. In memory: the bus against the same work called directly \
         (median (min–max) of {} rounds of {commands} commands on one account)\n",
        settings.rounds
    );
    table(
        &["variant", "ns/command", "allocations/command"],
        1,
        &[
            vec![
                "ours: `CommandBus::execute` on `InMemoryEventStore`".to_owned(),
                cell(n[BUS], 0),
                alloc_cell(a[BUS]),
            ],
            vec![
                "direct: `CommandContext::for_command` (fresh per command) + \
                 `Repository::execute`"
                    .to_owned(),
                cell(n[DIRECT], 0),
                alloc_cell(a[DIRECT]),
            ],
            vec![
                "what the bus adds (difference of medians)".to_owned(),
                difference(&n, 0),
                if counted {
                    difference(&a, 2)
                } else {
                    "-".to_owned()
                },
            ],
            vec![
                format!("`Uuid::now_v7()` alone ({ids} per round)"),
                cell(Summary::of(id_nanos), 1),
                "-".to_owned(),
            ],
        ],
    );
}

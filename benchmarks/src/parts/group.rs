//! Part g: one-event commands on many accounts through our store, with group commit and
//! with one transaction per command.

use std::time::Instant;

use cqrs_core::CommandBus;
use cqrs_postgres::{GroupCommit, PostgresEventStore};
use sqlx::PgPool;

use crate::Settings;
use crate::db::BenchDb;
use crate::domain::{Account, Bus, Deposit, OpenAccount};
use crate::measure::{SplitMix, Summary, cell, ratio, table, throughput, turns};

const GROUPED: usize = 0;
const ALONE: usize = 1;

/// A bus on a store with or without group commit, with `accounts` accounts of its own
/// (numbered from `first`) opened.
async fn bus_with_accounts(
    pool: &PgPool,
    grouped: Option<GroupCommit>,
    first: u64,
    accounts: u64,
) -> Bus {
    let store = PostgresEventStore::new(pool.clone());
    let store = match grouped {
        Some(options) => store.with_group_commit(options),
        None => store.without_group_commit(),
    };
    let bus = CommandBus::builder(store).aggregate::<Account>(()).build();
    let openers: Vec<_> = (0..8)
        .map(|task| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for account in (first + task..first + accounts).step_by(8) {
                    bus.execute(OpenAccount {
                        account,
                        owner: format!("owner {account}"),
                    })
                    .await
                    .expect("open");
                }
            })
        })
        .collect();
    for opener in openers {
        opener.await.expect("open accounts");
    }
    bus
}

/// Part g.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    let accounts = settings.accounts;
    let buses = [
        bus_with_accounts(&db.pool, Some(settings.group_commit()), 0, accounts).await,
        bus_with_accounts(&db.pool, None, accounts, accounts).await,
    ];
    println!(
        "## g. Group commit: one-event commands on {accounts} accounts through our store, \
         commands/s (median (min–max) of {} rounds of {} s, pool of {} connections; {:?})\n",
        settings.rounds,
        settings.seconds,
        settings.pool,
        settings.group_commit()
    );
    let mut rows = Vec::new();
    for &clients in &settings.group_clients {
        let mut rates = vec![Vec::new(); 2];
        for round in 0..settings.rounds {
            for variant in turns(round, 2) {
                let first = if variant == GROUPED { 0 } else { accounts };
                let rate = throughput(clients, settings.seconds, |client, deadline| {
                    let bus = buses[variant].clone();
                    async move {
                        let mut rng = SplitMix::new(round, client);
                        let mut done = 0;
                        while Instant::now() < deadline {
                            let account = first + rng.below(accounts);
                            bus.execute(Deposit { account, amount: 1 })
                                .await
                                .expect("deposit");
                            done += 1;
                        }
                        done
                    }
                })
                .await;
                rates[variant].push(rate);
            }
        }
        let s: Vec<Option<Summary>> = rates.iter().map(|r| Summary::of(r)).collect();
        rows.push(vec![
            clients.to_string(),
            cell(s[GROUPED], 0),
            cell(s[ALONE], 0),
            ratio(s[GROUPED], s[ALONE]),
        ]);
    }
    table(
        &[
            "clients",
            "group commit: `CommandBus` on `PostgresEventStore` (the default)",
            "one transaction per command: `CommandBus` on `PostgresEventStore::without_group_commit`",
            "group / one per command",
        ],
        1,
        &rows,
    );
    db.drop_now().await;
}

//! Part f: write-ahead log written per event.

use cqrs_core::CommandBus;
use cqrs_postgres::PostgresEventStore;
use sqlx::PgPool;

use crate::Settings;
use crate::db::BenchDb;
use crate::domain::{Account, Bus, DEPOSITED, Deposit, OPENED, OpenAccount, stream_of};
use crate::hand::{self, Folded};
use crate::measure::{Summary, cell, ratio, table, turns};

const OURS: usize = 0;
const HAND: usize = 1;

/// The accounts each variant deposits into, in turn; the hand-written loop's are numbered
/// after ours.
const ACCOUNTS: u64 = 100;

async fn wal_lsn(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .expect("read the WAL position")
}

async fn wal_bytes_since(pool: &PgPool, before: &str) -> f64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
        .bind(before)
        .fetch_one(pool)
        .await
        .expect("measure the WAL written")
}

/// `commands` one-event deposits through the bus.
async fn ours(bus: &Bus, commands: u64) {
    for n in 0..commands {
        bus.execute(Deposit {
            account: n % ACCOUNTS,
            amount: 1,
        })
        .await
        .expect("deposit");
    }
}

/// `commands` one-event deposits, each one INSERT with the state in memory.
async fn hand_written(pool: &PgPool, folded: &mut [Folded], commands: u64) {
    for n in 0..commands {
        let index = n % ACCOUNTS;
        let account = ACCOUNTS + index;
        let folded = &mut folded[usize::try_from(index).expect("index")];
        let event = folded
            .state
            .deposit(&Deposit { account, amount: 1 })
            .expect("deposit");
        let metadata = hand::command_metadata();
        hand::insert_one(
            pool,
            &stream_of(account),
            folded.version + 1,
            DEPOSITED,
            &event,
            &metadata,
        )
        .await
        .expect("insert");
        folded.state.on_deposited(&event);
        folded.version += 1;
    }
}

/// Part f.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    let pool = db.pool.clone();
    let bus = CommandBus::builder(PostgresEventStore::new(pool.clone()))
        .aggregate::<Account>(())
        .build();
    let mut folded = vec![Folded::default(); usize::try_from(ACCOUNTS).expect("accounts")];
    for index in 0..ACCOUNTS {
        bus.execute(OpenAccount {
            account: index,
            owner: format!("owner {index}"),
        })
        .await
        .expect("open");
        let account = ACCOUNTS + index;
        let folded = &mut folded[usize::try_from(index).expect("index")];
        let event = folded
            .state
            .open(&OpenAccount {
                account,
                owner: format!("owner {account}"),
            })
            .expect("open");
        hand::insert_one(
            &pool,
            &stream_of(account),
            1,
            OPENED,
            &event,
            &hand::command_metadata(),
        )
        .await
        .expect("open");
        folded.state.on_opened(&event);
        folded.version = 1;
    }

    let commands = settings.wal_commands;
    let mut bytes = vec![Vec::new(); 2];
    for round in 0..settings.rounds {
        for variant in turns(round, 2) {
            let before = wal_lsn(&pool).await;
            if variant == OURS {
                ours(&bus, commands).await;
            } else {
                hand_written(&pool, &mut folded, commands).await;
            }
            // Counts here stay far below 2^52, where `f64` starts to round integers.
            #[allow(clippy::cast_precision_loss)]
            bytes[variant].push(wal_bytes_since(&pool, &before).await / commands as f64);
        }
    }
    let s: Vec<Option<Summary>> = bytes.iter().map(|b| Summary::of(b)).collect();
    println!(
        "## f. WAL bytes per event, {commands} one-event commands in sequence \
         (median (min–max) of {} rounds; `pg_wal_lsn_diff` is server-wide, so other writers' \
         WAL counts too: the minimum is the cleanest)\n",
        settings.rounds
    );
    table(
        &["variant", "WAL bytes/event", "ours / this"],
        1,
        &[
            vec![
                "ours: `CommandBus` on `PostgresEventStore`".to_owned(),
                cell(s[OURS], 0),
                "1.00x".to_owned(),
            ],
            vec![
                "hand-written, one INSERT with version check".to_owned(),
                cell(s[HAND], 0),
                ratio(s[OURS], s[HAND]),
            ],
        ],
    );
    db.drop_now().await;
}

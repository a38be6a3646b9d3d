//! Part b: one hot aggregate, one client, sequential deposits.

use std::time::Instant;

use cqrs_core::CommandBus;
use cqrs_postgres::PostgresEventStore;
use sqlx::PgPool;

use crate::Settings;
use crate::db::BenchDb;
use crate::domain::{Account, Bus, DEPOSITED, Deposit, OPENED, OpenAccount, stream_of};
use crate::hand::{self, Folded};
use crate::measure::{Summary, cell, per_second, ratio, table, turns};

const VARIANTS: usize = 3;
const OURS: usize = 0;
const IN_MEMORY: usize = 1;
const REPLAY: usize = 2;

/// The hot accounts, one per variant.
const ACCOUNTS: [u64; VARIANTS] = [1, 2, 3];

/// Reads the whole stream, from version 1.
const FULL: &str = "\
SELECT stream_version, event_type, schema_version, payload::text
FROM cqrs_events WHERE stream_id = $1 ORDER BY stream_version";

/// A deposit the hand-written way: read, decide, insert with the next version (the unique
/// key is the check). `replay` reads the whole stream and folds it from scratch; otherwise
/// only the events after the state kept in `folded` are read.
async fn hand_deposit(pool: &PgPool, account: u64, folded: &mut Folded, replay: bool) {
    let stream = stream_of(account);
    if replay {
        *folded = Folded::default();
        let rows = sqlx::query(FULL)
            .bind(&stream)
            .fetch_all(pool)
            .await
            .expect("read the stream");
        for row in &rows {
            folded.apply_row(row);
        }
    } else {
        hand::read_new(pool, &stream, folded).await;
    }
    let event = folded
        .state
        .deposit(&Deposit { account, amount: 1 })
        .expect("a deposit on an open account");
    let metadata = hand::command_metadata();
    hand::insert_one(
        pool,
        &stream,
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

async fn run_variant(
    variant: usize,
    seconds: f64,
    pool: &PgPool,
    bus: &Bus,
    folded: &mut [Folded; 2],
) -> (f64, u64) {
    let started = Instant::now();
    let deadline = started + std::time::Duration::from_secs_f64(seconds);
    let account = ACCOUNTS[variant];
    let mut done = 0;
    while Instant::now() < deadline {
        if variant == OURS {
            bus.execute(Deposit { account, amount: 1 })
                .await
                .expect("deposit");
        } else {
            let replay = variant == REPLAY;
            hand_deposit(pool, account, &mut folded[variant - IN_MEMORY], replay).await;
        }
        done += 1;
    }
    (per_second(done, started.elapsed()), done)
}

/// Part b.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    let pool = db.pool.clone();
    let bus = CommandBus::builder(PostgresEventStore::new(pool.clone()))
        .aggregate::<Account>(())
        .build();
    bus.execute(OpenAccount {
        account: ACCOUNTS[OURS],
        owner: "hot".to_owned(),
    })
    .await
    .expect("open");
    let mut folded = [Folded::default(), Folded::default()];
    for (variant, folded) in [IN_MEMORY, REPLAY].into_iter().zip(&mut folded) {
        let account = ACCOUNTS[variant];
        let event = folded
            .state
            .open(&OpenAccount {
                account,
                owner: "hot".to_owned(),
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

    let mut rates = vec![Vec::new(); VARIANTS];
    let mut lengths = [1_u64; VARIANTS];
    for round in 0..settings.rounds {
        for variant in turns(round, VARIANTS) {
            let (rate, done) =
                run_variant(variant, settings.seconds, &pool, &bus, &mut folded).await;
            rates[variant].push(rate);
            lengths[variant] += done;
        }
    }
    let s: Vec<Option<Summary>> = rates.iter().map(|r| Summary::of(r)).collect();
    println!(
        "## b. One hot aggregate, one client, sequential deposits, commands/s \
         (median (min–max) of {} rounds of {} s)\n",
        settings.rounds, settings.seconds
    );
    table(
        &[
            "variant",
            "commands/s",
            "ours / this",
            "events in the stream at the end",
        ],
        1,
        &[
            vec![
                "ours: `CommandBus` on `PostgresEventStore`".to_owned(),
                cell(s[OURS], 0),
                "1.00x".to_owned(),
                lengths[OURS].to_string(),
            ],
            vec![
                "hand-written, state in memory, reads only the new events".to_owned(),
                cell(s[IN_MEMORY], 0),
                ratio(s[OURS], s[IN_MEMORY]),
                lengths[IN_MEMORY].to_string(),
            ],
            vec![
                "hand-written, replays the whole stream every command".to_owned(),
                cell(s[REPLAY], 0),
                ratio(s[OURS], s[REPLAY]),
                lengths[REPLAY].to_string(),
            ],
        ],
    );
    db.drop_now().await;
}

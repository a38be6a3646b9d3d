//! Part d: batches of events appended by many clients, each to its own stream.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cqrs_core::{EventStore, ExpectedVersion, NewEvent};
use cqrs_postgres::PostgresEventStore;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::Settings;
use crate::db::BenchDb;
use crate::domain::{AccountEvent, DEPOSITED, Deposited};
use crate::hand;
use crate::measure::{Summary, cell, ratio, table, throughput, turns};

const OURS: usize = 0;
const HAND: usize = 1;
const ALONE: usize = 2;
const VARIANTS: usize = 3;

/// A table with the columns, defaults, constraints and indexes of `cqrs_events`: the unique
/// `(stream_id, stream_version)` and `event_id` keys, the `(tx, position)` index, and an
/// identity `position` of its own.
const COPY_TABLE: &str = "CREATE TABLE bench_events (LIKE cqrs_events INCLUDING ALL)";

/// `INSERT INTO bench_events ... VALUES (...), (...), ...` for `rows` rows.
fn multi_row_insert(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO bench_events \
         (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata) \
         VALUES ",
    );
    for row in 0..rows {
        let p = row * 7;
        let separator = if row == 0 { "" } else { ", " };
        write!(
            sql,
            "{separator}(${}, ${}, ${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7
        )
        .expect("write to a String");
    }
    sql
}

/// Appends one batch through `EventStore::append` at the stream's expected version.
async fn ours(store: &PostgresEventStore, stream: &str, version: u64, batch: u64) -> u64 {
    let metadata = hand::command_metadata();
    let events: Vec<NewEvent> = (0..batch)
        .map(|_| {
            let event = AccountEvent::Deposited(Deposited { amount: 1 });
            NewEvent::from_event(&event, metadata.clone()).expect("serialize")
        })
        .collect();
    store
        .append(stream, ExpectedVersion::Exact(version), events)
        .await
        .expect("append")
        .stream_version
}

/// Inserts the same batch with one multi-row INSERT; the unique `(stream_id,
/// stream_version)` key refuses it whole if any of its versions is taken.
async fn hand_written(pool: &PgPool, sql: &str, stream: &str, version: u64, batch: u64) -> u64 {
    let metadata = hand::command_metadata();
    let mut query = sqlx::query(sql);
    for n in 1..=batch {
        query = query
            .bind(stream)
            .bind(hand::to_i64(version + n))
            .bind(Uuid::now_v7())
            .bind(DEPOSITED)
            .bind(1_i32)
            .bind(Json(Deposited { amount: 1 }))
            .bind(Json(metadata.clone()));
    }
    let inserted = query.execute(pool).await.expect("insert").rows_affected();
    assert_eq!(inserted, batch);
    version + batch
}

/// Part d.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    db.execute_all(&[COPY_TABLE]).await;
    let pool = db.pool.clone();
    let store = PostgresEventStore::new(pool.clone());
    // The default store (group commit on), and one without group commit, for comparison.
    let store = store.with_group_commit(settings.group_commit());
    let alone = PostgresEventStore::new(pool.clone()).without_group_commit();
    let clients = settings.append_clients;
    let batch = settings.batch;
    let sql: Arc<str> = multi_row_insert(usize::try_from(batch).expect("batch")).into();
    // Each client appends to its own stream, one per variant, continued across rounds.
    let versions: Arc<Vec<[AtomicU64; VARIANTS]>> = Arc::new(
        (0..clients)
            .map(|_| [0.into(), 0.into(), 0.into()])
            .collect::<Vec<_>>(),
    );
    let mut rates = vec![Vec::new(); VARIANTS];
    for round in 0..settings.rounds {
        for variant in turns(round, VARIANTS) {
            let appends = throughput(clients, settings.seconds, |client, deadline| {
                let store = if variant == ALONE {
                    alone.clone()
                } else {
                    store.clone()
                };
                let pool = pool.clone();
                let sql = Arc::clone(&sql);
                let versions = Arc::clone(&versions);
                async move {
                    let stream = format!("append-{variant}-{client}");
                    let cell = &versions[client][variant];
                    let mut version = cell.load(Ordering::Relaxed);
                    let mut done = 0;
                    while Instant::now() < deadline {
                        version = if variant == HAND {
                            hand_written(&pool, &sql, &stream, version, batch).await
                        } else {
                            ours(&store, &stream, version, batch).await
                        };
                        done += 1;
                    }
                    cell.store(version, Ordering::Relaxed);
                    done
                }
            })
            .await;
            // Counts here stay far below 2^52, where `f64` starts to round integers.
            #[allow(clippy::cast_precision_loss)]
            rates[variant].push(appends * batch as f64);
        }
    }
    let s: Vec<Option<Summary>> = rates.iter().map(|r| Summary::of(r)).collect();
    println!(
        "## d. Appends of {batch} events by {clients} clients on distinct streams, events/s \
         (median (min–max) of {} rounds of {} s)\n",
        settings.rounds, settings.seconds
    );
    table(
        &["variant", "events/s", "ours / this"],
        1,
        &[
            vec![
                "ours: `EventStore::append` (default settings: group commit on)".to_owned(),
                cell(s[OURS], 0),
                "1.00x".to_owned(),
            ],
            vec![
                format!(
                    "hand-written: one {batch}-row INSERT into a copy of `cqrs_events` \
                     (unique (stream, version) key is the check)"
                ),
                cell(s[HAND], 0),
                ratio(s[OURS], s[HAND]),
            ],
            vec![
                "ours without group commit: `EventStore::append` on \
                 `PostgresEventStore::without_group_commit` (ratio: this / hand-written)"
                    .to_owned(),
                cell(s[ALONE], 0),
                ratio(s[ALONE], s[HAND]),
            ],
        ],
    );
    db.drop_now().await;
}

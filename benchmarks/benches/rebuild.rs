//! Rebuild rate of a projection into a PostgreSQL table, events per second, against the
//! same work written by hand with sqlx.
//!
//! ```text
//! cargo bench -p cqrs-benchmarks --bench rebuild
//! ```
//!
//! The store holds `REBUILD_EVENTS` (default 100 000) `deposited` events over
//! `REBUILD_STREAMS` (default 1 000) streams. Each round rebuilds a read model of one row per
//! stream (the running total, one upsert per event) into a fresh table, from the first event
//! to the head:
//!
//! - **rebuild**: `Subscription::transactional` of a `#[projection]` that takes its table as
//!   data, started under a new name (as a blue/green rebuild does), batches of 500 events,
//!   each batch's upserts and checkpoint in one transaction; timed until the
//!   subscription's checkpoint reaches the head.
//! - **hand**: a loop reading the same events in `(tx, position)` keyset pages of 500
//!   (without the read horizon), decoding each payload into the same type, the same upsert
//!   per event, and a checkpoint row moved in each page's transaction.
//!
//! The ratio is rebuild / hand (higher is better). `REBUILD_ROUNDS` (default 3) rounds
//! alternate which variant runs first; the medians are compared.

use std::time::{Duration, Instant};

use cqrs_benchmarks::db::BenchDb;
use cqrs_benchmarks::measure::{Summary, cell, env_or, per_second, ratio, table, turns};
use cqrs_core::prelude::*;
use cqrs_core::{EventStore, ExpectedVersion, Metadata, NewEvent};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{ProjectionAdmin, Subscription};
use sqlx::{Connection, PgConnection, PgPool, Row};

/// Money came in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    /// How much.
    pub amount: u64,
}

/// The account's events.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    /// A deposit.
    #[event(name = "bench.deposited")]
    Deposited(Deposited),
}

/// The total per account, in the table it is given (its upsert is built once).
pub struct Totals {
    upsert: String,
}

impl Totals {
    fn new(table: &str) -> Self {
        Self {
            upsert: upsert(table),
        }
    }
}

fn upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (account, total) VALUES ($1, $2) \
         ON CONFLICT (account) DO UPDATE SET total = {table}.total + EXCLUDED.total"
    )
}

#[projection(context = PgConnection)]
impl Totals {
    #[event_handler]
    async fn on_deposited(
        &mut self,
        deposited: &Deposited,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&self.upsert)
            .bind(&event.stream_id)
            .bind(i64::try_from(deposited.amount).unwrap_or(i64::MAX))
            .execute(db)
            .await?;
        Ok(())
    }
}

async fn create_table(pool: &PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (account text PRIMARY KEY, total bigint NOT NULL)"
    ))
    .execute(pool)
    .await
    .expect("read-model table");
}

/// Stores `events` deposits over `streams` streams, 100 per append.
async fn store_events(store: &PostgresEventStore, events: u64, streams: u64) {
    let per_append = 100;
    let mut stored = 0;
    let mut round = 0;
    while stored < events {
        let stream = format!("account-{}", round % streams);
        let count = per_append.min(events - stored);
        let batch = (0..count)
            .map(|n| {
                NewEvent::from_event(
                    &AccountEvent::Deposited(Deposited { amount: n + 1 }),
                    Metadata::default(),
                )
                .expect("serialize")
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .expect("append");
        stored += count;
        round += 1;
    }
}

/// The framework: a transactional subscription under a new name, from the first event.
async fn run_rebuild(pool: &PgPool, round: usize) -> Duration {
    let table = format!("totals_rebuild_{round}");
    create_table(pool, &table).await;
    let name: &'static str = Box::leak(format!("Totals_{round}").into_boxed_str());
    let admin = ProjectionAdmin::new(pool.clone());
    let started = Instant::now();
    let handle = Subscription::transactional(Totals::new(&table))
        .named(name)
        .start(pool)
        .await
        .expect("start");
    admin
        .wait_caught_up(name, Duration::from_secs(3600))
        .await
        .expect("caught up");
    let elapsed = started.elapsed();
    handle.shutdown().await.expect("shutdown");
    elapsed
}

/// The same work by hand: keyset pages, decode, one upsert per event, checkpoint per page.
async fn run_hand(pool: &PgPool, round: usize, events: u64) -> Duration {
    let table = format!("totals_hand_{round}");
    create_table(pool, &table).await;
    let upsert = upsert(&table);
    let started = Instant::now();
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::query("CREATE TABLE IF NOT EXISTS hand_checkpoint (name text PRIMARY KEY, tx xid8, position bigint)")
        .execute(&mut *conn)
        .await
        .expect("checkpoint table");
    let name = format!("hand_{round}");
    let (mut tx_at, mut position_at) = ("0".to_owned(), 0i64);
    let mut handled = 0;
    while handled < events {
        let rows = sqlx::query(
            "SELECT tx::text AS tx, position, stream_id, payload::text AS payload FROM cqrs_events \
             WHERE (tx, position) > ($1::text::xid8, $2) AND event_type = ANY($3) \
             ORDER BY tx, position LIMIT 500",
        )
        .bind(&tx_at)
        .bind(position_at)
        .bind(["bench.deposited"].as_slice())
        .fetch_all(&mut *conn)
        .await
        .expect("read");
        if rows.is_empty() {
            break;
        }
        let mut tx = conn.begin().await.expect("begin");
        for row in &rows {
            let stream: String = row.get("stream_id");
            let payload: String = row.get("payload");
            let deposited: Deposited = serde_json::from_str(&payload).expect("decode");
            sqlx::query(&upsert)
                .bind(&stream)
                .bind(i64::try_from(deposited.amount).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .expect("upsert");
        }
        let last = rows.last().expect("a row");
        tx_at = last.get("tx");
        position_at = last.get("position");
        sqlx::query(
            "INSERT INTO hand_checkpoint (name, tx, position) VALUES ($1, $2::text::xid8, $3) \
             ON CONFLICT (name) DO UPDATE SET tx = EXCLUDED.tx, position = EXCLUDED.position",
        )
        .bind(&name)
        .bind(&tx_at)
        .bind(position_at)
        .execute(&mut *tx)
        .await
        .expect("checkpoint");
        tx.commit().await.expect("commit");
        handled += rows.len() as u64;
    }
    assert_eq!(handled, events, "the hand loop read every event");
    started.elapsed()
}

/// Both variants built the same totals.
async fn same_totals(pool: &PgPool, round: usize) {
    let differing: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM totals_rebuild_{round} r \
         FULL JOIN totals_hand_{round} h USING (account) \
         WHERE r.total IS DISTINCT FROM h.total"
    ))
    .fetch_one(pool)
    .await
    .expect("compare");
    assert_eq!(differing, 0, "the two read models differ");
}

fn main() {
    let events: u64 = env_or("REBUILD_EVENTS", 100_000);
    let streams: u64 = env_or("REBUILD_STREAMS", 1_000);
    let rounds: usize = env_or("REBUILD_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let db = BenchDb::create(8).await;
        store_events(&PostgresEventStore::new(db.pool.clone()), events, streams).await;
        sqlx::query("VACUUM ANALYZE cqrs_events")
            .execute(&db.pool)
            .await
            .expect("vacuum");
        let mut rebuild = Vec::new();
        let mut hand = Vec::new();
        for round in 0..rounds {
            for turn in turns(round, 2) {
                if turn == 0 {
                    rebuild.push(per_second(events, run_rebuild(&db.pool, round).await));
                } else {
                    hand.push(per_second(events, run_hand(&db.pool, round, events).await));
                }
            }
            same_totals(&db.pool, round).await;
        }
        db.drop_now().await;
        let (rebuild, hand) = (Summary::of(&rebuild), Summary::of(&hand));
        println!(
            "\n{events} events over {streams} streams, {rounds} rounds; events/s, median (min–max)\n"
        );
        table(
            &["variant", "events/s", "rebuild / hand"],
            1,
            &[
                vec![
                    "rebuild: transactional subscription, new name, batches of 500".to_owned(),
                    cell(rebuild, 0),
                    ratio(rebuild, hand),
                ],
                vec![
                    "hand-written sqlx keyset loop, same upserts".to_owned(),
                    cell(hand, 0),
                    "1.00x".to_owned(),
                ],
            ],
        );
    });
}

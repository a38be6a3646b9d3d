//! Events per second through a saga that sends one command per event, on PostgreSQL, against
//! the same work written by hand with sqlx in one transaction per event.
//!
//! ```text
//! cargo bench -p cqrs-benchmarks --bench saga
//! ```
//!
//! Each round stores `SAGA_EVENTS` (default 2 000) `ping` events, one stream each, then times
//! how long it takes until every one of them has been handled:
//!
//! - **saga**: `cqrs_postgres::saga::SagaRunner` of a saga that starts an instance per ping
//!   and sends one `Pong` command (idempotency key included) to a `sink` aggregate: per event
//!   one transaction (checkpoint, instance, outbox), the command's append with its
//!   idempotency record, the outbox row's delete.
//! - **hand**: a loop reading the same events in batches and, per event, one transaction
//!   that upserts the process's state row, appends the pong event to the sink stream with a
//!   version check, and moves a checkpoint row.
//!
//! The ratio is saga / hand (higher is better). `SAGA_ROUNDS` (default 3) rounds alternate
//! which variant runs first; the medians are compared.

use std::time::{Duration, Instant};

use cqrs_benchmarks::db::BenchDb;
use cqrs_benchmarks::measure::{Summary, env_or, per_second, ratio, table};
use cqrs_core::prelude::*;
use cqrs_core::saga::SagaOptions;
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::saga::{SagaAdmin, SagaRunner};
use sqlx::{Connection, PgPool, Row};

/// A ping arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pinged {
    /// Which ping.
    pub id: u64,
}

/// The source's events.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum SourceEvent {
    /// A ping.
    #[event(name = "bench.pinged")]
    Pinged(Pinged),
}

/// Stores a ping.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Source, id = id)]
pub struct Ping {
    /// Which ping.
    pub id: u64,
}

/// The source of pings.
#[derive(Debug, Default)]
pub struct Source;

#[aggregate(event = SourceEvent, error = std::convert::Infallible, name = "source")]
impl Source {
    #[command_handler]
    fn ping(&self, c: &Ping) -> Result<Pinged, std::convert::Infallible> {
        Ok(Pinged { id: c.id })
    }
    #[event_handler]
    fn on_pinged(&mut self, _: &Pinged) {}
}

/// A pong was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ponged {
    /// For which ping.
    pub id: u64,
}

/// The sink's events.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum SinkEvent {
    /// A pong.
    #[event(name = "bench.ponged")]
    Ponged(Ponged),
}

/// Answers a ping.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Sink, id = id, idempotent)]
pub struct Pong {
    /// For which ping.
    pub id: u64,
}

/// Where pongs go.
#[derive(Debug, Default)]
pub struct Sink;

#[aggregate(event = SinkEvent, error = std::convert::Infallible, name = "sink")]
impl Sink {
    #[command_handler]
    fn pong(&self, c: &Pong) -> Result<Ponged, std::convert::Infallible> {
        Ok(Ponged { id: c.id })
    }
    #[event_handler]
    fn on_ponged(&mut self, _: &Ponged) {}
}

/// Answers every ping once.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    answered: bool,
}

#[saga(commands(Pong))]
impl Answer {
    #[event_handler(key = id, start)]
    fn on_pinged(&mut self, e: &Pinged) -> Pong {
        self.answered = true;
        Pong { id: e.id }
    }
}

const HAND_DDL: &[&str] = &[
    "CREATE TABLE hand_state (key text PRIMARY KEY, state jsonb NOT NULL)",
    "CREATE TABLE hand_checkpoint (name text PRIMARY KEY, position bigint NOT NULL)",
    "CREATE TABLE hand_sink (stream_id text NOT NULL, version bigint NOT NULL, \
     payload jsonb NOT NULL, PRIMARY KEY (stream_id, version))",
    "INSERT INTO hand_checkpoint VALUES ('hand', 0)",
];

type Bus = cqrs_core::CommandBusOf![Source, Sink];

async fn store_pings(bus: &Bus, from: u64, count: u64) {
    for id in from..from + count {
        bus.execute(Ping { id }).await.expect("ping");
    }
}

/// The saga runner, from start to every ping answered.
async fn run_saga(pool: &PgPool, bus: &Bus, from: u64, count: u64) -> Duration {
    store_pings(bus, from, count).await;
    let options = SagaOptions::default().poll_interval(Duration::from_millis(5));
    let admin = SagaAdmin::<Answer>::new(pool.clone()).with_options(options.clone());
    let started = Instant::now();
    let runner = SagaRunner::<Answer>::new(pool, bus)
        .options(options)
        .start()
        .await
        .expect("start");
    assert!(
        admin
            .wait_idle(Duration::from_secs(600))
            .await
            .expect("idle"),
        "the saga did not finish"
    );
    let elapsed = started.elapsed();
    runner.shutdown().await;
    elapsed
}

/// The same work by hand: per ping, one transaction for state, pong and checkpoint.
async fn run_hand(pool: &PgPool, bus: &Bus, from: u64, count: u64) -> Duration {
    store_pings(bus, from, count).await;
    let started = Instant::now();
    let mut conn = pool.acquire().await.expect("connection");
    let mut handled = 0;
    while handled < count {
        let checkpoint: i64 =
            sqlx::query_scalar("SELECT position FROM hand_checkpoint WHERE name = 'hand'")
                .fetch_one(&mut *conn)
                .await
                .expect("checkpoint");
        let rows = sqlx::query(
            "SELECT position, payload::text AS payload FROM cqrs_events \
             WHERE position > $1 AND event_type = 'bench.pinged' ORDER BY position LIMIT 500",
        )
        .bind(checkpoint)
        .fetch_all(&mut *conn)
        .await
        .expect("read");
        for row in rows {
            let position: i64 = row.get("position");
            let payload: String = row.get("payload");
            let ping: Pinged = serde_json::from_str(&payload).expect("decode");
            let mut tx = conn.begin().await.expect("begin");
            sqlx::query(
                "INSERT INTO hand_state (key, state) VALUES ($1, '{\"answered\": true}') \
                 ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state",
            )
            .bind(ping.id.to_string())
            .execute(&mut *tx)
            .await
            .expect("state");
            let answer = serde_json::to_string(&Ponged { id: ping.id }).expect("encode");
            sqlx::query(
                "INSERT INTO hand_sink (stream_id, version, payload) \
                 SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb FROM hand_sink WHERE stream_id = $1",
            )
            .bind(format!("sink-{}", ping.id))
            .bind(answer)
            .execute(&mut *tx)
            .await
            .expect("pong");
            sqlx::query("UPDATE hand_checkpoint SET position = $1 WHERE name = 'hand'")
                .bind(position)
                .execute(&mut *tx)
                .await
                .expect("checkpoint");
            tx.commit().await.expect("commit");
            handled += 1;
        }
    }
    started.elapsed()
}

fn main() {
    let events: u64 = env_or("SAGA_EVENTS", 2_000);
    let rounds: usize = env_or("SAGA_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut saga = Vec::new();
        let mut hand = Vec::new();
        for round in 0..rounds {
            // A fresh database per variant and round: neither inherits the other's rows.
            for turn in cqrs_benchmarks::measure::turns(round, 2) {
                let db = BenchDb::create(8).await;
                db.execute_all(HAND_DDL).await;
                let bus: Bus = CommandBus::builder(PostgresEventStore::new(db.pool.clone()))
                    .aggregate::<Source>(())
                    .aggregate::<Sink>(())
                    .build();
                if turn == 0 {
                    let elapsed = run_saga(&db.pool, &bus, 0, events).await;
                    saga.push(per_second(events, elapsed));
                } else {
                    let elapsed = run_hand(&db.pool, &bus, 0, events).await;
                    hand.push(per_second(events, elapsed));
                }
                db.drop_now().await;
            }
        }
        let (saga, hand) = (Summary::of(&saga), Summary::of(&hand));
        println!("\n{events} events per round, {rounds} rounds; events/s, median (min–max)\n");
        table(
            &["variant", "events/s", "saga / hand"],
            1,
            &[
                vec![
                    "saga (one command per event)".to_owned(),
                    cqrs_benchmarks::measure::cell(saga, 0),
                    ratio(saga, hand),
                ],
                vec![
                    "hand-written sqlx, one transaction per event".to_owned(),
                    cqrs_benchmarks::measure::cell(hand, 0),
                    "1.00x".to_owned(),
                ],
            ],
        );
    });
}

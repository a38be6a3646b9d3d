//! The NATS relay and consumer, against baselines doing the same work in the same run.
//!
//! ```text
//! cargo bench -p cqrs-benchmarks --bench nats
//! ```
//!
//! - **relay**: events/s from a PostgreSQL store into a JetStream stream, acknowledgements
//!   included, against a plain `async-nats` loop publishing the very same messages (subject,
//!   headers, payload) with the same number of acknowledgements in flight. Target: at least
//!   0.8x the plain loop, and 20 000 events/s. The two run back to back each round, which
//!   goes first alternating; each round prints its ratio.
//! - **consumer**: events/s from JetStream into a PostgreSQL read model through
//!   `cqrs_nats::consumer` (one upsert per event, offset in the same transaction).
//!
//! Needs PostgreSQL (`DATABASE_URL`) and NATS with JetStream (`NATS_URL`, default
//! `127.0.0.1:4222`). `NATS_BENCH_EVENTS` sizes it (default 50 000); `NATS_BENCH_ROUNDS` is
//! how many times each side runs (default 3, best kept).

// Event counts become `f64` only to print rates: 52 bits of mantissa are plenty.
#![allow(clippy::cast_precision_loss)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use cqrs_benchmarks::db::BenchDb;
use cqrs_core::{
    Event, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, RecordedEvent,
    projection,
};
use cqrs_nats::consumer::{Consumer, PgProjection};
use cqrs_nats::{Relay, Subjects, headers};
use cqrs_postgres::PostgresEventStore;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

const IN_FLIGHT: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum AccountEvent {
    #[event(name = "account.deposited")]
    Deposited(Deposited),
}

/// One upsert per deposit: the read model the consumer part fills.
struct Totals;

#[projection(context = PgConnection)]
impl Totals {
    #[event_handler]
    async fn on_deposited(
        &mut self,
        deposited: &Deposited,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO totals (account, total) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET total = totals.total + $2",
        )
        .bind(&event.stream_id)
        .bind(i64::try_from(deposited.amount).unwrap_or(i64::MAX))
        .execute(db)
        .await?;
        Ok(())
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

#[allow(clippy::too_many_lines)] // one script: set up, relay against the plain loop, consumer
async fn run() {
    let events = env_usize("NATS_BENCH_EVENTS", 50_000);
    let rounds = env_usize("NATS_BENCH_ROUNDS", 3).max(1);
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS with JetStream at {url} (scripts/ensure-nats): {e}"));
    let js = jetstream::new(client.clone());

    let writer = BenchDb::create(8).await;
    let store = PostgresEventStore::new(writer.pool.clone());
    for batch in 0..events.div_ceil(100) {
        let count = 100.min(events - batch * 100);
        let new: Vec<NewEvent> = (0..count)
            .map(|i| {
                NewEvent::from_event(
                    &AccountEvent::Deposited(Deposited { amount: i as u64 }),
                    Metadata::default().with_correlation_id(uuid::Uuid::now_v7()),
                )
                .expect("serialize")
            })
            .collect();
        store
            .append(
                &format!("Account-{}", batch % 100),
                ExpectedVersion::Any,
                new,
            )
            .await
            .expect("append");
    }
    let mut recorded = Vec::with_capacity(events);
    let mut from = GlobalPosition::START;
    loop {
        let page = store.read_all_from(from, 10_000).await.expect("read");
        let Some(last) = page.last() else { break };
        from = last.position;
        recorded.extend(page);
    }
    let last_position = from;
    println!(
        "nats bench: {events} events, best of {rounds} rounds; the machine may be shared with other work, so absolute figures are noisy"
    );

    let mut best_plain = f64::MAX;
    let mut best_relay = f64::MAX;
    let mut relay_stream = String::new();
    // Each round's relay / plain ratio: the two run back to back, so a round's ratio sees
    // the same load on a shared machine, where the best-of figures may come from different
    // moments. Which goes first alternates, so neither always meets the other's leftovers
    // (a stream still being written out, a cache just warmed).
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (plain, (relayed, stream)) = if round % 2 == 0 {
            let plain = plain_loop(&js, &recorded, round).await;
            (
                plain,
                relay(&client, &js, &writer, last_position, round).await,
            )
        } else {
            let relayed = relay(&client, &js, &writer, last_position, round).await;
            (plain_loop(&js, &recorded, round).await, relayed)
        };
        best_plain = best_plain.min(plain);
        best_relay = best_relay.min(relayed);
        ratios.push(plain / relayed);
        println!(
            "round {round}: plain loop {:.0} events/s, relay {:.0} events/s, ratio {:.2}x ({} first)",
            events as f64 / plain,
            events as f64 / relayed,
            plain / relayed,
            if round % 2 == 0 { "plain" } else { "relay" },
        );
        if round + 1 == rounds {
            relay_stream = stream;
        } else {
            js.delete_stream(&stream).await.expect("delete");
        }
    }
    let plain_rate = events as f64 / best_plain;
    let relay_rate = events as f64 / best_relay;
    println!(
        "relay: {relay_rate:.0} events/s (store -> JetStream, acks included); plain async-nats loop: {plain_rate:.0} events/s; ratio {:.2}x (target >= 0.80x, >= 20000 events/s)",
        relay_rate / plain_rate
    );
    ratios.sort_by(f64::total_cmp);
    println!(
        "relay / plain per round, sorted: {}; median {:.2}x",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", "),
        ratios[ratios.len() / 2]
    );

    // The consumer: JetStream -> PostgreSQL read model.
    let mut best_consumer = f64::MAX;
    for round in 0..rounds {
        let report = BenchDb::create(8).await;
        cqrs_nats::consumer::migrate(&report.pool)
            .await
            .expect("consumer migrations");
        sqlx::query("CREATE TABLE totals (account text PRIMARY KEY, total bigint NOT NULL)")
            .execute(&report.pool)
            .await
            .expect("totals");
        // A durable consumer per round: its name is the projection's, so start clean.
        let _ = js
            .get_stream(&relay_stream)
            .await
            .expect("stream")
            .delete_consumer("Totals")
            .await;
        let started = Instant::now();
        let consumer = Consumer::new(client.clone(), relay_stream.clone())
            .batch(500)
            .start(PgProjection::new(Totals, report.pool.clone()))
            .await
            .expect("consumer");
        assert!(
            consumer
                .wait_for(events as u64, Duration::from_secs(600))
                .await,
            "consumed"
        );
        let took = started.elapsed().as_secs_f64();
        consumer.shutdown().await.expect("consumer shutdown");
        best_consumer = best_consumer.min(took);
        println!(
            "round {round}: consumer {:.0} events/s",
            events as f64 / took
        );
        report.drop_now().await;
    }
    println!(
        "consumer: {:.0} events/s (JetStream -> PostgreSQL read model, one upsert per event, offset in the same transaction)",
        events as f64 / best_consumer
    );
    js.delete_stream(&relay_stream).await.expect("delete");
    writer.drop_now().await;
}

/// The baseline: a plain `async-nats` loop publishing the same messages (subject, headers,
/// payload) with the same window of acknowledgements. Returns the seconds it took.
async fn plain_loop(js: &jetstream::Context, recorded: &[RecordedEvent], round: usize) -> f64 {
    let stream = format!("BENCH_PLAIN_{}", uuid::Uuid::now_v7().simple());
    let subjects = Subjects::by_category(format!("p{round}{}", uuid::Uuid::now_v7().simple()));
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subjects.filter()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("plain stream");
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(IN_FLIGHT);
    for event in recorded {
        if acks.len() >= IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture =
                acks.pop_front().expect("an ack in flight");
            ack.await.expect("ack");
        }
        let message = PublishMessage::build()
            .headers(headers::encode(event))
            .payload(Bytes::copy_from_slice(event.payload.as_str().as_bytes()));
        acks.push_back(
            js.send_publish(subjects.subject(event), message)
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    let took = started.elapsed().as_secs_f64();
    js.delete_stream(&stream).await.expect("delete");
    took
}

/// The relay: store -> JetStream, checkpointed, until the last event is acknowledged.
/// Returns the seconds it took and its stream (kept for the consumer part).
async fn relay(
    client: &async_nats::Client,
    js: &jetstream::Context,
    writer: &BenchDb,
    last_position: GlobalPosition,
    round: usize,
) -> (f64, String) {
    // Its stream is created before the clock starts, as the plain loop's is; the relay's
    // start still checks it.
    let stream = format!("BENCH_RELAY_{}", uuid::Uuid::now_v7().simple());
    let name: &'static str = Box::leak(format!("bench-relay-{round}").into_boxed_str());
    let subjects = Subjects::by_category(format!("r{round}{}", uuid::Uuid::now_v7().simple()));
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subjects.filter()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("relay stream");
    let started = Instant::now();
    let relay = Relay::new(client.clone(), stream.clone())
        .name(name)
        .subjects(subjects)
        .max_in_flight(IN_FLIGHT)
        .start(&writer.pool)
        .await
        .expect("relay");
    relay
        .wait_for(last_position, Duration::from_secs(600))
        .await
        .expect("relayed");
    let took = started.elapsed().as_secs_f64();
    relay.shutdown().await.expect("relay shutdown");
    (took, stream)
}

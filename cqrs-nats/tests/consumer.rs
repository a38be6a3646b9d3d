//! The consumer against the real servers: a writer's store (one fresh database), the relay,
//! JetStream (a stream per test), and a reporting read model in a second fresh database fed by
//! the consumer with the same `#[projection]` a store subscription would take.
//!
//! What they pin down: every event is applied exactly once in effect and in each stream's
//! order, across consumer crashes at random points and redeliveries; poison messages stop the
//! consumer loudly by default, and are parked or skipped when told.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use common::{TestDb, TestStream};
use cqrs_core::{
    Event, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, RecordedEvent,
    projection,
};
use cqrs_nats::consumer::{Consumer, ConsumerError, PgProjection, PoisonPolicy};
use cqrs_nats::{Relay, Subjects, headers};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::SubscriptionHandle;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    #[event(name = "account.deposited")]
    Deposited(Deposited),
    #[event(name = "account.noted")]
    Noted,
}

/// Balances per account; refuses an event out of its stream's order, so order is checked by
/// the read model itself.
struct Balances;

#[projection(context = PgConnection)]
impl Balances {
    #[event_handler]
    async fn on_deposited(
        &mut self,
        deposited: &Deposited,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), String> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_version FROM balances WHERE account = $1")
                .bind(&event.stream_id)
                .fetch_optional(&mut *db)
                .await
                .map_err(|e| e.to_string())?;
        // Non-deposit events of the stream are not seen here: versions only grow.
        if last.is_some_and(|last| last >= i64::try_from(event.stream_version).unwrap()) {
            return Err(format!(
                "{} version {} after {last:?}: out of order",
                event.stream_id, event.stream_version
            ));
        }
        sqlx::query(
            "INSERT INTO balances (account, total, deposits, last_version) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (account) DO UPDATE SET total = balances.total + $2, \
             deposits = balances.deposits + 1, last_version = $3",
        )
        .bind(&event.stream_id)
        .bind(i64::try_from(deposited.amount).unwrap())
        .bind(i64::try_from(event.stream_version).unwrap())
        .execute(db)
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

async fn reporting_db() -> TestDb {
    let db = TestDb::create(5).await;
    cqrs_nats::consumer::migrate(&db.pool)
        .await
        .expect("consumer migrations");
    sqlx::query(
        "CREATE TABLE balances (account text PRIMARY KEY, total bigint NOT NULL, \
         deposits bigint NOT NULL, last_version bigint NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("balances table");
    db
}

async fn writer_store(db: &TestDb) -> PostgresEventStore {
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    PostgresEventStore::new(db.pool.clone())
}

async fn start_relay(
    client: async_nats::Client,
    stream: &TestStream,
    pool: &PgPool,
) -> SubscriptionHandle {
    Relay::new(client, stream.name.clone())
        .subjects(Subjects::by_category(stream.prefix.clone()))
        .start(pool)
        .await
        .expect("relay starts")
}

/// Appends `count` events over `streams` accounts (every fourth one not a deposit); returns
/// the expected (total, deposits) per account.
async fn append(
    store: &PostgresEventStore,
    streams: usize,
    count: usize,
    rng: &mut StdRng,
) -> HashMap<String, (i64, i64)> {
    let mut expected: HashMap<String, (i64, i64)> = HashMap::new();
    for i in 0..count {
        let account = format!("Account-{}", rng.random_range(0..streams));
        let event = if i % 4 == 3 {
            AccountEvent::Noted
        } else {
            let amount = rng.random_range(1..100);
            let entry = expected.entry(account.clone()).or_default();
            entry.0 += i64::try_from(amount).unwrap();
            entry.1 += 1;
            AccountEvent::Deposited(Deposited { amount })
        };
        store
            .append(
                &account,
                ExpectedVersion::Any,
                vec![NewEvent::from_event(&event, Metadata::default()).unwrap()],
            )
            .await
            .expect("append");
    }
    expected
}

async fn balances(pool: &PgPool) -> HashMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT account, total, deposits FROM balances")
            .fetch_all(pool)
            .await
            .expect("balances");
    rows.into_iter().map(|(a, t, d)| (a, (t, d))).collect()
}

async fn last_sequence(client: &async_nats::Client, stream: &TestStream) -> u64 {
    jetstream::new(client.clone())
        .get_stream(&stream.name)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .last_sequence
}

async fn wait_relayed(store: &PostgresEventStore, relay: &SubscriptionHandle) {
    let mut last = GlobalPosition::START;
    loop {
        let page = store.read_all_from(last, 10_000).await.unwrap();
        match page.last() {
            Some(event) => last = event.position,
            None => break,
        }
    }
    relay.wait_for(last, PATIENCE).await.expect("relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_at_random_points_apply_every_event_exactly_once_in_order() {
    let test = "crashes_at_random_points_apply_every_event_exactly_once_in_order";
    let Some(client) = common::connect(test).await else {
        return;
    };
    let writer = TestDb::create(5).await;
    let store = writer_store(&writer).await;
    let report = reporting_db().await;
    let stream = TestStream::new();
    let mut rng = StdRng::from_os_rng();
    let relay = start_relay(client.clone(), &stream, &writer.pool).await;

    let mut expected = append(&store, 30, 1_500, &mut rng).await;
    // Crash the consumer at random points while more events arrive.
    let mut crashes = 0;
    for round in 0..8 {
        let consumer = Consumer::new(client.clone(), stream.name.clone())
            .batch(rng.random_range(1..=200))
            .start(PgProjection::new(Balances, report.pool.clone()))
            .await
            .expect("consumer starts");
        if round % 2 == 0 {
            for (account, (total, deposits)) in append(&store, 30, 100, &mut rng).await {
                let entry = expected.entry(account).or_default();
                entry.0 += total;
                entry.1 += deposits;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..120))).await;
        consumer.abort();
        crashes += 1;
    }
    wait_relayed(&store, &relay).await;
    let last = last_sequence(&client, &stream).await;

    let consumer = Consumer::new(client.clone(), stream.name.clone())
        .start(PgProjection::new(Balances, report.pool.clone()))
        .await
        .expect("consumer starts");
    assert!(
        consumer.wait_for(last, PATIENCE).await,
        "the consumer reaches the stream's last sequence"
    );
    consumer.shutdown().await.expect("no failure");
    relay.shutdown().await.expect("relay");

    let got = balances(&report.pool).await;
    let deposits: i64 = got.values().map(|(_, d)| d).sum();
    eprintln!(
        "{crashes} consumer crashes; {last} messages; {deposits} deposits applied over {} accounts",
        got.len()
    );
    assert_eq!(got, expected, "every deposit applied exactly once");
    let (offset, event_id): (i64, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT stream_sequence, event_id FROM cqrs_nats_offsets WHERE consumer = 'Balances'",
    )
    .fetch_one(&report.pool)
    .await
    .unwrap();
    assert_eq!(u64::try_from(offset).unwrap(), last);
    assert!(event_id.is_some());

    // Redelivery of everything (a new durable consumer from the first message): recognised
    // and skipped, nothing applied twice.
    let js = jetstream::new(client.clone());
    let nats_stream = js.get_stream(&stream.name).await.unwrap();
    nats_stream.delete_consumer("Balances").await.unwrap();
    nats_stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("Balances".to_owned()),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = Consumer::new(client.clone(), stream.name.clone())
        .start(PgProjection::new(Balances, report.pool.clone()))
        .await
        .expect("consumer starts");
    // Wait until the redelivered messages are all acknowledged.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut info = js
                .get_stream(&stream.name)
                .await
                .unwrap()
                .get_consumer::<jetstream::consumer::pull::Config>("Balances")
                .await
                .unwrap();
            let info = info.info().await.unwrap();
            if info.ack_floor.stream_sequence >= last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every redelivered message acknowledged");
    consumer.shutdown().await.expect("no failure");
    assert_eq!(
        balances(&report.pool).await,
        expected,
        "redeliveries skipped"
    );
}

/// Publishes, on the relay's subjects, a message that is not a relay event, and one whose
/// payload no longer decodes into the handler's type.
async fn publish_poison(client: &async_nats::Client, stream: &TestStream) {
    let js = jetstream::new(client.clone());
    js.publish(
        format!("{}.Account.account.deposited", stream.prefix),
        "no headers".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut event = RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "account.deposited".to_owned(),
        schema_version: 1,
        stream_id: "Account-poison".to_owned(),
        stream_version: 1,
        position: GlobalPosition(1_000_000),
        recorded_at: chrono::Utc::now(),
        payload: cqrs_core::Payload::from_json(r#"{"amount":"ten"}"#).unwrap(),
        metadata: Metadata::default(),
    };
    js.publish_with_headers(
        format!("{}.Account.account.deposited", stream.prefix),
        headers::encode(&event),
        event.payload.as_str().to_owned().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    event.event_id = uuid::Uuid::now_v7();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_stop_loudly_by_default_and_are_parked_or_skipped_when_told() {
    let test = "poison_messages_stop_loudly_by_default_and_are_parked_or_skipped_when_told";
    let Some(client) = common::connect(test).await else {
        return;
    };
    let writer = TestDb::create(5).await;
    let store = writer_store(&writer).await;
    let stream = TestStream::new();
    let mut rng = StdRng::from_os_rng();
    let relay = start_relay(client.clone(), &stream, &writer.pool).await;
    let before = append(&store, 3, 20, &mut rng).await;
    wait_relayed(&store, &relay).await;
    let first_poison = last_sequence(&client, &stream).await + 1;
    publish_poison(&client, &stream).await;
    let after = append(&store, 3, 20, &mut rng).await;
    wait_relayed(&store, &relay).await;
    relay.shutdown().await.unwrap();
    let last = last_sequence(&client, &stream).await;
    let mut all = before.clone();
    for (account, (total, deposits)) in after {
        let entry = all.entry(account).or_default();
        entry.0 += total;
        entry.1 += deposits;
    }

    // Default: stop at the first poison message, everything before it applied.
    let report = reporting_db().await;
    let consumer = Consumer::new(client.clone(), stream.name.clone())
        .start(PgProjection::new(Balances, report.pool.clone()))
        .await
        .expect("consumer starts");
    match tokio::time::timeout(PATIENCE, consumer.join()).await {
        Ok(Err(ConsumerError::Poison {
            sequence, reason, ..
        })) => {
            assert_eq!(sequence, first_poison);
            assert!(reason.contains("no headers"), "{reason}");
        }
        other => panic!("expected a stop on the poison message, got {other:?}"),
    }
    assert_eq!(balances(&report.pool).await, before);

    // Park: both recorded and terminated, everything else applied.
    let report = reporting_db().await;
    let consumer = Consumer::new(client.clone(), stream.name.clone())
        .poison(PoisonPolicy::Retry {
            attempts: 1,
            backoff: Duration::from_millis(10),
            then: Box::new(PoisonPolicy::Park),
        })
        .start(PgProjection::new(Balances, report.pool.clone()))
        .await
        .expect("consumer starts");
    assert!(consumer.wait_for(last, PATIENCE).await);
    consumer.shutdown().await.expect("no failure");
    assert_eq!(balances(&report.pool).await, all);
    let parked: Vec<(i64, String)> = sqlx::query_as(
        "SELECT stream_sequence, reason FROM cqrs_nats_parked WHERE consumer = 'Balances' \
         ORDER BY stream_sequence",
    )
    .fetch_all(&report.pool)
    .await
    .unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(u64::try_from(parked[0].0).unwrap(), first_poison);
    assert!(parked[0].1.contains("no headers"), "{parked:?}");
    assert!(parked[1].1.contains("decode"), "{parked:?}");

    // Skip: nothing recorded, everything else applied.
    let report = reporting_db().await;
    let consumer = Consumer::new(client.clone(), stream.name.clone())
        .poison(PoisonPolicy::Skip)
        .start(PgProjection::new(Balances, report.pool.clone()))
        .await
        .expect("consumer starts");
    assert!(consumer.wait_for(last, PATIENCE).await);
    consumer.shutdown().await.expect("no failure");
    assert_eq!(balances(&report.pool).await, all);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM cqrs_nats_parked")
        .fetch_one(&report.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
}

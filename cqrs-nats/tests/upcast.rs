//! Events stored by earlier releases, under old names and versions, travel through the relay
//! and JetStream and are read as the current versions by a consumer's projection: the
//! consumer's type filter includes the old names, and the schema version travels in the
//! headers.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::{TestDb, TestStream};
use cqrs_core::{Event, EventStore, GlobalPosition, RecordedEvent, Upcast, projection};
use cqrs_nats::consumer::{Consumer, PgProjection};
use cqrs_nats::{Relay, Subjects};
use cqrs_postgres::PostgresEventStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;

const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
    pub currency: String,
    pub overdraft: u64,
}

#[derive(Debug, Deserialize)]
pub struct OpenedV1 {
    pub owner: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OpenedV2 {
    pub owner: String,
    pub currency: String,
}

impl Upcast for OpenedV1 {
    type Next = OpenedV2;
    fn upcast(self) -> OpenedV2 {
        OpenedV2 {
            owner: self.owner,
            currency: "EUR".into(),
        }
    }
}

fn opened_v2(mut payload: Value) -> Result<Value, String> {
    let object = payload
        .as_object_mut()
        .ok_or_else(|| "not an object".to_owned())?;
    object.insert("overdraft".into(), json!(0));
    Ok(payload)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct DepositedV1 {
    pub amount: u64,
    pub fee: u64,
}

fn split_deposit(old: DepositedV1) -> Vec<AccountEvent> {
    let mut events = vec![AccountEvent::Deposited(Deposited { amount: old.amount })];
    if old.fee > 0 {
        events.push(AccountEvent::FeeCharged(FeeCharged { fee: old.fee }));
    }
    events
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeeCharged {
    pub fee: u64,
}

fn drop_note(_: Value) -> Vec<AccountEvent> {
    Vec::new()
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    #[event(name = "account.opened", version = 3, alias = "account.created",
            upcast(from = 1, with = OpenedV1), upcast(from = 2, raw = opened_v2))]
    Opened(Opened),
    #[event(name = "account.deposited", version = 2, upcast(from = 1, many = split_deposit))]
    Deposited(Deposited),
    #[event(name = "account.fee_charged")]
    FeeCharged(FeeCharged),
    #[event(name = "account.noted", version = 2, upcast(from = 1, many = drop_note))]
    Noted,
}

/// Owners and fees, one row per event handled, in the order applied.
struct Report;

#[projection(context = PgConnection)]
impl Report {
    #[event_handler]
    async fn on_opened(
        &mut self,
        e: &Opened,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        line(
            db,
            format!(
                "{}: opened by {} in {}",
                event.stream_id, e.owner, e.currency
            ),
        )
        .await
    }

    #[event_handler]
    async fn on_fee(
        &mut self,
        e: &FeeCharged,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        line(db, format!("{}: fee {}", event.stream_id, e.fee)).await
    }
}

async fn line(db: &mut PgConnection, text: String) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO report (line) VALUES ($1)")
        .bind(text)
        .execute(db)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_under_old_names_and_versions_reach_a_consumer_as_the_current_version() {
    let test = "events_under_old_names_and_versions_reach_a_consumer_as_the_current_version";
    let Some(client) = common::connect(test).await else {
        return;
    };
    let writer = TestDb::create(5).await;
    PostgresEventStore::migrate(&writer.pool)
        .await
        .expect("migrations");
    sqlx::raw_sql(include_str!(
        "../../cqrs-postgres/tests/fixtures/old_events.sql"
    ))
    .execute(&writer.pool)
    .await
    .expect("the old rows");
    let store = PostgresEventStore::new(writer.pool.clone());
    let report = TestDb::create(5).await;
    cqrs_nats::consumer::migrate(&report.pool)
        .await
        .expect("consumer migrations");
    sqlx::query("CREATE TABLE report (n bigserial PRIMARY KEY, line text NOT NULL)")
        .execute(&report.pool)
        .await
        .expect("report table");

    let stream = TestStream::new();
    let relay = Relay::new(client.clone(), stream.name.clone())
        .subjects(Subjects::by_category(stream.prefix.clone()))
        .start(&writer.pool)
        .await
        .expect("relay starts");
    let all = store
        .read_all_from(GlobalPosition::START, 1_000)
        .await
        .unwrap();
    relay
        .wait_for(all.last().unwrap().position, PATIENCE)
        .await
        .expect("relayed");

    let consumer = Consumer::new(client.clone(), stream.name.clone())
        .start(PgProjection::new(Report, report.pool.clone()))
        .await
        .expect("consumer starts");
    assert!(
        consumer
            .wait_for(u64::try_from(all.len()).unwrap(), PATIENCE)
            .await,
        "the consumer reaches the last message"
    );
    consumer.shutdown().await.expect("no failure");
    relay.shutdown().await.expect("relay");

    let lines: Vec<String> = sqlx::query_scalar("SELECT line FROM report ORDER BY n")
        .fetch_all(&report.pool)
        .await
        .unwrap();
    assert_eq!(
        lines,
        [
            "Account-1: opened by ada in EUR",
            "Account-1: fee 2",
            "Account-2: opened by bo in CHF",
            "Account-2: fee 1",
            "Account-3: opened by cy in EUR",
            "Account-3: fee 3",
        ]
    );
}

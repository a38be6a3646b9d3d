//! Events stored by earlier releases (rows written by SQL, `tests/fixtures/old_events.sql`)
//! are read as the current versions by the aggregate, by subscriptions filtering on type
//! names in SQL, and by the offline audit. Against a real server, each test in a fresh
//! database.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use cqrs_core::prelude::*;
use cqrs_core::store::audit::Audit;
use cqrs_core::{EventDecodeError, GlobalPosition, Repository, RepositoryOptions, Upcast};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::Subscription;
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the domain, release 3

/// `account.opened` version 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
    pub currency: String,
    pub overdraft: u64,
}

/// Version 1, stored as `account.created`.
#[derive(Debug, Deserialize)]
pub struct OpenedV1 {
    pub owner: String,
}

/// Version 2 added the currency.
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

/// Version 3 added the overdraft, zero for accounts opened before.
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

/// Version 1 of `account.deposited` carried its fee.
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

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = id)]
pub struct Deposit {
    pub id: u32,
    pub amount: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Account {
    owner: String,
    currency: String,
    overdraft: u64,
    balance: u64,
    fees: u64,
}

#[aggregate(event = AccountEvent, error = std::convert::Infallible)]
impl Account {
    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, std::convert::Infallible> {
        Ok(Deposited { amount: cmd.amount })
    }

    #[event_handler]
    fn on_opened(&mut self, e: &Opened) {
        self.owner.clone_from(&e.owner);
        self.currency.clone_from(&e.currency);
        self.overdraft = e.overdraft;
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }

    #[event_handler]
    fn on_fee(&mut self, e: &FeeCharged) {
        self.fees += e.fee;
    }

    #[event_handler(Noted)]
    fn on_noted(&mut self) {}
}

/// Every account's story, in the global order.
#[derive(Debug, Default)]
pub struct Ledger {
    lines: Vec<String>,
}

#[projection(name = "upcast-ledger")]
impl Ledger {
    #[event_handler]
    fn on_opened(&mut self, e: &Opened, meta: &RecordedEvent) {
        self.lines.push(format!(
            "{}: opened by {} in {}, overdraft {}",
            meta.stream_id, e.owner, e.currency, e.overdraft
        ));
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited, meta: &RecordedEvent) {
        self.lines
            .push(format!("{}: deposited {}", meta.stream_id, e.amount));
    }

    #[event_handler]
    fn on_fee(&mut self, e: &FeeCharged, meta: &RecordedEvent) {
        self.lines
            .push(format!("{}: fee {}", meta.stream_id, e.fee));
    }
}

/// Fees only: the old deposits that carried fees reach it only if the SQL type filter
/// includes `account.deposited`.
#[derive(Debug, Default)]
pub struct Fees {
    total: u64,
}

#[projection(name = "upcast-fees")]
impl Fees {
    #[event_handler]
    fn on_fee(&mut self, e: &FeeCharged) {
        self.total += e.fee;
    }
}

// ---------------------------------------------------------------- helpers

/// A fresh database with the store's schema and the checked-in old rows.
async fn old_store() -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(8).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    sqlx::raw_sql(include_str!("fixtures/old_events.sql"))
        .execute(&db.pool)
        .await
        .expect("load the old rows");
    let store = PostgresEventStore::new(db.pool.clone());
    (db, store)
}

fn repository(store: &PostgresEventStore) -> Repository<Account> {
    Repository::new(Arc::new(store.clone()), (), RepositoryOptions::default())
}

async fn last_position(store: &PostgresEventStore) -> GlobalPosition {
    let all = store
        .read_all_from(GlobalPosition::START, 1_000)
        .await
        .unwrap();
    all.last().expect("events").position
}

// ---------------------------------------------------------------- the guarantees

#[tokio::test(flavor = "multi_thread")]
async fn rows_written_as_v1_by_sql_are_loaded_as_v3_by_the_aggregate() {
    let (_db, store) = old_store().await;
    let repository = repository(&store);

    let first = repository.load("Account-1").await.expect("load");
    assert_eq!(first.version, 4, "the stream version stays the rows'");
    assert_eq!(
        first.state,
        Account {
            owner: "ada".into(),
            currency: "EUR".into(),
            overdraft: 0,
            balance: 57,
            fees: 2,
        }
    );
    let second = repository.load("Account-2").await.expect("load");
    assert_eq!(
        (
            second.state.currency.as_str(),
            second.state.balance,
            second.state.fees
        ),
        ("CHF", 20, 1)
    );

    // A command on the old stream appends the current version after the stored rows.
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let committed = bus.execute(Deposit { id: 1, amount: 3 }).await.unwrap();
    assert_eq!(committed.stream_version, 5);
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT event_type, schema_version FROM cqrs_events WHERE stream_id = 'Account-1' ORDER BY stream_version",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("account.created".to_owned(), 1),
            ("account.deposited".to_owned(), 1),
            ("account.noted".to_owned(), 1),
            ("account.deposited".to_owned(), 1),
            ("account.deposited".to_owned(), 2),
        ],
        "reading never rewrites a stored row"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_under_old_names_and_versions_reach_projections_through_the_sql_type_filter() {
    let (db, store) = old_store().await;
    let last = last_position(&store).await;

    let ledger = ReadModel::new(Ledger::default());
    let fees = ReadModel::new(Fees::default());
    let ledger_feed = Subscription::in_memory(ledger.clone())
        .start(&db.pool)
        .await
        .expect("start");
    let fees_feed = Subscription::in_memory(fees.clone())
        .start(&db.pool)
        .await
        .expect("start");
    ledger_feed
        .wait_for(last, PATIENCE)
        .await
        .expect("caught up");
    fees_feed.wait_for(last, PATIENCE).await.expect("caught up");

    assert_eq!(
        ledger.read().await.lines,
        [
            "Account-1: opened by ada in EUR, overdraft 0",
            "Account-1: deposited 50",
            "Account-1: fee 2",
            "Account-1: deposited 7",
            "Account-2: opened by bo in CHF, overdraft 0",
            "Account-2: deposited 20",
            "Account-2: fee 1",
            "Account-3: opened by cy in EUR, overdraft 100",
            "Account-3: deposited 5",
            "Account-3: fee 3",
        ]
    );
    assert_eq!(fees.read().await.total, 6);
    ledger_feed.shutdown().await.expect("clean shutdown");
    fees_feed.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checked_in_old_rows_all_decode_with_the_current_code() {
    let (_db, store) = old_store().await;
    let report = Audit::new()
        .event::<AccountEvent>()
        .run(&store)
        .await
        .expect("audit");
    // Fails when a stored form stops decoding (an upcaster removed, a payload type changed).
    assert!(
        report.is_clean(),
        "stored forms that no longer decode:\n{report}"
    );
    let forms: Vec<_> = report
        .forms
        .iter()
        .map(|f| (f.event_type.as_str(), f.schema_version, f.events, f.read_as))
        .collect();
    assert_eq!(
        forms,
        [
            ("account.created", 1, 1, 1),
            ("account.deposited", 1, 3, 5),
            ("account.deposited", 2, 1, 1),
            ("account.fee_charged", 1, 1, 1),
            ("account.noted", 1, 1, 0),
            ("account.opened", 2, 1, 1),
            ("account.opened", 3, 1, 1),
        ],
        "the sample covers every stored form; add new forms to fixtures/old_events.sql"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_future_version_in_the_store_is_a_typed_error_naming_stream_version_and_type() {
    let (_db, store) = old_store().await;
    sqlx::query(
        "INSERT INTO cqrs_events (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata)
         VALUES ('Account-3', 4, gen_random_uuid(), 'account.fee_charged', 2, '{\"fee\": 1, \"reason\": \"x\"}', '{}')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE cqrs_streams SET version = 4 WHERE stream_id = 'Account-3'")
        .execute(store.pool())
        .await
        .unwrap();
    match repository(&store).load("Account-3").await.unwrap_err() {
        CommandError::Decode {
            stream,
            version,
            source,
        } => {
            assert_eq!((stream.as_str(), version), ("Account-3", 4));
            assert_eq!(
                source,
                EventDecodeError::UnsupportedVersion {
                    name: "account.fee_charged".into(),
                    found: 2,
                    expected: 1
                }
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let report = Audit::new()
        .event::<AccountEvent>()
        .run(&store)
        .await
        .unwrap();
    let failed: Vec<_> = report
        .failures()
        .map(|f| (f.event_type.as_str(), f.schema_version))
        .collect();
    assert_eq!(failed, [("account.fee_charged", 2)]);
}

//! Old stored event versions and names are upcast on read: by aggregates, projections, sagas
//! and the test fixture; an unknown version stays a typed error.
//!
//! The test domain: an account whose events changed shape three times.
#![allow(missing_docs)]

use std::borrow::Cow;

use chrono::Utc;
use cqrs_core::prelude::*;
use cqrs_core::testing::Fixture;
use cqrs_core::{
    Decoded, EventDecodeError, ExpectedVersion, GlobalPosition, NewEvent, Payload, ProjectionError,
    Repository, RepositoryOptions, Snapshot, Upcast,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// Version 3 of `account.opened`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
    pub currency: String,
    pub overdraft: u64,
}

/// Version 1, stored under the old name `account.created`.
#[derive(Debug, Deserialize)]
pub struct OpenedV1 {
    pub owner: String,
}

/// Version 2: the currency was added; version 3 added the overdraft (a raw JSON step).
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

/// Version 1 of `account.deposited` carried the fee; it is now an event of its own.
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

/// Notes were dropped from the model; old ones are read as nothing.
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

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Account, id = id, idempotent)]
pub struct Deposit {
    pub id: u32,
    pub amount: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    owner: String,
    currency: String,
    balance: u64,
    fees: u64,
    applied: u32,
}

#[aggregate(event = AccountEvent, error = std::convert::Infallible, snapshot = 2)]
impl Account {
    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, std::convert::Infallible> {
        Ok(Deposited { amount: cmd.amount })
    }

    #[event_handler]
    fn on_opened(&mut self, e: &Opened) {
        self.owner.clone_from(&e.owner);
        self.currency.clone_from(&e.currency);
        self.applied += 1;
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
        self.applied += 1;
    }

    #[event_handler]
    fn on_fee(&mut self, e: &FeeCharged) {
        self.fees += e.fee;
        self.applied += 1;
    }

    #[event_handler(Noted)]
    fn on_noted(&mut self) {
        self.applied += 1;
    }
}

/// A read model of every opened account's owner and its movements, in order.
#[derive(Debug, Default)]
pub struct Ledger {
    lines: Vec<String>,
}

#[projection(name = "ledger")]
impl Ledger {
    #[event_handler]
    fn on_opened(&mut self, e: &Opened, meta: &RecordedEvent) {
        self.lines.push(format!(
            "{} opened by {} in {} (overdraft {})",
            meta.stream_id, e.owner, e.currency, e.overdraft
        ));
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.lines.push(format!("deposited {}", e.amount));
    }

    #[event_handler]
    fn on_fee(&mut self, e: &FeeCharged) {
        self.lines.push(format!("fee {}", e.fee));
    }
}

/// Only fees: it must still read the old deposits that carried them.
#[derive(Debug, Default)]
pub struct Fees {
    total: u64,
}

#[projection(name = "fees")]
impl Fees {
    #[event_handler]
    fn on_fee(&mut self, e: &FeeCharged) {
        self.total += e.fee;
    }
}

/// Follows accounts by owner, and deposits and fees by amount.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Follow;

#[saga(commands(Deposit))]
impl Follow {
    #[event_handler(key = owner, start)]
    fn on_opened(&mut self, _: &Opened) {}

    #[event_handler(key = amount)]
    fn on_deposited(&mut self, _: &Deposited) {}

    #[event_handler(key = fee)]
    fn on_fee(&mut self, _: &FeeCharged) {}
}

/// Deposits only.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Deposits;

#[saga(commands(Deposit))]
impl Deposits {
    #[event_handler(key = amount, start)]
    fn on_deposited(&mut self, _: &Deposited) {}
}

fn stored(event_type: &'static str, version: u32, payload: Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: Cow::Borrowed(event_type),
        schema_version: version,
        payload: Payload::from(payload),
        metadata: Metadata::default(),
    }
}

fn recorded(position: u64, event_type: &str, version: u32, payload: Value) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: version,
        stream_id: "Account-1".into(),
        stream_version: position,
        position: GlobalPosition(position),
        recorded_at: Utc::now(),
        payload: Payload::from(payload),
        metadata: Metadata::default(),
    }
}

/// The history of one account as the first release of the code wrote it.
fn old_history() -> Vec<NewEvent> {
    vec![
        stored("account.created", 1, json!({ "owner": "ada" })),
        stored("account.deposited", 1, json!({ "amount": 50, "fee": 2 })),
        stored("account.noted", 1, json!({ "text": "called" })),
        stored("account.deposited", 1, json!({ "amount": 7, "fee": 0 })),
        stored(
            "account.opened",
            2,
            json!({ "owner": "ada", "currency": "CHF" }),
        ),
    ]
}

fn repository(store: &InMemoryEventStore) -> Repository<Account> {
    Repository::new(
        std::sync::Arc::new(store.clone()),
        (),
        RepositoryOptions {
            snapshot_every: None,
            ..RepositoryOptions::default()
        },
    )
}

#[tokio::test]
async fn old_versions_and_names_are_loaded_as_the_current_version_by_the_aggregate() {
    let store = InMemoryEventStore::new();
    store
        .append("Account-1", ExpectedVersion::NoStream, old_history())
        .await
        .unwrap();
    let loaded = repository(&store).load("Account-1").await.unwrap();
    // Five stored events: the first deposit split into two, the note dropped.
    assert_eq!(loaded.version, 5);
    assert_eq!(loaded.state.owner, "ada");
    assert_eq!(loaded.state.currency, "CHF");
    assert_eq!(loaded.state.balance, 57);
    assert_eq!(loaded.state.fees, 2);
    assert_eq!(loaded.state.applied, 5);
    // Nothing stored was rewritten.
    let rows = store.load_stream("Account-1", 1).await.unwrap();
    let forms: Vec<_> = rows
        .iter()
        .map(|r| (r.event_type.as_str(), r.schema_version))
        .collect();
    assert_eq!(
        forms,
        [
            ("account.created", 1),
            ("account.deposited", 1),
            ("account.noted", 1),
            ("account.deposited", 1),
            ("account.opened", 2)
        ]
    );
}

#[tokio::test]
async fn a_command_on_an_upcast_history_appends_after_the_stored_version() {
    let store = InMemoryEventStore::new();
    store
        .append("Account-1", ExpectedVersion::NoStream, old_history())
        .await
        .unwrap();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .build();
    let committed = bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
    assert_eq!(committed.stream_version, 6);
    let last = store.load_stream("Account-1", 6).await.unwrap();
    assert_eq!(
        (last[0].event_type.as_str(), last[0].schema_version),
        ("account.deposited", 2)
    );
}

#[tokio::test]
async fn an_unknown_future_version_is_a_typed_error_naming_stream_version_and_type() {
    let store = InMemoryEventStore::new();
    store
        .append(
            "Account-1",
            ExpectedVersion::NoStream,
            vec![
                stored("account.created", 1, json!({ "owner": "ada" })),
                stored("account.deposited", 9, json!({ "amount": 1 })),
            ],
        )
        .await
        .unwrap();
    let error = repository(&store).load("Account-1").await.unwrap_err();
    match error {
        CommandError::Decode {
            stream,
            version,
            source,
        } => {
            assert_eq!((stream.as_str(), version), ("Account-1", 2));
            assert_eq!(
                source,
                EventDecodeError::UnsupportedVersion {
                    name: "account.deposited".into(),
                    found: 9,
                    expected: 2
                }
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_snapshot_of_another_version_is_ignored_and_the_state_rebuilt_from_upcast_events() {
    let store = InMemoryEventStore::new();
    store
        .append("Account-1", ExpectedVersion::NoStream, old_history())
        .await
        .unwrap();
    // A snapshot the previous state layout (version 1) wrote: wrong on purpose.
    store
        .save_snapshot(Snapshot {
            stream_id: "Account-1".into(),
            stream_version: 5,
            schema_version: 1,
            state: json!({ "owner": "bob", "currency": "USD", "balance": 999, "fees": 0, "applied": 0 }),
        })
        .await
        .unwrap();
    let loaded = repository(&store).load("Account-1").await.unwrap();
    assert_eq!(
        (loaded.state.owner.as_str(), loaded.state.balance),
        ("ada", 57)
    );

    // A snapshot of the current version is used as is.
    store
        .save_snapshot(Snapshot {
            stream_id: "Account-1".into(),
            stream_version: 5,
            schema_version: 2,
            state: json!({ "owner": "carl", "currency": "EUR", "balance": 1, "fees": 0, "applied": 0 }),
        })
        .await
        .unwrap();
    let loaded = repository(&store).load("Account-1").await.unwrap();
    assert_eq!(loaded.state.owner, "carl");
}

#[tokio::test]
async fn a_projection_reads_old_names_versions_and_split_events_in_order() {
    let ledger = ReadModel::new(Ledger::default());
    let fees = ReadModel::new(Fees::default());
    let history = [
        recorded(1, "account.created", 1, json!({ "owner": "ada" })),
        recorded(2, "account.deposited", 1, json!({ "amount": 50, "fee": 2 })),
        recorded(3, "account.noted", 1, json!({ "text": "called" })),
        recorded(4, "account.deposited", 2, json!({ "amount": 3 })),
        recorded(
            5,
            "account.opened",
            3,
            json!({ "owner": "bo", "currency": "EUR", "overdraft": 10 }),
        ),
        recorded(6, "account.fee_charged", 1, json!({ "fee": 1 })),
    ];
    for event in &history {
        ledger.project(event).await.unwrap();
        fees.project(event).await.unwrap();
    }
    assert_eq!(
        ledger.read().await.lines,
        [
            "Account-1 opened by ada in EUR (overdraft 0)",
            "deposited 50",
            "fee 2",
            "deposited 3",
            "Account-1 opened by bo in EUR (overdraft 10)",
            "fee 1",
        ]
    );
    assert_eq!(fees.read().await.total, 3);
}

#[tokio::test]
async fn a_projection_fails_loudly_on_an_unknown_future_version() {
    let ledger = ReadModel::new(Ledger::default());
    let error = ledger
        .project(&recorded(7, "account.opened", 4, json!({})))
        .await
        .unwrap_err();
    match error {
        ProjectionError::Decode {
            projection,
            stream_id,
            stream_version,
            source,
        } => {
            assert_eq!(
                (projection, stream_id.as_str(), stream_version),
                ("ledger", "Account-1", 7)
            );
            assert_eq!(
                source,
                EventDecodeError::UnsupportedVersion {
                    name: "account.opened".into(),
                    found: 4,
                    expected: 3
                }
            );
        }
        other @ ProjectionError::Handler { .. } => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn the_type_filters_include_old_names_and_the_sources_of_split_events() {
    // Without the old names a subscription filtering on these would never deliver them.
    assert_eq!(
        <Ledger as Projection>::EVENT_TYPES,
        [
            "account.opened",
            "account.created",
            "account.deposited",
            "account.noted",
            "account.fee_charged"
        ]
    );
    assert_eq!(
        <Fees as Projection>::EVENT_TYPES,
        ["account.fee_charged", "account.deposited", "account.noted"]
    );
    assert!(AccountEvent::declares("account.created"));
    assert_eq!(
        AccountEvent::ALIASES,
        [cqrs_core::EventAlias {
            alias: "account.created",
            name: "account.opened"
        }]
    );
}

#[test]
fn from_payload_refuses_a_stored_event_that_stands_for_several() {
    let payload = Payload::from(json!({ "amount": 5, "fee": 1 }));
    assert_eq!(
        AccountEvent::from_payload("account.deposited", 1, &payload),
        Err(EventDecodeError::NotOne {
            name: "account.deposited".into(),
            version: 1,
            count: 2
        })
    );
    // One event out of the split is still one.
    let payload = Payload::from(json!({ "amount": 5, "fee": 0 }));
    assert_eq!(
        AccountEvent::from_payload("account.deposited", 1, &payload),
        Ok(AccountEvent::Deposited(Deposited { amount: 5 }))
    );
    assert_eq!(
        AccountEvent::decode_all("account.noted", 1, &Payload::from(json!({}))),
        Ok(Decoded::Many(Vec::new()))
    );
}

#[test]
fn a_raw_upcaster_refusing_a_payload_is_a_typed_error() {
    let payload = Payload::from(json!(["not", "an", "object"]));
    assert_eq!(
        AccountEvent::from_payload("account.opened", 2, &payload),
        Err(EventDecodeError::Upcast {
            name: "account.opened".into(),
            from: 2,
            message: "not an object".into()
        })
    );
    // A payload the chain's typed step cannot read names the field.
    let payload = Payload::from(json!({ "owner": 5 }));
    match AccountEvent::from_payload("account.created", 1, &payload) {
        Err(EventDecodeError::Payload { name, path, .. }) => {
            assert_eq!((name.as_str(), path.as_str()), ("account.created", "owner"));
        }
        other => panic!("expected a payload error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_fixture_accepts_old_versions_in_given() {
    let account = Fixture::<Account>::default()
        .given_stored([
            ("account.created", 1, json!({ "owner": "ada" })),
            ("account.deposited", 1, json!({ "amount": 10, "fee": 1 })),
        ])
        .when(Deposit { id: 1, amount: 5 })
        .await
        .then_expect_events([AccountEvent::Deposited(Deposited { amount: 5 })]);
    assert_eq!(
        (account.owner.as_str(), account.balance, account.fees),
        ("ada", 15, 1)
    );
}

#[test]
#[should_panic(expected = "given stored event `account.opened` version 7")]
fn the_fixture_refuses_an_unknown_version_in_given() {
    let _ = Fixture::<Account>::default().given_stored([("account.opened", 7, json!({}))]);
}

#[test]
fn the_current_version_reads_as_is_under_its_name_and_its_alias() {
    let payload = Payload::from(json!({ "owner": "x", "currency": "EUR", "overdraft": 1 }));
    let opened = AccountEvent::Opened(Opened {
        owner: "x".into(),
        currency: "EUR".into(),
        overdraft: 1,
    });
    assert_eq!(
        AccountEvent::from_payload("account.opened", 3, &payload),
        Ok(opened.clone())
    );
    assert_eq!(
        AccountEvent::from_payload("account.created", 3, &payload),
        Ok(opened)
    );
}

#[test]
fn a_saga_finds_the_instance_of_an_event_stored_under_an_old_name_and_version() {
    use cqrs_core::saga::Saga;
    let association = Follow::associate(&recorded(
        1,
        "account.created",
        1,
        json!({ "owner": "ada" }),
    ))
    .unwrap()
    .expect("an old `account.created` is an `Opened`");
    assert_eq!((association.key.as_str(), association.start), ("ada", true));
    // A split into one event the saga handles is that event.
    let association = Follow::associate(&recorded(
        2,
        "account.deposited",
        1,
        json!({ "amount": 9, "fee": 0 }),
    ))
    .unwrap()
    .expect("a deposit");
    assert_eq!(association.key, "9");
    assert!(<Follow as Saga>::EVENT_TYPES.contains(&"account.created"));
}

#[test]
fn a_saga_refuses_an_event_split_into_several_it_handles() {
    use cqrs_core::saga::{Saga, SagaError};
    // One stored event, two events for the saga: choosing one would lose the other.
    let error = Follow::associate(&recorded(
        2,
        "account.deposited",
        1,
        json!({ "amount": 9, "fee": 1 }),
    ))
    .unwrap_err();
    match error {
        SagaError::Decode { source, .. } => assert_eq!(
            source,
            EventDecodeError::NotOne {
                name: "account.deposited".into(),
                version: 1,
                count: 2
            }
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_audit_reports_every_stored_form_and_whether_it_decodes() {
    use cqrs_core::store::audit::Audit;
    let store = InMemoryEventStore::new();
    store
        .append("Account-1", ExpectedVersion::NoStream, old_history())
        .await
        .unwrap();
    let audit = Audit::new().event::<AccountEvent>().page_size(2);
    let report = audit.run(&store).await.unwrap();
    assert!(report.is_clean(), "{report}");
    let forms: Vec<_> = report
        .forms
        .iter()
        .map(|f| (f.event_type.as_str(), f.schema_version, f.events, f.read_as))
        .collect();
    assert_eq!(
        forms,
        [
            ("account.created", 1, 1, 1),
            ("account.deposited", 1, 2, 3),
            ("account.noted", 1, 1, 0),
            ("account.opened", 2, 1, 1),
        ]
    );

    // A form the code cannot read, and a name no enum declares, fail the audit.
    store
        .append(
            "Account-2",
            ExpectedVersion::NoStream,
            vec![
                stored("account.opened", 5, json!({})),
                stored("account.frozen", 1, json!({})),
            ],
        )
        .await
        .unwrap();
    let report = audit.run(&store).await.unwrap();
    assert!(!report.is_clean());
    let failures: Vec<_> = report
        .failures()
        .map(|f| {
            let failure = f.first_failure.as_ref().unwrap();
            (
                f.event_type.as_str(),
                f.schema_version,
                failure.stream_id.as_str(),
                failure.stream_version,
            )
        })
        .collect();
    assert_eq!(
        failures,
        [
            ("account.frozen", 1, "Account-2", 2),
            ("account.opened", 5, "Account-2", 1)
        ]
    );
    assert!(
        report
            .to_string()
            .contains("account.opened | 5 | 1 | 0 | 0")
    );
}

#[test]
fn a_saga_takes_the_one_event_it_handles_out_of_a_split() {
    use cqrs_core::saga::Saga;
    // The fee charged beside the deposit is not this saga's.
    let association = Deposits::associate(&recorded(
        2,
        "account.deposited",
        1,
        json!({ "amount": 9, "fee": 1 }),
    ))
    .unwrap()
    .expect("the deposit");
    assert_eq!(association.key, "9");
    assert_eq!(
        Deposits::associate(&recorded(3, "account.fee_charged", 1, json!({ "fee": 1 }))).unwrap(),
        None
    );
}

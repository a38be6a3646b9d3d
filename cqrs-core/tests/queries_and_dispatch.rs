//! The query bus, JSON dispatch by name, and the given/when/then fixture.

mod support;

use std::collections::HashMap;

use cqrs_core::middleware::Validation;
use cqrs_core::prelude::*;
use cqrs_core::testing::Fixture;
use cqrs_core::{CommandDispatcher, DispatchError, DuplicateName, QueryDispatcher};
use support::*;

#[derive(Debug, Clone, Deserialize, validator::Validate, Query)]
#[query(output = u64, name = "account.balance", validate)]
struct GetBalance {
    #[validate(range(min = 1))]
    id: u32,
}

#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = Vec<String>)]
struct Owners;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown account {0}")]
struct Unknown(u32);

#[derive(Default)]
struct Balances {
    by_id: HashMap<String, u64>,
    owners: Vec<String>,
}

#[projection]
impl Balances {
    #[event_handler]
    fn on_opened(&mut self, e: &Opened, recorded: &RecordedEvent) {
        self.by_id.insert(recorded.stream_id.clone(), 0);
        self.owners.push(e.owner.clone());
    }

    #[event_handler]
    async fn on_deposited(&mut self, e: &Deposited, recorded: &RecordedEvent) {
        // An async handler: the projection awaits it before the next event.
        tokio::task::yield_now().await;
        *self.by_id.entry(recorded.stream_id.clone()).or_default() += e.amount;
    }

    #[query_handler]
    fn balance(&self, q: &GetBalance) -> Result<u64, Unknown> {
        self.by_id
            .get(&format!("Account-{}", q.id))
            .copied()
            .ok_or(Unknown(q.id))
    }

    #[query_handler]
    async fn owners(&self, _q: &Owners) -> Result<Vec<String>, Unknown> {
        tokio::task::yield_now().await;
        Ok(self.owners.clone())
    }
}

type Commands = CommandBus<(cqrs_core::Repository<Account>, ())>;
type Queries = QueryBus<(ReadModel<Balances>, ()), (Validation, ())>;

fn setup() -> (InMemoryEventStore, Commands, Queries) {
    let store = InMemoryEventStore::new();
    let balances = ReadModel::new(Balances::default());
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(limits())
        .subscribe(balances.clone())
        .build();
    let queries = QueryBus::builder()
        .handler(balances)
        .middleware(Validation)
        .build();
    (store, bus, queries)
}

#[tokio::test]
async fn queries_are_answered_by_their_handler_with_typed_output_and_errors() {
    let (_, bus, queries) = setup();
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    bus.execute(Deposit { id: 1, amount: 40 }).await.unwrap();
    let balance: u64 = queries.execute(GetBalance { id: 1 }).await.unwrap();
    assert_eq!(balance, 40);
    let owners: Vec<String> = queries.execute(Owners).await.unwrap();
    assert_eq!(owners, ["ada"]);
    match queries.execute(GetBalance { id: 2 }).await {
        Err(QueryError::Handler(error)) => assert_eq!(error, Unknown(2)),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    match queries.execute(GetBalance { id: 0 }).await {
        Err(QueryError::Invalid(errors)) => assert_eq!(errors.fields[0].path, "id"),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn json_commands_are_dispatched_by_wire_name() {
    let (store, bus, _) = setup();
    let commands = CommandDispatcher::new(bus).unwrap();
    assert_eq!(
        commands.names(),
        [
            "account.close",
            "account.deposit",
            "account.open",
            "account.rename",
            "account.slow_deposit",
            "account.withdraw"
        ]
    );
    commands
        .dispatch_json("account.open", br#"{"id": 3, "owner": "bob"}"#)
        .await
        .unwrap();
    let committed = commands
        .dispatch_json("account.deposit", br#"{"id": 3, "amount": 5}"#)
        .await
        .unwrap();
    assert_eq!(committed.stream_version, 2);
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn unknown_names_and_malformed_json_are_typed_errors_and_write_nothing() {
    let (store, bus, _) = setup();
    let commands = CommandDispatcher::new(bus).unwrap();
    match commands.dispatch_json("account.transfer", b"{}").await {
        Err(DispatchError::UnknownName { kind, name }) => {
            assert_eq!((kind, name.as_str()), ("command", "account.transfer"));
        }
        other => panic!("expected UnknownName, got {other:?}"),
    }
    for (body, expected_path) in [
        (&br#"{"id": 3, "amount": "five"}"#[..], "amount"),
        (br#"{"id": 3}"#, "."),
        (br#"{"id": 3, "amount": 1} trailing"#, "."),
        (b"not json", "."),
    ] {
        match commands.dispatch_json("account.deposit", body).await {
            Err(DispatchError::Malformed {
                name,
                path,
                message,
            }) => {
                assert_eq!(name, "account.deposit");
                assert_eq!(path, expected_path, "{message}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }
    match commands
        .dispatch_json("account.withdraw", br#"{"id": 9, "amount": 1}"#)
        .await
    {
        Err(DispatchError::Failed {
            name,
            kind,
            message,
            ..
        }) => {
            assert_eq!(name, "account.withdraw");
            assert_eq!(kind, cqrs_core::ErrorKind::Rejected);
            assert_eq!(message, AccountError::NotOpen.to_string());
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(store.is_empty());
}

#[tokio::test]
async fn json_queries_are_dispatched_by_name_and_answer_json() {
    let (_, bus, queries) = setup();
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    let answers = QueryDispatcher::new(queries).unwrap();
    assert_eq!(answers.names(), ["Owners", "account.balance"]);
    assert_eq!(
        answers
            .dispatch_json("account.balance", br#"{"id": 1}"#)
            .await
            .unwrap(),
        serde_json::json!(0)
    );
    assert_eq!(
        answers.dispatch_json("Owners", b"null").await.unwrap(),
        serde_json::json!(["ada"])
    );
    match answers
        .dispatch_json("account.balance", br#"{"id": -1}"#)
        .await
    {
        Err(DispatchError::Malformed { path, .. }) => assert_eq!(path, "id"),
        other => panic!("expected Malformed, got {other:?}"),
    }
    match answers.dispatch_json("nope", b"{}").await {
        Err(DispatchError::UnknownName { kind: "query", .. }) => {}
        other => panic!("expected UnknownName, got {other:?}"),
    }
}

// A second aggregate whose command reuses a wire name of the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pinged;

#[derive(Debug, Clone, PartialEq, Event)]
enum PingEvent {
    #[event(name = "ping.pinged")]
    Pinged(Pinged),
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Pinger, id = id, name = "account.open")]
struct Ping {
    id: u32,
}

#[derive(Debug, Default)]
struct Pinger;

#[aggregate(event = PingEvent, error = AccountError)]
impl Pinger {
    #[command_handler]
    fn ping(&self, _cmd: Ping) -> Result<Pinged, AccountError> {
        Ok(Pinged)
    }

    #[event_handler]
    fn on_pinged(&mut self, _e: &Pinged) {}
}

#[tokio::test]
async fn two_commands_with_one_wire_name_are_refused_when_building_the_dispatcher() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .aggregate::<Pinger>(())
        .build();
    // Typed execution on a bus with two aggregates finds each by type.
    bus.execute(Ping { id: 1 }).await.unwrap();
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    match CommandDispatcher::new(bus) {
        Err(error) => assert_eq!(
            error,
            DuplicateName {
                kind: "command",
                name: "account.open"
            }
        ),
        Ok(_) => panic!("the duplicate name was accepted"),
    }
}

#[tokio::test]
async fn the_fixture_checks_events_and_errors_without_a_store() {
    let state = Fixture::<Account>::new(limits())
        .given([
            AccountEvent::Opened(Opened {
                owner: "ada".into(),
            }),
            AccountEvent::Deposited(Deposited { amount: 5 }),
        ])
        .when(Withdraw { id: 1, amount: 3 })
        .await
        .then_expect_events([AccountEvent::Withdrawn(Withdrawn { amount: 3 })]);
    assert_eq!(state.balance, 2);

    Fixture::<Account>::new(limits())
        .given([AccountEvent::Opened(Opened {
            owner: "ada".into(),
        })])
        .when(Withdraw { id: 1, amount: 3 })
        .await
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 0,
            requested: 3,
        });

    Fixture::<Account>::new(limits())
        .given([
            AccountEvent::Opened(Opened {
                owner: "ada".into(),
            }),
            AccountEvent::Closed,
        ])
        .when(Close { id: 1 })
        .await
        .then_expect_events([]);
}

#[tokio::test]
#[should_panic(expected = "the command produced other events")]
async fn the_fixture_fails_when_the_events_differ() {
    Fixture::<Account>::new(limits())
        .given([AccountEvent::Opened(Opened {
            owner: "ada".into(),
        })])
        .when(Deposit { id: 1, amount: 3 })
        .await
        .then_expect_events([AccountEvent::Deposited(Deposited { amount: 4 })]);
}

#[test]
fn events_serialize_without_the_variant_name_and_decode_with_typed_errors() {
    let event = AccountEvent::Deposited(Deposited { amount: 7 });
    assert_eq!(event.event_type(), "account.deposited");
    assert_eq!(event.schema_version(), 1);
    assert_eq!(
        event.to_payload().unwrap(),
        serde_json::json!({ "amount": 7 })
    );
    assert_eq!(
        AccountEvent::Closed.to_payload().unwrap(),
        serde_json::Value::Null
    );
    let decoded = AccountEvent::from_payload(
        "account.deposited",
        1,
        &serde_json::json!({ "amount": 7 }).into(),
    )
    .unwrap();
    assert_eq!(decoded, event);
    assert_eq!(
        AccountEvent::from_payload("account.exploded", 1, &serde_json::json!({}).into()),
        Err(cqrs_core::EventDecodeError::UnknownType {
            name: "account.exploded".into()
        })
    );
    assert_eq!(
        AccountEvent::from_payload(
            "account.deposited",
            2,
            &serde_json::json!({ "amount": 7 }).into()
        ),
        Err(cqrs_core::EventDecodeError::UnsupportedVersion {
            name: "account.deposited".into(),
            found: 2,
            expected: 1
        })
    );
    match AccountEvent::from_payload(
        "account.deposited",
        1,
        &serde_json::json!({ "amount": -1 }).into(),
    ) {
        Err(cqrs_core::EventDecodeError::Payload { name, path, .. }) => assert_eq!(
            (name.as_str(), path.as_str()),
            ("account.deposited", "amount")
        ),
        other => panic!("expected a payload error, got {other:?}"),
    }
}

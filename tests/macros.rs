//! What the macros generate, exercised through `cqrs_core` the way a service uses it: a small
//! bank domain runs on the in-memory store, and each test states one guarantee.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use cqrs_core::middleware::Validation;
use cqrs_core::{
    Aggregate, Command, CommandBus, CommandContext, CommandDispatcher, CommandError, Event,
    EventDecodeError, EventPayload, EventStore, InMemoryEventStore, IntoEvents, Metadata,
    Projection, ProjectionError, Query, QueryBus, QueryDispatcher, QueryError, ReadModel,
    RecordedEvent, aggregate, projection,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use validator::Validate;

// ---------------------------------------------------------------- the domain

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Withdrawn {
    pub amount: u64,
}

/// Recorded for auditors; the account's state does not depend on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NoteAdded {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum AccountEvent {
    #[event(name = "account.opened")]
    Opened(Opened),
    #[event(name = "account.deposited", version = 2)]
    Deposited(Deposited),
    Withdrawn(Withdrawn),
    NoteAdded(NoteAdded),
    Closed,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("account is closed")]
    Closed,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: u64, asked: u64 },
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Account, id = number, name = "account.open")]
struct Open {
    pub number: u64,
    pub owner: String,
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = number)]
struct Deposit {
    pub number: u64,
    pub amount: u64,
}

#[derive(Debug, Deserialize, Validate, Command)]
#[command(aggregate = Account, id = number, validate)]
struct Withdraw {
    pub number: u64,
    #[validate(range(min = 1))]
    pub amount: u64,
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = number)]
struct AddNote {
    pub number: u64,
    pub text: String,
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = number, name = "account.close")]
struct Close {
    pub number: u64,
}

/// What the account's handlers borrow besides the state.
struct Bank {
    pub max_deposit: u64,
    pub opened: AtomicU64,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
    closed: bool,
}

#[aggregate(
    event = AccountEvent,
    error = AccountError,
    services = Bank,
    snapshot = 2,
    ignore(NoteAdded)
)]
impl Account {
    // By value, async, asking for the context: the generated code clones the command.
    #[command_handler]
    async fn open(
        &self,
        command: Open,
        ctx: &CommandContext,
        bank: &Bank,
    ) -> Result<Opened, AccountError> {
        bank.opened.fetch_add(1, Ordering::SeqCst);
        // Stands in for a call to another service.
        let owner = std::future::ready(command.owner).await;
        Ok(Opened {
            owner: format!("{owner} ({})", ctx.aggregate_id),
        })
    }

    #[command_handler]
    fn deposit(&self, command: &Deposit, bank: &Bank) -> Result<Deposited, AccountError> {
        self.ensure_open()?;
        Ok(Deposited {
            amount: command.amount.min(bank.max_deposit),
        })
    }

    #[command_handler]
    fn withdraw(&self, command: &Withdraw) -> Result<Vec<AccountEvent>, AccountError> {
        self.ensure_open()?;
        if command.amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                asked: command.amount,
            });
        }
        Ok(vec![AccountEvent::Withdrawn(Withdrawn {
            amount: command.amount,
        })])
    }

    #[command_handler]
    fn add_note(&self, command: &AddNote) -> Result<NoteAdded, AccountError> {
        Ok(NoteAdded {
            text: command.text.clone(),
        })
    }

    #[command_handler]
    async fn close(&self, _: &Close) -> Result<Option<AccountEvent>, AccountError> {
        let closed = std::future::ready(self.closed).await;
        Ok((!closed).then_some(AccountEvent::Closed))
    }

    #[event_handler]
    fn on_opened(&mut self, event: &Opened) {
        self.owner = Some(event.owner.clone());
    }

    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }

    #[event_handler]
    fn on_withdrawn(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
    }

    #[event_handler(Closed)]
    fn on_closed(&mut self) {
        self.closed = true;
    }

    // Unmarked methods stay as they are.
    fn ensure_open(&self) -> Result<(), AccountError> {
        if self.closed {
            Err(AccountError::Closed)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Deserialize, Query)]
#[query(output = u64)]
struct GetBalance {
    pub number: u64,
}

#[derive(Debug, Deserialize, Query)]
#[query(output = Vec<String>, name = "accounts.owners")]
struct ListOwners;

#[derive(Debug, thiserror::Error)]
#[error("no account {0}")]
struct NoSuchAccount(u64);

#[derive(Debug, thiserror::Error)]
#[error("a withdrawal of {0} exceeds what this read model has seen deposited")]
struct Overdrawn(u64);

/// Balances by stream, fed by the bus, answering queries.
#[derive(Debug, Default)]
struct Balances {
    by_stream: HashMap<String, u64>,
    owners: Vec<String>,
}

#[projection(name = "balances.v1")]
impl Balances {
    #[event_handler]
    fn on_opened(&mut self, event: &Opened) {
        self.owners.push(event.owner.clone());
    }

    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited, recorded: &RecordedEvent) {
        *self
            .by_stream
            .entry(recorded.stream_id.clone())
            .or_default() += event.amount;
    }

    #[event_handler]
    async fn on_withdrawn(
        &mut self,
        event: &Withdrawn,
        recorded: &RecordedEvent,
    ) -> Result<(), Overdrawn> {
        let amount = std::future::ready(event.amount).await;
        let balance = self
            .by_stream
            .entry(recorded.stream_id.clone())
            .or_default();
        *balance = balance.checked_sub(amount).ok_or(Overdrawn(amount))?;
        Ok(())
    }

    #[query_handler]
    fn balance(&self, query: &GetBalance) -> Result<u64, NoSuchAccount> {
        self.by_stream
            .get(&format!("Account-{}", query.number))
            .copied()
            .ok_or(NoSuchAccount(query.number))
    }

    #[query_handler]
    async fn owners(&self, _: &ListOwners) -> Result<Vec<String>, NoSuchAccount> {
        Ok(std::future::ready(self.owners.clone()).await)
    }
}

/// A read model kept in a caller-supplied context, as a database read model keeps its rows in
/// the transaction it is handed.
#[derive(Debug, Default)]
struct AuditLog;

#[projection(context = Vec<String>)]
impl AuditLog {
    #[event_handler]
    fn on_note(&self, event: &NoteAdded, log: &mut Vec<String>, recorded: &RecordedEvent) {
        log.push(format!("{}: {}", recorded.stream_id, event.text));
    }
}

fn bank() -> Bank {
    Bank {
        max_deposit: 1_000,
        opened: AtomicU64::new(0),
    }
}

fn recorded(event: &AccountEvent, stream_id: &str, version: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: cqrs_core::prelude::Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        stream_id: stream_id.to_owned(),
        stream_version: version,
        position: cqrs_core::GlobalPosition(version),
        recorded_at: chrono::Utc::now(),
        payload: event.to_payload().unwrap(),
        metadata: Metadata::default(),
    }
}

// ---------------------------------------------------------------- #[derive(Command)]

#[test]
fn command_name_defaults_to_the_type_name_and_can_be_pinned() {
    assert_eq!(<Deposit as Command>::NAME, "Deposit");
    assert_eq!(<Open as Command>::NAME, "account.open");
    assert_eq!(<Close as Command>::NAME, "account.close");
}

#[test]
fn command_aggregate_id_is_the_id_field_as_a_string() {
    let command = Deposit {
        number: 42,
        amount: 1,
    };
    assert_eq!(command.aggregate_id(), "42");
}

#[test]
fn command_validate_runs_the_validator_rules_only_when_asked() {
    let invalid = Withdraw {
        number: 1,
        amount: 0,
    };
    let errors = Command::validate(&invalid).unwrap_err();
    assert_eq!(errors.fields.len(), 1);
    assert_eq!(errors.fields[0].path, "amount");
    assert_eq!(errors.fields[0].code, "range");
    assert!(
        Command::validate(&Withdraw {
            number: 1,
            amount: 1
        })
        .is_ok()
    );
    // Without `validate`, the trait's default accepts everything.
    assert!(
        Command::validate(&Deposit {
            number: 1,
            amount: 0
        })
        .is_ok()
    );
}

#[derive(Debug, Command)]
#[command(aggregate = Account, id = key)]
struct Tagged<T: Send + Sync + 'static> {
    pub key: String,
    pub tag: T,
}

#[test]
fn generic_commands_keep_their_parameters() {
    let command = Tagged {
        key: "k".to_owned(),
        tag: 7_u8,
    };
    assert_eq!(command.aggregate_id(), "k");
    assert_eq!(command.tag, 7);
    assert_eq!(<Tagged<u8> as Command>::NAME, "Tagged");
}

mod renamed {
    // A crate that re-exports the runtime under another path.
    pub use cqrs_core as runtime;
}

#[derive(Debug, renamed::runtime::Command)]
#[command(aggregate = Account, id = number, crate = "renamed::runtime")]
struct Freeze {
    pub number: u64,
}

#[test]
fn generated_code_names_the_crate_given_by_the_crate_key() {
    assert_eq!(<Freeze as Command>::NAME, "Freeze");
    assert_eq!(Freeze { number: 3 }.aggregate_id(), "3");
}

// ---------------------------------------------------------------- #[derive(Event)]

#[test]
fn event_names_are_pinned_or_default_to_enum_dot_variant() {
    let types: Vec<_> = AccountEvent::TYPES
        .iter()
        .map(|t| (t.name, t.version, t.variant))
        .collect();
    assert_eq!(
        types,
        vec![
            ("account.opened", 1, "Opened"),
            ("account.deposited", 2, "Deposited"),
            ("AccountEvent.Withdrawn", 1, "Withdrawn"),
            ("AccountEvent.NoteAdded", 1, "NoteAdded"),
            ("AccountEvent.Closed", 1, "Closed"),
        ]
    );
    let deposited = AccountEvent::Deposited(Deposited { amount: 1 });
    assert_eq!(deposited.event_type(), "account.deposited");
    assert_eq!(deposited.schema_version(), 2);
    assert_eq!(AccountEvent::Closed.event_type(), "AccountEvent.Closed");
    assert!(AccountEvent::declares("account.opened"));
    assert!(!AccountEvent::declares("Opened"));
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let events = [
        AccountEvent::Opened(Opened {
            owner: "ada".to_owned(),
        }),
        AccountEvent::Deposited(Deposited { amount: 5 }),
        AccountEvent::Closed,
    ];
    for event in events {
        let payload = event.to_payload().unwrap();
        let decoded =
            AccountEvent::from_payload(event.event_type(), event.schema_version(), &payload)
                .unwrap();
        assert_eq!(decoded, event);
    }
    assert_eq!(
        AccountEvent::Deposited(Deposited { amount: 5 })
            .to_payload()
            .unwrap(),
        json!({"amount": 5})
    );
    assert_eq!(AccountEvent::Closed.to_payload().unwrap(), json!(null));
}

#[test]
fn decoding_an_unknown_name_a_wrong_version_or_a_bad_payload_is_a_typed_error() {
    assert_eq!(
        AccountEvent::from_payload("Deposited", 2, &json!({"amount": 1}).into()),
        Err(EventDecodeError::UnknownType {
            name: "Deposited".to_owned()
        })
    );
    assert_eq!(
        AccountEvent::from_payload("account.deposited", 1, &json!({"amount": 1}).into()),
        Err(EventDecodeError::UnsupportedVersion {
            name: "account.deposited".to_owned(),
            found: 1,
            expected: 2
        })
    );
    assert!(matches!(
        AccountEvent::from_payload("account.deposited", 2, &json!({"amount": "x"}).into()),
        Err(EventDecodeError::Payload { path, .. }) if path == "amount"
    ));
}

#[test]
fn payload_types_link_to_their_variant() {
    assert_eq!(<Deposited as EventPayload>::EVENT_TYPE, "account.deposited");
    assert_eq!(<Deposited as EventPayload>::SCHEMA_VERSION, 2);
    assert_eq!(
        <Withdrawn as EventPayload>::EVENT_TYPE,
        "AccountEvent.Withdrawn"
    );
    let event = Deposited { amount: 3 }.into_event();
    assert_eq!(event, AccountEvent::Deposited(Deposited { amount: 3 }));
    assert_eq!(Deposited::from_event(event), Some(Deposited { amount: 3 }));
    assert_eq!(Deposited::from_event(AccountEvent::Closed), None);
    assert_eq!(
        AccountEvent::from(Opened {
            owner: "o".to_owned()
        }),
        AccountEvent::Opened(Opened {
            owner: "o".to_owned()
        })
    );
    assert_eq!(
        IntoEvents::<AccountEvent>::into_events(Withdrawn { amount: 1 }),
        vec![AccountEvent::Withdrawn(Withdrawn { amount: 1 })]
    );
}

// ---------------------------------------------------------------- #[aggregate]

#[test]
fn aggregate_name_defaults_to_the_type_name() {
    assert_eq!(<Account as Aggregate>::NAME, "Account");
}

#[test]
fn apply_dispatches_payloads_unit_variants_and_ignored_events() {
    let mut account = Account::default();
    account.apply(&AccountEvent::Opened(Opened {
        owner: "ada".to_owned(),
    }));
    account.apply(&AccountEvent::Deposited(Deposited { amount: 7 }));
    account.apply(&AccountEvent::Withdrawn(Withdrawn { amount: 2 }));
    account.apply(&AccountEvent::NoteAdded(NoteAdded {
        text: "changes nothing".to_owned(),
    }));
    account.apply(&AccountEvent::Closed);
    assert_eq!(
        account,
        Account {
            owner: Some("ada".to_owned()),
            balance: 5,
            closed: true,
        }
    );
}

#[test]
fn snapshot_key_turns_snapshots_on_with_its_schema_version() {
    assert_eq!(<Account as Aggregate>::SNAPSHOT_VERSION, Some(2));
    let account = Account {
        owner: Some("ada".to_owned()),
        balance: 9,
        closed: false,
    };
    let state = account.to_snapshot().unwrap().unwrap();
    assert_eq!(
        state,
        json!({"owner": "ada", "balance": 9, "closed": false})
    );
    let restored = Account::from_snapshot(&state).unwrap().unwrap();
    assert_eq!(restored, account);
}

#[tokio::test]
async fn commands_run_on_the_in_memory_store_and_record_their_events() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(bank())
        .build();

    let opened = bus
        .execute(Open {
            number: 1,
            owner: "ada".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(opened.stream_id, "Account-1");
    bus.execute(Deposit {
        number: 1,
        amount: 5_000,
    })
    .await
    .unwrap();
    bus.execute(AddNote {
        number: 1,
        text: "vip".to_owned(),
    })
    .await
    .unwrap();
    let committed = bus
        .execute(Withdraw {
            number: 1,
            amount: 400,
        })
        .await
        .unwrap();
    assert_eq!(committed.stream_version, 4);

    let recorded = store.load_stream("Account-1", 1).await.unwrap();
    let events: Vec<AccountEvent> = recorded.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(
        events,
        vec![
            // The by-value async handler saw the command and the context.
            AccountEvent::Opened(Opened {
                owner: "ada (1)".to_owned()
            }),
            // The handler borrowed the services: the deposit is capped.
            AccountEvent::Deposited(Deposited { amount: 1_000 }),
            AccountEvent::NoteAdded(NoteAdded {
                text: "vip".to_owned()
            }),
            AccountEvent::Withdrawn(Withdrawn { amount: 400 }),
        ]
    );
    assert_eq!(recorded[1].event_type, "account.deposited");
    assert_eq!(recorded[1].schema_version, 2);
}

#[tokio::test]
async fn a_rejected_command_returns_the_domain_error_and_writes_nothing() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(bank())
        .build();
    bus.execute(Deposit {
        number: 2,
        amount: 10,
    })
    .await
    .unwrap();

    let error = bus
        .execute(Withdraw {
            number: 2,
            amount: 11,
        })
        .await
        .unwrap_err();

    assert_eq!(
        error.rejection(),
        Some(&AccountError::InsufficientFunds {
            balance: 10,
            asked: 11
        })
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_unit_variant_handler_changes_the_state_later_commands_see() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(bank())
        .build();
    bus.execute(Close { number: 3 }).await.unwrap();
    // Closing twice records nothing the second time: the handler returned `None`.
    let again = bus.execute(Close { number: 3 }).await.unwrap();
    assert_eq!(again.events, 0);

    let error = bus
        .execute(Deposit {
            number: 3,
            amount: 1,
        })
        .await
        .unwrap_err();

    assert_eq!(error.rejection(), Some(&AccountError::Closed));
    let recorded = store.load_stream("Account-3", 1).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].event_type, "AccountEvent.Closed");
}

#[tokio::test]
async fn validation_middleware_rejects_a_command_that_fails_its_rules() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(bank())
        .middleware(Validation)
        .build();

    let error = bus
        .execute(Withdraw {
            number: 4,
            amount: 0,
        })
        .await
        .unwrap_err();

    assert!(
        matches!(error, CommandError::Invalid(ref errors) if errors.fields[0].path == "amount")
    );
    assert!(store.is_empty());
}

#[tokio::test]
async fn dynamic_dispatch_knows_every_command_the_aggregate_handles() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(bank())
        .build();
    let commands = CommandDispatcher::new(bus).unwrap();
    assert_eq!(
        commands.names(),
        vec![
            "AddNote",
            "Deposit",
            "Withdraw",
            "account.close",
            "account.open"
        ]
    );
    let committed = commands
        .dispatch_json("account.open", br#"{"number": 9, "owner": "bo"}"#)
        .await
        .unwrap();
    assert_eq!(committed.stream_id, "Account-9");
}

// ---------------------------------------------------------------- #[projection]

#[test]
fn projection_subscribes_to_exactly_the_payload_types_of_its_handlers() {
    assert_eq!(<Balances as Projection>::NAME, "balances.v1");
    assert_eq!(
        <Balances as Projection>::EVENT_TYPES,
        &[
            "account.opened",
            "account.deposited",
            "AccountEvent.Withdrawn"
        ]
    );
    assert_eq!(<AuditLog as Projection>::NAME, "AuditLog");
    assert_eq!(
        <AuditLog as Projection>::EVENT_TYPES,
        &["AccountEvent.NoteAdded"]
    );
}

#[tokio::test]
async fn projection_handlers_get_the_recorded_event_and_the_context() {
    let mut log = Vec::new();
    let note = AccountEvent::NoteAdded(NoteAdded {
        text: "hello".to_owned(),
    });
    AuditLog
        .project(&recorded(&note, "Account-5", 1), &mut log)
        .await
        .unwrap();
    // Event types the projection does not handle are ignored.
    AuditLog
        .project(&recorded(&AccountEvent::Closed, "Account-5", 2), &mut log)
        .await
        .unwrap();
    assert_eq!(log, vec!["Account-5: hello".to_owned()]);
}

#[tokio::test]
async fn a_failing_projection_handler_reports_the_projection_and_the_event() {
    let mut balances = Balances::default();
    let withdrawn = AccountEvent::Withdrawn(Withdrawn { amount: 3 });

    let error = balances
        .project(&recorded(&withdrawn, "Account-6", 1), &mut ())
        .await
        .unwrap_err();

    match error {
        ProjectionError::Handler {
            projection,
            event_type,
            source,
            ..
        } => {
            assert_eq!(projection, "balances.v1");
            assert_eq!(event_type, "AccountEvent.Withdrawn");
            assert_eq!(
                source.to_string(),
                "a withdrawal of 3 exceeds what this read model has seen deposited"
            );
        }
        other @ ProjectionError::Decode { .. } => panic!("{other}"),
    }
}

#[tokio::test]
async fn queries_are_answered_by_the_projection_fed_by_the_bus() {
    let balances = ReadModel::new(Balances::default());
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(bank())
        .subscribe(balances.clone())
        .build();
    bus.execute(Open {
        number: 7,
        owner: "cy".to_owned(),
    })
    .await
    .unwrap();
    bus.execute(Deposit {
        number: 7,
        amount: 30,
    })
    .await
    .unwrap();
    bus.execute(Withdraw {
        number: 7,
        amount: 12,
    })
    .await
    .unwrap();

    let queries = QueryBus::builder().handler(balances).build();
    assert_eq!(queries.execute(GetBalance { number: 7 }).await.unwrap(), 18);
    assert_eq!(
        queries.execute(ListOwners).await.unwrap(),
        vec!["cy (7)".to_owned()]
    );
    let missing = queries.execute(GetBalance { number: 8 }).await.unwrap_err();
    assert!(matches!(missing, QueryError::Handler(NoSuchAccount(8))));

    let answers = QueryDispatcher::new(queries).unwrap();
    assert_eq!(answers.names(), vec!["GetBalance", "accounts.owners"]);
    assert_eq!(
        answers
            .dispatch_json("accounts.owners", b"null")
            .await
            .unwrap(),
        json!(["cy (7)"])
    );
}

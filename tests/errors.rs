//! Every failure has a stable kind and code, the same on the typed path (`bus.execute`) and
//! the JSON path (`dispatcher.dispatch_json`), and a domain error's own code travels with it:
//! a service maps failures to HTTP statuses by matching, never by downcasting.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::middleware::{Timeout, Validation};
use cqrs_core::{
    AppendResult, BoxFuture, CommandBus, CommandBusOf, CommandDispatcher, CommandDispatcherOf,
    CommandError, DispatchError, DomainError, ErrorKind, EventStore, ExpectedVersion,
    GlobalPosition, InMemoryEventStore, NewEvent, QueryBus, QueryBusOf, QueryDispatcher,
    QueryDispatcherOf, QueryError, ReadModel, RecordedEvent, Snapshot, StoreError,
};
use cqrs_core::{Command, Event, Query, aggregate, projection};
use serde::{Deserialize, Serialize};
use validator::Validate;

// ---------------------------------------------------------------- the domain

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Withdrawn {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum AccountEvent {
    Deposited(Deposited),
    Withdrawn(Withdrawn),
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: u64, asked: u64 },
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            AccountError::InsufficientFunds { .. } => "insufficient_funds",
        }
    }
}

#[derive(Debug, Deserialize, Validate, Command)]
#[command(aggregate = Account, id = number, name = "account.deposit", validate)]
struct Deposit {
    number: u32,
    #[validate(range(min = 1))]
    amount: u64,
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = number, name = "account.withdraw")]
struct Withdraw {
    number: u32,
    amount: u64,
}

/// Takes longer than the bus's timeout.
#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = number, name = "account.audit")]
struct Audit {
    number: u32,
}

#[derive(Debug, Default)]
struct Account {
    balance: u64,
}

#[aggregate(event = AccountEvent, error = AccountError)]
impl Account {
    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, AccountError> {
        Ok(Deposited { amount: cmd.amount })
    }

    #[command_handler]
    fn withdraw(&self, cmd: &Withdraw) -> Result<Withdrawn, AccountError> {
        if cmd.amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                asked: cmd.amount,
            });
        }
        Ok(Withdrawn { amount: cmd.amount })
    }

    #[command_handler]
    async fn audit(&self, _cmd: &Audit) -> Result<(), AccountError> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }

    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }

    #[event_handler]
    fn on_withdrawn(&mut self, e: &Withdrawn) {
        self.balance -= e.amount;
    }
}

/// A second aggregate whose error has no code of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pinged;

#[derive(Debug, Clone, PartialEq, Event)]
enum PingEvent {
    Pinged(Pinged),
}

#[derive(Debug, thiserror::Error)]
#[error("pings are off")]
struct PingsOff;

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Pinger, id = number, name = "ping")]
struct Ping {
    number: u32,
}

#[derive(Debug, Default)]
struct Pinger;

#[aggregate(event = PingEvent, error = PingsOff)]
impl Pinger {
    #[command_handler]
    fn ping(&self, _cmd: &Ping) -> Result<Pinged, PingsOff> {
        Err(PingsOff)
    }

    #[event_handler]
    fn on_pinged(&mut self, _e: &Pinged) {}
}

#[derive(Debug, Deserialize, Query)]
#[query(output = u64, name = "account.balance")]
struct GetBalance {
    number: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("no account {0}")]
struct NotFound(u32);

impl DomainError for NotFound {
    fn code(&self) -> &'static str {
        "not_found"
    }
}

#[derive(Debug, Default)]
struct Balances {
    known: Vec<u32>,
}

#[projection]
impl Balances {
    #[event_handler]
    fn on_deposited(&mut self, _e: &Deposited, recorded: &RecordedEvent) {
        let id = recorded
            .aggregate_id::<Account>()
            .and_then(|id| id.parse::<u32>().ok());
        self.known.extend(id);
    }

    #[query_handler]
    fn balance(&self, query: &GetBalance) -> Result<u64, NotFound> {
        if self.known.contains(&query.number) {
            Ok(0)
        } else {
            Err(NotFound(query.number))
        }
    }
}

// ---------------------------------------------------------------- a store that can fail

/// Makes the error an append fails with.
type Failure = fn() -> StoreError;

/// The in-memory store, with appends that fail with a chosen error.
#[derive(Clone, Default)]
struct FailingStore {
    inner: InMemoryEventStore,
    fail_with: Arc<Mutex<Option<Failure>>>,
}

impl FailingStore {
    fn fail_appends(&self, error: Failure) {
        *self
            .fail_with
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

impl EventStore for FailingStore {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        let failure = *self
            .fail_with
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match failure {
            Some(error) => Box::pin(std::future::ready(Err(error()))),
            None => self.inner.append(stream_id, expected, events),
        }
    }

    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.load_stream(stream_id, from_version)
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.stream_version(stream_id)
    }

    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all_from(after, limit)
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream_id)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }
    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_snapshot(stream_id)
    }
}

fn conflict() -> StoreError {
    StoreError::Conflict {
        stream: "Account-1".into(),
        expected: ExpectedVersion::Exact(1),
        actual: 2,
    }
}

fn backend_down() -> StoreError {
    StoreError::Backend("connection refused".into())
}

// ---------------------------------------------------------------- the service

type Commands = CommandBusOf![Account, Pinger; Validation, Timeout];
type Queries = QueryBusOf![ReadModel<Balances>];

struct Service {
    store: FailingStore,
    commands: Commands,
    command_json: CommandDispatcherOf<Commands>,
    queries: Queries,
    query_json: QueryDispatcherOf<Queries>,
}

fn service() -> Service {
    let store = FailingStore::default();
    let balances = ReadModel::new(Balances::default());
    let commands = CommandBus::builder(store.clone())
        .aggregate::<Account>(())
        .aggregate::<Pinger>(())
        .middleware(Validation)
        .middleware(Timeout::new(Duration::from_millis(20)))
        .subscribe(balances.clone())
        .build();
    let queries = QueryBus::builder().handler(balances).build();
    Service {
        store,
        command_json: CommandDispatcher::new(commands.clone()).unwrap(),
        query_json: QueryDispatcher::new(queries.clone()).unwrap(),
        commands,
        queries,
    }
}

/// The kind, domain code and message a JSON caller sees.
fn json_failure(error: &DispatchError) -> (ErrorKind, Option<&str>, String) {
    match error {
        DispatchError::Failed {
            kind,
            domain_code,
            message,
            ..
        } => (*kind, *domain_code, message.clone()),
        other => (other.kind(), other.domain_code(), other.to_string()),
    }
}

// ---------------------------------------------------------------- the guarantees

#[test]
fn error_codes_are_stable_snake_case_and_distinct() {
    let codes: Vec<&str> = ErrorKind::ALL.iter().map(|kind| kind.code()).collect();
    assert_eq!(
        codes,
        [
            "rejected",
            "validation",
            "conflict",
            "timeout",
            "refused",
            "query_failed",
            "unknown_command",
            "unknown_query",
            "bad_request",
            "event_decode",
            "serialize",
            "store_unavailable",
            "duplicate_event_id",
            "invalid_stream_id",
            "unique_key_taken",
            "unsupported",
            "unknown_position",
            "idempotency_key_reused",
            "retries_exhausted",
            "circuit_open",
            "rate_limited",
            "concurrency_limited",
            "forbidden",
        ]
    );
    for kind in ErrorKind::ALL {
        assert_eq!(kind.to_string(), kind.code());
    }
}

#[tokio::test]
async fn a_rejection_carries_the_domain_code_on_both_paths() {
    let service = service();
    let typed = service
        .commands
        .execute(Withdraw {
            number: 1,
            amount: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(typed.kind(), ErrorKind::Rejected);
    assert_eq!(typed.code(), "rejected");
    assert_eq!(typed.domain_code(), Some("insufficient_funds"));

    let json = service
        .command_json
        .dispatch_json("account.withdraw", br#"{"number": 1, "amount": 5}"#)
        .await
        .unwrap_err();
    assert_eq!(json.code(), "rejected");
    assert!(matches!(
        json,
        DispatchError::Failed {
            name: "account.withdraw",
            kind: ErrorKind::Rejected,
            domain_code: Some("insufficient_funds"),
            ..
        }
    ));
    assert_eq!(
        json_failure(&json),
        (
            ErrorKind::Rejected,
            Some("insufficient_funds"),
            "insufficient funds: balance 0, asked 5".to_owned()
        )
    );
}

#[tokio::test]
async fn a_domain_error_without_a_code_has_none_on_both_paths() {
    let service = service();
    let typed = service.commands.execute(Ping { number: 1 }).await;
    assert!(matches!(typed, Err(CommandError::Rejected(PingsOff))));
    let json = service
        .command_json
        .dispatch_json("ping", br#"{"number": 1}"#)
        .await
        .unwrap_err();
    assert_eq!(
        json_failure(&json),
        (ErrorKind::Rejected, None, "pings are off".to_owned())
    );
}

#[tokio::test]
async fn invalid_fields_are_validation_with_the_fields_on_both_paths() {
    let service = service();
    let typed = service
        .commands
        .execute(Deposit {
            number: 1,
            amount: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(typed.code(), "validation");
    let json = service
        .command_json
        .dispatch_json("account.deposit", br#"{"number": 1, "amount": 0}"#)
        .await
        .unwrap_err();
    assert_eq!(json.kind(), ErrorKind::Validation);
    let fields = json.validation().expect("the invalid fields");
    assert_eq!(fields.fields[0].path, "amount");
    assert_eq!(fields.fields[0].code, "range");
}

#[tokio::test]
async fn store_failures_are_conflict_or_store_unavailable_on_both_paths() {
    for (fail, kind, code) in [
        (
            conflict as fn() -> StoreError,
            ErrorKind::Conflict,
            "conflict",
        ),
        (
            backend_down,
            ErrorKind::StoreUnavailable,
            "store_unavailable",
        ),
    ] {
        let service = service();
        service.store.fail_appends(fail);
        assert_eq!(fail().kind(), kind);
        let typed = service
            .commands
            .execute(Deposit {
                number: 1,
                amount: 5,
            })
            .await
            .unwrap_err();
        assert_eq!((typed.kind(), typed.code()), (kind, code));
        let json = service
            .command_json
            .dispatch_json("account.deposit", br#"{"number": 1, "amount": 5}"#)
            .await
            .unwrap_err();
        assert_eq!((json.kind(), json.code()), (kind, code));
        assert_eq!(json.domain_code(), None);
    }
}

#[tokio::test]
async fn a_slow_command_is_a_timeout_on_both_paths() {
    let service = service();
    let typed = service
        .commands
        .execute(Audit { number: 1 })
        .await
        .unwrap_err();
    assert_eq!(typed.code(), "timeout");
    let json = service
        .command_json
        .dispatch_json("account.audit", br#"{"number": 1}"#)
        .await
        .unwrap_err();
    assert_eq!(json.code(), "timeout");
}

#[tokio::test]
async fn a_query_handler_error_carries_its_domain_code_on_both_paths() {
    let service = service();
    let typed = service
        .queries
        .execute(GetBalance { number: 9 })
        .await
        .unwrap_err();
    assert_eq!(typed.kind(), ErrorKind::QueryFailed);
    assert_eq!(typed.domain_code(), Some("not_found"));
    assert!(matches!(typed, QueryError::Handler(NotFound(9))));

    let json = service
        .query_json
        .dispatch_json("account.balance", br#"{"number": 9}"#)
        .await
        .unwrap_err();
    assert_eq!(
        json_failure(&json),
        (
            ErrorKind::QueryFailed,
            Some("not_found"),
            "no account 9".to_owned()
        )
    );
}

#[tokio::test]
async fn unknown_names_and_bad_bodies_have_their_own_codes() {
    let service = service();
    let unknown = service
        .command_json
        .dispatch_json("account.teleport", b"{}")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "unknown_command");
    let unknown = service
        .query_json
        .dispatch_json("account.history", b"{}")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "unknown_query");
    let malformed = service
        .command_json
        .dispatch_json("account.deposit", br#"{"number": "one"}"#)
        .await
        .unwrap_err();
    assert_eq!(malformed.kind(), ErrorKind::BadRequest);
    assert_eq!(malformed.code(), "bad_request");
    assert!(service.store.inner.is_empty());
}

//! Wiring a service: naming the buses' types, cloning dispatchers into a web framework's state,
//! services behind trait objects, and read models keyed by aggregate id.

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_core::middleware::{Tracing, Validation};
use cqrs_core::prelude::*;
use cqrs_core::{
    CommandBusOf, CommandDispatcher, CommandDispatcherOf, QueryBusOf, QueryDispatcher,
    QueryDispatcherOf, Repository,
};
use cqrs_core::{aggregate, projection};

// ---------------------------------------------------------------- two aggregates

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum AccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = number, name = "account.deposit")]
struct Deposit {
    number: u32,
    amount: u64,
}

#[derive(Debug, Default)]
struct Account;

#[aggregate(event = AccountEvent, error = std::convert::Infallible, name = "account")]
impl Account {
    #[command_handler]
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, std::convert::Infallible> {
        Ok(Deposited { amount: cmd.amount })
    }

    #[event_handler]
    fn on_deposited(&mut self, _e: &Deposited) {}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Registered {
    email: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum CustomerEvent {
    Registered(Registered),
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Customer, id = id, name = "customer.register")]
struct Register {
    id: u32,
    email: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the email is taken")]
struct EmailTaken;

/// An async service the bus holds behind a trait object.
trait EmailRegistry: Send + Sync {
    fn is_taken<'a>(&'a self, email: &'a str) -> BoxFuture<'a, bool>;
}

struct KnownEmails(Vec<&'static str>);

impl EmailRegistry for KnownEmails {
    fn is_taken<'a>(&'a self, email: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.0.contains(&email) })
    }
}

/// What a service module names its services by.
type Registry = Arc<dyn EmailRegistry>;

#[derive(Debug, Default)]
struct Customer;

#[aggregate(event = CustomerEvent, error = EmailTaken, services = Arc<dyn EmailRegistry>)]
impl Customer {
    /// Borrows the services as the trait object inside the `Arc`.
    #[command_handler]
    async fn register(
        &self,
        cmd: &Register,
        emails: &dyn EmailRegistry,
    ) -> Result<Registered, EmailTaken> {
        if emails.is_taken(&cmd.email).await {
            return Err(EmailTaken);
        }
        Ok(Registered {
            email: cmd.email.clone(),
        })
    }

    /// Borrows them under the service's alias and a full path: the same type.
    #[command_handler]
    async fn reregister(
        &self,
        cmd: &Reregister,
        registry: &Registry,
        again: &std::sync::Arc<dyn EmailRegistry>,
    ) -> Result<Registered, EmailTaken> {
        if registry.is_taken(&cmd.email).await || again.is_taken(&cmd.email).await {
            return Err(EmailTaken);
        }
        Ok(Registered {
            email: cmd.email.clone(),
        })
    }

    #[event_handler]
    fn on_registered(&mut self, _e: &Registered) {}
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Customer, id = id, name = "customer.reregister")]
struct Reregister {
    id: u32,
    email: String,
}

// ---------------------------------------------------------------- a read model

#[derive(Debug, Deserialize, Query)]
#[query(output = u64, name = "account.balance")]
struct GetBalance {
    number: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("no account {0}")]
struct NoAccount(u32);

#[derive(Debug, Default)]
struct Balances {
    by_number: HashMap<u32, u64>,
    foreign: u32,
}

#[projection]
impl Balances {
    #[event_handler]
    fn on_deposited(&mut self, e: &Deposited, recorded: &RecordedEvent) {
        match recorded
            .aggregate_id::<Account>()
            .and_then(|id| id.parse().ok())
        {
            Some(number) => *self.by_number.entry(number).or_default() += e.amount,
            None => self.foreign += 1,
        }
    }

    #[query_handler]
    fn balance(&self, q: &GetBalance) -> Result<u64, NoAccount> {
        self.by_number
            .get(&q.number)
            .copied()
            .ok_or(NoAccount(q.number))
    }
}

// ---------------------------------------------------------------- the service's types

type Commands = CommandBusOf![Account, Customer; Tracing, Validation];
type Queries = QueryBusOf![ReadModel<Balances>; Validation];

/// What an HTTP framework keeps as its state: everything `Clone`.
#[derive(Clone)]
struct AppState {
    commands: Commands,
    command_json: CommandDispatcherOf<Commands>,
    queries: Queries,
    query_json: QueryDispatcherOf<Queries>,
}

fn app(store: InMemoryEventStore) -> AppState {
    let balances = ReadModel::new(Balances::default());
    let commands = CommandBus::builder(store)
        .aggregate::<Account>(())
        .aggregate::<Customer>(Arc::new(KnownEmails(vec!["ada@example.com"])))
        .middleware(Tracing)
        .middleware(Validation)
        .subscribe(balances.clone())
        .build();
    let queries = QueryBus::builder()
        .handler(balances)
        .middleware(Validation)
        .build();
    AppState {
        command_json: CommandDispatcher::new(commands.clone()).unwrap(),
        query_json: QueryDispatcher::new(queries.clone()).unwrap(),
        commands,
        queries,
    }
}

// ---------------------------------------------------------------- the guarantees

#[test]
// The point is to spell the long types out once, here.
#[allow(clippy::type_complexity)]
fn bus_type_macros_name_the_types_the_builders_build() {
    // Spelled out, as the builders nest them: aggregates last registered first, middleware
    // first added first.
    let _: fn(
        Commands,
    ) -> CommandBus<
        (Repository<Customer>, (Repository<Account>, ())),
        (Tracing, (Validation, ())),
    > = |bus| bus;
    let _: fn(Queries) -> QueryBus<(ReadModel<Balances>, ()), (Validation, ())> = |bus| bus;
    let _: fn(CommandBusOf![Account]) -> CommandBus<(Repository<Account>, ()), ()> = |bus| bus;
    let _: fn(QueryBusOf![]) -> QueryBus<(), ()> = |bus| bus;
    let _: fn(
        CommandDispatcherOf<Commands>,
    ) -> CommandDispatcher<
        (Repository<Customer>, (Repository<Account>, ())),
        (Tracing, (Validation, ())),
    > = |dispatcher| dispatcher;
}

#[tokio::test]
async fn dispatchers_are_cheap_clones_sharing_one_bus() {
    let store = InMemoryEventStore::new();
    let state = app(store.clone());
    let handler_state = state.clone();
    // A clone moves into a task, as into a web framework's handler.
    tokio::spawn(async move {
        handler_state
            .command_json
            .dispatch_json("account.deposit", br#"{"number": 3, "amount": 5}"#)
            .await
            .unwrap();
    })
    .await
    .unwrap();
    let query_json = state.query_json.clone();
    let answer = tokio::spawn(async move {
        query_json
            .dispatch_json("account.balance", br#"{"number": 3}"#)
            .await
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(answer, serde_json::json!(5));
    assert_eq!(
        state
            .queries
            .execute(GetBalance { number: 3 })
            .await
            .unwrap(),
        5
    );
    assert_eq!(store.len(), 1);
    assert_eq!(
        state.command_json.clone().names(),
        state.command_json.names()
    );
}

#[tokio::test]
async fn handlers_borrow_trait_object_services_under_any_spelling() {
    let state = app(InMemoryEventStore::new());
    let taken = state
        .commands
        .execute(Register {
            id: 1,
            email: "ada@example.com".into(),
        })
        .await;
    assert!(matches!(taken, Err(CommandError::Rejected(EmailTaken))));
    state
        .commands
        .execute(Register {
            id: 2,
            email: "grace@example.com".into(),
        })
        .await
        .unwrap();
    let taken = state
        .commands
        .execute(Reregister {
            id: 3,
            email: "ada@example.com".into(),
        })
        .await;
    assert!(matches!(taken, Err(CommandError::Rejected(EmailTaken))));
}

#[tokio::test]
async fn read_models_key_events_by_the_typed_aggregate_id() {
    let store = InMemoryEventStore::new();
    let state = app(store.clone());
    state
        .commands
        .execute(Deposit {
            number: 7,
            amount: 5,
        })
        .await
        .unwrap();
    state
        .commands
        .execute(Deposit {
            number: 7,
            amount: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        state
            .queries
            .execute(GetBalance { number: 7 })
            .await
            .unwrap(),
        7
    );

    let recorded = store
        .read_all_from(cqrs_core::GlobalPosition::START, 10)
        .await
        .unwrap();
    assert_eq!(recorded[0].stream_id, "account-7");
    assert_eq!(recorded[0].aggregate_id::<Account>(), Some("7"));
    assert_eq!(recorded[0].aggregate_id::<Customer>(), None);
    assert_eq!(cqrs_core::aggregate_id::<Account>("accounts-7"), None);
    assert_eq!(cqrs_core::aggregate_id::<Account>("account-"), Some(""));
}

// ---------------------------------------------------------------- generic projections

trait Rows: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;
    fn count(&self) -> Result<u64, Self::Error>;
}

#[derive(Debug, thiserror::Error)]
#[error("the table is gone")]
struct TableGone;

impl DomainError for TableGone {
    fn code(&self) -> &'static str {
        "table_gone"
    }
}

struct NoRows;

impl Rows for NoRows {
    type Error = TableGone;
    fn count(&self) -> Result<u64, TableGone> {
        Err(TableGone)
    }
}

#[derive(Debug, Deserialize, Query)]
#[query(output = u64, name = "rows.count")]
struct CountRows;

struct Table<S> {
    rows: S,
}

#[projection]
impl<S: Rows> Table<S> {
    #[query_handler]
    fn count(&self, _q: &CountRows) -> Result<u64, S::Error> {
        self.rows.count()
    }
}

#[tokio::test]
async fn a_generic_projection_compiles_and_reports_no_domain_code_for_a_generic_error() {
    let queries = QueryBus::builder().handler(Table { rows: NoRows }).build();
    let error = queries.execute(CountRows).await.unwrap_err();
    assert_eq!(error.code(), "query_failed");
    // The typed path knows the concrete error type; the generated lookup, written for
    // `S::Error`, cannot tell that it implements `DomainError`.
    assert_eq!(error.domain_code(), Some("table_gone"));
    let json = QueryDispatcher::new(queries)
        .unwrap()
        .dispatch_json("rows.count", b"null")
        .await
        .unwrap_err();
    assert_eq!(json.code(), "query_failed");
    assert_eq!(json.domain_code(), None);
}

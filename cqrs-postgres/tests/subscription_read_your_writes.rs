//! Read your writes: a command, then a query through the query bus that waits until the
//! projection has processed the command's position. Against a real server, each test in a
//! fresh database.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use cqrs_core::prelude::*;
use cqrs_core::{GlobalPosition, QueryError, Repository};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{
    AfterPosition, Checkpoints, Consistency, ReadYourWrites, ReadYourWritesError, Subscription,
    SubscriptionHandle, WaitError,
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;

const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the domain

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renamed {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    #[event(name = "account.deposited")]
    Deposited(Deposited),
    #[event(name = "account.renamed")]
    Renamed(Renamed),
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = account)]
pub struct Deposit {
    pub account: u32,
    pub amount: u64,
}

#[derive(Debug, Deserialize, Command)]
#[command(aggregate = Account, id = account)]
pub struct Rename {
    pub account: u32,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the account refuses")]
pub struct Refused;

#[derive(Debug, Default)]
pub struct Account;

#[aggregate(event = AccountEvent, error = Refused)]
impl Account {
    #[command_handler]
    fn deposit(&self, command: &Deposit) -> Result<Deposited, Refused> {
        Ok(Deposited {
            amount: command.amount,
        })
    }

    #[command_handler]
    fn rename(&self, command: &Rename) -> Result<Renamed, Refused> {
        Ok(Renamed {
            name: command.name.clone(),
        })
    }

    #[event_handler]
    fn on_deposited(&mut self, _: &Deposited) {}

    #[event_handler]
    fn on_renamed(&mut self, _: &Renamed) {}
}

#[derive(Debug, Deserialize, Query)]
#[query(output = u64)]
pub struct GetBalance {
    pub account: u32,
}

/// Balances in a table of the same database: fed through the subscription's transaction,
/// answering from the pool. Each event passes `gate` first, so a test can hold the
/// projection back.
#[derive(Clone)]
pub struct Balances {
    pool: PgPool,
    gate: Arc<Semaphore>,
}

#[projection(context = PgConnection)]
impl Balances {
    #[event_handler]
    async fn on_deposited(
        &mut self,
        event: &Deposited,
        recorded: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        self.gate
            .acquire()
            .await
            .expect("the gate is never closed")
            .forget();
        sqlx::query(
            "INSERT INTO balances (stream_id, balance) VALUES ($1, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET balance = balances.balance + excluded.balance",
        )
        .bind(&recorded.stream_id)
        .bind(i64::try_from(event.amount).unwrap())
        .execute(db)
        .await?;
        Ok(())
    }

    #[query_handler]
    async fn balance(&self, query: &GetBalance) -> Result<u64, sqlx::Error> {
        let balance: i64 = sqlx::query_scalar(
            "SELECT coalesce((SELECT balance FROM balances WHERE stream_id = $1), 0)",
        )
        .bind(format!("Account-{}", query.account))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(balance).unwrap())
    }
}

impl Balances {
    /// The read model with its gate open (`open`) or closed.
    fn new(pool: &PgPool, open: bool) -> Self {
        let permits = if open { Semaphore::MAX_PERMITS } else { 0 };
        Self {
            pool: pool.clone(),
            gate: Arc::new(Semaphore::new(permits)),
        }
    }
}

async fn set_up(db: &TestDb) -> PostgresEventStore {
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    sqlx::query("CREATE TABLE balances (stream_id text PRIMARY KEY, balance bigint NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("balances table");
    PostgresEventStore::new(db.pool.clone())
}

// ---------------------------------------------------------------- the guarantees

#[test]
fn a_projection_written_with_the_macros_subscribes_to_its_handlers_types_only() {
    assert_eq!(
        <Balances as Projection>::EVENT_TYPES,
        &["account.deposited"][..]
    );
    assert_eq!(<Balances as Projection>::NAME, "Balances");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_after_a_command_waits_for_the_projection_and_sees_the_write() {
    let db = TestDb::create(8).await;
    let store = set_up(&db).await;
    let balances = Balances::new(&db.pool, false);
    let subscription = Subscription::transactional(balances.clone())
        .start(&db.pool)
        .await
        .expect("start");
    let commands = CommandBus::builder(store).aggregate::<Account>(()).build();
    let queries = QueryBus::builder()
        .handler(balances.clone())
        .handler(ReadYourWrites::new(
            balances.clone(),
            subscription.progress(),
            PATIENCE,
        ))
        .build();

    let committed = commands
        .execute(Deposit {
            account: 7,
            amount: 10,
        })
        .await
        .expect("deposit");
    // The projection is held at the gate: a plain query does not see the deposit yet, and
    // one that waits for the command's position is still waiting.
    assert_eq!(queries.execute(GetBalance { account: 7 }).await.unwrap(), 0);
    let waiting = tokio::spawn({
        let queries = queries.clone();
        let position = committed.position;
        async move {
            queries
                .execute(AfterPosition::new(position, GetBalance { account: 7 }))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "answered before the projection ran");

    balances.gate.add_permits(Semaphore::MAX_PERMITS);
    let balance = waiting.await.unwrap().expect("answered once processed");
    assert_eq!(balance, 10);

    // Every later command is read back at once.
    for round in 2..=10 {
        let committed = commands
            .execute(Deposit {
                account: 7,
                amount: 10,
            })
            .await
            .expect("deposit");
        let balance = queries
            .execute(AfterPosition::new(
                committed.position,
                GetBalance { account: 7 },
            ))
            .await
            .expect("balance");
        assert_eq!(balance, round * 10);
    }

    // An event the projection does not handle is passed, so waiting for it ends too.
    let renamed = commands
        .execute(Rename {
            account: 7,
            name: "savings".into(),
        })
        .await
        .expect("rename");
    subscription
        .wait_for(renamed.position, PATIENCE)
        .await
        .expect("passes the rename");
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_can_wait_on_a_projection_running_elsewhere() {
    let db = TestDb::create(8).await;
    let store = set_up(&db).await;
    let balances = Balances::new(&db.pool, true);
    let commands = CommandBus::builder(store).aggregate::<Account>(()).build();
    let queries = QueryBus::builder()
        .handler(ReadYourWrites::stored(
            balances.clone(),
            Checkpoints::new(db.pool.clone()),
            <Balances as Projection>::NAME,
            PATIENCE,
        ))
        .build();

    // Written before the projection runs anywhere: the query can only be answered once a
    // subscription (here in this process, but known to the query only through the
    // checkpoint table) has processed it.
    let committed = commands
        .execute(Deposit {
            account: 1,
            amount: 5,
        })
        .await
        .expect("deposit");
    let waiting = tokio::spawn({
        let queries = queries.clone();
        async move {
            queries
                .execute(AfterPosition::new(
                    committed.position,
                    GetBalance { account: 1 },
                ))
                .await
        }
    });
    let subscription = Subscription::transactional(balances)
        .start(&db.pool)
        .await
        .expect("start");
    assert_eq!(waiting.await.unwrap().expect("answered"), 5);
    subscription.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_on_an_unreachable_position_fails_with_a_typed_timeout() {
    let db = TestDb::create(8).await;
    let store = set_up(&db).await;
    let balances = Balances::new(&db.pool, true);
    let subscription = Subscription::transactional(balances.clone())
        .start(&db.pool)
        .await
        .expect("start");
    let commands = CommandBus::builder(store).aggregate::<Account>(()).build();
    let timeout = Duration::from_millis(200);
    let queries = QueryBus::builder()
        .handler(ReadYourWrites::new(
            balances,
            subscription.progress(),
            timeout,
        ))
        .build();
    let committed = commands
        .execute(Deposit {
            account: 2,
            amount: 1,
        })
        .await
        .expect("deposit");

    let unreachable = GlobalPosition(committed.position.0 + 1_000_000);
    let answer = queries
        .execute(AfterPosition::new(unreachable, GetBalance { account: 2 }))
        .await;
    match answer {
        Err(QueryError::Handler(ReadYourWritesError::Wait(WaitError::Timeout {
            projection,
            position,
            after,
        }))) => {
            assert_eq!(projection, "Balances");
            assert_eq!(position, unreachable);
            assert_eq!(after, timeout);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(<AfterPosition<GetBalance> as Query>::NAME, GetBalance::NAME);
    subscription.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------- one service type, two stores

/// Deposits per account, in process memory.
#[derive(Default)]
pub struct Totals {
    by_stream: std::collections::HashMap<String, u64>,
}

#[projection]
impl Totals {
    #[event_handler]
    fn on_deposited(&mut self, event: &Deposited, recorded: &RecordedEvent) {
        *self
            .by_stream
            .entry(recorded.stream_id.clone())
            .or_default() += event.amount;
    }

    #[query_handler]
    fn total(&self, query: &GetBalance) -> Result<u64, std::convert::Infallible> {
        Ok(self
            .by_stream
            .get(&format!("Account-{}", query.account))
            .copied()
            .unwrap_or(0))
    }
}

/// Plain queries, and queries that read a command's writes.
type TotalsHandlers = (ReadYourWrites<ReadModel<Totals>>, (ReadModel<Totals>, ()));

/// The service's buses: the same type whichever store it runs on.
struct Service {
    commands: CommandBus<(Repository<Account>, ())>,
    queries: QueryBus<TotalsHandlers>,
    /// The subscription feeding `Totals` on PostgreSQL.
    feed: Option<SubscriptionHandle>,
}

impl Service {
    fn assemble(
        store: Arc<dyn EventStore>,
        totals: &ReadModel<Totals>,
        in_process: bool,
        consistency: Consistency,
        feed: Option<SubscriptionHandle>,
    ) -> Self {
        let mut commands = CommandBus::builder_shared(store).aggregate::<Account>(());
        if in_process {
            commands = commands.subscribe(totals.clone());
        }
        let queries = QueryBus::builder()
            .handler(totals.clone())
            .handler(ReadYourWrites::with_consistency(
                totals.clone(),
                consistency,
                PATIENCE,
            ))
            .build();
        Self {
            commands: commands.build(),
            queries,
            feed,
        }
    }

    /// In memory: the command bus feeds the model before `execute` returns.
    fn in_memory() -> Self {
        let totals = ReadModel::new(Totals::default());
        let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
        Self::assemble(store, &totals, true, Consistency::Immediate, None)
    }

    /// On PostgreSQL: a subscription feeds the model, and queries wait for it.
    async fn postgres(pool: &PgPool) -> Self {
        let totals = ReadModel::new(Totals::default());
        let feed = Subscription::in_memory(totals.clone())
            .start(pool)
            .await
            .expect("start");
        let store: Arc<dyn EventStore> = Arc::new(PostgresEventStore::new(pool.clone()));
        let consistency = Consistency::Progress(feed.progress());
        Self::assemble(store, &totals, false, consistency, Some(feed))
    }
}

/// Every deposit is read back at once through `AfterPosition`, whatever feeds the model.
async fn deposits_are_read_back(service: &Service) {
    for round in 1..=10 {
        let committed = service
            .commands
            .execute(Deposit {
                account: 3,
                amount: 10,
            })
            .await
            .expect("deposit");
        let total = service
            .queries
            .execute(AfterPosition::new(
                committed.position,
                GetBalance { account: 3 },
            ))
            .await
            .expect("total");
        assert_eq!(total, round * 10);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_service_type_reads_its_writes_on_the_in_memory_store_and_on_postgres() {
    deposits_are_read_back(&Service::in_memory()).await;

    let db = TestDb::create(8).await;
    set_up(&db).await;
    let service = Service::postgres(&db.pool).await;
    deposits_are_read_back(&service).await;
    service
        .feed
        .expect("fed by a subscription")
        .shutdown()
        .await
        .expect("shutdown");
}

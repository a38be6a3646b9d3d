//! The service on PostgreSQL, each test in a database of its own: the balances survive a
//! restart, and the in-memory and PostgreSQL builds are one service type that reads its writes.
//!
//! Tests connect to `DATABASE_URL` if set, else to the local server's `postgres` database.

use std::str::FromStr;

use bank_account::domain::{Deposit, OpenAccount, Withdraw};
use bank_account::read_model::{AccountView, GetBalance};
use bank_account::wire::{self, Service};
use cqrs_core::{Committed, InMemoryEventStore};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::AfterPosition;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

/// A migrated database that exists for one test, dropped (`WITH (FORCE)`) afterwards.
struct TestDb {
    pool: PgPool,
    name: String,
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL is a postgres URL")
        .disable_statement_logging()
}

impl TestDb {
    async fn create() -> TestDb {
        let mut admin = PgConnection::connect_with(&admin_options())
            .await
            .expect("reach PostgreSQL");
        let name = format!("bank_test_{}", Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await.ok();
        let pool = PgPool::connect_with(admin_options().database(&name))
            .await
            .expect("connect to the test database");
        PostgresEventStore::migrate(&pool)
            .await
            .expect("migrations");
        TestDb { pool, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The pool belongs to the test's runtime, blocked in this drop: drop the database
        // from a fresh connection on a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    let mut admin = PgConnection::connect_with(&admin_options()).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await?;
                    admin.close().await
                })
        })
        .join();
        if !std::thread::panicking() {
            dropped
                .expect("dropping thread")
                .expect("drop the test database");
        }
    }
}

async fn open_with(service: &Service, account_id: Uuid, deposit: u64) -> Committed {
    service
        .commands
        .execute(OpenAccount {
            account_id,
            owner: "ada".into(),
        })
        .await
        .expect("open");
    service
        .commands
        .execute(Deposit {
            account_id,
            amount: deposit,
        })
        .await
        .expect("deposit")
}

/// Reads the account's view back once the balances include `after`.
async fn read_back(service: &Service, account_id: Uuid, after: &Committed) -> AccountView {
    service
        .queries
        .execute(AfterPosition::new(
            after.position,
            GetBalance { account_id },
        ))
        .await
        .expect("the balance, including the write")
}

fn view(balance: u64, movements: u32) -> AccountView {
    AccountView {
        owner: "ada".into(),
        balance,
        movements,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_service_shows_the_balances_written_by_the_previous_run() {
    let db = TestDb::create().await;
    let account_id = Uuid::now_v7();

    let first_run = wire::build_postgres(db.pool.clone())
        .await
        .expect("first run");
    open_with(&first_run, account_id, 500).await;
    let withdrawn = first_run
        .commands
        .execute(Withdraw {
            account_id,
            amount: 200,
        })
        .await
        .expect("withdraw");
    assert_eq!(
        read_back(&first_run, account_id, &withdrawn).await,
        view(300, 2)
    );
    drop(first_run);

    // A new service on the same database, before any command of its own.
    let second_run = wire::build_postgres(db.pool.clone())
        .await
        .expect("second run");
    let known = second_run
        .queries
        .execute(GetBalance { account_id })
        .await
        .expect("the account of the previous run is known");
    assert_eq!(known, view(300, 2));
    let deposited = second_run
        .commands
        .execute(Deposit {
            account_id,
            amount: 50,
        })
        .await
        .expect("deposit");
    assert_eq!(
        read_back(&second_run, account_id, &deposited).await,
        view(350, 3)
    );
}

/// Takes the one service type that both builds return.
async fn reads_its_writes(service: &Service) {
    let account_id = Uuid::now_v7();
    let mut last = open_with(service, account_id, 100).await;
    assert_eq!(read_back(service, account_id, &last).await, view(100, 1));
    for movement in 2..=5 {
        last = service
            .commands
            .execute(Deposit {
                account_id,
                amount: 100,
            })
            .await
            .expect("deposit");
        assert_eq!(
            read_back(service, account_id, &last).await,
            view(u64::from(movement) * 100, movement)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_memory_and_postgres_builds_are_one_service_type_that_reads_its_writes() {
    reads_its_writes(&wire::build(InMemoryEventStore::new())).await;

    let db = TestDb::create().await;
    let service = wire::build_postgres(db.pool.clone()).await.expect("start");
    reads_its_writes(&service).await;
}

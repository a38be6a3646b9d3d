//! Runs a short story against the bank-account service and prints what happened.
//!
//! On the in-memory store by default; on PostgreSQL when `DATABASE_URL` is set.

use std::error::Error;
use std::fmt::Debug;
use std::sync::Arc;

use bank_account::domain::{AccountError, CloseAccount, Deposit, OpenAccount, Withdraw};
use bank_account::read_model::GetBalance;
use bank_account::wire::Service;
use cqrs_core::{CommandError, Committed, EventStore, InMemoryEventStore, Metadata};
use cqrs_postgres::PostgresEventStore;
use uuid::Uuid;

fn report(what: &str, outcome: Result<Committed, CommandError<AccountError>>) {
    match outcome {
        Ok(c) => println!(
            "  ok        {what:<34} -> {} at version {} (position {})",
            c.stream_id, c.stream_version, c.position
        ),
        Err(error) => println!("  rejected  {what:<34} -> {error}"),
    }
}

fn show<T: Debug, E: std::fmt::Display>(what: &str, outcome: Result<T, E>) {
    match outcome {
        Ok(value) => println!("  ok        {what:<34} -> {value:?}"),
        Err(error) => println!("  error     {what:<34} -> {error}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let service = bank_account::wire::build(store().await?);
    let account_id = Uuid::now_v7();
    typed_commands(&service, account_id).await;
    json_commands(&service, account_id).await;
    queries(&service, account_id).await;
    Ok(())
}

/// PostgreSQL when `DATABASE_URL` is set, else the in-memory store.
async fn store() -> Result<Arc<dyn EventStore>, Box<dyn Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let pool = sqlx::PgPool::connect(&url).await?;
        PostgresEventStore::migrate(&pool).await?;
        println!("event store: PostgreSQL");
        Ok(Arc::new(PostgresEventStore::new(pool)))
    } else {
        println!("event store: in memory (set DATABASE_URL to use PostgreSQL)");
        Ok(Arc::new(InMemoryEventStore::new()))
    }
}

async fn typed_commands(service: &Service, account_id: Uuid) {
    let bus = &service.commands;
    let correlation = Metadata::default()
        .with_correlation_id(Uuid::now_v7())
        .with_user_id("teller-7");

    println!("\ncommands for account {account_id}:");
    let open = OpenAccount {
        account_id,
        owner: "Ada Lovelace".into(),
    };
    report(
        "open for Ada Lovelace",
        bus.execute_with(open, correlation.clone()).await,
    );
    report(
        "deposit 100.00",
        bus.execute_with(
            Deposit {
                account_id,
                amount: 10_000,
            },
            correlation.clone(),
        )
        .await,
    );
    report(
        "withdraw 30.00",
        bus.execute(Withdraw {
            account_id,
            amount: 3_000,
        })
        .await,
    );
    report(
        "withdraw 500.00",
        bus.execute(Withdraw {
            account_id,
            amount: 50_000,
        })
        .await,
    );
    report(
        "deposit 0.00",
        bus.execute(Deposit {
            account_id,
            amount: 0,
        })
        .await,
    );
    report(
        "close while holding money",
        bus.execute(CloseAccount { account_id }).await,
    );
}

async fn json_commands(service: &Service, account_id: Uuid) {
    println!("\nJSON commands by name:");
    let body = format!(r#"{{"account_id":"{account_id}","amount":1250}}"#);
    match service
        .command_json
        .dispatch_json("account.deposit", body.as_bytes())
        .await
    {
        Ok(c) => println!(
            "  ok        {:<34} -> {} at version {}",
            "account.deposit 12.50", c.stream_id, c.stream_version
        ),
        Err(error) => println!("  error     {:<34} -> {error}", "account.deposit 12.50"),
    }
    show(
        "account.deposit with a bad amount",
        service
            .command_json
            .dispatch_json(
                "account.deposit",
                format!(r#"{{"account_id":"{account_id}","amount":"lots"}}"#).as_bytes(),
            )
            .await,
    );
    show(
        "account.transfer (unknown)",
        service
            .command_json
            .dispatch_json("account.transfer", b"{}")
            .await,
    );
}

async fn queries(service: &Service, account_id: Uuid) {
    println!("\nqueries:");
    show(
        "balance",
        service.queries.execute(GetBalance { account_id }).await,
    );
    match service
        .query_json
        .dispatch_json(
            "account.balance",
            format!(r#"{{"account_id":"{account_id}"}}"#).as_bytes(),
        )
        .await
    {
        Ok(json) => println!("  ok        {:<34} -> {json}", "account.balance as JSON"),
        Err(error) => println!("  error     {:<34} -> {error}", "account.balance as JSON"),
    }
    show(
        "balance of an unknown account",
        service
            .queries
            .execute(GetBalance {
                account_id: Uuid::now_v7(),
            })
            .await,
    );
}

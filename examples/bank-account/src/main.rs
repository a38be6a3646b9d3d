//! Runs a short story against the bank-account service and prints what happened.
//!
//! On the in-memory store by default; on PostgreSQL when `DATABASE_URL` is set, where the
//! balances of earlier runs' accounts are replayed before the story starts.

use std::error::Error;
use std::fmt::Debug;

use bank_account::domain::{AccountError, CloseAccount, Deposit, OpenAccount, Withdraw};
use bank_account::read_model::GetBalance;
use bank_account::wire::Service;
use cqrs_core::{CommandError, Committed, GlobalPosition, InMemoryEventStore, Metadata};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::AfterPosition;
use uuid::Uuid;

/// Prints the outcome and moves `last` to a committed command's position.
fn report(
    what: &str,
    outcome: Result<Committed, CommandError<AccountError>>,
    last: &mut GlobalPosition,
) {
    match outcome {
        Ok(c) => {
            println!(
                "  ok        {what:<34} -> {} at version {} (position {})",
                c.stream_id, c.stream_version, c.position
            );
            *last = c.position;
        }
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

    let service = service().await?;
    let account_id = Uuid::now_v7();
    let mut last = GlobalPosition::START;
    typed_commands(&service, account_id, &mut last).await;
    json_commands(&service, account_id, &mut last).await;
    queries(&service, account_id, last).await;
    Ok(())
}

/// On PostgreSQL when `DATABASE_URL` is set, else on the in-memory store: one service type.
async fn service() -> Result<Service, Box<dyn Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let pool = sqlx::PgPool::connect(&url).await?;
        PostgresEventStore::migrate(&pool).await?;
        println!("event store: PostgreSQL (balances of earlier runs replayed)");
        Ok(bank_account::wire::build_postgres(pool).await?)
    } else {
        println!("event store: in memory (set DATABASE_URL to use PostgreSQL)");
        Ok(bank_account::wire::build(InMemoryEventStore::new()))
    }
}

async fn typed_commands(service: &Service, account_id: Uuid, last: &mut GlobalPosition) {
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
        last,
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
        last,
    );
    report(
        "withdraw 30.00",
        bus.execute(Withdraw {
            account_id,
            amount: 3_000,
        })
        .await,
        last,
    );
    report(
        "withdraw 500.00",
        bus.execute(Withdraw {
            account_id,
            amount: 50_000,
        })
        .await,
        last,
    );
    report(
        "deposit 0.00",
        bus.execute(Deposit {
            account_id,
            amount: 0,
        })
        .await,
        last,
    );
    report(
        "close while holding money",
        bus.execute(CloseAccount { account_id }).await,
        last,
    );
}

async fn json_commands(service: &Service, account_id: Uuid, last: &mut GlobalPosition) {
    println!("\nJSON commands by name:");
    let body = format!(r#"{{"account_id":"{account_id}","amount":1250}}"#);
    match service
        .command_json
        .dispatch_json("account.deposit", body.as_bytes())
        .await
    {
        Ok(c) => {
            println!(
                "  ok        {:<34} -> {} at version {}",
                "account.deposit 12.50", c.stream_id, c.stream_version
            );
            *last = c.position;
        }
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

/// `last` is the position of the last command that committed: the first query waits until
/// the balances include it (at once on the in-memory store), so the JSON query after it sees
/// it too.
async fn queries(service: &Service, account_id: Uuid, last: GlobalPosition) {
    println!("\nqueries:");
    show(
        "balance, after the last write",
        service
            .queries
            .execute(AfterPosition::new(last, GetBalance { account_id }))
            .await,
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

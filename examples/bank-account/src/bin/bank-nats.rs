//! Two services on one machine, joined by NATS JetStream:
//!
//! - the **writer** runs the bank-account service on PostgreSQL and relays its events to
//!   JetStream (`cqrs_nats::Relay`);
//! - the **reporting** service, in a database of its own, builds the `AccountReport` read
//!   model from JetStream (`cqrs_nats::consumer`), with the same projection the writer could
//!   feed from a store subscription.
//!
//! One command runs both, as two processes, in fresh databases and a fresh JetStream stream
//! that it removes afterwards:
//!
//! ```text
//! cargo run -p bank-account --bin bank-nats
//! ```
//!
//! Needs PostgreSQL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`,
//! a user that may create databases) and NATS with JetStream (`NATS_URL`, default
//! `127.0.0.1:4222`; `scripts/ensure-nats` starts a local one). `bank-nats writer` and
//! `bank-nats reporting` run one side each, given `WRITER_DATABASE_URL` /
//! `REPORT_DATABASE_URL`, `BANK_STREAM` and `BANK_SUBJECTS`.

use std::error::Error;
use std::process::{Command, ExitCode};
use std::str::FromStr;
use std::time::Duration;

use bank_account::domain::{Deposit, OpenAccount, Withdraw};
use bank_account::report::{AccountReport, REPORT_TABLE};
use cqrs_core::{GlobalPosition, Metadata};
use cqrs_nats::consumer::{Consumer, PgProjection};
use cqrs_nats::{Relay, Subjects};
use cqrs_postgres::PostgresEventStore;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

type Fallible<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// The story's accounts: (owner, deposits, withdrawals); 1 + deposits + withdrawals events each.
const STORY: [(&str, &[u64], &[u64]); 3] = [
    ("Ada", &[10_000, 2_500, 700], &[1_200]),
    ("Grace", &[50_000], &[5_000, 5_000]),
    ("Linus", &[300, 300, 300, 300], &[]),
];

fn story_events() -> u64 {
    STORY
        .iter()
        .map(|(_, d, w)| 1 + d.len() as u64 + w.len() as u64)
        .sum()
}

fn env(name: &str) -> Fallible<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let role = std::env::args().nth(1).unwrap_or_default();
    let outcome = match role.as_str() {
        "writer" => writer().await,
        "reporting" => reporting().await,
        "" | "demo" => demo().await,
        other => Err(format!("unknown role `{other}`: writer, reporting or demo").into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bank-nats {role}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs both services as child processes of this one, then cleans up.
async fn demo() -> Fallible {
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin_options = PgConnectOptions::from_str(&admin_url)?.disable_statement_logging();
    let id = Uuid::now_v7().simple().to_string();
    let writer_db = format!("bank_writer_{id}");
    let report_db = format!("bank_report_{id}");
    let mut admin = PgConnection::connect_with(&admin_options).await?;
    for db in [&writer_db, &report_db] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await?;
    }
    let url_of = |db: &str| {
        let (base, _) = admin_url.rsplit_once('/').unwrap_or((&admin_url, ""));
        format!("{base}/{db}")
    };
    let stream = format!("BANK_DEMO_{id}");
    let subjects = format!("bank{id}");
    println!(
        "writer database {writer_db}, reporting database {report_db}, JetStream stream {stream}"
    );

    let exe = std::env::current_exe()?;
    let spawn = |role: &str| {
        Command::new(&exe)
            .arg(role)
            .env("WRITER_DATABASE_URL", url_of(&writer_db))
            .env("REPORT_DATABASE_URL", url_of(&report_db))
            .env("BANK_STREAM", &stream)
            .env("BANK_SUBJECTS", &subjects)
            .spawn()
    };
    // The reporting service first: it waits for the stream the writer's relay creates.
    let mut reporting = spawn("reporting")?;
    let mut writer = spawn("writer")?;
    let writer_status = tokio::task::spawn_blocking(move || writer.wait()).await??;
    let reporting_status = tokio::task::spawn_blocking(move || reporting.wait()).await??;

    // Clean up whatever happened.
    for db in [&writer_db, &report_db] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    let client = async_nats::connect(nats_url()).await?;
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;

    if writer_status.success() && reporting_status.success() {
        println!("both services finished; databases and stream removed");
        Ok(())
    } else {
        Err(format!("writer: {writer_status}, reporting: {reporting_status}").into())
    }
}

/// The writing service: commands on PostgreSQL, events relayed to JetStream.
async fn writer() -> Fallible {
    let pool = PgPool::connect(&env("WRITER_DATABASE_URL")?).await?;
    PostgresEventStore::migrate(&pool).await?;
    let service = bank_account::wire::build_postgres(pool.clone()).await?;
    let client = async_nats::connect(nats_url()).await?;
    let relay = Relay::new(client, env("BANK_STREAM")?)
        .subjects(Subjects::by_category(env("BANK_SUBJECTS")?))
        .start(&pool)
        .await?;
    println!("[writer] relay started");

    let mut last = GlobalPosition::START;
    for (owner, deposits, withdrawals) in STORY {
        let account_id = Uuid::now_v7();
        let metadata = Metadata::default().with_correlation_id(Uuid::now_v7());
        let open = OpenAccount {
            account_id,
            owner: owner.to_owned(),
        };
        last = service
            .commands
            .execute_with(open, metadata.clone())
            .await?
            .position;
        for &amount in deposits {
            let deposit = Deposit { account_id, amount };
            last = service
                .commands
                .execute_with(deposit, metadata.clone())
                .await?
                .position;
        }
        for &amount in withdrawals {
            let withdraw = Withdraw { account_id, amount };
            last = service
                .commands
                .execute_with(withdraw, metadata.clone())
                .await?
                .position;
        }
        println!(
            "[writer] {owner}: opened, {} deposits, {} withdrawals",
            deposits.len(),
            withdrawals.len()
        );
    }
    relay.wait_for(last, Duration::from_secs(30)).await?;
    println!("[writer] every event acknowledged by JetStream");
    relay.shutdown().await?;
    Ok(())
}

/// The reporting service: its own database, fed from JetStream.
async fn reporting() -> Fallible {
    let pool = PgPool::connect(&env("REPORT_DATABASE_URL")?).await?;
    cqrs_nats::consumer::migrate(&pool).await?;
    sqlx::query(REPORT_TABLE).execute(&pool).await?;
    let client = async_nats::connect(nats_url()).await?;
    let stream = env("BANK_STREAM")?;
    // The writer's relay creates the stream; wait for it.
    let js = async_nats::jetstream::new(client.clone());
    let mut waited = Duration::ZERO;
    while js.get_stream(&stream).await.is_err() {
        if waited > Duration::from_secs(30) {
            return Err(format!("stream {stream} did not appear").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let feed = Consumer::new(client, stream)
        .start(PgProjection::new(AccountReport, pool.clone()))
        .await?;
    println!("[reporting] consuming");
    if !feed.wait_for(story_events(), Duration::from_secs(30)).await {
        return Err("the report did not receive every event within 30 s".into());
    }
    feed.shutdown().await?;
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT owner, balance, movements FROM account_report ORDER BY owner")
            .fetch_all(&pool)
            .await?;
    println!("[reporting] account report, built from NATS:");
    for (owner, balance, movements) in rows {
        println!("[reporting]   {owner:<6} balance {balance:>7} cents after {movements} movements");
    }
    Ok(())
}

//! A database of the benchmark's own for each part, created empty and dropped afterwards.

use std::str::FromStr;

use cqrs_postgres::PostgresEventStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The server the benchmark connects to when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `cqrs-es`'s tables, as `postgres-es` documents them.
pub const CQRS_ES_TABLES: [&str; 2] = [
    "CREATE TABLE events (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text NOT NULL,
    event_version  text NOT NULL,
    payload        json NOT NULL,
    metadata       json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)",
    "CREATE TABLE snapshots (
    aggregate_type   text NOT NULL,
    aggregate_id     text NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
)",
];

/// The connection options of the server's administrative database (`DATABASE_URL`).
pub fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL is not a postgres URL")
        .disable_statement_logging()
}

/// A database that exists for one part of the benchmark, with the store's tables; dropped
/// (`WITH (FORCE)`) when this goes away.
pub struct BenchDb {
    name: String,
    /// A pool of `BENCH_POOL` connections to it, otherwise sqlx's default options.
    pub pool: PgPool,
}

impl BenchDb {
    /// Creates the database, connects a pool of `max_connections`, and runs the store's
    /// migrations.
    pub async fn create(max_connections: u32) -> BenchDb {
        let name = format!("cqrs_bench_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect_with(&admin_options())
            .await
            .expect("connect to PostgreSQL (set DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the bench database");
        admin.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(admin_options().database(&name))
            .await
            .expect("connect to the bench database");
        PostgresEventStore::migrate(&pool)
            .await
            .expect("create the store's tables");
        BenchDb { name, pool }
    }

    /// Runs each statement of `ddl`.
    pub async fn execute_all(&self, ddl: &[&str]) {
        for statement in ddl {
            sqlx::query(statement)
                .execute(&self.pool)
                .await
                .expect("create a table");
        }
    }

    /// Closes the pool and drops the database.
    pub async fn drop_now(self) {
        self.pool.close().await;
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        // This may run inside the benchmark's runtime, which cannot be blocked on: drop the
        // database from a private runtime on a thread of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    if let Ok(mut admin) = PgConnection::connect_with(&admin_options()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut admin)
                                .await;
                        admin.close().await.ok();
                    }
                });
        })
        .join();
    }
}

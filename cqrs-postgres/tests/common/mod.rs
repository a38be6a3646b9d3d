//! A fresh PostgreSQL database per test, dropped afterwards.
//!
//! Tests connect to `DATABASE_URL` if set, else to the local server's `postgres` database,
//! create `cqrs_test_<uuid>`, and drop it (`WITH (FORCE)`) when the guard goes away — also when
//! the test panics.
#![allow(dead_code)]

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;

/// The server tests run against.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDb {
    /// Creates an empty database and a pool of `max_connections` to it.
    pub async fn create(max_connections: u32) -> TestDb {
        let admin_options = PgConnectOptions::from_str(&admin_url())
            .expect("DATABASE_URL is not a valid postgres URL")
            .disable_statement_logging();
        let mut admin = PgConnection::connect_with(&admin_options)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {}: {e}", admin_url()));
        let name = format!("cqrs_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await.ok();
        let options = admin_options.database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.clone())
            .await
            .expect("connect to the test database");
        TestDb {
            pool,
            name,
            options,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let pool = self.pool.clone();
        // Drop runs outside async context guarantees; use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                pool.close().await;
                let admin_options = PgConnectOptions::from_str(&admin_url())
                    .expect("url")
                    .disable_statement_logging();
                if let Ok(mut admin) = PgConnection::connect_with(&admin_options).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

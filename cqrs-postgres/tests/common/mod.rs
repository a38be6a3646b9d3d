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
        // The pool's connections belong to the test's runtime, which is blocked in this drop:
        // never touch them from here. `DROP DATABASE ... WITH (FORCE)` ends them server-side,
        // from a fresh connection on a private runtime and thread.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let admin_options = PgConnectOptions::from_str(&admin_url())
                    .expect("url")
                    .disable_statement_logging();
                let mut admin = PgConnection::connect_with(&admin_options).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !std::thread::panicking() {
            match dropped {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("could not drop test database {}: {error}", self.name),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

//! The service on an ephemeral port, a real HTTP client, and a fresh database per test.
//!
//! Tests connect to `DATABASE_URL` if set, else to the local server's `postgres` database.

#![allow(dead_code)]

use std::str::FromStr;
use std::time::Duration;

use cqrs_core::{GlobalPosition, RecordedEvent};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use user_service::Running;
use user_service::config::Config;
use user_service::http::Auth;
use user_service::wire::Service;
use uuid::Uuid;

pub const SECRET: &[u8] = b"a test secret of more than thirty-two bytes";

/// A database that exists for one test, dropped (`WITH (FORCE)`) afterwards.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL is a postgres URL")
        .disable_statement_logging()
}

impl TestDb {
    pub async fn create() -> TestDb {
        let mut admin = PgConnection::connect_with(&admin_options())
            .await
            .expect("reach PostgreSQL");
        let name = format!("users_test_{}", Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await.ok();
        TestDb {
            pool: Self::pool(&name).await,
            name,
        }
    }

    async fn pool(name: &str) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(24)
            .connect_with(admin_options().database(name))
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
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

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Memory,
    Postgres,
}

/// The service, listening on loopback, and a client for it.
pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
    pub auth: Auth,
    pub config: Config,
    pub db: Option<TestDb>,
}

impl TestServer {
    pub async fn start(store: Store) -> TestServer {
        let db = match store {
            Store::Memory => None,
            Store::Postgres => Some(TestDb::create().await),
        };
        Self::on(db, Config::for_tests(SECRET)).await
    }

    pub async fn on(db: Option<TestDb>, config: Config) -> TestServer {
        let service = match &db {
            None => Service::in_memory(),
            Some(db) => Service::postgres(db.pool.clone())
                .await
                .expect("the service starts on PostgreSQL"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running = user_service::serve(service, listener, &config).expect("serve");
        TestServer {
            base: format!("http://{}", running.addr()),
            running: Some(running),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            auth: Auth::new(SECRET),
            config,
            db,
        }
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(mut self) -> TestServer {
        self.shutdown().await;
        // The same database (and pool); everything in process is new.
        let db = self.db.take();
        Self::on(db, self.config.clone()).await
    }

    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("a clean shutdown");
        }
    }

    pub fn service(&self) -> &Service {
        self.running.as_ref().expect("running").service()
    }

    pub fn token(&self, user: &str) -> String {
        self.auth.token(user, Duration::from_secs(600), false)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request as `user`.
    pub fn request(&self, method: Method, path: &str, user: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(self.token(user))
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.request(Method::POST, path, "alice")
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    pub async fn patch(&self, path: &str, body: Value) -> Response {
        self.request(Method::PATCH, path, "alice")
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, "alice")
            .send()
            .await
            .expect("send")
    }

    /// Every stored event, in the store's global order.
    pub async fn events(&self) -> Vec<RecordedEvent> {
        self.service()
            .store
            .read_all_from(GlobalPosition::START, 100_000)
            .await
            .expect("read the store")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A server not shut down by the test is dropped with its runtime.
        let _ = self.running.take();
    }
}

/// The status and JSON body of a response.
pub async fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// A problem response: its status, and the body, checked for the problem media type.
pub async fn problem(response: Response) -> (StatusCode, Value) {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (status, body) = json(response).await;
    assert_eq!(content_type, "application/problem+json", "{status}: {body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    (status, body)
}

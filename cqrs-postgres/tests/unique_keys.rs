//! Unique keys across aggregates on PostgreSQL: the key checks every keyed store passes, then
//! the same guarantees through the command bus, under real concurrency.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::TestDb;
use cqrs_core::{Command, Event, aggregate};
use cqrs_core::{
    CommandBus, CommandError, Committed, EventStore, ExpectedVersion, KeyChanges, Metadata,
    NewEvent, Repository, StoreError, UniqueKeys,
};
use cqrs_postgres::{NotifyMode, PostgresEventStore};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Barrier;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailChanged {
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum UserEvent {
    #[event(name = "user.registered")]
    Registered(Registered),
    #[event(name = "user.email_changed")]
    EmailChanged(EmailChanged),
    #[event(name = "user.deleted")]
    Deleted,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = User, id = id, name = "user.register")]
pub struct Register {
    pub id: u32,
    pub email: String,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = User, id = id, name = "user.change_email")]
pub struct ChangeEmail {
    pub id: u32,
    pub email: String,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = User, id = id, name = "user.delete")]
pub struct Delete {
    pub id: u32,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error("already registered")]
    AlreadyRegistered,
    #[error("not registered")]
    NotRegistered,
}

#[derive(Debug, Default)]
pub struct User {
    email: Option<String>,
}

#[aggregate(event = UserEvent, error = UserError, unique_keys)]
impl User {
    #[command_handler]
    fn register(&self, cmd: &Register) -> Result<Registered, UserError> {
        if self.email.is_some() {
            return Err(UserError::AlreadyRegistered);
        }
        Ok(Registered {
            email: cmd.email.clone(),
        })
    }

    #[command_handler]
    fn change_email(&self, cmd: &ChangeEmail) -> Result<EmailChanged, UserError> {
        if self.email.is_none() {
            return Err(UserError::NotRegistered);
        }
        Ok(EmailChanged {
            email: cmd.email.clone(),
        })
    }

    #[command_handler]
    fn delete(&self, _cmd: &Delete) -> Result<Option<UserEvent>, UserError> {
        Ok(self.email.as_ref().map(|_| UserEvent::Deleted))
    }

    #[event_handler]
    fn on_registered(&mut self, e: &Registered) {
        self.email = Some(e.email.clone());
    }

    #[event_handler]
    fn on_email_changed(&mut self, e: &EmailChanged) {
        self.email = Some(e.email.clone());
    }

    #[event_handler(Deleted)]
    fn on_deleted(&mut self) {
        self.email = None;
    }
}

impl UniqueKeys for User {
    fn unique_keys(&self, event: &UserEvent, keys: &mut KeyChanges) {
        match event {
            UserEvent::Registered(e) => keys.claim("user.email", e.email.clone()),
            UserEvent::EmailChanged(e) => {
                if let Some(old) = &self.email {
                    keys.release("user.email", old.clone());
                }
                keys.claim("user.email", e.email.clone());
            }
            UserEvent::Deleted => {
                if let Some(old) = &self.email {
                    keys.release("user.email", old.clone());
                }
            }
        }
    }
}

type Bus = CommandBus<(Repository<User>, ())>;

async fn migrated(max_connections: u32) -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(max_connections).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    let store = PostgresEventStore::new(db.pool.clone());
    (db, store)
}

fn bus(store: PostgresEventStore) -> Bus {
    CommandBus::builder(store)
        .aggregate::<User>(())
        .retry_on_conflict(0)
        .build()
}

fn register(id: u32, email: &str) -> Register {
    Register {
        id,
        email: email.into(),
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn owner(store: &PostgresEventStore, email: &str) -> Option<String> {
    store
        .unique_key_owner("user.email", email)
        .await
        .expect("owner")
}

#[track_caller]
fn assert_taken(result: Result<Committed, CommandError<UserError>>, email: &str, holder: &str) {
    match result {
        Err(CommandError::UniqueKeyTaken {
            namespace,
            value,
            owner,
        }) => assert_eq!(
            (namespace.as_str(), value.as_str(), owner.as_str()),
            ("user.email", email, holder)
        ),
        other => panic!("expected {email:?} to be taken by `{holder}`, got {other:?}"),
    }
}

#[tokio::test]
async fn the_postgres_store_passes_the_unique_key_checks() {
    let (db, store) = migrated(20).await;
    cqrs_core::testing::unique_keys::run_all(&store).await;
    // The checks hold whichever way appends notify.
    cqrs_core::testing::unique_keys::run_all(&store.clone().with_notify(NotifyMode::AfterCommit))
        .await;
    drop(db);
}

#[tokio::test]
async fn the_migration_creates_the_key_table_and_appends_without_keys_leave_it_alone() {
    let (db, store) = migrated(2).await;
    let event = NewEvent::from_event(
        &UserEvent::Registered(Registered {
            email: "ada@example.com".into(),
        }),
        Metadata::default(),
    )
    .expect("serialize");
    store
        .append_with_keys(
            "plain",
            ExpectedVersion::NoStream,
            vec![event],
            KeyChanges::new(),
        )
        .await
        .expect("append without keys");
    assert_eq!(count(&db.pool, "cqrs_unique_keys").await, 0);
    let primary_key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text
           FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = 'cqrs_unique_keys'::regclass AND i.indisprimary
          ORDER BY array_position(i.indkey, a.attnum)",
    )
    .fetch_all(&db.pool)
    .await
    .expect("primary key");
    assert_eq!(primary_key, ["namespace", "value"]);
    drop(db);
}

#[tokio::test]
async fn a_taken_key_is_a_typed_error_and_writes_nothing() {
    let (db, store) = migrated(4).await;
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com"))
        .await
        .expect("first");
    assert_taken(
        bus.execute(register(2, "ada@example.com")).await,
        "ada@example.com",
        "User-1",
    );
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
    assert_eq!(count(&db.pool, "cqrs_streams").await, 1);
    assert_eq!(count(&db.pool, "cqrs_unique_keys").await, 1);
    assert_eq!(store.stream_version("User-2").await.expect("version"), 0);
    drop(db);
}

#[tokio::test]
async fn a_released_key_can_be_claimed_by_another_aggregate() {
    let (db, store) = migrated(4).await;
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com"))
        .await
        .expect("register");
    bus.execute(Delete { id: 1 }).await.expect("delete");
    assert_eq!(owner(&store, "ada@example.com").await, None);
    bus.execute(register(2, "ada@example.com"))
        .await
        .expect("register again");
    assert_eq!(
        owner(&store, "ada@example.com").await.as_deref(),
        Some("User-2")
    );
    drop(db);
}

#[tokio::test]
async fn changing_a_key_releases_the_old_and_claims_the_new_atomically() {
    let (db, store) = migrated(4).await;
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com"))
        .await
        .expect("ada");
    bus.execute(register(2, "bob@example.com"))
        .await
        .expect("bob");

    let refused = bus
        .execute(ChangeEmail {
            id: 1,
            email: "bob@example.com".into(),
        })
        .await;
    assert_taken(refused, "bob@example.com", "User-2");
    assert_eq!(
        owner(&store, "ada@example.com").await.as_deref(),
        Some("User-1"),
        "the refused change released the old key"
    );
    assert_eq!(store.stream_version("User-1").await.expect("version"), 1);

    bus.execute(ChangeEmail {
        id: 1,
        email: "ada@lovelace.org".into(),
    })
    .await
    .expect("change");
    assert_eq!(owner(&store, "ada@example.com").await, None);
    assert_eq!(
        owner(&store, "ada@lovelace.org").await.as_deref(),
        Some("User-1")
    );
    bus.execute(register(3, "ada@example.com"))
        .await
        .expect("the old address is free");
    assert_eq!(count(&db.pool, "cqrs_unique_keys").await, 3);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_with_one_key_have_one_winner_and_49_typed_errors() {
    const WRITERS: u32 = 50;
    let (db, store) = migrated(25).await;
    let bus = bus(store.clone());
    let barrier = Arc::new(Barrier::new(WRITERS as usize));
    let tasks: Vec<_> = (1..=WRITERS)
        .map(|id| {
            let bus = bus.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                bus.execute(register(id, "ada@example.com")).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut holders = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(committed) => winners.push(committed.stream_id),
            Err(CommandError::UniqueKeyTaken {
                namespace,
                value,
                owner,
            }) => {
                assert_eq!(
                    (namespace.as_str(), value.as_str()),
                    ("user.email", "ada@example.com")
                );
                holders.push(owner);
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(holders.len(), 49);
    assert!(holders.iter().all(|holder| *holder == winners[0]));
    assert_eq!(
        owner(&store, "ada@example.com").await.as_ref(),
        Some(&winners[0])
    );
    assert_eq!(count(&db.pool, "cqrs_events").await, 1);
    assert_eq!(count(&db.pool, "cqrs_streams").await, 1);
    assert_eq!(count(&db.pool, "cqrs_unique_keys").await, 1);
    drop(db);
}

#[tokio::test]
async fn a_stream_conflict_is_reported_before_keys_and_changes_none() {
    let (db, store) = migrated(4).await;
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com"))
        .await
        .expect("register");
    let event = NewEvent::from_event(
        &UserEvent::EmailChanged(EmailChanged {
            email: "new@example.com".into(),
        }),
        Metadata::default(),
    )
    .expect("serialize");
    let mut keys = KeyChanges::new();
    keys.release("user.email", "ada@example.com");
    keys.claim("user.email", "new@example.com");
    match store
        .append_with_keys("User-1", ExpectedVersion::NoStream, vec![event], keys)
        .await
    {
        Err(StoreError::Conflict { actual: 1, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        owner(&store, "ada@example.com").await.as_deref(),
        Some("User-1")
    );
    assert_eq!(owner(&store, "new@example.com").await, None);
    drop(db);
}

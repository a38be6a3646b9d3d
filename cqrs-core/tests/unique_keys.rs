//! Unique keys across aggregates on the in-memory store: declared by the aggregate, reserved
//! in the append, refused with a typed error when another stream holds them.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_core::prelude::*;
use cqrs_core::{
    AppendResult, BoxFuture, ExpectedVersion, GlobalPosition, KeyChanges, NewEvent, Snapshot,
    StoreError, UniqueKeys,
};

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

/// Registers with a first address and changes it right away: two events, one command.
#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = User, id = id, name = "user.register_then_change")]
pub struct RegisterThenChange {
    pub id: u32,
    pub first: String,
    pub then: String,
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
    fn register_then_change(&self, cmd: &RegisterThenChange) -> Result<Vec<UserEvent>, UserError> {
        if self.email.is_some() {
            return Err(UserError::AlreadyRegistered);
        }
        Ok(vec![
            UserEvent::Registered(Registered {
                email: cmd.first.clone(),
            }),
            UserEvent::EmailChanged(EmailChanged {
                email: cmd.then.clone(),
            }),
        ])
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
        let old = self.email.as_deref().map(str::to_lowercase);
        match event {
            UserEvent::Registered(e) => keys.claim("user.email", e.email.to_lowercase()),
            UserEvent::EmailChanged(e) => {
                if let Some(old) = old {
                    keys.release("user.email", old);
                }
                keys.claim("user.email", e.email.to_lowercase());
            }
            UserEvent::Deleted => {
                if let Some(old) = old {
                    keys.release("user.email", old);
                }
            }
        }
    }
}

/// An aggregate without keys, on the same buses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noted {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum NoteEvent {
    #[event(name = "note.noted")]
    Noted(Noted),
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(aggregate = Note, id = id, name = "note.write")]
pub struct Write {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug, Default)]
pub struct Note;

#[aggregate(event = NoteEvent, error = Never)]
impl Note {
    #[command_handler]
    fn write(&self, cmd: &Write) -> Result<Noted, Never> {
        Ok(Noted {
            text: cmd.text.clone(),
        })
    }

    #[event_handler]
    fn on_noted(&mut self, _e: &Noted) {}
}

/// A store that implements only the required methods (no unique keys) and counts the calls
/// of each kind of append.
#[derive(Clone, Default)]
struct KeylessStore {
    inner: InMemoryEventStore,
    appends: Arc<AtomicUsize>,
}

impl EventStore for KeylessStore {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(stream_id, expected, events)
    }
    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.load_stream(stream_id, from_version)
    }
    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.stream_version(stream_id)
    }
    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all_from(after, limit)
    }
    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream_id)
    }
    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }
    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_snapshot(stream_id)
    }
}

type Bus = CommandBus<(
    cqrs_core::Repository<Note>,
    (cqrs_core::Repository<User>, ()),
)>;

fn bus(store: impl EventStore) -> Bus {
    CommandBus::builder(store)
        .aggregate::<User>(())
        .aggregate::<Note>(())
        .build()
}

fn register(id: u32, email: &str) -> Register {
    Register {
        id,
        email: email.into(),
    }
}

async fn owner(store: &InMemoryEventStore, email: &str) -> Option<String> {
    store.unique_key_owner("user.email", email).await.unwrap()
}

#[track_caller]
fn assert_taken<E: std::fmt::Debug>(
    result: Result<Committed, CommandError<E>>,
    email: &str,
    holder: &str,
) {
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
async fn the_in_memory_store_passes_the_unique_key_checks() {
    cqrs_core::testing::unique_keys::run_all(&InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn a_taken_key_is_a_typed_error_and_writes_nothing() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com")).await.unwrap();
    assert_taken(
        bus.execute(register(2, "Ada@Example.com")).await,
        "ada@example.com",
        "User-1",
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.stream_version("User-2").await.unwrap(), 0);
    assert_eq!(
        owner(&store, "ada@example.com").await.as_deref(),
        Some("User-1")
    );
}

#[tokio::test]
async fn a_released_key_can_be_claimed_by_another_aggregate() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com")).await.unwrap();
    bus.execute(Delete { id: 1 }).await.unwrap();
    assert_eq!(owner(&store, "ada@example.com").await, None);
    bus.execute(register(2, "ada@example.com")).await.unwrap();
    assert_eq!(
        owner(&store, "ada@example.com").await.as_deref(),
        Some("User-2")
    );
}

#[tokio::test]
async fn changing_a_key_releases_the_old_and_claims_the_new_in_one_append() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    bus.execute(register(1, "ada@example.com")).await.unwrap();
    bus.execute(register(2, "bob@example.com")).await.unwrap();

    // Refused: the new address is taken, and the old one stays held.
    let refused = bus
        .execute(ChangeEmail {
            id: 1,
            email: "bob@example.com".into(),
        })
        .await;
    assert_taken(refused, "bob@example.com", "User-2");
    assert_eq!(
        owner(&store, "ada@example.com").await.as_deref(),
        Some("User-1")
    );
    assert_eq!(store.len(), 2);

    bus.execute(ChangeEmail {
        id: 1,
        email: "ada@lovelace.org".into(),
    })
    .await
    .unwrap();
    assert_eq!(owner(&store, "ada@example.com").await, None);
    assert_eq!(
        owner(&store, "ada@lovelace.org").await.as_deref(),
        Some("User-1")
    );
    bus.execute(register(3, "ada@example.com")).await.unwrap();
}

#[tokio::test]
async fn keys_of_a_multi_event_command_follow_the_state_event_by_event() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    let committed = bus
        .execute(RegisterThenChange {
            id: 1,
            first: "first@example.com".into(),
            then: "then@example.com".into(),
        })
        .await
        .unwrap();
    assert_eq!(committed.events, 2);
    assert_eq!(owner(&store, "first@example.com").await, None);
    assert_eq!(
        owner(&store, "then@example.com").await.as_deref(),
        Some("User-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_one_key_have_exactly_one_winner() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    let tasks: Vec<_> = (1..=50)
        .map(|id| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.execute(register(id, "ada@example.com")).await })
        })
        .collect();
    let mut winners = 0;
    let mut taken = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(CommandError::UniqueKeyTaken { .. }) => taken += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!((winners, taken), (1, 49));
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn aggregates_without_keys_work_on_a_store_without_unique_keys() {
    let store = KeylessStore::default();
    let bus = bus(store.clone());
    bus.execute(Write {
        id: 1,
        text: "hello".into(),
    })
    .await
    .unwrap();
    assert_eq!(store.appends.load(Ordering::SeqCst), 1);
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn a_store_without_unique_keys_refuses_keyed_appends_and_writes_nothing() {
    let store = KeylessStore::default();
    let bus = bus(store.clone());
    match bus.execute(register(1, "ada@example.com")).await {
        Err(CommandError::Store(StoreError::UniqueKeysUnsupported)) => {}
        other => panic!("expected unique keys to be unsupported, got {other:?}"),
    }
    assert_eq!(store.appends.load(Ordering::SeqCst), 0);
    assert_eq!(store.inner.len(), 0);
}

//! Behaviour of the command bus and repository on the in-memory store.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::middleware::{CommandMiddleware, CommandResult, Next, Timeout, Validation};
use cqrs_core::prelude::*;
use cqrs_core::{
    ExpectedVersion, GlobalPosition, NewEvent, RepositoryOptions, Snapshot, ValidationErrors,
};
use support::*;

fn bus(store: impl EventStore) -> CommandBus<(cqrs_core::Repository<Account>, ())> {
    CommandBus::builder(store)
        .aggregate::<Account>(limits())
        .build()
}

async fn opened(bus: &CommandBus<(cqrs_core::Repository<Account>, ())>, id: u32) {
    bus.execute(Open {
        id,
        owner: "ada".into(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_command_appends_its_events_and_reports_where() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    let first = bus
        .execute(Open {
            id: 1,
            owner: "ada".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (first.stream_id.as_str(), first.stream_version, first.events),
        ("Account-1", 1, 1)
    );
    let second = bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap();
    assert_eq!(second.stream_version, 2);
    assert!(second.position > first.position);
    let stored = store.load_stream("Account-1", 1).await.unwrap();
    let types: Vec<_> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["account.opened", "account.deposited"]);
    assert_eq!(stored[1].payload, serde_json::json!({ "amount": 5 }));
}

#[tokio::test]
async fn a_rejected_command_returns_the_domain_error_and_writes_nothing() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    opened(&bus, 1).await;
    let error = bus
        .execute(Withdraw { id: 1, amount: 10 })
        .await
        .unwrap_err();
    assert_eq!(
        error.rejection(),
        Some(&AccountError::InsufficientFunds {
            balance: 0,
            requested: 10
        })
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_handler_returning_no_events_commits_nothing() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    opened(&bus, 1).await;
    bus.execute(Close { id: 1 }).await.unwrap();
    let again = bus.execute(Close { id: 1 }).await.unwrap();
    assert_eq!(
        (again.events, again.stream_version, again.position),
        (0, 2, GlobalPosition::START)
    );
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn services_reach_the_handler() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(Limits { max_deposit: 3 })
        .build();
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    bus.execute(Deposit { id: 1, amount: 100 }).await.unwrap();
    let stored = store.load_stream("Account-1", 2).await.unwrap();
    assert_eq!(stored[0].payload, serde_json::json!({ "amount": 3 }));
}

#[tokio::test]
async fn events_carry_correlation_causation_user_and_custom_keys() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    let correlation = Uuid::now_v7();
    let metadata = Metadata::default()
        .with_correlation_id(correlation)
        .with_user_id("teller-7")
        .with("tenant", "acme");
    let committed = bus
        .execute_with(
            Open {
                id: 1,
                owner: "ada".into(),
            },
            metadata,
        )
        .await
        .unwrap();
    let uncorrelated = bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
    let stored = store.load_stream("Account-1", 1).await.unwrap();
    assert_eq!(stored[0].metadata.correlation_id, Some(correlation));
    assert_eq!(stored[0].metadata.causation_id, Some(committed.command_id));
    assert_eq!(stored[0].metadata.user_id.as_deref(), Some("teller-7"));
    assert_eq!(
        stored[0].metadata.extra["tenant"],
        serde_json::json!("acme")
    );
    // Without a caller correlation id, the command starts a new correlation.
    assert_eq!(
        stored[1].metadata.correlation_id,
        Some(uncorrelated.command_id)
    );
    assert_eq!(
        stored[1].metadata.causation_id,
        Some(uncorrelated.command_id)
    );
    assert_eq!(
        stored[0].event_id.get_version_num(),
        7,
        "event ids are UUID v7"
    );
}

#[tokio::test]
async fn a_cached_state_never_hides_another_writers_events() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    opened(&bus, 1).await;
    // Another process deposits behind the bus's back.
    let other = NewEvent::from_event(
        &AccountEvent::Deposited(Deposited { amount: 50 }),
        Metadata::default(),
    )
    .unwrap();
    store
        .append("Account-1", ExpectedVersion::Exact(1), vec![other])
        .await
        .unwrap();
    // The bus's cached state is at version 1; the withdrawal only succeeds if it saw the deposit.
    let committed = bus.execute(Withdraw { id: 1, amount: 50 }).await.unwrap();
    assert_eq!(committed.stream_version, 3);
}

#[tokio::test]
async fn without_retries_a_conflict_is_returned_typed() {
    let store = InMemoryEventStore::new();
    // Without the cache every command reads the stream first, so the conflict below is a
    // real race between two writers that both read version 1.
    let bus = bus_without_cache(store.clone());
    opened(&bus, 1).await;
    // The slow deposit loads at version 1, then another deposit commits version 2 first.
    let slow = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.execute(SlowDeposit {
                id: 1,
                amount: 1,
                millis: 200,
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A second bus on the same store stands for another process writing the same aggregate.
    let other_process = self::bus(store.clone());
    other_process
        .execute(Deposit { id: 1, amount: 1 })
        .await
        .unwrap();
    match slow.await.unwrap() {
        Err(CommandError::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, "Account-1");
            assert_eq!(expected, ExpectedVersion::Exact(1));
            assert_eq!(actual, 2);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_one_aggregate_in_one_process_wait_for_each_other_instead_of_conflicting() {
    let store = CountingStore::default();
    let bus = self::bus(store.clone());
    opened(&bus, 1).await;
    let slow = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.execute(SlowDeposit {
                id: 1,
                amount: 1,
                millis: 100,
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // No retries configured: this would conflict if it did not wait for the slow command.
    bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
    slow.await.unwrap().unwrap();
    let versions: Vec<_> = store.loads().iter().map(|(_, from)| *from).collect();
    assert_eq!(
        versions,
        [1],
        "only the first command read the stream; the others used the cached state"
    );
    assert_eq!(store.inner.len(), 3);
}

#[tokio::test]
async fn a_cached_state_behind_another_writer_is_refreshed_by_the_version_check_without_a_retry() {
    let store = CountingStore::default();
    // No retries configured: the stale cache must not surface as a conflict.
    let bus = self::bus(store.clone());
    opened(&bus, 1).await;
    bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap();
    // Another process deposits behind this bus's back: its cached state is now behind.
    let other_process = self::bus(store.inner.clone());
    other_process
        .execute(Deposit { id: 1, amount: 7 })
        .await
        .unwrap();
    let loads_before = store.loads().len();
    let committed = bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
    assert_eq!(committed.stream_version, 4);
    assert_eq!(
        store.loads()[loads_before..],
        [("Account-1".to_owned(), 3)],
        "the conflicting append made it read exactly the tail it missed"
    );
    // The refreshed state includes the other process's deposit: 5 + 7 + 1.
    let withdrawn = bus.execute(Withdraw { id: 1, amount: 13 }).await.unwrap();
    assert_eq!(withdrawn.stream_version, 5);
}

#[tokio::test]
async fn a_rejection_taken_on_a_stale_cached_state_is_rechecked_against_the_store() {
    let store = CountingStore::default();
    let bus = self::bus(store.clone());
    opened(&bus, 1).await;
    // The cached state has a balance of 0; another process deposits 10.
    let other_process = self::bus(store.inner.clone());
    other_process
        .execute(Deposit { id: 1, amount: 10 })
        .await
        .unwrap();
    // On the stale state this withdrawal would be refused for lack of funds.
    let committed = bus.execute(Withdraw { id: 1, amount: 10 }).await.unwrap();
    assert_eq!(committed.stream_version, 3);
    // A rejection on a current state is still a rejection, with nothing written.
    let refused = bus.execute(Withdraw { id: 1, amount: 1 }).await;
    assert!(
        matches!(refused, Err(CommandError::Rejected(_))),
        "{refused:?}"
    );
    assert_eq!(store.inner.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_concurrent_commands_on_one_aggregate_all_commit_in_order() {
    // Without the cache, commands of one process race each other like separate processes.
    let store = InMemoryEventStore::new();
    let options = RepositoryOptions {
        snapshot_every: None,
        cache_capacity: 0,
    };
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>(limits(), options)
        .retry_on_conflict(1000)
        .build();
    opened(&bus, 1).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stored = store.load_stream("Account-1", 1).await.unwrap();
    assert_eq!(stored.len(), 401);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, e)| e.stream_version == i as u64 + 1)
    );
    let committed = bus.execute(Withdraw { id: 1, amount: 400 }).await.unwrap();
    assert_eq!(committed.stream_version, 402);
}

#[tokio::test]
async fn snapshots_make_loading_cost_snapshot_plus_tail() {
    let store = CountingStore::default();
    let options = RepositoryOptions {
        snapshot_every: Some(3),
        cache_capacity: 0,
    };
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>(limits(), options)
        .build();
    opened(&bus, 1).await;
    for _ in 0..6 {
        bus.execute(Deposit { id: 1, amount: 2 }).await.unwrap();
    }
    let snapshot = store
        .load_snapshot("Account-1")
        .await
        .unwrap()
        .expect("a snapshot was saved");
    assert_eq!(snapshot.stream_version, 6);
    assert_eq!(snapshot.schema_version, 1);
    store.loads.lock().unwrap().clear();
    bus.execute(Withdraw { id: 1, amount: 12 }).await.unwrap();
    assert_eq!(
        store.loads(),
        vec![("Account-1".to_owned(), 7)],
        "only the tail after the snapshot is read"
    );
}

#[tokio::test]
async fn a_snapshot_that_no_longer_deserializes_is_ignored() {
    let store = CountingStore::default();
    let options = RepositoryOptions {
        snapshot_every: Some(100),
        cache_capacity: 0,
    };
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>(limits(), options)
        .build();
    opened(&bus, 1).await;
    bus.execute(Deposit { id: 1, amount: 9 }).await.unwrap();
    for bad in [
        Snapshot {
            stream_id: "Account-1".into(),
            stream_version: 2,
            schema_version: 1,
            state: serde_json::json!({ "balance": "lots" }),
        },
        Snapshot {
            stream_id: "Account-1".into(),
            stream_version: 3,
            schema_version: 0,
            state: serde_json::json!({}),
        },
    ] {
        store.save_snapshot(bad).await.unwrap();
        store.loads.lock().unwrap().clear();
        // Rebuilt from events: the balance of 9 is there.
        let error = bus
            .execute(Withdraw { id: 1, amount: 10 })
            .await
            .unwrap_err();
        assert_eq!(
            error.rejection(),
            Some(&AccountError::InsufficientFunds {
                balance: 9,
                requested: 10
            })
        );
        assert_eq!(store.loads(), vec![("Account-1".to_owned(), 1)]);
    }
}

#[tokio::test]
async fn a_snapshot_past_the_streams_head_is_discarded_and_the_state_rebuilt() {
    // The events were restored from an older backup; the snapshot table was not.
    let store = CountingStore::default();
    let options = RepositoryOptions {
        snapshot_every: Some(100),
        cache_capacity: 0,
    };
    let bus = CommandBus::builder(store.clone())
        .aggregate_with::<Account>(limits(), options)
        .build();
    opened(&bus, 1).await;
    bus.execute(Deposit { id: 1, amount: 9 }).await.unwrap();
    store
        .save_snapshot(Snapshot {
            stream_id: "Account-1".into(),
            stream_version: 40,
            schema_version: 1,
            state: serde_json::to_value(Account {
                open: true,
                closed: false,
                balance: 1_000,
                owner: "from the future".into(),
            })
            .unwrap(),
        })
        .await
        .unwrap();
    // Trusting the snapshot would append at version 41 and conflict forever.
    let error = bus
        .execute(Withdraw { id: 1, amount: 10 })
        .await
        .unwrap_err();
    assert_eq!(
        error.rejection(),
        Some(&AccountError::InsufficientFunds {
            balance: 9,
            requested: 10
        }),
        "the state was rebuilt from the two stored events"
    );
    assert_eq!(store.load_snapshot("Account-1").await.unwrap(), None);
    let committed = bus.execute(Withdraw { id: 1, amount: 9 }).await.unwrap();
    assert_eq!(committed.stream_version, 3);
}

#[tokio::test]
async fn a_stored_event_that_does_not_decode_is_a_typed_error_naming_it() {
    let store = InMemoryEventStore::new();
    let bus = bus(store.clone());
    opened(&bus, 1).await;
    let alien = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "account.frozen".into(),
        schema_version: 1,
        payload: serde_json::json!({}).into(),
        metadata: Metadata::default(),
    };
    store
        .append("Account-1", ExpectedVersion::Exact(1), vec![alien])
        .await
        .unwrap();
    let fresh = bus_without_cache(store.clone());
    match fresh.execute(Deposit { id: 1, amount: 1 }).await {
        Err(CommandError::Decode {
            stream,
            version,
            source,
        }) => {
            assert_eq!((stream.as_str(), version), ("Account-1", 2));
            assert_eq!(
                source,
                cqrs_core::EventDecodeError::UnknownType {
                    name: "account.frozen".into()
                }
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(store.len(), 2, "nothing was appended");
}

fn bus_without_cache(store: impl EventStore) -> CommandBus<(cqrs_core::Repository<Account>, ())> {
    CommandBus::builder(store)
        .aggregate_with::<Account>(
            limits(),
            RepositoryOptions {
                snapshot_every: None,
                cache_capacity: 0,
            },
        )
        .build()
}

/// Records the order layers run in.
struct Mark(&'static str, Arc<std::sync::Mutex<Vec<&'static str>>>);

impl CommandMiddleware for Mark {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        self.1.lock().unwrap().push(self.0);
        next.run(command, ctx).await
    }
}

#[tokio::test]
async fn middleware_runs_in_the_order_added_outermost_first() {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .middleware(Mark("first", log.clone()))
        .middleware(Mark("second", log.clone()))
        .middleware(Mark("third", log.clone()))
        .build();
    opened_with(&bus).await;
    assert_eq!(*log.lock().unwrap(), ["first", "second", "third"]);
}

async fn opened_with<R, M>(bus: &CommandBus<R, M>)
where
    R: cqrs_core::list::Contains<Account, cqrs_core::list::Here>,
    M: cqrs_core::middleware::CommandChain,
{
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_timeout_middleware_stops_slow_commands() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(limits())
        .middleware(Timeout::new(Duration::from_millis(20)))
        .build();
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    match bus
        .execute(SlowDeposit {
            id: 1,
            amount: 1,
            millis: 2_000,
        })
        .await
    {
        Err(CommandError::Timeout {
            command,
            after,
            idempotency_key: None,
        }) => {
            assert_eq!(command, "account.slow_deposit");
            assert_eq!(after, Duration::from_millis(20));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn the_validation_middleware_rejects_invalid_commands_before_loading() {
    let store = CountingStore::default();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(limits())
        .middleware(Validation)
        .build();
    let error = bus
        .execute(Rename {
            id: 1,
            owner: "much too long".into(),
            contact: "nope".into(),
        })
        .await
        .unwrap_err();
    match error {
        CommandError::Invalid(ValidationErrors { fields }) => {
            let paths: Vec<_> = fields
                .iter()
                .map(|f| (f.path.as_str(), f.code.as_str()))
                .collect();
            assert_eq!(paths, [("contact", "email"), ("owner", "length")]);
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert!(store.loads().is_empty(), "nothing was loaded");
    assert!(store.inner.is_empty());
}

#[derive(Default)]
struct Counting {
    deposits: AtomicUsize,
}

#[projection(name = "counting")]
impl Counting {
    #[event_handler]
    fn on_deposited(&self, _e: &Deposited) {
        self.deposits.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn subscribed_projections_receive_only_their_event_types() {
    let counting = ReadModel::new(Counting::default());
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .subscribe(counting.clone())
        .build();
    assert_eq!(
        <Counting as cqrs_core::Projection>::EVENT_TYPES,
        ["account.deposited"]
    );
    bus.execute(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
    bus.execute(Deposit { id: 1, amount: 1 }).await.unwrap();
    bus.execute(Withdraw { id: 1, amount: 1 }).await.unwrap();
    assert_eq!(counting.read().await.deposits.load(Ordering::SeqCst), 2);
}

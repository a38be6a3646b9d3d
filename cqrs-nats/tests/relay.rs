//! The relay against the real servers: PostgreSQL (a fresh database per test) and NATS with
//! JetStream (a stream and subject prefix per test, deleted at the end).
//!
//! What they pin down: each event reaches JetStream on its subject with its metadata as
//! headers and decodes back to the stored event; killed and restarted at random points while
//! events are appended, the relay delivers every event, JetStream stores none twice, and each
//! stream's order holds; a stream that does not fit and a server without JetStream are typed
//! errors at start.
#![allow(missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use common::{TestDb, TestStream};
use cqrs_core::{
    Event, EventStore, ExpectedVersion, GlobalPosition, Metadata, NewEvent, RecordedEvent,
    TraceParent,
};
use cqrs_nats::{Relay, RelayError, SetupError, StreamSettings, Subjects, headers};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::Checkpoints;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);
/// The kill/restart test: writers, events each, streams each.
const WRITERS: usize = 2;
const PER_WRITER: usize = 2_000;
const STREAMS: usize = 25;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    #[event(name = "account.deposited")]
    Deposited(Deposited),
    #[event(name = "account.closed")]
    Closed,
}

async fn store_on(db: &TestDb) -> PostgresEventStore {
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    PostgresEventStore::new(db.pool.clone())
}

fn relay(client: async_nats::Client, stream: &TestStream) -> Relay {
    Relay::new(client, stream.name.clone()).subjects(Subjects::by_category(stream.prefix.clone()))
}

async fn last_position(store: &PostgresEventStore) -> GlobalPosition {
    let mut from = GlobalPosition::START;
    loop {
        let page = store.read_all_from(from, 10_000).await.expect("read all");
        match page.last() {
            Some(last) => from = last.position,
            None => return from,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_each_event_with_its_subject_and_headers() {
    let Some(client) = common::connect("publishes_each_event_with_its_subject_and_headers").await
    else {
        return;
    };
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    let stream = TestStream::new();

    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let traceparent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let metadata = Metadata::default()
        .with_correlation_id(correlation)
        .with_causation_id(causation)
        .with_user_id("zoë admin")
        .with_traceparent(traceparent)
        .with("tenant", "acme\r\n 100%");
    let events = vec![
        NewEvent::from_event(
            &AccountEvent::Deposited(Deposited { amount: 7 }),
            metadata.clone(),
        )
        .unwrap(),
        NewEvent::from_event(&AccountEvent::Closed, Metadata::default()).unwrap(),
    ];
    store
        .append("BankAccount-1", ExpectedVersion::Exact(0), events)
        .await
        .expect("append");
    let stored: Vec<RecordedEvent> = store
        .read_all_from(GlobalPosition::START, 10)
        .await
        .expect("read");

    let handle = relay(client.clone(), &stream)
        .start(&db.pool)
        .await
        .expect("relay starts");
    handle
        .wait_for(stored[1].position, PATIENCE)
        .await
        .expect("both events acknowledged by JetStream");
    handle.shutdown().await.expect("shutdown");

    let messages = stream.messages(&client).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].subject,
        format!("{}.BankAccount.account.deposited", stream.prefix)
    );
    assert_eq!(
        messages[1].subject,
        format!("{}.BankAccount.account.closed", stream.prefix)
    );
    let first = messages[0].headers.as_ref().expect("headers");
    assert_eq!(
        first.get(headers::MSG_ID).unwrap().as_str(),
        stored[0].event_id.to_string()
    );
    assert_eq!(
        first.get(headers::CORRELATION_ID).unwrap().as_str(),
        correlation.to_string()
    );
    assert_eq!(
        first.get(headers::CAUSATION_ID).unwrap().as_str(),
        causation.to_string()
    );
    assert_eq!(
        first.get(headers::TRACEPARENT).unwrap().as_str(),
        traceparent.to_string()
    );
    assert_eq!(
        first.get(headers::STREAM_ID).unwrap().as_str(),
        "BankAccount-1"
    );
    assert_eq!(first.get(headers::STREAM_VERSION).unwrap().as_str(), "1");
    assert_eq!(first.get(headers::SCHEMA_VERSION).unwrap().as_str(), "1");
    assert_eq!(
        first.get(headers::POSITION).unwrap().as_str(),
        stored[0].position.to_string()
    );
    // The consumer's view: the very event the store recorded.
    for (message, recorded) in messages.iter().zip(&stored) {
        let decoded = headers::decode(message.headers.as_ref(), &message.payload).expect("decodes");
        assert_eq!(&decoded, recorded);
    }
}

/// The relay is aborted (as a crash would stop it, its NATS connection dropped) and
/// restarted at random points while two writers append; afterwards JetStream holds every
/// event exactly once, and each stream's events in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::too_many_lines)] // one scenario: write, kill and restart, check
async fn killed_and_restarted_at_random_points_it_delivers_every_event_once_in_order() {
    let test = "killed_and_restarted_at_random_points_it_delivers_every_event_once_in_order";
    if common::connect(test).await.is_none() {
        return;
    }
    let db = TestDb::create(10).await;
    let store = Arc::new(store_on(&db).await);
    let stream = TestStream::new();

    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut appended = Vec::with_capacity(PER_WRITER);
            let mut rng = StdRng::from_os_rng();
            while appended.len() < PER_WRITER {
                let count = rng.random_range(1..=5).min(PER_WRITER - appended.len());
                let events: Vec<NewEvent> = (0..count)
                    .map(|i| {
                        NewEvent::from_event(
                            &AccountEvent::Deposited(Deposited { amount: i as u64 }),
                            Metadata::default(),
                        )
                        .unwrap()
                    })
                    .collect();
                // Each writer has streams of its own, so `Any` keeps versions dense.
                let stream_id = format!("Account-w{writer}s{}", rng.random_range(0..STREAMS));
                appended.extend(events.iter().map(|e| e.event_id));
                store
                    .append(&stream_id, ExpectedVersion::Any, events)
                    .await
                    .expect("append");
                if rng.random_bool(0.05) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
                }
            }
            appended
        }));
    }
    let done_writing = {
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut all = Vec::new();
            for writer in writers {
                all.extend(writer.await.expect("writer"));
            }
            writing.store(false, Ordering::SeqCst);
            all
        })
    };

    // Kill and restart while the writers run, at random points.
    let mut restarts = 0;
    let mut rng = StdRng::from_os_rng();
    while writing.load(Ordering::SeqCst) || restarts < 5 {
        let client = common::connect(test).await.expect("NATS still up");
        let handle = relay(client, &stream)
            .max_in_flight(rng.random_range(1..=256))
            .options(cqrs_postgres::subscription::SubscriptionOptions {
                batch_size: rng.random_range(1..=300),
                ..Default::default()
            })
            .start(&db.pool)
            .await
            .expect("relay starts");
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..150))).await;
        handle.abort();
        restarts += 1;
    }
    let appended = done_writing.await.expect("writers");
    assert_eq!(appended.len(), WRITERS * PER_WRITER);
    let checkpoint_before_last = Checkpoints::new(db.pool.clone())
        .load(cqrs_nats::DEFAULT_RELAY_NAME)
        .await
        .unwrap()
        .expect("the relay stored a checkpoint");

    // The last run finishes the job.
    let client = common::connect(test).await.expect("NATS still up");
    let handle = relay(client.clone(), &stream)
        .start(&db.pool)
        .await
        .expect("relay starts");
    handle
        .wait_for(last_position(&store).await, PATIENCE)
        .await
        .expect("the relay reaches the head");
    handle.shutdown().await.expect("shutdown");

    let messages = stream.messages(&client).await;
    let mut seen = HashSet::new();
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut duplicates = 0;
    for message in &messages {
        let event = headers::decode(message.headers.as_ref(), &message.payload).expect("decodes");
        // A consumer that deduplicates by event id.
        if !seen.insert(event.event_id) {
            duplicates += 1;
            continue;
        }
        per_stream
            .entry(event.stream_id)
            .or_default()
            .push(event.stream_version);
    }
    let expected: HashSet<Uuid> = appended.iter().copied().collect();
    let missing = expected.difference(&seen).count();
    let unexpected = seen.difference(&expected).count();
    eprintln!(
        "{restarts} kills and restarts; {} events appended; {} messages in JetStream; \
         {} distinct events; {duplicates} duplicates; {missing} missing; checkpoint before \
         the last run {checkpoint_before_last}",
        appended.len(),
        messages.len(),
        seen.len()
    );
    assert!(restarts >= 5);
    assert_eq!(missing, 0, "every event reaches JetStream");
    assert_eq!(unexpected, 0, "nothing else is published");
    assert_eq!(
        duplicates, 0,
        "JetStream's duplicate window dropped every re-publish"
    );
    assert_eq!(messages.len(), WRITERS * PER_WRITER);
    let mut ordered_streams = BTreeMap::new();
    for (stream_id, versions) in &per_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "stream {stream_id} in version order");
        ordered_streams.insert(stream_id.clone(), versions.len());
    }
    assert_eq!(
        ordered_streams.values().sum::<usize>(),
        WRITERS * PER_WRITER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_stream_is_refused_with_every_problem_named() {
    let Some(client) =
        common::connect("an_incompatible_stream_is_refused_with_every_problem_named").await
    else {
        return;
    };
    let db = TestDb::create(3).await;
    let store = store_on(&db).await;
    store
        .append(
            "BankAccount-1",
            ExpectedVersion::Any,
            vec![NewEvent::from_event(&AccountEvent::Closed, Metadata::default()).unwrap()],
        )
        .await
        .unwrap();
    let stream = TestStream::new();
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: stream.name.clone(),
        subjects: vec![format!("{}.other.>", stream.prefix)],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .expect("create the misfit stream");

    let started = relay(client.clone(), &stream).start(&db.pool).await;
    match started {
        Err(RelayError::Setup(SetupError::IncompatibleStream {
            stream: name,
            problems,
        })) => {
            assert_eq!(name, stream.name);
            assert_eq!(problems.len(), 3, "{problems:?}");
            assert!(problems[0].contains("subjects"), "{problems:?}");
            assert!(problems[1].contains("retention"), "{problems:?}");
            assert!(problems[2].contains("duplicate window"), "{problems:?}");
        }
        other => panic!("expected an incompatible stream, got {other:?}"),
    }
    // Nothing was published, and no checkpoint was created.
    assert!(stream.messages(&client).await.is_empty());
    assert_eq!(
        Checkpoints::new(db.pool.clone())
            .load(cqrs_nats::DEFAULT_RELAY_NAME)
            .await
            .unwrap(),
        None
    );

    // Creation turned off: a missing stream is its own error.
    let missing = TestStream::new();
    let started = Relay::new(client, missing.name.clone())
        .stream_settings(StreamSettings {
            create: false,
            ..StreamSettings::new(missing.name.clone())
        })
        .start(&db.pool)
        .await;
    assert!(
        matches!(started, Err(RelayError::Setup(SetupError::MissingStream(ref name))) if *name == missing.name),
        "{started:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_a_typed_error() {
    let test = "a_server_without_jetstream_is_a_typed_error";
    let Some(server) = PlainServer::start() else {
        eprintln!(
            "\n==================== SKIPPED: {test} ====================\n\
             nats-server is not installed, so no server without JetStream can be started.\n"
        );
        return;
    };
    let db = TestDb::create(3).await;
    store_on(&db).await;
    let client = async_nats::connect(format!("127.0.0.1:{}", server.port))
        .await
        .expect("connect to the plain server");
    let started = Relay::new(client, "EVENTS").start(&db.pool).await;
    match started {
        Err(RelayError::Setup(SetupError::JetStreamUnavailable(reason))) => {
            eprintln!("refused as expected: {reason}");
        }
        other => panic!("expected JetStream unavailable, got {other:?}"),
    }
}

/// A NATS server without JetStream on a free port, for as long as the value lives.
struct PlainServer {
    child: std::process::Child,
    port: u16,
}

impl PlainServer {
    fn start() -> Option<Self> {
        let binary = [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `Subscription::acknowledged` against a real PostgreSQL server, each test in a fresh
//! database: events are forwarded in the global order with a bounded window of confirmations
//! outstanding, and the stored checkpoint never passes an event that is not confirmed.
#![allow(missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use cqrs_core::{BoxFuture, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::subscription::{
    Checkpoint, Checkpoints, Confirmation, EventTypes, ForwardError, Forwarder, Subscription,
    SubscriptionError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);
const NAME: &str = "forward-test";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noted {
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum TestEvent {
    #[event(name = "test.noted")]
    Noted(Noted),
    #[event(name = "test.other")]
    Other,
}

/// What the receiving side saw, shared with the test.
#[derive(Default)]
struct Receiver {
    /// Every forward, in order: (event id, stream id, stream version).
    sent: Mutex<Vec<(Uuid, String, u64)>>,
    /// Confirmations outstanding right now, and the most ever.
    outstanding: AtomicUsize,
    most_outstanding: AtomicUsize,
    /// Confirmations that failed once: an event id here fails its first confirmation.
    fail_once: Mutex<HashSet<Uuid>>,
}

/// Confirms each event once `open` is true, after a short delay.
struct TestForwarder {
    receiver: Arc<Receiver>,
    open: watch::Receiver<bool>,
    types: EventTypes,
}

impl Forwarder for TestForwarder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> EventTypes {
        self.types
    }

    fn forward<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Confirmation, ForwardError>> {
        let receiver = Arc::clone(&self.receiver);
        receiver.sent.lock().unwrap().push((
            event.event_id,
            event.stream_id.clone(),
            event.stream_version,
        ));
        let now = receiver.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        receiver.most_outstanding.fetch_max(now, Ordering::SeqCst);
        let mut open = self.open.clone();
        let event_id = event.event_id;
        let confirmation: Confirmation = Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
            tokio::time::sleep(Duration::from_micros(200)).await;
            receiver.outstanding.fetch_sub(1, Ordering::SeqCst);
            if receiver.fail_once.lock().unwrap().remove(&event_id) {
                return Err(ForwardError::from(format!("receiver refused {event_id}")));
            }
            Ok(())
        });
        Box::pin(std::future::ready(Ok(confirmation)))
    }
}

async fn store_on(db: &TestDb) -> PostgresEventStore {
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrations");
    PostgresEventStore::new(db.pool.clone())
}

/// Appends `count` events over `streams` streams, one event per append; returns their ids in
/// append order.
async fn append_many(store: &PostgresEventStore, streams: usize, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let event = if i % 5 == 4 {
            TestEvent::Other
        } else {
            TestEvent::Noted(Noted { n: i as u64 })
        };
        let new = NewEvent::from_event(&event, Metadata::default()).expect("serialize");
        ids.push(new.event_id);
        store
            .append(
                &format!("Thing-{}", i % streams),
                ExpectedVersion::Any,
                vec![new],
            )
            .await
            .expect("append");
    }
    ids
}

async fn stored_checkpoint(db: &TestDb) -> Checkpoint {
    Checkpoints::new(db.pool.clone())
        .load(NAME)
        .await
        .expect("load checkpoint")
        .unwrap_or(Checkpoint::START)
}

async fn head(db: &TestDb) -> Checkpoint {
    let (tx, position): (String, i64) = sqlx::query_as(
        "SELECT tx::text, position FROM cqrs_events ORDER BY tx DESC, position DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("head");
    Checkpoint {
        tx: tx.parse().unwrap(),
        position: cqrs_core::GlobalPosition(u64::try_from(position).unwrap()),
    }
}

/// Waits until the stored checkpoint reaches `target`.
async fn stored_reaches(db: &TestDb, target: Checkpoint) {
    tokio::time::timeout(PATIENCE, async {
        while stored_checkpoint(db).await < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stored checkpoint reaches the head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_every_event_in_order_within_the_window() {
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    let ids = append_many(&store, 7, 600).await;
    let receiver = Arc::new(Receiver::default());
    let (_open, open) = watch::channel(true);

    let handle = Subscription::acknowledged(
        TestForwarder {
            receiver: Arc::clone(&receiver),
            open,
            types: EventTypes::All,
        },
        16,
    )
    .batch_size(100)
    .start(&db.pool)
    .await
    .expect("start");
    stored_reaches(&db, head(&db).await).await;
    handle.shutdown().await.expect("shutdown");

    let sent = receiver.sent.lock().unwrap().clone();
    let sent_ids: Vec<Uuid> = sent.iter().map(|(id, _, _)| *id).collect();
    if sent_ids != ids {
        let differ = sent_ids.iter().zip(&ids).position(|(a, b)| a != b);
        panic!(
            "every event, once, in the global order: sent {} of {}, first difference at {differ:?}; sent[d]={:?} ids[d]={:?} ids.pos(sent[d])={:?}",
            sent_ids.len(),
            ids.len(),
            differ.map(|d| sent_ids[d]),
            differ.map(|d| ids[d]),
            differ.map(|d| ids.iter().position(|i| *i == sent_ids[d])),
        );
    }
    let most = receiver.most_outstanding.load(Ordering::SeqCst);
    assert!(most <= 16, "{most} confirmations outstanding, window 16");
    assert!(
        most > 1,
        "confirmations overlap (at most {most} were outstanding)"
    );

    // A restart forwards nothing again.
    let (_open, open) = watch::channel(true);
    let again = Arc::new(Receiver::default());
    let handle = Subscription::acknowledged(
        TestForwarder {
            receiver: Arc::clone(&again),
            open,
            types: EventTypes::All,
        },
        16,
    )
    .start(&db.pool)
    .await
    .expect("restart");
    handle
        .wait_for(
            store
                .read_all_from(cqrs_core::GlobalPosition::START, 10_000)
                .await
                .unwrap()
                .last()
                .unwrap()
                .position,
            PATIENCE,
        )
        .await
        .expect("caught up");
    handle.shutdown().await.expect("shutdown");
    assert!(
        again.sent.lock().unwrap().is_empty(),
        "nothing forwarded twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_stays_behind_unconfirmed_events() {
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    append_many(&store, 3, 50).await;
    let receiver = Arc::new(Receiver::default());
    let (gate, open) = watch::channel(false);

    let handle = Subscription::acknowledged(
        TestForwarder {
            receiver: Arc::clone(&receiver),
            open,
            types: EventTypes::All,
        },
        8,
    )
    .start(&db.pool)
    .await
    .expect("start");
    // The window fills and no confirmation arrives: nothing is stored, nothing reported.
    tokio::time::timeout(PATIENCE, async {
        while receiver.sent.lock().unwrap().len() < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the window fills");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.sent.lock().unwrap().len(),
        8,
        "no more than the window is sent"
    );
    assert_eq!(stored_checkpoint(&db).await, Checkpoint::START);
    assert_eq!(handle.status().checkpoint, Checkpoint::START);

    gate.send_replace(true);
    stored_reaches(&db, head(&db).await).await;
    handle
        .wait_for(head(&db).await.position, PATIENCE)
        .await
        .expect("the progress reaches the head once confirmed");
    handle.shutdown().await.expect("shutdown");
    assert_eq!(receiver.sent.lock().unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_confirmation_resends_from_the_first_unconfirmed_event() {
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    let ids = append_many(&store, 4, 200).await;
    let receiver = Arc::new(Receiver::default());
    let failing = ids[120];
    receiver.fail_once.lock().unwrap().insert(failing);
    let (_open, open) = watch::channel(true);

    let handle = Subscription::acknowledged(
        TestForwarder {
            receiver: Arc::clone(&receiver),
            open,
            types: EventTypes::All,
        },
        32,
    )
    .batch_size(50)
    .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
    .start(&db.pool)
    .await
    .expect("start");
    stored_reaches(&db, head(&db).await).await;
    let handle_status = handle.status();
    handle.shutdown().await.expect("shutdown");

    let sent: Vec<Uuid> = receiver
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _, _)| *id)
        .collect();
    let count = |id: &Uuid| sent.iter().filter(|s| *s == id).count();
    // Before the failed one: confirmed, so sent once. The failed one: twice. After it, at most
    // the window was sent before the failure and is sent again.
    assert!(
        receiver.fail_once.lock().unwrap().is_empty(),
        "the failing confirmation did not run; order sent: {:?}; status: {:?}",
        sent.iter()
            .map(|s| ids.iter().position(|id| id == s).unwrap())
            .collect::<Vec<_>>(),
        handle_status,
    );
    let twice: Vec<usize> = (0..120).filter(|&i| count(&ids[i]) != 1).collect();
    assert!(
        twice.is_empty(),
        "events before the failed one were sent again: {twice:?}; order sent: {:?}",
        sent.iter()
            .map(|s| ids.iter().position(|id| id == s).unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(count(&failing), 2);
    assert!(ids[121..].iter().all(|id| (1..=2).contains(&count(id))));
    let resent = ids[121..].iter().filter(|id| count(id) == 2).count();
    assert!(
        resent < 32,
        "{resent} events after the failed one were resent"
    );
    // The second attempt starts exactly at the failed event.
    let second = sent.iter().rposition(|id| *id == failing).unwrap();
    assert_eq!(
        sent[second..],
        ids[120..],
        "the retry resends from the failed event on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_forwarder_passes_other_types_and_stops_loudly_when_told() {
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    let ids = append_many(&store, 2, 25).await;
    let receiver = Arc::new(Receiver::default());
    let (_open, open) = watch::channel(true);
    let handle = Subscription::acknowledged(
        TestForwarder {
            receiver: Arc::clone(&receiver),
            open,
            types: EventTypes::Only(&["test.noted"]),
        },
        4,
    )
    .start(&db.pool)
    .await
    .expect("start");
    stored_reaches(&db, head(&db).await).await;
    handle.shutdown().await.expect("shutdown");
    let sent = receiver.sent.lock().unwrap().len();
    assert_eq!(sent, 20, "only `test.noted` (20 of 25) is forwarded");

    // A receiver that never confirms one event: after the allowed failures, the
    // subscription stops with the forwarder's error, naming the event.
    let receiver = Arc::new(Receiver::default());
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    let ids2 = append_many(&store, 2, 10).await;
    for id in &ids2 {
        receiver.fail_once.lock().unwrap().insert(*id);
    }
    let (_open, open) = watch::channel(true);
    let handle = Subscription::acknowledged(
        TestForwarder {
            receiver: Arc::clone(&receiver),
            open,
            types: EventTypes::All,
        },
        4,
    )
    .max_consecutive_failures(1)
    .start(&db.pool)
    .await
    .expect("start");
    match handle.join().await {
        Err(SubscriptionError::Forward { name, event_id, .. }) => {
            assert_eq!(name, NAME);
            assert_eq!(event_id, ids2[0]);
        }
        other => panic!("expected a forward error, got {other:?}"),
    }
    assert_eq!(stored_checkpoint(&db).await, Checkpoint::START);
    drop(ids);
}

/// A forwarder whose confirmations the test settles by hand: each forward hands the test the
/// event's id and the means to confirm or fail it, in any order.
struct Scripted {
    forwards: tokio::sync::mpsc::UnboundedSender<Forwarded>,
}

/// One forward: the event, and its confirmation's outcome to send.
type Forwarded = (Uuid, tokio::sync::oneshot::Sender<Result<(), String>>);

impl Forwarder for Scripted {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> EventTypes {
        EventTypes::All
    }

    fn forward<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Confirmation, ForwardError>> {
        let (settle, outcome) = tokio::sync::oneshot::channel();
        let _ = self.forwards.send((event.event_id, settle));
        let confirmation: Confirmation = Box::pin(async move {
            match outcome.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(ForwardError::from(reason)),
                Err(_) => Err(ForwardError::from("the test dropped the confirmation")),
            }
        });
        Box::pin(std::future::ready(Ok(confirmation)))
    }
}

async fn checkpoint_of(db: &TestDb, event_id: Uuid) -> Checkpoint {
    let (tx, position): (String, i64) =
        sqlx::query_as("SELECT tx::text, position FROM cqrs_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&db.pool)
            .await
            .expect("the event");
    Checkpoint {
        tx: tx.parse().unwrap(),
        position: cqrs_core::GlobalPosition(u64::try_from(position).unwrap()),
    }
}

/// 30 events in batches of 10 with 25 confirmations in flight: the window spans three batches
/// and the read-ahead. Every confirmation after event `fail` succeeds first, latest first;
/// then `fail`'s confirmation fails. The stored checkpoint must stay before `fail` throughout,
/// be exactly the event before it when the retry starts, and the retry must forward `fail` and
/// everything after it in order.
async fn later_successes_then_a_failure(fail: usize) {
    const EVENTS: usize = 30;
    const WINDOW: usize = 25;
    let db = TestDb::create(5).await;
    let store = store_on(&db).await;
    let ids = append_many(&store, 3, EVENTS).await;
    let failing = ids[fail];
    let before_failing = if fail == 0 {
        Checkpoint::START
    } else {
        checkpoint_of(&db, ids[fail - 1]).await
    };
    let at_failing = checkpoint_of(&db, failing).await;
    let (forwards, mut forwarded) = tokio::sync::mpsc::unbounded_channel();
    let handle = Subscription::acknowledged(Scripted { forwards }, WINDOW)
        .batch_size(10)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .start(&db.pool)
        .await
        .expect("start");

    let target = head(&db).await;
    let mut sent = Vec::new();
    let mut outstanding: Vec<Forwarded> = Vec::new();
    let mut failed = false;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress; sent {sent:?}"
        );
        // Take forwards until the window is full or nothing more comes.
        match tokio::time::timeout(Duration::from_millis(100), forwarded.recv()).await {
            Ok(Some((id, settle))) => {
                sent.push(id);
                outstanding.push((id, settle));
                if outstanding.len() < WINDOW {
                    continue;
                }
            }
            Ok(None) => panic!("the subscription stopped"),
            Err(_) => {}
        }
        let failing_now = if failed {
            None
        } else {
            outstanding.iter().position(|(id, _)| *id == failing)
        };
        let held = failing_now.map(|i| outstanding.remove(i));
        for (_, settle) in outstanding.drain(..).rev() {
            let _ = settle.send(Ok(()));
        }
        if let Some((_, settle)) = held {
            // Later events are confirmed; the failing one is not, yet.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stored = stored_checkpoint(&db).await;
            assert!(
                stored < at_failing,
                "later confirmations moved the stored checkpoint to {stored}, past unconfirmed {at_failing}"
            );
            // What the freed window let through meanwhile, behind the failing event: left
            // unsettled; the failure ends the attempt before they count.
            let mut late = Vec::new();
            while let Ok((id, settle)) = forwarded.try_recv() {
                sent.push(id);
                late.push(settle);
            }
            let _ = settle.send(Err(format!("receiver refused event {fail}")));
            failed = true;
            // The retry starts at the failed event, from a checkpoint right before it.
            let (id, settle) = tokio::time::timeout(PATIENCE, forwarded.recv())
                .await
                .expect("the retry forwards")
                .expect("subscription running");
            assert_eq!(
                ids.iter().position(|i| *i == id),
                Some(fail),
                "the retry starts at the failed event"
            );
            assert_eq!(
                stored_checkpoint(&db).await,
                before_failing,
                "stored when the retry starts"
            );
            drop(late);
            sent.push(id);
            outstanding.push((id, settle));
            continue;
        }
        if failed && stored_checkpoint(&db).await >= target {
            break;
        }
    }
    handle.shutdown().await.expect("shutdown");
    let retry = sent.iter().rposition(|id| *id == failing).expect("resent");
    assert_eq!(sent[retry..], ids[fail..], "the retry forwards in order");
    assert_eq!(sent.iter().filter(|id| **id == failing).count(), 2);
    assert!(
        sent[..retry].iter().zip(&ids).all(|(a, b)| a == b),
        "the first attempt forwarded in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_later_confirmations_mid_batch_keeps_the_checkpoint_before_it() {
    later_successes_then_a_failure(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_later_confirmations_at_a_batch_end_keeps_the_checkpoint_before_it() {
    later_successes_then_a_failure(9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_later_confirmations_in_the_read_ahead_batch_keeps_the_checkpoint_before_it()
 {
    later_successes_then_a_failure(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_of_the_last_confirmation_while_caught_up_keeps_the_checkpoint_before_it() {
    later_successes_then_a_failure(29).await;
}

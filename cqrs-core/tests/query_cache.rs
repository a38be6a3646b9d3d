//! The query cache: answers served until they expire or the read model applies an event of
//! its types, never after, not even while that apply is running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::middleware::{ManualClock, QueryCache};
use cqrs_core::prelude::*;
use cqrs_core::{GlobalPosition, Payload, RecordedEvent};
use serde_json::json;
use tokio::sync::Notify;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    account: u32,
    amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noted;

#[derive(Debug, Clone, Event)]
enum LedgerEvent {
    #[event(name = "ledger.deposited")]
    Deposited(Deposited),
    #[event(name = "ledger.noted")]
    Noted(Noted),
}

#[derive(Debug, Clone, Serialize, Deserialize, Query)]
#[query(output = u64, name = "balance")]
struct Balance {
    account: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("no such account")]
struct NoSuchAccount;

#[derive(Default)]
struct Balances {
    by_account: std::collections::HashMap<u32, u64>,
    /// How many times a query was answered by the handler rather than the cache.
    answered: Arc<AtomicUsize>,
    /// When set, an apply changes the state, says so on the first, and waits on the second
    /// before finishing.
    gate: Option<(Arc<Notify>, Arc<Notify>)>,
}

#[projection]
impl Balances {
    #[event_handler]
    async fn on_deposited(&mut self, e: &Deposited) {
        *self.by_account.entry(e.account).or_default() += e.amount;
        if let Some((changed, release)) = self.gate.clone() {
            changed.notify_one();
            release.notified().await;
        }
    }

    #[query_handler]
    fn balance(&self, q: &Balance) -> Result<u64, NoSuchAccount> {
        self.answered.fetch_add(1, Ordering::SeqCst);
        self.by_account
            .get(&q.account)
            .copied()
            .ok_or(NoSuchAccount)
    }
}

fn recorded(event_type: &'static str, payload: serde_json::Value) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::now_v7(),
        stream_id: "Account-1".into(),
        stream_version: 1,
        position: GlobalPosition(1),
        event_type: event_type.into(),
        schema_version: 1,
        payload: Payload::from(payload),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    }
}

fn deposited(account: u32, amount: u64) -> RecordedEvent {
    recorded(
        "ledger.deposited",
        json!({ "account": account, "amount": amount }),
    )
}

struct Setup {
    model: ReadModel<Balances>,
    answered: Arc<AtomicUsize>,
    clock: ManualClock,
    queries: QueryBus<(ReadModel<Balances>, ()), (QueryCache, ())>,
    cache: QueryCache,
}

fn setup(gate: Option<(Arc<Notify>, Arc<Notify>)>, max_entries: usize) -> Setup {
    let answered = Arc::new(AtomicUsize::new(0));
    let model = ReadModel::new(Balances {
        answered: Arc::clone(&answered),
        gate,
        ..Balances::default()
    });
    let clock = ManualClock::new();
    let cache = QueryCache::new(Duration::from_secs(10), max_entries)
        .clock(clock.clone())
        .query::<Balance, _>(&model);
    let queries = QueryBus::builder()
        .handler(model.clone())
        .middleware(cache.clone())
        .build();
    Setup {
        model,
        answered,
        clock,
        queries,
        cache,
    }
}

#[tokio::test]
async fn answers_are_served_from_the_cache_until_the_read_model_applies_an_event_of_its_types() {
    let s = setup(None, 100);
    s.model.project(&deposited(1, 5)).await.unwrap();
    assert_eq!(s.queries.execute(Balance { account: 1 }).await.unwrap(), 5);
    assert_eq!(s.queries.execute(Balance { account: 1 }).await.unwrap(), 5);
    assert_eq!(s.answered.load(Ordering::SeqCst), 1, "second answer cached");

    // Another query value is another entry; failures are not cached.
    s.queries.execute(Balance { account: 2 }).await.unwrap_err();
    s.queries.execute(Balance { account: 2 }).await.unwrap_err();
    assert_eq!(s.answered.load(Ordering::SeqCst), 3);

    // An event the projection does not handle changes nothing.
    s.model
        .project(&recorded("ledger.noted", json!(null)))
        .await
        .unwrap();
    s.queries.execute(Balance { account: 1 }).await.unwrap();
    assert_eq!(s.answered.load(Ordering::SeqCst), 3);

    s.model.project(&deposited(1, 7)).await.unwrap();
    assert_eq!(s.queries.execute(Balance { account: 1 }).await.unwrap(), 12);
    assert_eq!(s.answered.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn no_stale_answer_is_served_while_an_apply_is_running() {
    let (changed, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let s = setup(Some((Arc::clone(&changed), Arc::clone(&release))), 100);
    {
        // Seed without waiting at the gate.
        let mut model = s.model.write().await;
        model.by_account.insert(1, 5);
    }
    assert_eq!(s.queries.execute(Balance { account: 1 }).await.unwrap(), 5);

    // The apply changes the balance, then stops inside the handler, write lock held.
    let apply = {
        let model = s.model.clone();
        tokio::spawn(async move { model.project(&deposited(1, 7)).await })
    };
    changed.notified().await;
    let query = {
        let queries = s.queries.clone();
        tokio::spawn(async move { queries.execute(Balance { account: 1 }).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !query.is_finished(),
        "the query waits for the apply instead of answering from the cache"
    );
    release.notify_one();
    apply.await.unwrap().unwrap();
    assert_eq!(query.await.unwrap().unwrap(), 12);
}

#[tokio::test]
async fn answers_expire_after_their_time_to_live() {
    let s = setup(None, 100);
    s.model.project(&deposited(1, 5)).await.unwrap();
    s.queries.execute(Balance { account: 1 }).await.unwrap();
    s.clock.advance(Duration::from_secs(9));
    s.queries.execute(Balance { account: 1 }).await.unwrap();
    assert_eq!(s.answered.load(Ordering::SeqCst), 1);
    s.clock.advance(Duration::from_secs(1));
    s.queries.execute(Balance { account: 1 }).await.unwrap();
    assert_eq!(s.answered.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_cache_holds_at_most_its_bound() {
    let s = setup(None, 2);
    for account in 1..=3 {
        s.model.write().await.by_account.insert(account, 1);
    }
    for account in 1..=3 {
        s.queries.execute(Balance { account }).await.unwrap();
        s.clock.advance(Duration::from_millis(1));
    }
    assert_eq!(s.cache.len(), 2);
    // The soonest to expire (the first) made room; the others are still served.
    s.queries.execute(Balance { account: 3 }).await.unwrap();
    assert_eq!(s.answered.load(Ordering::SeqCst), 3);
    s.queries.execute(Balance { account: 1 }).await.unwrap();
    assert_eq!(s.answered.load(Ordering::SeqCst), 4);
}

//! Part c: loading an aggregate of many events without a snapshot.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cqrs_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Repository, RepositoryOptions, stream_id,
};
use cqrs_postgres::PostgresEventStore;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::Settings;
use crate::db::BenchDb;
use crate::domain::{Account, AccountEvent, DEPOSITED, Deposited, OPENED, Opened};
use crate::hand;
use crate::measure::{Summary, cell, nanos_each, ratio, table, turns};

const OURS: usize = 0;
const HAND: usize = 1;

/// The columns the store reads for a stream, with the JSON columns as text.
const LOAD: &str = "\
SELECT position, stream_id, stream_version, event_id, event_type, schema_version,
       payload::text, metadata::text, recorded_at
FROM cqrs_events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version";

/// Writes an account of `events` events (one `Opened`, then deposits of 1) to `stream`, each
/// batch of 1000 with the metadata of one command.
pub async fn seed(store: &PostgresEventStore, stream: &str, events: u64) {
    let mut version = 0;
    while version < events {
        let batch = (events - version).min(1000);
        let metadata = hand::command_metadata();
        let new: Vec<NewEvent> = (version..version + batch)
            .map(|n| {
                let event = if n == 0 {
                    AccountEvent::Opened(Opened {
                        owner: stream.to_owned(),
                    })
                } else {
                    AccountEvent::Deposited(Deposited { amount: 1 })
                };
                NewEvent::from_event(&event, metadata.clone()).expect("serialize")
            })
            .collect();
        version = store
            .append(stream, ExpectedVersion::Exact(version), new)
            .await
            .expect("seed")
            .stream_version;
    }
}

/// The hand-written load: the same rows, each column decoded, the payload straight into the
/// typed event and the metadata into [`Metadata`], folded into the same state.
async fn hand_load(pool: &PgPool, stream: &str) -> (Account, u64) {
    let rows = sqlx::query(LOAD)
        .bind(stream)
        .bind(1_i64)
        .fetch_all(pool)
        .await
        .expect("load");
    let mut state = Account::default();
    let mut version = 0_u64;
    for row in &rows {
        let position: i64 = row.get(0);
        let stream_id: &str = row.get(1);
        let stream_version = u64::try_from(row.get::<i64, _>(2)).expect("version");
        assert_eq!(stream_version, version + 1, "versions follow each other");
        let event_id: Uuid = row.get(3);
        let event_type: &str = row.get(4);
        let schema_version: i32 = row.get(5);
        assert_eq!(schema_version, 1);
        let payload: &str = row.get(6);
        let metadata: Metadata = serde_json::from_str(row.get(7)).expect("metadata");
        let recorded_at: DateTime<Utc> = row.get(8);
        match event_type {
            DEPOSITED => state.on_deposited(&serde_json::from_str(payload).expect("decode")),
            OPENED => state.on_opened(&serde_json::from_str::<Opened>(payload).expect("decode")),
            other => panic!("unknown event type {other}"),
        }
        black_box((position, stream_id, event_id, metadata, recorded_at));
        version = stream_version;
    }
    (state, version)
}

/// Part c.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    let store = PostgresEventStore::new(db.pool.clone());
    let events = settings.load_events;
    let stream = stream_id::<Account>("load");
    seed(&store, &stream, events).await;
    let repository = Repository::<Account>::new(
        Arc::new(store.clone()),
        (),
        RepositoryOptions {
            snapshot_every: None,
            cache_capacity: 0,
        },
    );
    let expected = repository.load(&stream).await.expect("load");
    assert_eq!(expected.version, events);
    assert_eq!(
        hand_load(&db.pool, &stream).await,
        (expected.state.clone(), events)
    );

    let loads = settings.loads;
    let mut millis = vec![Vec::new(); 2];
    for round in 0..settings.rounds {
        // The variants alternate load by load, so a slow spell of the machine hits both.
        let mut spent = [Duration::ZERO; 2];
        for _ in 0..loads {
            for variant in turns(round, 2) {
                let started = Instant::now();
                if variant == OURS {
                    let loaded = repository.load(&stream).await.expect("load");
                    assert_eq!(loaded.version, events);
                    black_box(loaded);
                } else {
                    black_box(hand_load(&db.pool, &stream).await);
                }
                spent[variant] += started.elapsed();
            }
        }
        for (variant, spent) in spent.into_iter().enumerate() {
            millis[variant].push(nanos_each(spent, loads) / 1e6);
        }
    }
    let s: Vec<Option<Summary>> = millis.iter().map(|m| Summary::of(m)).collect();
    println!(
        "## c. Loading an aggregate of {events} events without a snapshot, ms per load \
         (median (min–max) of {} rounds of {loads} loads, the variants alternating)\n",
        settings.rounds
    );
    table(
        &["variant", "ms per load", "speed, ours / this"],
        1,
        &[
            vec![
                "ours: `Repository::load` (cache off)".to_owned(),
                cell(s[OURS], 2),
                "1.00x".to_owned(),
            ],
            vec![
                "hand-written sqlx: `payload::text`, `metadata::text`, \
                 `serde_json::from_str` into the typed event and `Metadata`"
                    .to_owned(),
                cell(s[HAND], 2),
                ratio(s[HAND], s[OURS]),
            ],
        ],
    );
    db.drop_now().await;
}

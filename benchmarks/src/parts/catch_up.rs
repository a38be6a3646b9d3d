//! Part e: a consumer catching up with the whole log, a page at a time.

use std::time::Instant;

use cqrs_core::{EventStore, GlobalPosition, Metadata, RecordedEvent};
use cqrs_postgres::PostgresEventStore;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::Settings;
use crate::db::BenchDb;
use crate::measure::{Summary, cell, per_second, ratio, table, turns};
use crate::parts::load;

const OURS: usize = 0;
const PLAIN: usize = 1;

/// The plain keyset scan by position (not gap-safe: a reader going by position alone can
/// pass over an event whose transaction commits late).
const PLAIN_SCAN: &str = "\
SELECT position, stream_id, stream_version, event_id, event_type, schema_version,
       payload::text, metadata::text, recorded_at
FROM cqrs_events WHERE position > $1 ORDER BY position LIMIT $2";

/// A row of [`PLAIN_SCAN`] as a [`RecordedEvent`].
fn decode(row: &PgRow) -> RecordedEvent {
    let metadata: Metadata = serde_json::from_str(row.get(7)).expect("metadata");
    RecordedEvent {
        position: GlobalPosition(u64::try_from(row.get::<i64, _>(0)).expect("position")),
        stream_id: row.get(1),
        stream_version: u64::try_from(row.get::<i64, _>(2)).expect("version"),
        event_id: row.get(3),
        event_type: row.get(4),
        schema_version: u32::try_from(row.get::<i32, _>(5)).expect("schema version"),
        payload: serde_json::from_str(row.get(6)).expect("payload"),
        metadata,
        recorded_at: row.get(8),
    }
}

async fn ours(store: &PostgresEventStore, page: usize) -> u64 {
    let mut after = GlobalPosition::START;
    let mut read = 0;
    loop {
        let events = store.read_all_from(after, page).await.expect("read");
        let Some(last) = events.last() else {
            return read;
        };
        after = last.position;
        read += events.len() as u64;
    }
}

async fn plain(pool: &PgPool, page: usize) -> u64 {
    let mut after = 0_i64;
    let mut read = 0;
    loop {
        let rows = sqlx::query(PLAIN_SCAN)
            .bind(after)
            .bind(i64::try_from(page).expect("page"))
            .fetch_all(pool)
            .await
            .expect("scan");
        let events: Vec<RecordedEvent> = rows.iter().map(decode).collect();
        let Some(last) = events.last() else {
            return read;
        };
        after = i64::try_from(last.position.0).expect("position");
        read += events.len() as u64;
    }
}

/// Part e.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    let store = PostgresEventStore::new(db.pool.clone());
    let events = settings.catch_up_events;
    // Streams of 1000 events, written by 4 writers at once.
    let streams = events.div_ceil(1000);
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in (writer..streams).step_by(4) {
                    let length = (events - n * 1000).min(1000);
                    load::seed(&store, &format!("catch-up-{n}"), length).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("seed");
    }
    let page = settings.page;
    assert_eq!(ours(&store, page).await, events);
    assert_eq!(plain(&db.pool, page).await, events);

    let mut rates = vec![Vec::new(); 2];
    for round in 0..settings.rounds {
        for variant in turns(round, 2) {
            let started = Instant::now();
            let read = if variant == OURS {
                ours(&store, page).await
            } else {
                plain(&db.pool, page).await
            };
            assert_eq!(read, events);
            rates[variant].push(per_second(read, started.elapsed()));
        }
    }
    let s: Vec<Option<Summary>> = rates.iter().map(|r| Summary::of(r)).collect();
    println!(
        "## e. Catching up with {events} events, {page} per page, events/s \
         (median (min–max) of {} rounds)\n",
        settings.rounds
    );
    table(
        &["variant", "events/s", "ours / this"],
        1,
        &[
            vec![
                "ours: `EventStore::read_all_from`, gap-safe (tx, position) order".to_owned(),
                cell(s[OURS], 0),
                "1.00x".to_owned(),
            ],
            vec![
                "plain keyset scan `position > $1 ORDER BY position LIMIT $2` \
                 (not gap-safe), decoded into `RecordedEvent`"
                    .to_owned(),
                cell(s[PLAIN], 0),
                ratio(s[OURS], s[PLAIN]),
            ],
        ],
    );
    db.drop_now().await;
}

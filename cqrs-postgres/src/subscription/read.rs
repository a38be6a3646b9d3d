//! The catch-up read: the next events of some types after a checkpoint, gap-free.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use cqrs_core::{GlobalPosition, Metadata, RecordedEvent};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::checkpoint::{self, Checkpoint, position_to_sql};
use super::{EventTypes, SubscriptionError};

/// What one read returned.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Events of the subscribed types, in `(tx, position)` order, each with its checkpoint.
    pub events: Vec<(Checkpoint, RecordedEvent)>,
    /// Where the checkpoint stands once `events` are processed: the last event when the
    /// batch is full, else the last settled event of any type (which may be further).
    pub next: Checkpoint,
    /// The batch hit the limit: more may follow at once.
    pub full: bool,
    /// Committed events exist beyond the settled horizon: they become readable as soon as
    /// the older transactions still running finish.
    pub pending: bool,
}

/// One statement, hence one snapshot, for the three answers:
/// - `horizon`: the store's [`READ_HORIZON`](crate::sql::READ_HORIZON), the oldest
///   transaction that may still write here when the snapshot was taken. Every transaction
///   below it has finished, and any transaction that commits later has an id at or above it,
///   so events with `tx < horizon` can never be joined by a late commit behind them. Reading
///   only below it is what makes the read gap-free.
/// - `head`: the last settled event of any type, so the checkpoint passes the events this
///   subscription does not read (a read-your-writes wait on one of them must finish).
/// - `pending`: whether any event lies at or above the horizon (`max(tx)`: one step down
///   the index), committed but not readable yet.
/// - `batch`: the next settled events of the subscribed types after the checkpoint. The row
///   value comparison `(tx, position) > (..)` is an index range scan on `(tx, position)`; the
///   equivalent `OR` form is not.
static NEXT_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
WITH horizon AS MATERIALIZED (
    SELECT {horizon} AS xmin
),
head AS (
    SELECT e.tx, e.position
    FROM cqrs_events e
    WHERE e.tx < (SELECT xmin FROM horizon)
    ORDER BY e.tx DESC, e.position DESC
    LIMIT 1
),
batch AS (
    SELECT e.tx, e.position, e.event_id, e.event_type, e.schema_version, e.stream_id,
           e.stream_version, e.payload, e.metadata, e.recorded_at
    FROM cqrs_events e
    WHERE (e.tx, e.position) > ($1::text::xid8, $2)
      AND e.tx < (SELECT xmin FROM horizon)
{type_test}
    ORDER BY e.tx, e.position
    LIMIT $4
)
SELECT head.tx::text AS head_tx,
       head.position AS head_position,
       coalesce((SELECT max(e.tx) FROM cqrs_events e) >= (SELECT xmin FROM horizon), false)
           AS pending,
       batch.tx::text AS tx,
       batch.position,
       batch.event_id,
       batch.event_type,
       batch.schema_version::bigint AS schema_version,
       batch.stream_id,
       batch.stream_version::bigint AS stream_version,
       batch.payload,
       batch.metadata,
       batch.recorded_at
FROM (SELECT 1) AS always_one_row
LEFT JOIN head ON true
LEFT JOIN batch ON true
ORDER BY batch.tx, batch.position",
        horizon = crate::sql::READ_HORIZON,
        type_test = TYPE_TEST,
    )
});

/// The batch's type filter: left out of the statement for a subscription to every type.
const TYPE_TEST: &str = "      AND e.event_type = ANY($3)";

/// Reads up to `limit` events of `types` after `after`.
pub(crate) async fn next_batch(
    pool: &PgPool,
    name: &'static str,
    after: Checkpoint,
    types: EventTypes,
    limit: usize,
) -> Result<Batch, SubscriptionError> {
    let database = |source| SubscriptionError::database(name, source);
    // The batch size is written into the statement, as `sql::READ_ALL_FROM` does with its
    // page size, so that the plan cache settles on a generic plan.
    let limit_text = i64::try_from(limit).unwrap_or(i64::MAX).to_string();
    let query = match types {
        EventTypes::Only(types) => {
            let statement = NEXT_BATCH.replace("$4", &limit_text);
            sqlx::query(&statement)
                .bind(after.tx.to_string())
                .bind(position_to_sql(after.position))
                .bind(types)
                .fetch_all(pool)
                .await
        }
        // Every type: the same statement without the type test.
        EventTypes::All => {
            let statement = NEXT_BATCH.replace(TYPE_TEST, "").replace("$4", &limit_text);
            sqlx::query(&statement)
                .bind(after.tx.to_string())
                .bind(position_to_sql(after.position))
                .fetch_all(pool)
                .await
        }
    };
    let rows = query.map_err(database)?;

    let first = rows
        .first()
        .ok_or_else(|| database(sqlx::Error::RowNotFound))?;
    // `head` is absent while no event has settled yet.
    let head_tx: Option<String> = first.try_get("head_tx").map_err(database)?;
    let head = match head_tx {
        Some(tx) => checkpoint::decode((tx, first.try_get("head_position").map_err(database)?))
            .map_err(database)?,
        None => Checkpoint::START,
    };
    let pending: bool = first.try_get("pending").map_err(database)?;

    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let tx: Option<String> = row.try_get("tx").map_err(database)?;
        let Some(tx) = tx else {
            // The single row of an empty batch carries the head columns only.
            continue;
        };
        let at = checkpoint::decode((tx, row.try_get("position").map_err(database)?))
            .map_err(database)?;
        events.push((at, decode_event(name, at, row)?));
    }

    let full = events.len() >= limit;
    let next = if full {
        events.last().map_or(after, |(at, _)| *at)
    } else {
        head.max(after)
    };
    Ok(Batch {
        events,
        next,
        full,
        pending,
    })
}

pub(crate) fn decode_event(
    name: &'static str,
    at: Checkpoint,
    row: &sqlx::postgres::PgRow,
) -> Result<RecordedEvent, SubscriptionError> {
    let database = |source| SubscriptionError::database(name, source);
    let malformed = |reason: String| SubscriptionError::MalformedEvent {
        name,
        position: at.position,
        reason,
    };
    let schema_version: i64 = row.try_get("schema_version").map_err(database)?;
    let stream_version: i64 = row.try_get("stream_version").map_err(database)?;
    let metadata = match crate::store::jsonb_text(row, "metadata").map_err(database)? {
        None | Some(b"null") => Metadata::default(),
        Some(text) => serde_json::from_slice(text)
            .map_err(|e| malformed(format!("metadata does not decode: {e}")))?,
    };
    Ok(RecordedEvent {
        event_id: row.try_get::<Uuid, _>("event_id").map_err(database)?,
        event_type: row.try_get("event_type").map_err(database)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| malformed(format!("schema version {schema_version} is out of range")))?,
        stream_id: row.try_get("stream_id").map_err(database)?,
        stream_version: u64::try_from(stream_version)
            .map_err(|_| malformed(format!("stream version {stream_version} is negative")))?,
        position: GlobalPosition(at.position.0),
        recorded_at: row
            .try_get::<DateTime<Utc>, _>("recorded_at")
            .map_err(database)?,
        payload: crate::store::decode_payload(row, "payload").map_err(database)?,
        metadata,
    })
}

//! The hand-written baselines' building blocks: plain sqlx statements and serde, doing what
//! the framework does for a command and nothing else.
//!
//! Per command they make the ids the framework makes (a UUID v7 command id, a UUID v7 id per
//! event), record the same metadata (correlation and causation = the command id), decide with
//! the same rules ([`Account::deposit`]) and append with a version check: the unique
//! `(stream_id, stream_version)` key refuses a second event at the same version.

use cqrs_core::Metadata;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::domain::{Account, DEPOSITED, Deposited, OPENED, Opened};

/// The new events of a stream after version `$2`, with their payloads as text.
pub const TAIL: &str = "\
SELECT stream_version, event_type, schema_version, payload::text
FROM cqrs_events WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version";

/// One event into `cqrs_events`.
pub const INSERT_ONE: &str = "\
INSERT INTO cqrs_events
       (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// An account's state as a hand-written loop keeps it between commands.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Folded {
    /// The state.
    pub state: Account,
    /// The stream version folded into it.
    pub version: u64,
}

impl Folded {
    /// Applies one row of [`TAIL`] (or of a full read in the same column order), checking
    /// that it is the next version and decoding its payload into the typed event.
    pub fn apply_row(&mut self, row: &PgRow) {
        let version = u64::try_from(row.get::<i64, _>(0)).expect("a positive version");
        assert_eq!(version, self.version + 1, "versions follow each other");
        let event_type: &str = row.get(1);
        let schema_version: i32 = row.get(2);
        assert_eq!(schema_version, 1, "schema version of {event_type}");
        let payload: &str = row.get(3);
        match event_type {
            DEPOSITED => self
                .state
                .on_deposited(&serde_json::from_str::<Deposited>(payload).expect("decode")),
            OPENED => self
                .state
                .on_opened(&serde_json::from_str::<Opened>(payload).expect("decode")),
            other => panic!("unknown event type {other}"),
        }
        self.version = version;
    }
}

/// A fresh command id and the metadata the events of that command carry.
pub fn command_metadata() -> Metadata {
    let command_id = Uuid::now_v7();
    Metadata::default()
        .with_correlation_id(command_id)
        .with_causation_id(command_id)
}

/// A version that fits a `bigint` column.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).expect("a version below 2^63")
}

/// Inserts one event of type `event_type` at `version` with a fresh UUID v7 id; the unique
/// `(stream_id, stream_version)` key is the version check.
pub async fn insert_one<'e>(
    executor: impl PgExecutor<'e>,
    stream: &str,
    version: u64,
    event_type: &str,
    payload: &impl Serialize,
    metadata: &Metadata,
) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_ONE)
        .bind(stream)
        .bind(to_i64(version))
        .bind(Uuid::now_v7())
        .bind(event_type)
        .bind(1_i32)
        .bind(Json(payload))
        .bind(Json(metadata))
        .execute(executor)
        .await?;
    Ok(())
}

/// Reads the events of `stream` after `folded.version` and folds them in.
pub async fn read_new<'e>(executor: impl PgExecutor<'e>, stream: &str, folded: &mut Folded) {
    let rows = sqlx::query(TAIL)
        .bind(stream)
        .bind(to_i64(folded.version))
        .fetch_all(executor)
        .await
        .expect("read the stream's new events");
    for row in &rows {
        folded.apply_row(row);
    }
}

//! Reading streams, the global order and snapshots; decoding rows.

use cqrs_core::{GlobalPosition, Metadata, Payload, RecordedEvent, Snapshot, StoreError};
use serde_json::value::RawValue;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{ColumnIndex, PgConnection, PgPool, Row, ValueRef};

use super::append::validate_stream_id;
use crate::error::database;
use crate::{PostgresStoreError, sql};

pub(super) fn to_u64(column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| PostgresStoreError::OutOfRange { column, value }.into())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The JSON text of a `jsonb` column, borrowed from the row (`None` for SQL `NULL`).
///
/// In the binary format a `jsonb` value is a version byte (1) followed by the document's
/// text, so the text can be read without building a [`serde_json::Value`] first.
pub(crate) fn jsonb_text<I: ColumnIndex<PgRow>>(
    row: &PgRow,
    index: I,
) -> Result<Option<&[u8]>, sqlx::Error> {
    let value = row.try_get_raw(index)?;
    if value.is_null() {
        return Ok(None);
    }
    let binary = value.format() == PgValueFormat::Binary;
    match (binary, value.as_bytes().map_err(sqlx::Error::Decode)?) {
        (false, text) | (true, [1, text @ ..]) => Ok(Some(text)),
        (true, _) => Err(sqlx::Error::Decode(
            "unknown jsonb binary format version".into(),
        )),
    }
}

/// A `jsonb` column as an event payload, copied as text.
pub(crate) fn decode_payload<I: ColumnIndex<PgRow>>(
    row: &PgRow,
    index: I,
) -> Result<Payload, sqlx::Error> {
    let text = jsonb_text(row, index)?.unwrap_or(b"null");
    let raw: Box<RawValue> =
        serde_json::from_slice(text).map_err(|source| sqlx::Error::Decode(source.into()))?;
    Ok(Payload::from(raw))
}

/// Decodes a row of the columns [`sql::LOAD_STREAM`] and [`sql::READ_ALL_FROM`] select.
pub(crate) fn decode_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(0).map_err(database)?;
    let stream_id: String = row.try_get(1).map_err(database)?;
    let stream_version = to_u64("stream_version", row.try_get(2).map_err(database)?)?;
    let schema_version: i32 = row.try_get(5).map_err(database)?;
    let metadata_text = jsonb_text(row, 7).map_err(database)?.unwrap_or(b"null");
    let metadata: Metadata =
        serde_json::from_slice(metadata_text).map_err(|source| PostgresStoreError::Metadata {
            stream_id: stream_id.clone(),
            stream_version,
            source,
        })?;
    Ok(RecordedEvent {
        event_id: row.try_get(3).map_err(database)?,
        event_type: row.try_get(4).map_err(database)?,
        schema_version: u32::try_from(schema_version).map_err(|_| {
            PostgresStoreError::OutOfRange {
                column: "schema_version",
                value: i64::from(schema_version),
            }
        })?,
        stream_id,
        stream_version,
        position: GlobalPosition(to_u64("position", position)?),
        recorded_at: row.try_get(8).map_err(database)?,
        payload: decode_payload(row, 6).map_err(database)?,
        metadata,
    })
}

pub(super) async fn load_stream(
    pool: &PgPool,
    stream_id: &str,
    from_version: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    if validate_stream_id(stream_id).is_err() {
        // No such stream can have been written.
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sql::LOAD_STREAM)
        .bind(stream_id)
        .bind(to_i64(from_version))
        .fetch_all(pool)
        .await
        .map_err(database)?;
    rows.iter().map(decode_event).collect()
}

pub(super) async fn stream_version(pool: &PgPool, stream_id: &str) -> Result<u64, StoreError> {
    if validate_stream_id(stream_id).is_err() {
        return Ok(0);
    }
    let version: Option<i64> = sqlx::query_scalar(sql::STREAM_VERSION)
        .bind(stream_id)
        .fetch_optional(pool)
        .await
        .map_err(database)?;
    version.map_or(Ok(0), |v| to_u64("version", v))
}

pub(super) async fn read_all_from(
    conn: &mut PgConnection,
    after: GlobalPosition,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let statement = format!(
        "{}{}",
        sql::READ_ALL_FROM,
        i64::try_from(limit).unwrap_or(i64::MAX)
    );
    let rows = sqlx::query(&statement)
        .bind(to_i64(after.0))
        .fetch_all(&mut *conn)
        .await
        .map_err(database)?;
    if rows.is_empty() && after != GlobalPosition::START {
        // Nothing new, or nothing stored at `after`: only the second is an error.
        let exists: bool = sqlx::query_scalar(sql::POSITION_EXISTS)
            .bind(to_i64(after.0))
            .fetch_one(&mut *conn)
            .await
            .map_err(database)?;
        if !exists {
            return Err(StoreError::UnknownPosition { position: after });
        }
    }
    rows.iter().map(decode_event).collect()
}

pub(super) async fn load_snapshot(
    pool: &PgPool,
    stream_id: &str,
) -> Result<Option<Snapshot>, StoreError> {
    if validate_stream_id(stream_id).is_err() {
        return Ok(None);
    }
    let row = sqlx::query(sql::LOAD_SNAPSHOT)
        .bind(stream_id)
        .fetch_optional(pool)
        .await
        .map_err(database)?;
    let Some(row) = row else { return Ok(None) };
    let schema_version: i32 = row.try_get(1).map_err(database)?;
    Ok(Some(Snapshot {
        stream_id: stream_id.to_owned(),
        stream_version: to_u64("stream_version", row.try_get(0).map_err(database)?)?,
        schema_version: u32::try_from(schema_version).map_err(|_| {
            PostgresStoreError::OutOfRange {
                column: "schema_version",
                value: i64::from(schema_version),
            }
        })?,
        state: row.try_get(2).map_err(database)?,
    }))
}

pub(super) async fn save_snapshot(pool: &PgPool, snapshot: Snapshot) -> Result<(), StoreError> {
    validate_stream_id(&snapshot.stream_id)?;
    let schema_version =
        i32::try_from(snapshot.schema_version).map_err(|_| PostgresStoreError::OutOfRange {
            column: "schema_version",
            value: i64::from(snapshot.schema_version),
        })?;
    sqlx::query(sql::SAVE_SNAPSHOT)
        .bind(&snapshot.stream_id)
        .bind(to_i64(snapshot.stream_version))
        .bind(schema_version)
        .bind(&snapshot.state)
        .execute(pool)
        .await
        .map_err(database)?;
    Ok(())
}

pub(super) async fn delete_snapshot(pool: &PgPool, stream_id: &str) -> Result<(), StoreError> {
    if validate_stream_id(stream_id).is_err() {
        return Ok(());
    }
    sqlx::query(sql::DELETE_SNAPSHOT)
        .bind(stream_id)
        .execute(pool)
        .await
        .map_err(database)?;
    Ok(())
}

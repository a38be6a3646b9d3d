//! Appends in a transaction of their own: the append, its unique-key changes and the
//! idempotency record in one transaction, plus the record's lookup and purge. Plain appends
//! (no keys, no idempotency key) never come here.

use chrono::{DateTime, Utc};
use cqrs_core::{
    AppendResult, ExpectedVersion, IdempotencyRecord, IdempotentOutcome, IdempotentWrite,
    KeyChanges, NewEvent, StoreError,
};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::append::{AppendFailure, validate_stream_id};
use super::{NotifyMode, PostgresEventStore};
use crate::error::database;
use crate::sql;

impl PostgresEventStore {
    /// `EventStore::append_with_keys` (with key changes) and `EventStore::append_idempotent`:
    /// a transaction of its own around the append, the key changes (when there are any) and,
    /// with `write`, [`sql::RECORD_IDEMPOTENCY_KEY`]; tried again in order like `append` when
    /// the stream's last writer had a later transaction id.
    pub(super) async fn append_in_own_transaction(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: &KeyChanges,
        mut write: Option<IdempotentWrite>,
    ) -> Result<AppendResult, StoreError> {
        validate_stream_id(stream_id)?;
        let notify_in_tx = self.notify == NotifyMode::InTransaction;
        // As `append`: a first try, and when the stream's order refuses it, a second that
        // queues on the stream's advisory lock first and so cannot be refused.
        let mut in_order = false;
        loop {
            let mut tx = self.pool.begin().await.map_err(database)?;
            if in_order
                && let Err(error) = sqlx::query(sql::LOCK_STREAM)
                    .bind(stream_id)
                    .execute(&mut *tx)
                    .await
            {
                let _ = tx.rollback().await;
                return Err(database(error));
            }
            let appended = match self
                .append_on(
                    &mut tx,
                    stream_id,
                    expected,
                    &events,
                    notify_in_tx,
                    in_order,
                )
                .await
            {
                Ok(appended) => appended,
                Err(AppendFailure::OutOfOrder { .. }) if !in_order => {
                    in_order = true;
                    tx.rollback().await.map_err(database)?;
                    continue;
                }
                Err(failure) => {
                    // A failed rollback closes the connection, which rolls back as well.
                    let _ = tx.rollback().await;
                    return Err(self
                        .explain(failure, stream_id, expected, &events, true)
                        .await);
                }
            };
            if !keys.is_empty()
                && let Err(error) = super::keys::change_keys(&mut tx, stream_id, keys).await
            {
                let _ = tx.rollback().await;
                return Err(error);
            }
            // The loop ends in this pass, so the write is taken once.
            if let Some(write) = write.take() {
                let (command, key) = (write.command_name.clone(), write.key.clone());
                let record = write.into_record(stream_id, &appended, events.len());
                match record_key(&mut tx, &record).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = tx.rollback().await;
                        return Err(StoreError::IdempotencyKeyTaken { command, key });
                    }
                    Err(error) => {
                        let _ = tx.rollback().await;
                        return Err(error);
                    }
                }
            }
            tx.commit().await.map_err(database)?;
            if self.notify == NotifyMode::AfterCommit && !events.is_empty() {
                self.after_commit.committed(appended.last_position());
            }
            return Ok(appended);
        }
    }

    /// `EventStore::idempotency_record`.
    pub(super) async fn idempotency_record_of(
        &self,
        command_name: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(sql::IDEMPOTENCY_RECORD)
            .bind(command_name)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(database)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let result: String = row.try_get(2).map_err(database)?;
        let outcome: IdempotentOutcome =
            serde_json::from_str(&result).map_err(|error| StoreError::Backend(error.into()))?;
        Ok(Some(IdempotencyRecord {
            command_name: command_name.to_owned(),
            key: key.to_owned(),
            body_hash: row.try_get(0).map_err(database)?,
            stream_id: row.try_get(1).map_err(database)?,
            outcome,
            created_at: row.try_get(3).map_err(database)?,
        }))
    }

    /// `EventStore::purge_idempotency_keys`.
    pub(super) async fn purge_idempotency(
        &self,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::PURGE_IDEMPOTENCY_KEYS)
            .bind(older_than)
            .execute(&self.pool)
            .await
            .map_err(database)?;
        Ok(done.rows_affected())
    }
}

/// Inserts the record; `false` when the key is already recorded (the transaction must then
/// be rolled back, to undo the append).
async fn record_key(
    conn: &mut PgConnection,
    record: &IdempotencyRecord,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(sql::RECORD_IDEMPOTENCY_KEY)
        .bind(&record.command_name)
        .bind(&record.key)
        .bind(&record.body_hash)
        .bind(&record.stream_id)
        .bind(Json(&record.outcome))
        .fetch_optional(conn)
        .await
        .map_err(database)?;
    Ok(inserted.is_some())
}

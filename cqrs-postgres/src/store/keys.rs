//! Appends that claim and release unique keys: the append statement and the key changes in
//! one transaction. Appends without key changes never come here.

use cqrs_core::{AppendResult, ExpectedVersion, KeyChanges, NewEvent, StoreError};
use sqlx::{PgConnection, Row};

use super::append::{AppendFailure, validate_stream_id};
use super::{NotifyMode, PostgresEventStore};
use crate::error::database;
use crate::sql;

impl PostgresEventStore {
    /// `EventStore::append_with_keys` with key changes: a transaction of its own around the
    /// append and [`sql::CHANGE_UNIQUE_KEYS`], retried like `append` when the stream's last
    /// writer had a later transaction id.
    pub(super) async fn append_keyed(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: &KeyChanges,
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
            if let Err(error) = change_keys(&mut tx, stream_id, keys).await {
                let _ = tx.rollback().await;
                return Err(error);
            }
            tx.commit().await.map_err(database)?;
            if self.notify == NotifyMode::AfterCommit {
                self.after_commit.committed(appended.last_position());
            }
            return Ok(appended);
        }
    }

    /// `EventStore::unique_key_owner`.
    pub(super) async fn key_owner(
        &self,
        namespace: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(sql::UNIQUE_KEY_OWNER)
            .bind(namespace)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(database)
    }
}

/// Releases and claims `keys` for `stream_id`; a claimed key held by another stream is
/// [`StoreError::UniqueKeyTaken`], after which the transaction must be rolled back.
pub(super) async fn change_keys(
    conn: &mut PgConnection,
    stream_id: &str,
    keys: &KeyChanges,
) -> Result<(), StoreError> {
    let releases = keys.releases();
    let claims = keys.claims();
    let column = |keys: &[&cqrs_core::UniqueKey]| -> (Vec<String>, Vec<String>) {
        keys.iter()
            .map(|key| (key.namespace.clone().into_owned(), key.value.clone()))
            .unzip()
    };
    let (released_namespaces, released_values) = column(&releases);
    let (claimed_namespaces, claimed_values) = column(&claims);
    let taken = sqlx::query(sql::CHANGE_UNIQUE_KEYS)
        .bind(stream_id)
        .bind(&released_namespaces)
        .bind(&released_values)
        .bind(&claimed_namespaces)
        .bind(&claimed_values)
        .fetch_optional(conn)
        .await
        .map_err(database)?;
    match taken {
        None => Ok(()),
        Some(row) => Err(StoreError::UniqueKeyTaken {
            namespace: row.try_get(0).map_err(database)?,
            value: row.try_get(1).map_err(database)?,
            owner: row.try_get(2).map_err(database)?,
        }),
    }
}

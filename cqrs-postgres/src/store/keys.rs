//! Unique keys in PostgreSQL: the key changes an append makes in its transaction (see
//! `PostgresEventStore::append_in_own_transaction`) and the owner lookup.

use cqrs_core::{KeyChanges, StoreError};
use sqlx::{PgConnection, Row};

use super::PostgresEventStore;
use crate::error::database;
use crate::sql;

impl PostgresEventStore {
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

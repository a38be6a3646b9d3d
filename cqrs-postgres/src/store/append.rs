//! Appending: one statement claims the stream row and inserts the batch.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use cqrs_core::{AppendResult, ExpectedVersion, GlobalPosition, Metadata, NewEvent, StoreError};
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::group::{self, Outcome};
use super::read::to_u64;
use super::{MAX_STREAM_ID_BYTES, NotifyMode, PostgresEventStore};
use crate::error::database;
use crate::{PostgresStoreError, sql};

/// Why an append wrote nothing, before it is turned into a [`StoreError`].
pub(super) enum AppendFailure {
    /// Already a final error.
    Store(StoreError),
    /// The stream is at `actual`, which `expected` does not match.
    Conflict { actual: u64 },
    /// The transaction's snapshot shows the stream at `snapshot`, which `expected` does not
    /// match, and the snapshot may be older than the stream (`REPEATABLE READ` or
    /// `SERIALIZABLE`): the stream's current version decides between a conflict and a stale
    /// snapshot.
    SnapshotConflict { snapshot: u64 },
    /// The version matched but the stream's last writer has a later transaction id.
    OutOfOrder { actual: u64 },
    /// This id of the batch is already stored.
    Duplicate { event_id: Uuid },
    /// The unique index on event ids fired (a concurrent insert of the same id); which id is
    /// found afterwards.
    DuplicateRace(sqlx::Error),
}

impl From<StoreError> for AppendFailure {
    fn from(error: StoreError) -> Self {
        AppendFailure::Store(error)
    }
}

pub(super) fn validate_stream_id(stream_id: &str) -> Result<(), StoreError> {
    let reason = if stream_id.is_empty() {
        "stream id is empty"
    } else if stream_id.len() > MAX_STREAM_ID_BYTES {
        "stream id is longer than 1024 bytes"
    } else if stream_id.contains('\0') {
        "stream id contains a NUL character, which PostgreSQL text cannot hold"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidStreamId {
        stream: stream_id.to_owned(),
        reason,
    })
}

impl PostgresEventStore {
    /// `EventStore::append`: a transaction of its own, tried again in order when the
    /// stream's last writer had a later transaction id.
    ///
    /// The first try of an append without inline projections is one statement, and one
    /// statement outside a transaction block is a transaction of its own: atomic, and a
    /// failure leaves nothing behind, with no BEGIN/COMMIT round trips. That statement's
    /// transaction gets its id before it queues for the stream's row lock, so a writer that
    /// got its id later can overtake it in the queue and the per-stream order refuses it;
    /// under contention on one stream that is most tries. The second try queues on the
    /// stream's advisory lock first ([`sql::LOCK_STREAM`]), which no other append to the
    /// stream can pass until it commits: it cannot be refused for the order, so `append`
    /// tries at most twice, and the second try costs three round trips more.
    pub(super) async fn append_owned(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_stream_id(stream_id)?;
        let mut events = events;
        // Under group commit, an append that finds enough others of this store under way
        // joins a batch; otherwise it runs alone at once (see `group::GroupCommit`).
        let _active = match &self.group {
            Some(group) if self.inline.is_empty() && group::groupable(&events) => {
                let (active, contended) = group.enter();
                if contended {
                    match group.append(self, stream_id, expected, events).await {
                        Outcome::Committed(result) => return Ok(result),
                        Outcome::Failed(error) => return Err(error),
                        Outcome::Alone(returned) => events = returned,
                    }
                }
                Some(active)
            }
            _ => None,
        };
        let mut conn = self.pool.acquire().await.map_err(database)?;
        let mut in_order = false;
        loop {
            let attempt = if self.inline.is_empty() && !in_order {
                let notify_in_tx = self.notify == NotifyMode::InTransaction;
                self.append_on(&mut conn, stream_id, expected, &events, notify_in_tx, false)
                    .await
            } else {
                self.append_in_transaction(&mut conn, in_order, stream_id, expected, &events)
                    .await
            };
            match attempt {
                Ok(result) => {
                    if self.notify == NotifyMode::AfterCommit {
                        self.after_commit.committed(result.last_position());
                    }
                    return Ok(result);
                }
                // Refused in order only if the stream's row was written around the store.
                Err(AppendFailure::OutOfOrder { .. }) if !in_order => in_order = true,
                Err(failure) => {
                    drop(conn);
                    return Err(self
                        .explain(failure, stream_id, expected, &events, true)
                        .await);
                }
            }
        }
    }

    /// One try of [`Self::append_owned`] in a transaction block on `conn`, which it commits
    /// or rolls back; `in_order` queues on [`sql::LOCK_STREAM`] first.
    async fn append_in_transaction(
        &self,
        conn: &mut PgConnection,
        in_order: bool,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, AppendFailure> {
        let notify_in_tx = self.notify == NotifyMode::InTransaction;
        let mut tx = conn.begin().await.map_err(database)?;
        let attempt = async {
            if in_order {
                sqlx::query(sql::LOCK_STREAM)
                    .bind(stream_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(database)?;
            }
            self.append_on(&mut tx, stream_id, expected, events, notify_in_tx, in_order)
                .await
        }
        .await;
        match attempt {
            Ok(result) => {
                tx.commit().await.map_err(database)?;
                Ok(result)
            }
            Err(failure) => {
                // Nothing of the failed statement may stay; a failed rollback closes the
                // connection, which rolls back as well.
                let _ = tx.rollback().await;
                Err(failure)
            }
        }
    }

    /// Turns a failure into the caller's error. `owned` is set when the transaction was the
    /// store's and is already rolled back, so waiting for a pooled connection cannot deadlock.
    pub(super) async fn explain(
        &self,
        failure: AppendFailure,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        owned: bool,
    ) -> StoreError {
        match failure {
            AppendFailure::Store(error) => error,
            AppendFailure::Conflict { actual } | AppendFailure::OutOfOrder { actual } => {
                StoreError::Conflict {
                    stream: stream_id.to_owned(),
                    expected,
                    actual,
                }
            }
            AppendFailure::SnapshotConflict { snapshot } => {
                match self.version_outside(stream_id, owned).await {
                    Ok(current) if current == snapshot => StoreError::Conflict {
                        stream: stream_id.to_owned(),
                        expected,
                        actual: current,
                    },
                    Ok(current) => PostgresStoreError::StaleSnapshot {
                        stream: stream_id.to_owned(),
                        snapshot,
                        current,
                    }
                    .into(),
                    Err(error) => error,
                }
            }
            AppendFailure::Duplicate { event_id } => StoreError::DuplicateEventId { event_id },
            AppendFailure::DuplicateRace(error) => {
                // The caller's transaction is aborted; look from another connection, but
                // never wait for one (the caller may hold the pool's last).
                let conn = if owned {
                    self.pool.acquire().await.ok()
                } else {
                    self.pool.try_acquire()
                };
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                let stored: Option<Vec<Uuid>> = match conn {
                    Some(mut conn) => sqlx::query_scalar(sql::STORED_IDS)
                        .bind(&ids)
                        .fetch_all(&mut *conn)
                        .await
                        .ok(),
                    None => None,
                };
                match stored.and_then(|stored| ids.into_iter().find(|id| stored.contains(id))) {
                    Some(event_id) => StoreError::DuplicateEventId { event_id },
                    None => database(error),
                }
            }
        }
    }

    /// The stream's version as committed now, read on another connection than the
    /// caller's, whose snapshot may be older. Like [`Self::explain`] it never waits for a
    /// pooled connection unless `owned`: without an idle one it opens a connection of its
    /// own.
    async fn version_outside(&self, stream_id: &str, owned: bool) -> Result<u64, StoreError> {
        let pooled = if owned {
            Some(self.pool.acquire().await.map_err(database)?)
        } else {
            self.pool.try_acquire()
        };
        if let Some(mut conn) = pooled {
            return current_version(&mut conn, stream_id).await;
        }
        let mut conn = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .map_err(database)?;
        let version = current_version(&mut conn, stream_id).await;
        // A failed goodbye leaves nothing behind: the server ends the session.
        let _ = conn.close().await;
        version
    }

    /// The append itself, on a connection inside a transaction. `in_order`: the transaction
    /// holds the stream's advisory lock exclusively ([`sql::LOCK_STREAM`]).
    pub(super) async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        notify: bool,
        in_order: bool,
    ) -> Result<AppendResult, AppendFailure> {
        let mut seen = HashSet::with_capacity(events.len());
        let repeated = events
            .iter()
            .find(|e| !seen.insert(e.event_id))
            .map(|e| e.event_id);
        if events.is_empty() || repeated.is_some() {
            // Nothing to insert: only the version check (which comes first, as in the
            // reference store).
            let seen = Seen::read(conn, stream_id, &[]).await?;
            if let Some(failure) = seen.mismatch(expected) {
                return Err(failure);
            }
            if let Some(event_id) = repeated {
                return Err(AppendFailure::Duplicate { event_id });
            }
            return Ok(AppendResult {
                stream_version: seen.version,
                positions: Vec::new(),
                recorded_at: Utc::now(),
            });
        }

        let count = i64::try_from(events.len()).expect("a batch fits in memory");
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_ref()).collect();
        let schema_versions = events
            .iter()
            .map(|e| {
                i32::try_from(e.schema_version).map_err(|_| {
                    AppendFailure::Store(
                        PostgresStoreError::OutOfRange {
                            column: "schema_version",
                            value: i64::from(e.schema_version),
                        }
                        .into(),
                    )
                })
            })
            .collect::<Result<Vec<i32>, _>>()?;
        let payloads: Vec<Json<&RawValue>> =
            events.iter().map(|e| Json(e.payload.as_raw())).collect();
        let metadata: Vec<Json<&Metadata>> = events.iter().map(|e| Json(&e.metadata)).collect();

        let statement = match (expected, notify) {
            (ExpectedVersion::Exact(v), true) if v > 0 => sql::APPEND_EXACT,
            (ExpectedVersion::Exact(v), false) if v > 0 => sql::APPEND_EXACT_QUIET,
            (ExpectedVersion::Exact(_) | ExpectedVersion::NoStream, true) => sql::APPEND_NEW,
            (ExpectedVersion::Exact(_) | ExpectedVersion::NoStream, false) => sql::APPEND_NEW_QUIET,
            (ExpectedVersion::Any, true) => sql::APPEND_ANY,
            (ExpectedVersion::Any, false) => sql::APPEND_ANY_QUIET,
        };
        let mut query = sqlx::query(statement)
            .bind(stream_id)
            .bind(count)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&payloads)
            .bind(&metadata)
            .bind(in_order);
        if let ExpectedVersion::Exact(v) = expected
            && v > 0
        {
            query = query.bind(i64::try_from(v).unwrap_or(i64::MAX));
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|error| classify(error, stream_id))?;

        if rows.is_empty() {
            return Err(diagnose(conn, stream_id, expected, &ids).await);
        }
        let mut written = rows
            .iter()
            .map(|row| {
                let position: i64 = row.try_get(0).map_err(database)?;
                let version: i64 = row.try_get(1).map_err(database)?;
                let recorded_at: DateTime<Utc> = row.try_get(2).map_err(database)?;
                Ok((
                    to_u64("stream_version", version)?,
                    GlobalPosition(to_u64("position", position)?),
                    recorded_at,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        written.sort_unstable_by_key(|(version, ..)| *version);
        let (stream_version, _, recorded_at) = *written.last().expect("rows is not empty");
        let positions: Vec<GlobalPosition> = written.iter().map(|(_, p, _)| *p).collect();

        if !self.inline.is_empty() {
            self.run_inline(conn, stream_id, events, &written).await?;
        }
        Ok(AppendResult {
            stream_version,
            positions,
            recorded_at,
        })
    }
}

async fn current_version(conn: &mut PgConnection, stream_id: &str) -> Result<u64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(sql::STREAM_VERSION)
        .bind(stream_id)
        .fetch_optional(conn)
        .await
        .map_err(database)?;
    version.map_or(Ok(0), |v| to_u64("version", v))
}

/// Translates the errors an append statement can raise, by SQLSTATE and constraint name.
fn classify(error: sqlx::Error, stream_id: &str) -> AppendFailure {
    let constraint = match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    };
    match constraint {
        Some("cqrs_events_event_id_key") => AppendFailure::DuplicateRace(error),
        Some("cqrs_events_stream_id_stream_version_key") => AppendFailure::Store(
            PostgresStoreError::StreamOutOfSync {
                stream: stream_id.to_owned(),
            }
            .into(),
        ),
        _ => AppendFailure::Store(database(error)),
    }
}

/// What the transaction sees of the stream: its version, which of `ids` are stored, and
/// whether the transaction's snapshot may be older than the stream.
struct Seen {
    version: u64,
    stored: Vec<Uuid>,
    one_snapshot: bool,
}

impl Seen {
    async fn read(
        conn: &mut PgConnection,
        stream_id: &str,
        ids: &[Uuid],
    ) -> Result<Self, StoreError> {
        let row = sqlx::query(sql::DIAGNOSE_APPEND)
            .bind(stream_id)
            .bind(ids)
            .fetch_one(conn)
            .await
            .map_err(database)?;
        let version: Option<i64> = row.try_get(0).map_err(database)?;
        Ok(Seen {
            version: version.map_or(Ok(0), |v| to_u64("version", v))?,
            stored: row.try_get(1).map_err(database)?,
            one_snapshot: row.try_get(2).map_err(database)?,
        })
    }

    /// The failure when the version seen does not match `expected`.
    fn mismatch(&self, expected: ExpectedVersion) -> Option<AppendFailure> {
        if expected.matches(self.version) {
            None
        } else if self.one_snapshot {
            Some(AppendFailure::SnapshotConflict {
                snapshot: self.version,
            })
        } else {
            Some(AppendFailure::Conflict {
                actual: self.version,
            })
        }
    }
}

/// The append statement claimed nothing: find out why, in the same transaction.
async fn diagnose(
    conn: &mut PgConnection,
    stream_id: &str,
    expected: ExpectedVersion,
    ids: &[Uuid],
) -> AppendFailure {
    let seen = match Seen::read(conn, stream_id, ids).await {
        Ok(seen) => seen,
        Err(error) => return AppendFailure::Store(error),
    };
    if let Some(failure) = seen.mismatch(expected) {
        failure
    } else if let Some(&event_id) = ids.iter().find(|id| seen.stored.contains(id)) {
        AppendFailure::Duplicate { event_id }
    } else {
        AppendFailure::OutOfOrder {
            actual: seen.version,
        }
    }
}

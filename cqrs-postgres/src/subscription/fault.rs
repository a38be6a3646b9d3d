//! Fault policies: what a durable subscription does with an event its projection keeps
//! failing on, and the parked streams, held events and skipped events that follow.
//! See [`FaultPolicy`] for the decisions.

use std::collections::HashSet;

use cqrs_core::{ProjectionError, RecordedEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::SubscriptionError;
use super::checkpoint::{Checkpoint, position_to_sql};
use crate::sql;

/// What a subscription does once it gives up on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// End the subscription with the error (nothing is passed).
    Stop,
    /// Pass the event, recording it in `cqrs_skipped_events`.
    Skip,
    /// Park the event's stream: it and every later event of the stream wait in the
    /// dead-letter table while the other streams go on.
    Park,
}

/// What a durable subscription does with an event its projection fails on: try it a number
/// of times in a row (with the subscription's backoff in between), then [`GiveUp`].
///
/// The default is [`FaultPolicy::stop`]: five attempts, then the subscription stops loudly.
/// Nothing is ever passed without a record.
///
/// # Decisions
///
/// - **What counts.** Only the projection's own failures on an event (its handler's error, an
///   event that does not decode for it) are judged by the policy. A failing read or commit,
///   and a handler error caused by the database connection (an I/O error, a closed or
///   exhausted pool, SQLSTATE class `08`, an administrator's shutdown `57P`, a serialization
///   failure or deadlock `40001`/`40P01`), is an outage: retried with backoff as always, never
///   skipped or parked, since the next attempt may well succeed.
/// - **Attempts.** An event is tried [`FaultPolicy::attempts`] times in a row (with the
///   subscription's backoff between attempts) before the policy gives up on it.
/// - **Stop (the default).** The subscription ends: its task returns the handler's error
///   ([`SubscriptionHandle::join`](super::SubscriptionHandle::join)), it is logged at error
///   level, and the lease passes to a standby worker (which tries again). Nothing is passed.
/// - **Skip (recorded).** The event is passed over and a row in `cqrs_skipped_events` keeps
///   its position, stream, id, type, the error and `skipped_by = 'policy'`, in the
///   transaction that moves the checkpoint past it; [`ProjectionAdmin::skipped`] lists them.
/// - **Park.** The event's stream is parked: a row in `cqrs_parked_streams` (the error, the
///   failed event) and the event in `cqrs_parked_events`, and every later event of that
///   stream the subscription reads joins it there, in `(tx, position)` order, in the
///   transaction that moves the checkpoint past it (the batch's transaction for a
///   transactional projection; for an at-least-once subscriber, the transaction that stores
///   its checkpoint). The global checkpoint goes on and every other stream stays live.
/// - **Retry and skip of a parked stream** are requests ([`ProjectionAdmin::retry`],
///   [`ProjectionAdmin::skip`]) carried out by the running worker, which holds the
///   projection itself: it replays the held events in their order, in one transaction with
///   their release for a transactional projection, and only then treats the stream as live
///   again. Events of the stream arriving meanwhile are held behind them, since the worker
///   does one thing at a time. A replay that fails again leaves the stream parked on the new
///   failure (what was applied before it is kept for an at-least-once subscriber, whose
///   effects cannot be rolled back).
///
/// [`ProjectionAdmin::skipped`]: super::ProjectionAdmin::skipped
/// [`ProjectionAdmin::retry`]: super::ProjectionAdmin::retry
/// [`ProjectionAdmin::skip`]: super::ProjectionAdmin::skip
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPolicy {
    attempts: Option<u32>,
    then: GiveUp,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        Self::stop()
    }
}

impl FaultPolicy {
    /// Attempts of one event before giving up, unless set with
    /// [`after_attempts`](Self::after_attempts).
    pub const DEFAULT_ATTEMPTS: u32 = 5;

    /// Retry, then stop the subscription with the error (the default).
    pub const fn stop() -> Self {
        Self {
            attempts: Some(Self::DEFAULT_ATTEMPTS),
            then: GiveUp::Stop,
        }
    }

    /// Retry, then skip the event, recording it.
    pub const fn skip() -> Self {
        Self {
            attempts: Some(Self::DEFAULT_ATTEMPTS),
            then: GiveUp::Skip,
        }
    }

    /// Retry, then park the event's stream.
    pub const fn park() -> Self {
        Self {
            attempts: Some(Self::DEFAULT_ATTEMPTS),
            then: GiveUp::Park,
        }
    }

    /// Retry with backoff for as long as it takes (or until
    /// [`max_consecutive_failures`](super::Subscription::max_consecutive_failures)): the
    /// subscription waits at the failing event.
    pub const fn retry_forever() -> Self {
        Self {
            attempts: None,
            then: GiveUp::Stop,
        }
    }

    /// Gives up after `attempts` (at least 1) attempts of one event in a row.
    #[must_use]
    pub const fn after_attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(if attempts == 0 { 1 } else { attempts });
        self
    }

    /// Attempts of one event before giving up; `None`: never gives up.
    pub const fn attempts(&self) -> Option<u32> {
        self.attempts
    }

    /// What happens on giving up.
    pub const fn then(&self) -> GiveUp {
        self.then
    }

    /// Whether the policy writes to the dead-letter tables.
    pub(super) const fn needs_dead_letters(&self) -> bool {
        !matches!(self.then, GiveUp::Stop)
    }
}

/// The event a delivery failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FailedEvent {
    pub at: Checkpoint,
    pub stream_id: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub error: String,
}

impl FailedEvent {
    pub(super) fn new(at: Checkpoint, event: &RecordedEvent, error: &ProjectionError) -> Self {
        Self {
            at,
            stream_id: event.stream_id.clone(),
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            error: error.to_string(),
        }
    }
}

/// Whether a projection's error comes from the database connection rather than the event.
/// Walks the whole chain: an error type that wraps `sqlx::Error` transparently shows only
/// what is under it (the I/O error, the server's error).
pub(super) fn is_outage(error: &ProjectionError) -> bool {
    let transient_code = |code: &str| {
        code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01"
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<std::io::Error>() {
            return true;
        }
        if let Some(error) = current.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            return transient_code(error.code());
        }
        if let Some(error) = current.downcast_ref::<sqlx::Error>() {
            return match error {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_code(&code)),
                _ => false,
            };
        }
        source = current.source();
    }
    false
}

/// What a delivery does with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// Apply it.
    Deliver,
    /// Its stream is parked: hold it behind the failed event.
    Hold,
    /// The policy gave up on it: park its stream with this error.
    Park(String),
    /// The policy gave up on it: skip it, recording this error.
    Skip(String),
}

/// A dead-letter row to write with the next checkpoint move.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    at: Checkpoint,
    stream_id: String,
    event_id: Uuid,
    event_type: String,
    route: Route,
}

/// The parked streams of one subscription and the verdict on the event it gave up on.
#[derive(Debug, Default)]
pub(super) struct DeadLetters {
    parked: HashSet<String>,
    /// The event the policy gave up on, and what to do with it.
    verdict: Option<(Checkpoint, GiveUp, String)>,
    /// The event the last attempt failed on.
    pub failed: Option<FailedEvent>,
}

impl DeadLetters {
    /// How many streams are parked (as this worker knows).
    pub(super) fn parked_streams(&self) -> usize {
        self.parked.len()
    }

    /// Reloads the parked streams (at the start of each attempt).
    pub(super) async fn load(&mut self, pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
        let streams: Vec<String> = sqlx::query_scalar(sql::PARKED_STREAMS)
            .bind(name)
            .fetch_all(pool)
            .await?;
        self.parked = streams.into_iter().collect();
        Ok(())
    }

    /// The start of an attempt of a delivery that keeps dead letters: its stored
    /// checkpoint (created if new), with its parked streams loaded.
    pub(super) async fn resume(
        &mut self,
        pool: &PgPool,
        name: &str,
    ) -> Result<Checkpoint, sqlx::Error> {
        let checkpoint = super::checkpoint::ensure(pool, name).await?;
        self.load(pool, name).await?;
        Ok(checkpoint)
    }

    /// The operators' pending requests (stream, request, the stream's error).
    pub(super) async fn requests(
        &self,
        pool: &PgPool,
        name: &'static str,
    ) -> Result<Vec<(String, Request, String)>, SubscriptionError> {
        requests(pool, name)
            .await
            .map_err(|e| SubscriptionError::database(name, e))
    }

    /// Reloads the parked streams after requests were carried out.
    pub(super) async fn reload(
        &mut self,
        pool: &PgPool,
        name: &'static str,
    ) -> Result<(), SubscriptionError> {
        self.load(pool, name)
            .await
            .map_err(|e| SubscriptionError::database(name, e))
    }

    /// The policy gave up on `failed`: the next attempt skips or parks it.
    pub(super) fn give_up(&mut self, failed: FailedEvent, verdict: GiveUp) {
        self.verdict = Some((failed.at, verdict, failed.error));
    }

    /// What to do with `event` at `at`; `pending` are the rows this batch writes so far.
    pub(super) fn route(
        &self,
        at: Checkpoint,
        event: &RecordedEvent,
        pending: &[Pending],
    ) -> Route {
        let parked_now = |stream: &str| {
            self.parked.contains(stream)
                || pending
                    .iter()
                    .any(|p| matches!(p.route, Route::Park(_)) && p.stream_id == stream)
        };
        if parked_now(&event.stream_id) {
            return Route::Hold;
        }
        match &self.verdict {
            Some((on, GiveUp::Park, error)) if *on == at => Route::Park(error.clone()),
            Some((on, GiveUp::Skip, error)) if *on == at => Route::Skip(error.clone()),
            _ => Route::Deliver,
        }
    }

    /// A row for `event`, routed by `route` (not [`Route::Deliver`]).
    pub(super) fn pending(at: Checkpoint, event: &RecordedEvent, route: Route) -> Pending {
        Pending {
            at,
            stream_id: event.stream_id.clone(),
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            route,
        }
    }

    /// Once the rows are committed: their parked streams are parked, the verdict is spent.
    pub(super) fn committed(&mut self, rows: Vec<Pending>) {
        for row in rows {
            if matches!(self.verdict, Some((on, _, _)) if on == row.at) {
                self.verdict = None;
            }
            if matches!(row.route, Route::Park(_)) {
                self.parked.insert(row.stream_id);
            }
        }
    }

    /// A stream is live again.
    pub(super) fn unparked(&mut self, stream: &str) {
        self.parked.remove(stream);
    }
}

/// Writes `rows` on `conn` (inside the transaction that moves the checkpoint past them).
pub(super) async fn write(
    conn: &mut PgConnection,
    name: &str,
    rows: &[Pending],
) -> Result<(), sqlx::Error> {
    for row in rows {
        if let Route::Park(error) = &row.route {
            sqlx::query(sql::PARK_STREAM)
                .bind(name)
                .bind(&row.stream_id)
                .bind(error)
                .bind(position_to_sql(row.at.position))
                .execute(&mut *conn)
                .await?;
        }
        match &row.route {
            Route::Park(_) | Route::Hold => {
                sqlx::query(sql::HOLD_EVENT)
                    .bind(name)
                    .bind(&row.stream_id)
                    .bind(row.at.tx.to_string())
                    .bind(position_to_sql(row.at.position))
                    .bind(row.event_id)
                    .bind(&row.event_type)
                    .execute(&mut *conn)
                    .await?;
            }
            Route::Skip(error) => {
                record_skip(
                    conn,
                    name,
                    row.at,
                    &row.stream_id,
                    row.event_id,
                    &row.event_type,
                    error,
                    "policy",
                )
                .await?;
            }
            Route::Deliver => {}
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one row's columns
pub(super) async fn record_skip(
    conn: &mut PgConnection,
    name: &str,
    at: Checkpoint,
    stream_id: &str,
    event_id: Uuid,
    event_type: &str,
    error: &str,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::RECORD_SKIP)
        .bind(name)
        .bind(at.tx.to_string())
        .bind(position_to_sql(at.position))
        .bind(stream_id)
        .bind(event_id)
        .bind(event_type)
        .bind(error)
        .bind(by)
        .execute(conn)
        .await?;
    Ok(())
}

/// An operator's request on a parked stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    /// Replay the held events.
    Retry,
    /// Record the failed event as skipped, then replay the others.
    Skip,
}

/// The pending requests of subscription `name`: stream, request, the stream's error.
pub(super) async fn requests(
    pool: &PgPool,
    name: &str,
) -> Result<Vec<(String, Request, String)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(sql::PARKED_REQUESTS)
        .bind(name)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(stream, request, error)| {
            let request = if request == "skip" {
                Request::Skip
            } else {
                Request::Retry
            };
            (stream, request, error)
        })
        .collect())
}

/// The events held behind parked stream `stream`, in order.
pub(super) async fn held(
    conn: &mut PgConnection,
    name: &'static str,
    stream: &str,
) -> Result<Vec<(Checkpoint, RecordedEvent)>, SubscriptionError> {
    let database = |source| SubscriptionError::database(name, source);
    let rows = sqlx::query(sql::HELD_EVENTS)
        .bind(name)
        .bind(stream)
        .fetch_all(conn)
        .await
        .map_err(database)?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        use sqlx::Row;
        let at = super::checkpoint::decode((
            row.try_get("tx").map_err(database)?,
            row.try_get("position").map_err(database)?,
        ))
        .map_err(database)?;
        events.push((at, super::read::decode_event(name, at, row)?));
    }
    Ok(events)
}

/// Releases the held events at `done` of `stream`; with `live`, the stream row too.
pub(super) async fn release(
    conn: &mut PgConnection,
    name: &str,
    stream: &str,
    done: &[Checkpoint],
    live: bool,
) -> Result<(), sqlx::Error> {
    let positions: Vec<i64> = done.iter().map(|at| position_to_sql(at.position)).collect();
    sqlx::query(sql::RELEASE_HELD)
        .bind(name)
        .bind(stream)
        .bind(&positions)
        .execute(&mut *conn)
        .await?;
    if live {
        sqlx::query(sql::UNPARK_STREAM)
            .bind(name)
            .bind(stream)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A replay of `stream` failed again on the event at `at`: it stays parked.
pub(super) async fn repark(
    conn: &mut PgConnection,
    name: &str,
    stream: &str,
    at: Checkpoint,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::REPARK_STREAM)
        .bind(name)
        .bind(stream)
        .bind(error)
        .bind(position_to_sql(at.position))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use cqrs_core::GlobalPosition;

    use super::*;

    fn handler(source: Box<dyn std::error::Error + Send + Sync>) -> ProjectionError {
        ProjectionError::Handler {
            projection: "p",
            event_type: "t".to_owned(),
            position: GlobalPosition(1),
            source,
        }
    }

    #[derive(Debug, thiserror::Error)]
    enum Wrapped {
        #[error(transparent)]
        Database(#[from] sqlx::Error),
    }

    #[test]
    fn connection_failures_are_outages_and_the_projections_own_errors_are_not() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_outage(&handler(Box::new(sqlx::Error::Io(io())))));
        assert!(is_outage(&handler(Box::new(Wrapped::from(
            sqlx::Error::Io(io())
        )))));
        assert!(is_outage(&handler(Box::new(sqlx::Error::PoolTimedOut))));
        assert!(!is_outage(&handler("no such account".into())));
        assert!(!is_outage(&handler(Box::new(sqlx::Error::RowNotFound))));
    }
}

//! Operating projections from any process: status and lag, parked streams (retry, skip),
//! skipped events, rebuilds, and the blue/green switch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_core::GlobalPosition;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::checkpoint::{self, Checkpoint, Checkpoints};
use crate::sql;

/// What a projection's worker is doing, as seen from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionState {
    /// A worker holds the projection's lease and no stream is parked.
    Running,
    /// A worker holds the lease, and at least one stream is parked (its events wait in the
    /// dead-letter table; the other streams are live).
    Parked,
    /// No worker holds the lease: the projection is not running anywhere (never started,
    /// shut down, stopped by its fault policy, or its process died).
    Stopped,
}

impl ProjectionState {
    /// The state as a number, for a gauge: 0 stopped, 1 running, 2 parked.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Stopped => 0.0,
            Self::Running => 1.0,
            Self::Parked => 2.0,
        }
    }
}

/// A projection's status, read from the database in one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    /// The subscription's name.
    pub name: String,
    /// Its stored checkpoint; `None` when it never started.
    pub checkpoint: Option<Checkpoint>,
    /// The store's last event in `(tx, position)` order ([`Checkpoint::START`] when empty).
    pub head: Checkpoint,
    /// Events of any type after the checkpoint (all of them when it never started). A
    /// caught-up subscription passes the types it does not handle, so this is 0 then.
    pub lag_events: u64,
    /// How long the oldest event after the checkpoint has been waiting (zero when caught up).
    pub lag: Duration,
    /// Streams parked by the fault policy.
    pub parked_streams: u64,
    /// Running, parked or stopped.
    pub state: ProjectionState,
}

/// A stream parked by a projection's fault policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedStream {
    /// The stream.
    pub stream_id: String,
    /// What the handler reported on the failed event (the last failure, after a retry).
    pub error: String,
    /// The failed event's global position.
    pub failed_position: GlobalPosition,
    /// The failed event's id.
    pub failed_event_id: Option<Uuid>,
    /// The failed event's type.
    pub failed_event_type: Option<String>,
    /// When the stream was parked (or failed again on a retry).
    pub parked_at: DateTime<Utc>,
    /// Events waiting: the failed one and every later one of the stream read since.
    pub held_events: u64,
    /// A retry or skip asked for and not carried out yet (by the running worker).
    pub request: Option<String>,
}

/// An event waiting behind a parked stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEvent {
    /// Its global position.
    pub position: GlobalPosition,
    /// Its id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
}

/// An event a projection passed without applying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEvent {
    /// Its global position.
    pub position: GlobalPosition,
    /// Its stream.
    pub stream_id: String,
    /// Its id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The handler's error on it.
    pub error: String,
    /// `"policy"` (the fault policy gave up on it) or `"operator"` (a skip of its parked
    /// stream).
    pub skipped_by: String,
    /// When.
    pub skipped_at: DateTime<Utc>,
}

/// Why an operation of [`ProjectionAdmin`] did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A worker of the projection runs (somewhere): stop it before resetting it.
    #[error("projection `{name}` is running; stop its worker before resetting it")]
    Running {
        /// The projection.
        name: String,
    },
    /// The projection had not caught up with the head when the timeout passed.
    #[error(
        "projection `{name}` did not catch up with {head} within {after:?}; it is at {checkpoint}"
    )]
    NotCaughtUp {
        /// The projection.
        name: String,
        /// The head it was to reach.
        head: Checkpoint,
        /// Where it was when the timeout passed.
        checkpoint: Checkpoint,
        /// The timeout.
        after: Duration,
    },
    /// The database failed.
    #[error("projection admin: database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Reads and repairs projections (durable subscriptions) from any process: their status
/// and lag, the streams their fault policy parked (retry, skip), the events skipped, a
/// reset for a rebuild, and the wait that a blue/green switch needs.
///
/// ```no_run
/// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use cqrs_postgres::subscription::ProjectionAdmin;
///
/// let admin = ProjectionAdmin::new(pool);
/// let status = admin.status("OrderSummaries").await?;
/// println!("{:?}: {} events behind", status.state, status.lag_events);
/// for parked in admin.parked("OrderSummaries").await? {
///     println!("{} failed at {}: {}", parked.stream_id, parked.failed_position, parked.error);
///     admin.retry("OrderSummaries", &parked.stream_id).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProjectionAdmin {
    pool: PgPool,
}

impl ProjectionAdmin {
    /// The admin of the projections in the database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The status of subscription `name`: checkpoint, head, lag in events and in time,
    /// parked streams, state. Counting the lag reads the index entries after the checkpoint:
    /// cheap when caught up, proportional to the lag otherwise.
    pub async fn status(&self, name: &str) -> Result<ProjectionStatus, sqlx::Error> {
        let row = sqlx::query(sql::PROJECTION_STATUS)
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        let known: bool = row.try_get("known")?;
        let checkpoint = checkpoint::decode((
            row.try_get("checkpoint_tx")?,
            row.try_get("checkpoint_position")?,
        ))?;
        let head_tx: Option<String> = row.try_get("head_tx")?;
        let head = match head_tx {
            Some(tx) => checkpoint::decode((tx, row.try_get("head_position")?))?,
            None => Checkpoint::START,
        };
        let lag_events: i64 = row.try_get("lag_events")?;
        let lag_seconds: Option<f64> = row.try_get("lag_seconds")?;
        let parked_streams: i64 = row.try_get("parked_streams")?;
        let has_worker: bool = row.try_get("has_worker")?;
        let parked_streams = u64::try_from(parked_streams).unwrap_or(0);
        let state = match (has_worker, parked_streams) {
            (false, _) => ProjectionState::Stopped,
            (true, 0) => ProjectionState::Running,
            (true, _) => ProjectionState::Parked,
        };
        Ok(ProjectionStatus {
            name: name.to_owned(),
            checkpoint: known.then_some(checkpoint),
            head,
            lag_events: u64::try_from(lag_events).unwrap_or(0),
            lag: Duration::try_from_secs_f64(lag_seconds.unwrap_or(0.0).max(0.0))
                .unwrap_or_default(),
            parked_streams,
            state,
        })
    }

    /// The status of each of `names`, also set as `metrics` gauges labelled
    /// `projection = name`: `cqrs_projection_checkpoint_position`,
    /// `cqrs_projection_head_position`, `cqrs_projection_lag_events`,
    /// `cqrs_projection_lag_seconds`, `cqrs_projection_parked_streams` and
    /// `cqrs_projection_state` (0 stopped, 1 running, 2 parked). Call it on a timer (or
    /// from the scrape handler) in any process.
    #[cfg(feature = "metrics")]
    pub async fn export_metrics(
        &self,
        names: &[&str],
    ) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
        let mut statuses = Vec::with_capacity(names.len());
        for name in names {
            let status = self.status(name).await?;
            let label = [("projection", (*name).to_owned())];
            #[allow(clippy::cast_precision_loss)] // gauges are f64; positions stay far below 2^53
            {
                let checkpoint = status.checkpoint.unwrap_or_default().position.0 as f64;
                metrics::gauge!("cqrs_projection_checkpoint_position", &label).set(checkpoint);
                metrics::gauge!("cqrs_projection_head_position", &label)
                    .set(status.head.position.0 as f64);
                metrics::gauge!("cqrs_projection_lag_events", &label).set(status.lag_events as f64);
                metrics::gauge!("cqrs_projection_parked_streams", &label)
                    .set(status.parked_streams as f64);
            }
            metrics::gauge!("cqrs_projection_lag_seconds", &label).set(status.lag.as_secs_f64());
            metrics::gauge!("cqrs_projection_state", &label).set(status.state.as_gauge());
            statuses.push(status);
        }
        Ok(statuses)
    }

    /// The streams subscription `name` parked, oldest first.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedStream>, sqlx::Error> {
        type ParkedRow = (
            String,
            String,
            i64,
            Option<Uuid>,
            Option<String>,
            DateTime<Utc>,
            i64,
            Option<String>,
        );
        let rows: Vec<ParkedRow> = sqlx::query_as(sql::PARKED_LIST)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(stream_id, error, position, event_id, event_type, parked_at, held, request)| {
                    ParkedStream {
                        stream_id,
                        error,
                        failed_position: GlobalPosition(u64::try_from(position).unwrap_or(0)),
                        failed_event_id: event_id,
                        failed_event_type: event_type,
                        parked_at,
                        held_events: u64::try_from(held).unwrap_or(0),
                        request,
                    }
                },
            )
            .collect())
    }

    /// The events held behind parked stream `stream` of subscription `name`, the failed one
    /// first, in the order a retry replays them.
    pub async fn held_events(
        &self,
        name: &str,
        stream: &str,
    ) -> Result<Vec<HeldEvent>, sqlx::Error> {
        let rows: Vec<(i64, Uuid, String)> = sqlx::query_as(sql::HELD_LIST)
            .bind(name)
            .bind(stream)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(position, event_id, event_type)| HeldEvent {
                position: GlobalPosition(u64::try_from(position).unwrap_or(0)),
                event_id,
                event_type,
            })
            .collect())
    }

    /// Asks the running worker of `name` to replay the events held behind `stream`, the
    /// failed one first, and to make the stream live again once they all succeed (it stays
    /// parked on the next failure). Returns `false` when the stream is not parked. Carried
    /// out by the worker before its next batch; a stopped projection does it when it starts.
    pub async fn retry(&self, name: &str, stream: &str) -> Result<bool, sqlx::Error> {
        self.request(name, stream, "retry").await
    }

    /// Asks the running worker of `name` to skip the event `stream` failed on (recorded in
    /// [`skipped`](Self::skipped) with `skipped_by = "operator"`), then to replay the others
    /// as [`retry`](Self::retry) does. Returns `false` when the stream is not parked.
    pub async fn skip(&self, name: &str, stream: &str) -> Result<bool, sqlx::Error> {
        self.request(name, stream, "skip").await
    }

    async fn request(&self, name: &str, stream: &str, what: &str) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(sql::REQUEST_ON_PARKED)
            .bind(name)
            .bind(stream)
            .bind(what)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// The events subscription `name` skipped, in the global order.
    pub async fn skipped(&self, name: &str) -> Result<Vec<SkippedEvent>, sqlx::Error> {
        type SkippedRow = (i64, String, Uuid, String, String, String, DateTime<Utc>);
        let rows: Vec<SkippedRow> = sqlx::query_as(sql::SKIPPED_LIST)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(position, stream_id, event_id, event_type, error, skipped_by, skipped_at)| {
                    SkippedEvent {
                        position: GlobalPosition(u64::try_from(position).unwrap_or(0)),
                        stream_id,
                        event_id,
                        event_type,
                        error,
                        skipped_by,
                        skipped_at,
                    }
                },
            )
            .collect())
    }

    /// Resets subscription `name` for a rebuild, inside your transaction: forgets its
    /// checkpoint, parked streams and skipped events, so that its next start replays every
    /// event from the first. Empty its read model in the same transaction. Refused with
    /// [`AdminError::Running`] while a worker of `name` runs anywhere; until you commit, no
    /// worker can start (the transaction holds the projection's lock).
    ///
    /// ```no_run
    /// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::subscription::ProjectionAdmin;
    ///
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("TRUNCATE order_summaries").execute(&mut *tx).await?;
    /// ProjectionAdmin::reset_in(&mut tx, "OrderSummaries").await?;
    /// tx.commit().await?;
    /// // The next start of the `OrderSummaries` subscription rebuilds the table.
    /// # Ok(()) }
    /// ```
    pub async fn reset_in(conn: &mut PgConnection, name: &str) -> Result<bool, AdminError> {
        let free: bool = sqlx::query_scalar(sql::PROJECTION_TRY_LOCK_IN_TX)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        if !free {
            return Err(AdminError::Running {
                name: name.to_owned(),
            });
        }
        sqlx::query(sql::FORGET_FAULTS)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        Ok(Checkpoints::reset_in(conn, name).await?)
    }

    /// Waits until subscription `name` has caught up with the head of the store as it is
    /// now (every event committed before the call), or `timeout` passes
    /// ([`AdminError::NotCaughtUp`]). Returns the head reached.
    ///
    /// The blue/green switch: start the new projection under a new name
    /// ([`Subscription::named`](super::Subscription::named)) writing to a new table, wait
    /// here, then point the query side at the new table; until then the old one serves.
    /// Streams parked by the new one count as passed: check [`parked`](Self::parked) before
    /// switching.
    pub async fn wait_caught_up(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Checkpoint, AdminError> {
        let head = checkpoint::head(&self.pool)
            .await?
            .unwrap_or(Checkpoint::START);
        let checkpoints = Checkpoints::new(self.pool.clone());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let at = checkpoints.load(name).await?.unwrap_or(Checkpoint::START);
            if at >= head {
                return Ok(head);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AdminError::NotCaughtUp {
                    name: name.to_owned(),
                    head,
                    checkpoint: at,
                    after: timeout,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}

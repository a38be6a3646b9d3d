//! Checkpoints: where each named subscription is in the global `(tx, position)` order.

use std::fmt;
use std::time::Duration;

use cqrs_core::GlobalPosition;
use sqlx::{PgConnection, PgPool};

use super::WaitError;

/// A point in the global order of events: the writing transaction's id (`xid8`) and the
/// event's position, compared in that order.
///
/// A subscription's checkpoint means "every event at or before this point has been
/// processed". [`Checkpoint::START`] precedes every event.
///
/// Positions alone are not a safe order: they are assigned when a row is inserted but become
/// visible when its transaction commits, so a later commit can carry a smaller position.
/// Ordering by the transaction id first, and reading only transactions older than every
/// transaction still running, gives an order in which nothing can appear behind a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Checkpoint {
    /// Id of the transaction that wrote the event (`xid8`, epoch-extended: never wraps).
    pub tx: u64,
    /// The event's global position.
    pub position: GlobalPosition,
}

impl Checkpoint {
    /// Before every event.
    pub const START: Checkpoint = Checkpoint {
        tx: 0,
        position: GlobalPosition::START,
    };
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(tx {}, position {})", self.tx, self.position)
    }
}

/// Read access to the checkpoints of every subscription, from any process.
///
/// This is how a query served by one process waits for a projection run by another: the
/// checkpoint table is the shared truth. Within the process that runs the subscription,
/// [`Progress::wait_for`](super::Progress::wait_for) answers without polling.
///
/// ```no_run
/// # async fn doc(pool: sqlx::PgPool, committed: cqrs_core::Committed) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use cqrs_postgres::subscription::Checkpoints;
///
/// let checkpoints = Checkpoints::new(pool);
/// checkpoints
///     .wait_for("Balances", committed.position, Duration::from_secs(5))
///     .await?;
/// // The `Balances` read model now includes the command's events.
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pool: PgPool,
}

impl Checkpoints {
    /// Checkpoints stored in the database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The stored checkpoint of subscription `name`, if it ever started.
    pub async fn load(&self, name: &str) -> Result<Option<Checkpoint>, sqlx::Error> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT tx::text, position FROM cqrs_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(decode).transpose()
    }

    /// Forgets the stored checkpoint of subscription `name`, so that its next start begins at
    /// the first event. Returns whether there was one.
    ///
    /// Stop the subscription first: a running one goes on from where it is. For a projection
    /// whose rows live in this database, empty the rows in the same transaction instead
    /// ([`reset_in`](Self::reset_in)), or the replay applies every event a second time.
    ///
    /// ```no_run
    /// # async fn doc(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::subscription::Checkpoints;
    ///
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("TRUNCATE deposit_counts").execute(&mut *tx).await?;
    /// Checkpoints::reset_in(&mut tx, "DepositCounts").await?;
    /// tx.commit().await?;
    /// // The next `Subscription::transactional(DepositCounts).start(..)` rebuilds the table.
    /// # Ok(()) }
    /// ```
    pub async fn reset(&self, name: &str) -> Result<bool, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        Self::reset_in(&mut conn, name).await
    }

    /// [`reset`](Self::reset) on a connection of yours, inside your transaction: the reset
    /// takes effect when you commit, together with your other writes.
    pub async fn reset_in(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM cqrs_checkpoints WHERE name = $1")
            .bind(name)
            .execute(conn)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Whether subscription `name` has processed the event at `position`.
    ///
    /// `false` while the event is not visible (not committed yet, or no such position) or the
    /// subscription has no checkpoint yet. [`GlobalPosition::START`] is always reached.
    pub async fn has_reached(
        &self,
        name: &str,
        position: GlobalPosition,
    ) -> Result<bool, sqlx::Error> {
        if position == GlobalPosition::START {
            return Ok(true);
        }
        let reached: Option<bool> = sqlx::query_scalar(
            "SELECT (c.tx, c.position) >= (e.tx, e.position) \
             FROM cqrs_checkpoints c, cqrs_events e \
             WHERE c.name = $1 AND e.position = $2",
        )
        .bind(name)
        .bind(position_to_sql(position))
        .fetch_optional(&self.pool)
        .await?;
        Ok(reached.unwrap_or(false))
    }

    /// Waits until subscription `name` has processed the event at `position`, or `timeout`
    /// passes ([`WaitError::Timeout`]).
    ///
    /// Polls the checkpoint table, starting at a few milliseconds and backing off to
    /// 50 ms between checks. `position` is usually [`Committed::position`] of a command whose
    /// effect a query must see; a position that never commits ends in the timeout.
    ///
    /// [`Committed::position`]: cqrs_core::Committed::position
    pub async fn wait_for(
        &self,
        name: &str,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let poll = async {
            let mut delay = Duration::from_millis(2);
            while !self
                .has_reached(name, position)
                .await
                .map_err(WaitError::Database)?
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Ok(())
        };
        tokio::time::timeout(timeout, poll)
            .await
            .unwrap_or_else(|_| {
                Err(WaitError::Timeout {
                    projection: name.to_owned(),
                    position,
                    after: timeout,
                })
            })
    }
}

/// Creates the checkpoint row of `name` at [`Checkpoint::START`] if missing, and loads it.
pub(crate) async fn ensure(pool: &PgPool, name: &str) -> Result<Checkpoint, sqlx::Error> {
    sqlx::query("INSERT INTO cqrs_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    let row: (String, i64) =
        sqlx::query_as("SELECT tx::text, position FROM cqrs_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?;
    decode(row)
}

/// Locks the checkpoint row of `name` for the rest of the transaction and returns it.
pub(crate) async fn lock(conn: &mut PgConnection, name: &str) -> Result<Checkpoint, sqlx::Error> {
    let row: (String, i64) = sqlx::query_as(
        "SELECT tx::text, position FROM cqrs_checkpoints WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(conn)
    .await?;
    decode(row)
}

/// Moves the checkpoint of `name` forward to `to`; never moves it back.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    name: &str,
    to: Checkpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cqrs_checkpoints SET tx = $2::text::xid8, position = $3, updated_at = now() \
         WHERE name = $1 AND (tx, position) < ($2::text::xid8, $3)",
    )
    .bind(name)
    .bind(to.tx.to_string())
    .bind(position_to_sql(to.position))
    .execute(conn)
    .await?;
    Ok(())
}

/// The last visible event in `(tx, position)` order, if any: what a replay must reach.
pub(crate) async fn head(pool: &PgPool) -> Result<Option<Checkpoint>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx::text, position FROM cqrs_events ORDER BY tx DESC, position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    row.map(decode).transpose()
}

/// The `(tx, position)` of the event at `position`, if it is visible.
pub(crate) async fn of_event(
    pool: &PgPool,
    position: GlobalPosition,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT tx::text, position FROM cqrs_events WHERE position = $1")
            .bind(position_to_sql(position))
            .fetch_optional(pool)
            .await?;
    row.map(decode).transpose()
}

pub(crate) fn decode((tx, position): (String, i64)) -> Result<Checkpoint, sqlx::Error> {
    let tx = tx
        .parse::<u64>()
        .map_err(|e| sqlx::Error::Decode(format!("transaction id `{tx}`: {e}").into()))?;
    let position = u64::try_from(position)
        .map_err(|e| sqlx::Error::Decode(format!("position {position}: {e}").into()))?;
    Ok(Checkpoint {
        tx,
        position: GlobalPosition(position),
    })
}

/// Positions are `bigint`; one beyond its range can never be stored, and saturating keeps it
/// unreachable.
pub(crate) fn position_to_sql(position: GlobalPosition) -> i64 {
    i64::try_from(position.0).unwrap_or(i64::MAX)
}

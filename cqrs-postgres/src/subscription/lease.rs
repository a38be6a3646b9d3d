//! One active worker per subscription name, across processes: a session-level advisory lock.
//!
//! # Decision: an advisory lock, not a lease row
//!
//! A worker delivers only while it holds `pg_try_advisory_lock('cqrp', hashtext(name))`
//! ([`sql::PROJECTION_TRY_LEAD`]) on a connection of its own, out of the pool, as the saga
//! runner does. PostgreSQL releases the lock the moment that session ends (the process is
//! killed, the connection drops, the worker stops), so a standby takes over within its
//! [`lead_retry`](super::Subscription::lead_retry) of the first worker's death, with no
//! expiry to tune, no clock to trust and no heartbeat writes. A lease row would need all
//! three, and a worker paused longer than its expiry (a long GC-free but swapped-out
//! process, a slow batch) would overlap with its successor; the lock cannot.
//!
//! What the lock does not cover: a leader whose lock connection breaks while it delivers.
//! The server releases the lock at once, and a standby may start before the leader notices
//! (it confirms its session at least every [`CONFIRM_EVERY`] and when idle, and stops
//! delivering when the confirmation fails). For a transactional projection nothing is
//! applied twice even then: each batch locks the checkpoint row and gives way when the
//! checkpoint moved. An at-least-once subscriber may see a batch twice in that window,
//! which its contract already allows.
//!
//! Two names whose hashes collide share a lock: their workers take turns instead of running
//! side by side. Nothing is delivered wrongly; rename one of them if it happens.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::watch;

use super::SubscriptionStatus;
use super::checkpoint::Checkpoints;
use crate::sql;

/// How long a leader delivers at most without confirming that its lock session is alive.
pub(super) const CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// The lease of one subscription name, held by this worker while the connection lives.
pub(super) struct Lease {
    name: String,
    conn: PgConnection,
    confirmed: Instant,
}

impl Lease {
    /// Waits until this worker holds the lease of `name`, trying every `retry`; meanwhile
    /// the status follows the stored checkpoint, moved by the worker that leads. `None`:
    /// shut down while waiting.
    pub(super) async fn acquire(
        pool: &PgPool,
        name: &str,
        retry: Duration,
        shutdown: &mut watch::Receiver<bool>,
        status: &watch::Sender<SubscriptionStatus>,
    ) -> Result<Option<Self>, sqlx::Error> {
        let options: PgConnectOptions = (*pool.connect_options()).clone();
        let mut conn = options.connect().await?;
        let checkpoints = Checkpoints::new(pool.clone());
        let mut announced = false;
        loop {
            let leading: bool = sqlx::query_scalar(sql::PROJECTION_TRY_LEAD)
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
            if leading {
                tracing::info!(subscription = name, "subscription worker leads");
                status.send_modify(|s| s.leading = true);
                return Ok(Some(Self {
                    name: name.to_owned(),
                    conn,
                    confirmed: Instant::now(),
                }));
            }
            if !announced {
                tracing::info!(
                    subscription = name,
                    "another worker leads this subscription; standing by"
                );
                announced = true;
            }
            if let Some(stored) = checkpoints.load(name).await? {
                status.send_modify(|s| {
                    if stored > s.checkpoint {
                        s.checkpoint = stored;
                    }
                });
            }
            let stopped = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => true,
                () = tokio::time::sleep(retry) => false,
            };
            if stopped {
                conn.close().await.ok();
                return Ok(None);
            }
        }
    }

    /// Confirms the lock session is alive, when it was last confirmed longer than
    /// [`CONFIRM_EVERY`] ago (or `always`).
    pub(super) async fn confirm(&mut self, always: bool) -> Result<(), sqlx::Error> {
        if !always && self.confirmed.elapsed() < CONFIRM_EVERY {
            return Ok(());
        }
        sqlx::query(sql::SAGA_STILL_LEADING)
            .execute(&mut self.conn)
            .await?;
        self.confirmed = Instant::now();
        Ok(())
    }

    /// Gives the lease up at once: unlocked before this returns (so that a status read
    /// next sees no worker), then the session closed (which would release it anyway).
    pub(super) async fn release(mut self) {
        sqlx::query(sql::PROJECTION_UNLEAD)
            .bind(&self.name)
            .execute(&mut self.conn)
            .await
            .ok();
        self.conn.close().await.ok();
    }
}

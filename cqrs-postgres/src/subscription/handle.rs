//! Controlling a running subscription and waiting for its progress.

use std::time::Duration;

use cqrs_core::GlobalPosition;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checkpoint::{self, Checkpoint};
use super::{SubscriptionError, WaitError};

/// What a running subscription reports about itself.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionStatus {
    /// The checkpoint as of the last delivered batch: the stored one for a durable
    /// subscription, the one kept beside the model for an in-memory one.
    pub checkpoint: Checkpoint,
    /// Failed attempts in a row (0 when healthy): reset by a batch delivered, or by a read
    /// that found nothing to deliver.
    pub failures: u32,
    /// The most recent failure, cleared when `failures` is reset.
    pub last_error: Option<SubscriptionError>,
    /// Whether this worker holds the subscription's lease and delivers; `false` while it
    /// stands by behind another process's worker (its checkpoint then follows the stored
    /// one) and once it stopped. Always `false` for an in-memory subscription, which needs
    /// no lease.
    pub leading: bool,
    /// Streams parked by the fault policy, as this worker knows them.
    pub parked_streams: usize,
}

/// A running subscription, returned by [`Subscription::start`](super::Subscription::start).
///
/// Dropping the handle stops the subscription after its current batch, like
/// [`shutdown`](Self::shutdown) without waiting.
#[must_use = "dropping the handle stops the subscription"]
#[derive(Debug)]
pub struct SubscriptionHandle {
    progress: Progress,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), SubscriptionError>>>,
}

impl SubscriptionHandle {
    pub(super) fn new(
        progress: Progress,
        shutdown: watch::Sender<bool>,
        task: JoinHandle<Result<(), SubscriptionError>>,
    ) -> Self {
        Self {
            progress,
            shutdown,
            task: Some(task),
        }
    }

    /// The subscription's name (its checkpoint key).
    pub fn name(&self) -> &'static str {
        self.progress.name
    }

    /// The latest checkpoint, failure count and error.
    pub fn status(&self) -> SubscriptionStatus {
        self.progress.status.borrow().clone()
    }

    /// A cloneable view of the progress, for the query side to wait on.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Waits until the subscription has processed the event at `position`; see
    /// [`Progress::wait_for`].
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        self.progress.wait_for(position, timeout).await
    }

    /// Whether the subscription has stopped (after [`SubscriptionOptions::max_consecutive_failures`]
    /// failures in a row, or a panic in a handler).
    ///
    /// [`SubscriptionOptions::max_consecutive_failures`]: super::SubscriptionOptions::max_consecutive_failures
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the subscription after its current batch and waits for it. Returns the error
    /// that had already stopped it, if any.
    pub async fn shutdown(mut self) -> Result<(), SubscriptionError> {
        self.shutdown.send_replace(true);
        self.finish().await
    }

    /// Waits until the subscription stops by itself: only after too many consecutive failures
    /// (returning the last one) or a panic.
    pub async fn join(mut self) -> Result<(), SubscriptionError> {
        self.finish().await
    }

    /// Stops the subscription at once, wherever it is, as a crash would: an open batch
    /// transaction is rolled back and the next start resumes from the stored checkpoint (an
    /// in-memory subscription's next start replays from the first event).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Waits until the checkpoint is at or past `target`; if the subscription stops first,
    /// returns what stopped it.
    pub(super) async fn reach(&mut self, target: Checkpoint) -> Result<(), SubscriptionError> {
        let mut status = self.progress.status.clone();
        if status.wait_for(|s| s.checkpoint >= target).await.is_ok() {
            return Ok(());
        }
        self.finish().await
    }

    async fn finish(&mut self) -> Result<(), SubscriptionError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => {
                let panic = error.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(SubscriptionError::Panicked {
                    name: self.progress.name,
                    message,
                })
            }
            Err(_) => Ok(()),
        }
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// The progress of one running subscription, cheap to clone: hand it to query handlers that
/// must read their own writes.
///
/// Waiting here needs no polling of the checkpoint table: the subscription announces each
/// committed batch in process. To wait on a subscription running in another process, use
/// [`Checkpoints::wait_for`](super::Checkpoints::wait_for).
#[derive(Debug, Clone)]
pub struct Progress {
    name: &'static str,
    pool: PgPool,
    status: watch::Receiver<SubscriptionStatus>,
}

impl Progress {
    pub(super) fn new(
        name: &'static str,
        pool: PgPool,
        status: watch::Receiver<SubscriptionStatus>,
    ) -> Self {
        Self { name, pool, status }
    }

    /// The subscription's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The latest checkpoint (see [`SubscriptionStatus::checkpoint`]).
    pub fn checkpoint(&self) -> Checkpoint {
        self.status.borrow().checkpoint
    }

    /// Waits until the subscription has processed the event at `position` (usually
    /// [`Committed::position`](cqrs_core::Committed::position)), or `timeout` passes.
    ///
    /// "Processed" is decided in the global `(tx, position)` order: the event's transaction
    /// id is looked up, then the wait ends once the checkpoint is at or past
    /// `(tx, position)`. That includes events the subscription does not handle, which it
    /// passes over. A position that is not (yet) visible is waited for as well, so a position
    /// that never commits ends in [`WaitError::Timeout`]. [`GlobalPosition::START`] returns at
    /// once.
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        if position == GlobalPosition::START {
            return Ok(());
        }
        tokio::time::timeout(timeout, self.reach(position))
            .await
            .unwrap_or_else(|_| {
                Err(WaitError::Timeout {
                    projection: self.name.to_owned(),
                    position,
                    after: timeout,
                })
            })
    }

    async fn reach(&self, position: GlobalPosition) -> Result<(), WaitError> {
        let target = self.locate(position).await?;
        let mut status = self.status.clone();
        let reached = status.wait_for(|s| s.checkpoint >= target).await.is_ok();
        if reached {
            Ok(())
        } else {
            Err(WaitError::Stopped {
                projection: self.name,
                position,
            })
        }
    }

    /// The `(tx, position)` of the event, polling until it is visible.
    async fn locate(&self, position: GlobalPosition) -> Result<Checkpoint, WaitError> {
        let mut delay = Duration::from_millis(2);
        loop {
            if let Some(at) = checkpoint::of_event(&self.pool, position)
                .await
                .map_err(WaitError::Database)?
            {
                return Ok(at);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}

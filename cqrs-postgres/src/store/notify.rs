//! [`NotifyMode::AfterCommit`](super::NotifyMode::AfterCommit): one notification for a burst
//! of commits, sent by a background task.

use std::sync::{Arc, OnceLock};

use cqrs_core::GlobalPosition;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::sql;

/// The sending side; the task starts with the first commit and ends when the last clone of
/// the store is dropped.
#[derive(Clone)]
pub(super) struct AfterCommit {
    pool: PgPool,
    sender: Arc<OnceLock<watch::Sender<u64>>>,
}

impl AfterCommit {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sender: Arc::new(OnceLock::new()),
        }
    }

    /// Records that events up to `position` committed. Must run inside a Tokio runtime.
    pub(super) fn committed(&self, position: GlobalPosition) {
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = watch::channel(0);
            tokio::spawn(send_notifications(self.pool.clone(), receiver));
            sender
        });
        sender.send_modify(|last| *last = (*last).max(position.0));
    }
}

async fn send_notifications(pool: PgPool, mut receiver: watch::Receiver<u64>) {
    while receiver.changed().await.is_ok() {
        let position = *receiver.borrow_and_update();
        if let Err(error) = sqlx::query(sql::NOTIFY)
            .bind(position.to_string())
            .execute(&pool)
            .await
        {
            // Listeners fall back to polling; the next commit tries again.
            tracing::warn!(%error, position, "could not notify listeners of committed events");
        }
    }
}

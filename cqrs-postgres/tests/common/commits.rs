//! Whether a gap test exercised the gap: a commit that became visible after another commit
//! had already made a larger position visible, the moment a reader going by position alone
//! would pass over events for good.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use cqrs_core::GlobalPosition;

/// A counter all writers of a test stamp before and after each commit.
#[derive(Debug, Default)]
pub struct CommitClock(AtomicU64);

/// One commit: its stamps on the test's [`CommitClock`] and the positions it made visible.
#[derive(Debug, Clone)]
pub struct Commit {
    pub began: u64,
    pub ended: u64,
    pub positions: Vec<GlobalPosition>,
}

impl CommitClock {
    /// Runs `commit` between two stamps; the events at `positions` are visible once it
    /// returns and were not before it began.
    pub async fn stamp<T>(
        &self,
        positions: Vec<GlobalPosition>,
        commit: impl Future<Output = T>,
    ) -> (T, Commit) {
        let began = self.0.fetch_add(1, Ordering::SeqCst);
        let outcome = commit.await;
        let ended = self.0.fetch_add(1, Ordering::SeqCst);
        (
            outcome,
            Commit {
                began,
                ended,
                positions,
            },
        )
    }
}

/// How many commits certainly became visible after an event with a larger position: another
/// commit holding a larger position had returned before they began.
pub fn late_commits(commits: &[Commit]) -> usize {
    commits
        .iter()
        .filter(|late| {
            let Some(lowest) = late.positions.iter().min() else {
                return false;
            };
            commits
                .iter()
                .any(|early| early.ended < late.began && early.positions.iter().any(|p| p > lowest))
        })
        .count()
}

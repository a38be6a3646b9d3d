//! A store whose first appends fail, to exercise retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cqrs_core::prelude::*;
use cqrs_core::{
    AppendResult, ExpectedVersion, IdempotentWrite, KeyChanges, NewEvent, StoreError,
    TransientReason,
};

/// What the first appends fail with.
#[derive(Clone, Copy)]
pub enum Failure {
    Transient(TransientReason),
    Conflict,
}

/// The in-memory store, whose first `failures` appends fail without writing.
#[derive(Clone)]
pub struct Flaky {
    pub inner: InMemoryEventStore,
    /// Failures left to inject.
    pub failures: Arc<AtomicU32>,
    pub failure: Failure,
    /// Appends tried, failed ones included.
    pub appends: Arc<AtomicU32>,
}

impl Flaky {
    pub fn new(failures: u32, failure: Failure) -> Self {
        Self {
            inner: InMemoryEventStore::new(),
            failures: Arc::new(AtomicU32::new(failures)),
            failure,
            appends: Arc::default(),
        }
    }

    /// The injected failure, while any is left.
    fn fail(&self, stream_id: &str, expected: ExpectedVersion) -> Option<StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let left = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        left.ok()?;
        Some(match self.failure {
            Failure::Transient(reason) => StoreError::Transient {
                reason,
                source: "injected".into(),
            },
            Failure::Conflict => StoreError::Conflict {
                stream: stream_id.to_owned(),
                expected,
                actual: match expected {
                    ExpectedVersion::Exact(v) => v,
                    _ => 0,
                },
            },
        })
    }
}

impl EventStore for Flaky {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        match self.fail(stream_id, expected) {
            Some(error) => Box::pin(std::future::ready(Err(error))),
            None => self.inner.append(stream_id, expected, events),
        }
    }

    fn append_idempotent<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: IdempotentWrite,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        match self.fail(stream_id, expected) {
            Some(error) => Box::pin(std::future::ready(Err(error))),
            None => self
                .inner
                .append_idempotent(stream_id, expected, events, keys, write),
        }
    }

    crate::support::delegate::delegate!(inner: idempotency_record, load_stream, stream_version, read_all_from, load_snapshot, save_snapshot, delete_snapshot);
}

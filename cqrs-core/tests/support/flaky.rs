//! A store whose first appends fail, to exercise retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cqrs_core::prelude::*;
use cqrs_core::{
    AppendResult, ExpectedVersion, GlobalPosition, IdempotentWrite, KeyChanges, NewEvent, Snapshot,
    StoreError, TransientReason,
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

    fn idempotency_record<'a>(
        &'a self,
        command_name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<cqrs_core::IdempotencyRecord>, StoreError>> {
        self.inner.idempotency_record(command_name, key)
    }

    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.load_stream(stream_id, from_version)
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.stream_version(stream_id)
    }

    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all_from(after, limit)
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream_id)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }

    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_snapshot(stream_id)
    }
}

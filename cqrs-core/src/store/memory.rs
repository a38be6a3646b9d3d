use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::Utc;
use uuid::Uuid;

use super::{AppendResult, EventStore, ExpectedVersion, Snapshot, StoreError};
use crate::{
    BoxFuture, GlobalPosition, IdempotencyRecord, IdempotentWrite, KeyChange, KeyChanges, NewEvent,
    RecordedEvent,
};

/// The embedded event store: everything in process memory, lost on exit.
///
/// It is the reference for the [`EventStore`] contract: appends are atomic under one lock,
/// positions are assigned in commit order (so the global order has no gaps to skip), and a
/// version check failure writes nothing. Unique keys ([`EventStore::append_with_keys`]) are
/// checked and changed under the same lock, and so are idempotency records
/// ([`EventStore::append_idempotent`]). Cloning shares the same store.
#[derive(Clone, Default)]
pub struct InMemoryEventStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// The global log; `log[i]` has position `i + 1`.
    log: Vec<RecordedEvent>,
    /// Per stream, indexes into `log` in version order.
    streams: HashMap<String, Vec<usize>>,
    event_ids: HashSet<Uuid>,
    snapshots: HashMap<String, Snapshot>,
    /// Unique keys: namespace -> value -> the stream holding it.
    unique_keys: HashMap<String, HashMap<String, String>>,
    /// Idempotency records by (command name, key).
    idempotency: HashMap<(String, String), IdempotencyRecord>,
}

impl Inner {
    fn key_owner(&self, namespace: &str, value: &str) -> Option<&String> {
        self.unique_keys.get(namespace)?.get(value)
    }

    /// The first claimed key held by a stream other than `stream_id`.
    fn taken_key(&self, stream_id: &str, keys: &KeyChanges) -> Option<StoreError> {
        keys.claims().into_iter().find_map(|key| {
            let owner = self.key_owner(&key.namespace, &key.value)?;
            (owner != stream_id).then(|| StoreError::UniqueKeyTaken {
                namespace: key.namespace.clone().into_owned(),
                value: key.value.clone(),
                owner: owner.clone(),
            })
        })
    }

    /// Applies checked key changes.
    fn change_keys(&mut self, stream_id: &str, keys: KeyChanges) {
        for (key, change) in keys {
            match change {
                KeyChange::Claim => {
                    self.unique_keys
                        .entry(key.namespace.into_owned())
                        .or_default()
                        .insert(key.value, stream_id.to_owned());
                }
                KeyChange::Release => {
                    if let Some(values) = self.unique_keys.get_mut(key.namespace.as_ref())
                        && values
                            .get(&key.value)
                            .is_some_and(|owner| owner == stream_id)
                    {
                        values.remove(&key.value);
                    }
                }
            }
        }
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of events stored across all streams.
    pub fn len(&self) -> usize {
        self.read().log.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-written: every mutation
        // validates first and then only pushes, so the data is usable after poisoning.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn append_now(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: Option<IdempotentWrite>,
    ) -> Result<AppendResult, StoreError> {
        if stream_id.is_empty() {
            return Err(StoreError::InvalidStreamId {
                stream: String::new(),
                reason: "stream id is empty",
            });
        }
        let mut guard = self.write();
        let inner = &mut *guard;
        if let Some(write) = &write
            && inner
                .idempotency
                .contains_key(&(write.command_name.clone(), write.key.clone()))
        {
            return Err(StoreError::IdempotencyKeyTaken {
                command: write.command_name.clone(),
                key: write.key.clone(),
            });
        }
        let actual = inner.streams.get(stream_id).map_or(0, Vec::len) as u64;
        if !expected.matches(actual) {
            return Err(StoreError::Conflict {
                stream: stream_id.to_owned(),
                expected,
                actual,
            });
        }
        // Repeats within the batch can only exist with two or more events; `HashSet::new`
        // does not allocate until the first insert, so a one-event append pays nothing here.
        let mut batch_ids = HashSet::new();
        let check_batch = events.len() > 1;
        for event in &events {
            if inner.event_ids.contains(&event.event_id)
                || (check_batch && !batch_ids.insert(event.event_id))
            {
                return Err(StoreError::DuplicateEventId {
                    event_id: event.event_id,
                });
            }
        }
        if !keys.is_empty()
            && let Some(taken) = inner.taken_key(stream_id, &keys)
        {
            return Err(taken);
        }
        let recorded_at = Utc::now();
        let count = events.len();
        let mut positions = Vec::with_capacity(events.len());
        // `entry` would allocate the key on every append; only a new stream needs it.
        if !inner.streams.contains_key(stream_id) {
            inner.streams.insert(stream_id.to_owned(), Vec::new());
        }
        let indexes = inner
            .streams
            .get_mut(stream_id)
            .expect("the stream was just ensured");
        for (offset, event) in events.into_iter().enumerate() {
            let index = inner.log.len();
            let position = GlobalPosition(index as u64 + 1);
            inner.event_ids.insert(event.event_id);
            inner.log.push(RecordedEvent {
                event_id: event.event_id,
                event_type: event.event_type.into_owned(),
                schema_version: event.schema_version,
                stream_id: stream_id.to_owned(),
                stream_version: actual + offset as u64 + 1,
                position,
                recorded_at,
                payload: event.payload,
                metadata: event.metadata,
            });
            indexes.push(index);
            positions.push(position);
        }
        let stream_version = indexes.len() as u64;
        if !keys.is_empty() {
            inner.change_keys(stream_id, keys);
        }
        let appended = AppendResult {
            stream_version,
            positions,
            recorded_at,
        };
        if let Some(write) = write {
            let record = write.into_record(stream_id, &appended, count);
            inner
                .idempotency
                .insert((record.command_name.clone(), record.key.clone()), record);
        }
        Ok(appended)
    }
}

impl EventStore for InMemoryEventStore {
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        let result = self.append_now(stream_id, expected, events, KeyChanges::new(), None);
        Box::pin(std::future::ready(result))
    }

    fn append_with_keys<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        let result = self.append_now(stream_id, expected, events, keys, None);
        Box::pin(std::future::ready(result))
    }

    fn append_idempotent<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
        write: IdempotentWrite,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        let result = self.append_now(stream_id, expected, events, keys, Some(write));
        Box::pin(std::future::ready(result))
    }

    fn idempotency_record<'a>(
        &'a self,
        command_name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        let record = self
            .read()
            .idempotency
            .get(&(command_name.to_owned(), key.to_owned()))
            .cloned();
        Box::pin(std::future::ready(Ok(record)))
    }

    fn purge_idempotency_keys(
        &self,
        older_than: chrono::DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let mut inner = self.write();
        let before = inner.idempotency.len();
        inner
            .idempotency
            .retain(|_, record| record.created_at >= older_than);
        let purged = (before - inner.idempotency.len()) as u64;
        Box::pin(std::future::ready(Ok(purged)))
    }

    fn unique_key_owner<'a>(
        &'a self,
        namespace: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let owner = self.read().key_owner(namespace, value).cloned();
        Box::pin(std::future::ready(Ok(owner)))
    }

    fn load_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let inner = self.read();
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        let events = inner
            .streams
            .get(stream_id)
            .map_or_else(Vec::new, |indexes| {
                indexes
                    .iter()
                    .skip(skip)
                    .map(|&i| inner.log[i].clone())
                    .collect()
            });
        Box::pin(std::future::ready(Ok(events)))
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let version = self.read().streams.get(stream_id).map_or(0, Vec::len) as u64;
        Box::pin(std::future::ready(Ok(version)))
    }

    fn read_all_from(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        if limit == 0 {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        let inner = self.read();
        // The log has no holes: positions 1..=len are stored, anything past them never was.
        let result = match usize::try_from(after.0) {
            Ok(start) if start <= inner.log.len() => {
                Ok(inner.log[start..].iter().take(limit).cloned().collect())
            }
            _ => Err(StoreError::UnknownPosition { position: after }),
        };
        Box::pin(std::future::ready(result))
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let snapshot = self.read().snapshots.get(stream_id).cloned();
        Box::pin(std::future::ready(Ok(snapshot)))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.write();
        let keep_existing = inner
            .snapshots
            .get(&snapshot.stream_id)
            .is_some_and(|s| s.stream_version > snapshot.stream_version);
        if !keep_existing {
            inner.snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete_snapshot<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write().snapshots.remove(stream_id);
        Box::pin(std::future::ready(Ok(())))
    }
}

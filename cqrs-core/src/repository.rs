//! Loading aggregates (snapshot + tail, or a cached state + tail) and committing their events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::{
    Aggregate, AppendResult, CommandContext, CommandError, Committed, EventStore, ExpectedVersion,
    GlobalPosition, Handles, KeyChanges, NewEvent, RecordedEvent, Snapshot, StoreError,
};

/// How a repository keeps aggregates cheap to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositoryOptions {
    /// Save a snapshot each time the stream crosses a multiple of this many events
    /// (needs `#[aggregate(snapshot = N)]`; ignored otherwise).
    pub snapshot_every: Option<u64>,
    /// How many aggregate states to keep in memory between commands (0 turns the cache off).
    ///
    /// A cached state is only used after reading the stream's tail past its version, so a
    /// state written by another process is never served stale: the cache saves decoding and
    /// applying history, not the round trip that checks it. With the cache on, commands on
    /// one aggregate run one at a time within the process (each waits for the cached state),
    /// so they never conflict with each other and never rebuild the state from history;
    /// only writers in other processes can cause a conflict.
    pub cache_capacity: usize,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        Self {
            snapshot_every: None,
            cache_capacity: 10_000,
        }
    }
}

/// An aggregate state and the stream version it includes.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version folded into the state (0 = new aggregate).
    pub version: u64,
}

/// What one attempt at a command returns.
type Attempt<A> = Result<(Committed, Vec<RecordedEvent>), CommandError<<A as Aggregate>::Error>>;

/// Loads and commits one aggregate type against an [`EventStore`].
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    services: A::Services,
    options: RepositoryOptions,
    cache: Mutex<HashMap<String, Slot<A>>>,
}

/// One aggregate's cached state, locked while a command runs on it.
type Slot<A> = Arc<tokio::sync::Mutex<Option<Loaded<A>>>>;

impl<A: Aggregate> Repository<A> {
    /// A repository for `A` with its handlers' services.
    pub fn new(
        store: Arc<dyn EventStore>,
        services: A::Services,
        options: RepositoryOptions,
    ) -> Self {
        Self {
            store,
            services,
            options,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The services passed to `A`'s command handlers.
    pub fn services(&self) -> &A::Services {
        &self.services
    }

    /// The store this repository reads and writes.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads the current state of a stream from its snapshot (if any) and the events after it.
    pub async fn load(&self, stream_id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_from(stream_id, None).await
    }

    /// Brings `start` (a cached state), or else the snapshot, up to date with the stream.
    async fn load_from(
        &self,
        stream_id: &str,
        start: Option<Loaded<A>>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = match start {
            Some(cached) => cached,
            None => self.load_snapshot(stream_id).await?,
        };
        let tail = self
            .store
            .load_stream(stream_id, loaded.version + 1)
            .await?;
        for recorded in &tail {
            if recorded.stream_version != loaded.version + 1 {
                // The store skipped or repeated a version: refuse to build state on it.
                return Err(CommandError::Store(StoreError::Backend(
                    format!(
                        "stream `{stream_id}` returned version {} after {}",
                        recorded.stream_version, loaded.version
                    )
                    .into(),
                )));
            }
            let event = recorded
                .decode::<A::Event>()
                .map_err(|source| CommandError::Decode {
                    stream: stream_id.to_owned(),
                    version: recorded.stream_version,
                    source,
                })?;
            loaded.state.apply(&event);
            loaded.version = recorded.stream_version;
        }
        Ok(loaded)
    }

    async fn load_snapshot(&self, stream_id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        let Some(schema_version) = A::SNAPSHOT_VERSION else {
            return Ok(Loaded {
                state: A::default(),
                version: 0,
            });
        };
        let fresh = Loaded {
            state: A::default(),
            version: 0,
        };
        let Some(snapshot) = self.store.load_snapshot(stream_id).await? else {
            return Ok(fresh);
        };
        if snapshot.schema_version != schema_version {
            tracing::warn!(
                stream_id,
                found = snapshot.schema_version,
                expected = schema_version,
                "ignoring snapshot of another schema version; rebuilding from events"
            );
            return Ok(fresh);
        }
        match A::from_snapshot(&snapshot.state) {
            Some(Ok(state)) => Ok(Loaded {
                state,
                version: snapshot.stream_version,
            }),
            Some(Err(error)) => {
                tracing::warn!(stream_id, %error, "ignoring snapshot that no longer deserializes; rebuilding from events");
                Ok(fresh)
            }
            None => Ok(fresh),
        }
    }

    /// Runs command `C`: load, handle, apply, append with optimistic concurrency; on a
    /// version conflict reloads and retries up to `retries` more times.
    ///
    /// Returns the recorded events too when `record` is set (for in-process subscribers).
    pub async fn execute<C>(
        &self,
        command: &C,
        ctx: &CommandContext,
        retries: u32,
        record: bool,
    ) -> Result<(Committed, Vec<RecordedEvent>), CommandError<A::Error>>
    where
        C: crate::Command<Aggregate = A>,
        A: Handles<C>,
    {
        let slot = self.slot(&ctx.stream_id);
        let mut guard = match &slot {
            Some(slot) => Some(slot.lock().await),
            None => None,
        };
        let mut attempt = 0;
        loop {
            let cached = guard.as_mut().and_then(|state| state.take());
            let (result, keep) = self.execute_once(command, ctx, record, cached).await;
            if let Some(state) = guard.as_mut() {
                **state = keep;
            }
            match result {
                Err(error) if error.is_conflict() && attempt < retries => attempt += 1,
                other => return other,
            }
        }
    }

    /// One attempt. Returns the outcome and the state worth keeping for the next command
    /// (`None` when it may be ahead of the store: the events were applied but not appended).
    async fn execute_once<C>(
        &self,
        command: &C,
        ctx: &CommandContext,
        record: bool,
        cached: Option<Loaded<A>>,
    ) -> (Attempt<A>, Option<Loaded<A>>)
    where
        C: crate::Command<Aggregate = A>,
        A: Handles<C>,
    {
        let stream_id = ctx.stream_id.as_str();
        let mut loaded = match self.load_from(stream_id, cached).await {
            Ok(loaded) => loaded,
            Err(error) => return (Err(error), None),
        };
        let events = match loaded.state.handle(command, &self.services, ctx).await {
            Ok(events) => events,
            Err(rejection) => return (Err(CommandError::Rejected(rejection)), Some(loaded)),
        };
        if events.is_empty() {
            let committed = Committed {
                command_id: ctx.command_id,
                stream_id: stream_id.to_owned(),
                stream_version: loaded.version,
                position: GlobalPosition::START,
                events: 0,
            };
            return (Ok((committed, Vec::new())), Some(loaded));
        }
        let mut metadata = ctx.event_metadata();
        let mut new_events = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            // Every event carries the same metadata; the last one takes it instead of a copy.
            let metadata = if index + 1 == events.len() {
                std::mem::take(&mut metadata)
            } else {
                metadata.clone()
            };
            match NewEvent::from_event(event, metadata) {
                Ok(new_event) => new_events.push(new_event),
                Err(error) => return (Err(CommandError::Serialize(error)), Some(loaded)),
            }
        }
        // The unique keys each event claims and releases, asked of the state before it; an
        // aggregate without keys leaves this empty (no allocation) and takes the plain append.
        let mut keys = KeyChanges::new();
        for event in &events {
            loaded.state.key_changes(event, &mut keys);
            loaded.state.apply(event);
        }
        let recorded_input = record.then(|| new_events.clone());
        let expected = ExpectedVersion::Exact(loaded.version);
        let append = if keys.is_empty() {
            self.store.append(stream_id, expected, new_events)
        } else {
            self.store
                .append_with_keys(stream_id, expected, new_events, keys)
        };
        let appended = match append.await {
            Ok(appended) => appended,
            // The state has the rejected events applied: drop it and rebuild next time.
            Err(error) => return (Err(error.into()), None),
        };
        let previous = loaded.version;
        loaded.version = appended.stream_version;
        self.maybe_snapshot(stream_id, previous, &loaded).await;
        let committed = Committed {
            command_id: ctx.command_id,
            stream_id: stream_id.to_owned(),
            stream_version: appended.stream_version,
            position: appended.last_position(),
            events: events.len(),
        };
        let recorded = recorded_input
            .map(|input| record_events(stream_id, previous, &appended, input))
            .unwrap_or_default();
        (Ok((committed, recorded)), Some(loaded))
    }

    async fn maybe_snapshot(&self, stream_id: &str, previous: u64, loaded: &Loaded<A>) {
        let (Some(every), Some(schema_version)) =
            (self.options.snapshot_every, A::SNAPSHOT_VERSION)
        else {
            return;
        };
        if every == 0 || previous / every == loaded.version / every {
            return;
        }
        let state = match loaded.state.to_snapshot() {
            Some(Ok(state)) => state,
            Some(Err(error)) => {
                tracing::warn!(stream_id, %error, "snapshot not saved: state does not serialize");
                return;
            }
            None => return,
        };
        let snapshot = Snapshot {
            stream_id: stream_id.to_owned(),
            stream_version: loaded.version,
            schema_version,
            state,
        };
        if let Err(error) = self.store.save_snapshot(snapshot).await {
            // The events are committed; a missing snapshot only makes the next load longer.
            tracing::warn!(stream_id, %error, "snapshot not saved");
        }
    }

    /// The cache slot of a stream, or `None` when the cache is off.
    fn slot(&self, stream_id: &str) -> Option<Slot<A>> {
        let capacity = self.options.cache_capacity;
        if capacity == 0 {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = cache.get(stream_id) {
            return Some(Arc::clone(slot));
        }
        if cache.len() >= capacity {
            // Evict the states no command is using; an evicted state is rebuilt from the store
            // on its next use.
            cache.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = Slot::<A>::default();
        if cache.len() < capacity {
            cache.insert(stream_id.to_owned(), Arc::clone(&slot));
        }
        Some(slot)
    }
}

fn record_events(
    stream_id: &str,
    previous: u64,
    appended: &AppendResult,
    input: Vec<NewEvent>,
) -> Vec<RecordedEvent> {
    input
        .into_iter()
        .zip(&appended.positions)
        .enumerate()
        .map(|(offset, (event, &position))| RecordedEvent {
            event_id: event.event_id,
            event_type: event.event_type.into_owned(),
            schema_version: event.schema_version,
            stream_id: stream_id.to_owned(),
            stream_version: previous + offset as u64 + 1,
            position,
            recorded_at: appended.recorded_at,
            payload: event.payload,
            metadata: event.metadata,
        })
        .collect()
}

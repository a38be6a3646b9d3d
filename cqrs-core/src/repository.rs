//! Loading aggregates (snapshot + tail, or a cached state + tail) and committing their events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::idempotency::body_hash;
use crate::{
    Aggregate, AppendResult, CommandContext, CommandError, Committed, EventStore, ExpectedVersion,
    GlobalPosition, Handles, IdempotencyRecord, IdempotentOutcome, IdempotentWrite, KeyChanges,
    NewEvent, RecordedEvent, RecordedRejection, Snapshot, StoreError,
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
        let (mut loaded, from_snapshot) = if let Some(cached) = start {
            (cached, false)
        } else {
            let loaded = self.load_snapshot(stream_id).await?;
            let from_snapshot = loaded.version > 0;
            (loaded, from_snapshot)
        };
        let tail = self
            .store
            .load_stream(stream_id, loaded.version + 1)
            .await?;
        if from_snapshot && tail.is_empty() {
            // Nothing after the snapshot: it is either at the head or past it (the events were
            // restored from an older backup). A snapshot past the head would be trusted by
            // every later command and make each one conflict, so it is checked here, once per
            // load from a snapshot.
            let head = self.store.stream_version(stream_id).await?;
            if head < loaded.version {
                tracing::warn!(
                    stream_id,
                    snapshot_version = loaded.version,
                    stream_version = head,
                    "discarding snapshot past the stream's head; rebuilding from events"
                );
                // Left in place it would never be replaced (an older snapshot never replaces
                // a newer one) and would be trusted again once the stream reaches its version.
                self.store.delete_snapshot(stream_id).await?;
                return self.replay(stream_id, Self::fresh()).await;
            }
        }
        Self::fold(stream_id, &mut loaded, &tail)?;
        Ok(loaded)
    }

    /// Folds every stored event after `loaded.version` into `loaded`.
    async fn replay(
        &self,
        stream_id: &str,
        mut loaded: Loaded<A>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let tail = self
            .store
            .load_stream(stream_id, loaded.version + 1)
            .await?;
        Self::fold(stream_id, &mut loaded, &tail)?;
        Ok(loaded)
    }

    /// Applies `tail` to `loaded`, checking that versions continue without holes.
    fn fold(
        stream_id: &str,
        loaded: &mut Loaded<A>,
        tail: &[RecordedEvent],
    ) -> Result<(), CommandError<A::Error>> {
        for recorded in tail {
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
            // An old stored event an upcaster splits is applied as all its events, in order;
            // the stream version stays the stored event's.
            let events =
                recorded
                    .decode_all::<A::Event>()
                    .map_err(|source| CommandError::Decode {
                        stream: stream_id.to_owned(),
                        version: recorded.stream_version,
                        source,
                    })?;
            for event in events {
                loaded.state.apply(&event);
            }
            loaded.version = recorded.stream_version;
        }
        Ok(())
    }

    fn fresh() -> Loaded<A> {
        Loaded {
            state: A::default(),
            version: 0,
        }
    }

    async fn load_snapshot(&self, stream_id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        let Some(schema_version) = A::SNAPSHOT_VERSION else {
            return Ok(Self::fresh());
        };
        let Some(snapshot) = self.store.load_snapshot(stream_id).await? else {
            return Ok(Self::fresh());
        };
        if snapshot.schema_version != schema_version {
            tracing::warn!(
                stream_id,
                found = snapshot.schema_version,
                expected = schema_version,
                "ignoring snapshot of another schema version; rebuilding from events"
            );
            return Ok(Self::fresh());
        }
        match A::from_snapshot(&snapshot.state) {
            Some(Ok(state)) => Ok(Loaded {
                state,
                version: snapshot.stream_version,
            }),
            Some(Err(error)) => {
                tracing::warn!(stream_id, %error, "ignoring snapshot that no longer deserializes; rebuilding from events");
                Ok(Self::fresh())
            }
            None => Ok(Self::fresh()),
        }
    }

    /// Runs command `C`: load, handle, append with optimistic concurrency, apply; on a
    /// version conflict reloads and retries up to `retries` more times.
    ///
    /// Returns the recorded events too when `record` is set (for in-process subscribers).
    ///
    /// With an idempotency key ([`CommandContext::idempotency_key`]) a recorded outcome of
    /// the key is returned without running the handler, and the outcome of this execution is
    /// recorded with its append; see [`idempotency`](crate::idempotency). A replayed
    /// outcome returns no recorded events.
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
        let idempotent = match ctx.idempotency_key() {
            None => None,
            Some(key) => {
                let idempotent = Idempotent::of(command, key)?;
                if let Some(replayed) = self.recorded::<C>(&idempotent).await {
                    return replayed;
                }
                Some(idempotent)
            }
        };
        let slot = self.slot(&ctx.stream_id);
        let mut guard = match &slot {
            Some(slot) => Some(slot.lock().await),
            None => None,
        };
        let mut attempt = 0;
        loop {
            let cached = guard.as_mut().and_then(|state| state.take());
            let (result, keep) = self
                .execute_once(command, ctx, record, cached, idempotent.as_ref())
                .await;
            if let Some(state) = guard.as_mut() {
                **state = keep;
            }
            match result {
                // Another execution of the key won the race: its outcome is this one's.
                Err(error)
                    if matches!(
                        error,
                        CommandError::Conflict { .. }
                            | CommandError::Store(StoreError::IdempotencyKeyTaken { .. })
                    ) && let Some(idempotent) = &idempotent
                        && let Some(replayed) = self.recorded::<C>(idempotent).await =>
                {
                    return replayed;
                }
                Err(error) if error.is_conflict() && attempt < retries => attempt += 1,
                other => return other,
            }
        }
    }

    /// The recorded outcome of an idempotency key, replayed; `None` when none is recorded.
    async fn recorded<C: crate::Command<Aggregate = A>>(
        &self,
        idempotent: &Idempotent<'_>,
    ) -> Option<Attempt<A>> {
        match self.store.idempotency_record(C::NAME, idempotent.key).await {
            Ok(None) => None,
            Ok(Some(record)) => Some(idempotent.replay::<A>(C::NAME, record)),
            Err(error) => Some(Err(error.into())),
        }
    }

    /// One attempt. Returns the outcome and the state worth keeping for the next command
    /// (`None` when it cannot be trusted as a prefix of the stream).
    ///
    /// A cached state is used optimistically: the handler runs on it without first reading
    /// the stream's tail, and the append's version check is what proves it current. When that
    /// check fails (another process wrote), the tail is read and the handler runs once more,
    /// without counting against `retries`. Outcomes that write nothing (a rejection, no
    /// events) are confirmed against the stream's version before they are returned, so no
    /// caller ever sees a decision taken on a stale state.
    async fn execute_once<C>(
        &self,
        command: &C,
        ctx: &CommandContext,
        record: bool,
        cached: Option<Loaded<A>>,
        idempotent: Option<&Idempotent<'_>>,
    ) -> (Attempt<A>, Option<Loaded<A>>)
    where
        C: crate::Command<Aggregate = A>,
        A: Handles<C>,
    {
        let stream_id = ctx.stream_id.as_str();
        let (mut loaded, mut current) = match cached {
            Some(cached) => (cached, false),
            None => match self.load_from(stream_id, None).await {
                Ok(loaded) => (loaded, true),
                Err(error) => return (Err(error), None),
            },
        };
        // Refreshing a stale state and rebuilding one that is ahead of the store each happen
        // at most once per attempt; whatever conflicts after that is the caller's conflict.
        let mut refreshes = 0;
        loop {
            let decided = loaded.state.handle(command, &self.services, ctx).await;
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                outcome => {
                    // Nothing to write: confirm the state the decision was taken on (and
                    // record the outcome of an idempotency key).
                    let settled = self.settle::<C>(ctx, idempotent, &loaded, current, &outcome);
                    match settled.await {
                        Ok(()) => {}
                        Err(StoreError::Conflict { .. }) if refreshes < 2 => {
                            if let Some(idempotent) = idempotent
                                && let Some(replayed) = self.recorded::<C>(idempotent).await
                            {
                                return (replayed, Some(loaded));
                            }
                            refreshes += 1;
                            (loaded, current) = match self.catch_up(stream_id, Some(loaded)).await {
                                Ok(loaded) => (loaded, true),
                                Err(error) => return (Err(error), None),
                            };
                            continue;
                        }
                        Err(error) => return (Err(error.into()), Some(loaded)),
                    }
                    let result = match outcome {
                        Ok(_) => Ok((nothing_committed(ctx, loaded.version), Vec::new())),
                        Err(rejection) => Err(CommandError::Rejected(rejection)),
                    };
                    return (result, Some(loaded));
                }
            };
            let new_events = match serialize(&events, ctx) {
                Ok(new_events) => new_events,
                Err(error) => return (Err(CommandError::Serialize(error)), Some(loaded)),
            };
            // The unique keys each event claims and releases, asked of the state before it; an
            // aggregate without keys leaves this empty (no allocation) and takes the plain
            // append. One event is asked of the loaded state as it is, so the state stays
            // untouched until the events are stored; several must be applied one by one to
            // ask each of the state before it.
            let (keys, applied_early) = key_changes(&mut loaded.state, &events);
            let recorded_input = record.then(|| new_events.clone());
            let expected = ExpectedVersion::Exact(loaded.version);
            let append = self.append::<C>(ctx, idempotent, expected, new_events, keys);
            let appended = match append.await {
                Ok(appended) => appended,
                Err(StoreError::Conflict { actual, .. })
                    if refreshes < 2 && (!current || actual < loaded.version) =>
                {
                    if let Some(idempotent) = idempotent
                        && let Some(replayed) = self.recorded::<C>(idempotent).await
                    {
                        return (replayed, (!applied_early).then_some(loaded));
                    }
                    refreshes += 1;
                    // Another writer moved the stream (the cached state is behind), or the
                    // state is ahead of the store (a snapshot or cache past a restored
                    // stream): bring it up to date and decide again.
                    let ahead = actual < loaded.version;
                    if ahead {
                        tracing::warn!(
                            stream_id,
                            state_version = loaded.version,
                            stream_version = actual,
                            "aggregate state is ahead of the stored stream; rebuilding it"
                        );
                    }
                    let start = (!ahead && !applied_early).then_some(loaded);
                    (loaded, current) = match self.catch_up(stream_id, start).await {
                        Ok(loaded) => (loaded, true),
                        Err(error) => return (Err(error), None),
                    };
                    continue;
                }
                // A state with the events applied is ahead of the store: drop it. Otherwise
                // it is untouched and still a prefix of the stream, worth keeping.
                Err(error) => return (Err(error.into()), (!applied_early).then_some(loaded)),
            };
            if !applied_early {
                for event in &events {
                    loaded.state.apply(event);
                }
            }
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
            return (Ok((committed, recorded)), Some(loaded));
        }
    }

    /// The append of a command's events: plain, with unique keys, or with the idempotency
    /// record.
    fn append<'s, C: crate::Command<Aggregate = A>>(
        &'s self,
        ctx: &'s CommandContext,
        idempotent: Option<&Idempotent<'_>>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        keys: KeyChanges,
    ) -> crate::BoxFuture<'s, Result<AppendResult, StoreError>> {
        let stream_id = ctx.stream_id.as_str();
        if let Some(idempotent) = idempotent {
            let write = idempotent.write::<C>(ctx, None);
            self.store
                .append_idempotent(stream_id, expected, events, keys, write)
        } else if keys.is_empty() {
            self.store.append(stream_id, expected, events)
        } else {
            self.store
                .append_with_keys(stream_id, expected, events, keys)
        }
    }

    /// Settles an outcome that writes no events: with an idempotency key, records it with an
    /// append of no events at the loaded version; otherwise checks that a state not read
    /// from the store just now is still at the stream's head. A stale state is a
    /// [`StoreError::Conflict`].
    async fn settle<C: crate::Command<Aggregate = A>>(
        &self,
        ctx: &CommandContext,
        idempotent: Option<&Idempotent<'_>>,
        loaded: &Loaded<A>,
        current: bool,
        outcome: &Result<Vec<A::Event>, A::Error>,
    ) -> Result<(), StoreError> {
        let stream_id = ctx.stream_id.as_str();
        let expected = ExpectedVersion::Exact(loaded.version);
        if let Some(idempotent) = idempotent {
            let rejection = outcome.as_ref().err().map(|error| RecordedRejection {
                domain_code: A::domain_code(error).map(str::to_owned),
                message: error.to_string(),
            });
            let write = idempotent.write::<C>(ctx, rejection);
            self.store
                .append_idempotent(stream_id, expected, Vec::new(), KeyChanges::new(), write)
                .await?;
            return Ok(());
        }
        if current {
            return Ok(());
        }
        let actual = self.store.stream_version(stream_id).await?;
        if actual == loaded.version {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                stream: stream_id.to_owned(),
                expected,
                actual,
            })
        }
    }

    /// Brings `start` (a state that may be behind the stream) up to date, or rebuilds the state
    /// from the store when there is no usable start.
    async fn catch_up(
        &self,
        stream_id: &str,
        start: Option<Loaded<A>>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_from(stream_id, start).await
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

/// An execution's idempotency key and the hash of its command's body.
struct Idempotent<'a> {
    key: &'a str,
    body_hash: String,
}

impl<'a> Idempotent<'a> {
    /// The key of `command`, which must take keys ([`Command::idempotency_body`]).
    ///
    /// [`Command::idempotency_body`]: crate::Command::idempotency_body
    fn of<C: crate::Command>(
        command: &C,
        key: &'a str,
    ) -> Result<Self, CommandError<<C::Aggregate as Aggregate>::Error>> {
        match command.idempotency_body() {
            None => Err(CommandError::NotIdempotent { command: C::NAME }),
            Some(Err(error)) => Err(CommandError::Serialize(error)),
            Some(Ok(body)) => Ok(Self {
                key,
                body_hash: body_hash(&body),
            }),
        }
    }

    /// What the store records with the append.
    fn write<C: crate::Command>(
        &self,
        ctx: &CommandContext,
        rejection: Option<RecordedRejection>,
    ) -> IdempotentWrite {
        IdempotentWrite {
            command_name: C::NAME.to_owned(),
            key: self.key.to_owned(),
            body_hash: self.body_hash.clone(),
            command_id: ctx.command_id,
            rejection,
        }
    }

    /// The recorded outcome as this execution's, unless the body differs.
    fn replay<A: Aggregate>(&self, command: &'static str, record: IdempotencyRecord) -> Attempt<A> {
        if record.body_hash != self.body_hash {
            return Err(CommandError::IdempotencyKeyReused {
                command,
                key: self.key.to_owned(),
            });
        }
        match record.outcome {
            IdempotentOutcome::Committed(committed) => Ok((committed, Vec::new())),
            IdempotentOutcome::Rejected(rejection) => Err(CommandError::AlreadyRejected {
                key: record.key,
                domain_code: rejection.domain_code,
                message: rejection.message,
            }),
        }
    }
}

/// The outcome of a command that produced no events.
fn nothing_committed(ctx: &CommandContext, version: u64) -> Committed {
    Committed {
        command_id: ctx.command_id,
        stream_id: ctx.stream_id.clone(),
        stream_version: version,
        position: GlobalPosition::START,
        events: 0,
    }
}

/// The unique keys a command's events claim and release, each asked of the state before it,
/// and whether the events had to be applied to `state` to ask that (more than one event).
/// One event is asked of the state as it is, which stays untouched.
fn key_changes<A: Aggregate>(state: &mut A, events: &[A::Event]) -> (KeyChanges, bool) {
    let mut keys = KeyChanges::new();
    let applied = events.len() > 1;
    if applied {
        for event in events {
            state.key_changes(event, &mut keys);
            state.apply(event);
        }
    } else if let Some(event) = events.first() {
        state.key_changes(event, &mut keys);
    }
    (keys, applied)
}

/// The stored form of a command's events, each carrying the command's metadata.
fn serialize<E: crate::Event>(
    events: &[E],
    ctx: &CommandContext,
) -> Result<Vec<NewEvent>, serde_json::Error> {
    let mut metadata = ctx.event_metadata();
    let mut new_events = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        // Every event carries the same metadata; the last one takes it instead of a copy.
        let metadata = if index + 1 == events.len() {
            std::mem::take(&mut metadata)
        } else {
            metadata.clone()
        };
        new_events.push(NewEvent::from_event(event, metadata)?);
    }
    Ok(new_events)
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

//! The in-memory saga runner.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::{
    CommandFailure, CommandSender, DeadlineDue, Effects, InstanceStatus, OutgoingCommand,
    ParkedInstance, Saga, SagaInstance, SagaMessage, SagaOptions, SagaRunError, SendCommands,
    due_at, handle, route,
};
use crate::middleware::CommandChain;
use crate::{CommandBus, EventStore, GlobalPosition};

/// Runs saga `S` in process: reads the store's events from its checkpoint, hands each to
/// its instance, sends the commands through the bus (with their idempotency keys), brings
/// failures back to the saga and fires deadlines by the options' clock.
///
/// Its instances, outbox, deadlines and checkpoint live in this value: a new runner starts
/// from the first event again. It is the runner for tests, examples and services on the
/// in-memory store; `cqrs_postgres::saga` keeps all of it in the database.
///
/// Drive it step by step with [`run_until_idle`](Self::run_until_idle) (tests, examples), or
/// in the background with [`start`](Self::start). Cloning is cheap; clones share everything.
///
/// Building it checks the bus at compile time: a bus with no aggregate for one of the
/// saga's commands does not compile, with an error naming the saga and the command.
pub struct InMemorySagaRunner<S> {
    inner: Arc<Inner>,
    saga: PhantomData<fn() -> S>,
}

impl<S> Clone for InMemorySagaRunner<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            saga: PhantomData,
        }
    }
}

impl<S: Saga> fmt::Debug for InMemorySagaRunner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemorySagaRunner")
            .field("saga", &S::NAME)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn EventStore>,
    sender: CommandSender,
    options: SagaOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    checkpoint: GlobalPosition,
    instances: BTreeMap<String, Instance>,
    outbox: VecDeque<Pending>,
    deadlines: Vec<Deadline>,
}

struct Instance {
    state: Option<String>,
    status: InstanceStatus,
    error: Option<String>,
    parked_at: Option<DateTime<Utc>>,
    waiting: VecDeque<SagaMessage>,
}

struct Pending {
    command: OutgoingCommand,
    attempts: u32,
    not_before: DateTime<Utc>,
}

struct Deadline {
    instance: String,
    due: DeadlineDue,
}

impl<S: Saga> InMemorySagaRunner<S> {
    /// A runner of `S` sending its commands through `bus`, over the bus's store.
    pub fn new<R, M, I>(bus: &CommandBus<R, M>) -> Self
    where
        S: SendCommands<R, M, I>,
        R: Send + Sync + 'static,
        M: CommandChain,
    {
        Self::with_options(bus, SagaOptions::default())
    }

    /// [`new`](Self::new) with options (a manual clock, handler attempts).
    pub fn with_options<R, M, I>(bus: &CommandBus<R, M>, options: SagaOptions) -> Self
    where
        S: SendCommands<R, M, I>,
        R: Send + Sync + 'static,
        M: CommandChain,
    {
        Self {
            inner: Arc::new(Inner {
                store: Arc::clone(bus.store()),
                sender: CommandSender::new::<S, R, M, I>(bus),
                options,
                state: Mutex::new(State::default()),
            }),
            saga: PhantomData,
        }
    }

    /// Handles every event stored so far, sends every command waiting (again and again, as
    /// the events those commands produce come in), brings failures back and fires the
    /// deadlines due by the clock, until nothing is left to do. Returns how many messages
    /// (events, failures, deadlines) instances handled.
    ///
    /// Commands that failed for a passing reason stay in the outbox for a later run.
    pub async fn run_until_idle(&self) -> Result<usize, SagaRunError> {
        let mut state = self.inner.state.lock().await;
        let mut handled = 0;
        loop {
            let before = handled;
            handled += self.read_events(&mut state).await?;
            let (sent, failed) = self.send_commands(&mut state).await?;
            handled += failed;
            handled += self.fire_deadlines(&mut state).await?;
            // Commands sent produce events to read: go round again.
            if handled == before && sent == 0 {
                return Ok(handled);
            }
        }
    }

    async fn read_events(&self, state: &mut State) -> Result<usize, SagaRunError> {
        let mut handled = 0;
        loop {
            let events = self
                .inner
                .store
                .read_all_from(state.checkpoint, self.inner.options.batch_size)
                .await
                .map_err(|source| SagaRunError::Store {
                    saga: S::NAME,
                    source,
                })?;
            let Some(last) = events.last() else {
                return Ok(handled);
            };
            let last = last.position;
            for event in events {
                let position = event.position;
                if S::EVENT_TYPES.contains(&event.event_type.as_str()) {
                    self.deliver(state, SagaMessage::Event(event), None).await?;
                    handled += 1;
                }
                state.checkpoint = position;
            }
            state.checkpoint = last;
        }
    }

    /// Sends the due commands; returns how many were executed and how many failures were
    /// handed back.
    async fn send_commands(&self, state: &mut State) -> Result<(usize, usize), SagaRunError> {
        let mut handled = 0;
        let mut sent = 0;
        let mut later = VecDeque::new();
        // Instances with a command put off: their later commands wait behind it.
        let mut blocked: Vec<String> = Vec::new();
        while let Some(mut pending) = state.outbox.pop_front() {
            let now = self.inner.options.clock.now();
            if pending.not_before > now || blocked.contains(&pending.command.instance) {
                blocked.push(pending.command.instance.clone());
                later.push_back(pending);
                continue;
            }
            match self.inner.sender.send(S::NAME, &pending.command).await {
                Ok(_) => sent += 1,
                Err(failure) if failure.is_transient() => {
                    pending.attempts += 1;
                    tracing::warn!(
                        saga = S::NAME,
                        command = pending.command.command_name,
                        attempts = pending.attempts,
                        error = failure.message,
                        "saga command failed for a passing reason; it is sent again later"
                    );
                    pending.not_before =
                        due_at(now, self.inner.options.send_backoff(pending.attempts));
                    blocked.push(pending.command.instance.clone());
                    later.push_back(pending);
                }
                Err(failure) => {
                    let instance = pending.command.instance.clone();
                    let failure = CommandFailure::of(&pending.command, failure);
                    self.deliver(state, SagaMessage::Failure(failure), Some(&instance))
                        .await?;
                    handled += 1;
                }
            }
        }
        state.outbox = later;
        Ok((sent, handled))
    }

    async fn fire_deadlines(&self, state: &mut State) -> Result<usize, SagaRunError> {
        let now = self.inner.options.clock.now();
        let mut due: Vec<Deadline> = Vec::new();
        state.deadlines.retain(|deadline| {
            if deadline.due.due_at <= now {
                due.push(Deadline {
                    instance: deadline.instance.clone(),
                    due: deadline.due.clone(),
                });
                false
            } else {
                true
            }
        });
        due.sort_by_key(|deadline| deadline.due.due_at);
        let handled = due.len();
        for deadline in due {
            self.deliver(
                state,
                SagaMessage::Deadline(deadline.due),
                Some(&deadline.instance),
            )
            .await?;
        }
        Ok(handled)
    }

    /// Hands `message` to its instance, or queues it behind a parked one.
    async fn deliver(
        &self,
        state: &mut State,
        message: SagaMessage,
        instance: Option<&str>,
    ) -> Result<(), SagaRunError> {
        let Some(association) = route::<S>(&message, instance).map_err(SagaRunError::Route)? else {
            return Ok(());
        };
        let key = association.key;
        let stored = match state.instances.get_mut(&key) {
            Some(found) if found.status == InstanceStatus::Ended => return Ok(()),
            Some(found) if found.status == InstanceStatus::Parked => {
                found.waiting.push_back(message);
                return Ok(());
            }
            Some(found) => found.state.clone(),
            None if association.start => None,
            None => return Ok(()),
        };
        let now = self.inner.options.clock.now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match handle::<S>(stored.as_deref(), &key, &message, association.end, now).await {
                Ok((new_state, effects)) => {
                    Self::apply(state, &key, new_state, effects, now);
                    return Ok(());
                }
                Err(error) if attempt < self.inner.options.handler_attempts => {
                    tracing::warn!(saga = S::NAME, instance = key, attempt, %error, "saga handler failed; trying again");
                }
                Err(error) => {
                    tracing::error!(saga = S::NAME, instance = key, %error, "saga handler keeps failing; the instance is parked");
                    let entry = state.instances.entry(key).or_insert_with(|| Instance {
                        state: None,
                        status: InstanceStatus::Active,
                        error: None,
                        parked_at: None,
                        waiting: VecDeque::new(),
                    });
                    entry.status = InstanceStatus::Parked;
                    entry.error = Some(error.to_string());
                    entry.parked_at = Some(now);
                    entry.waiting.push_front(message);
                    return Ok(());
                }
            }
        }
    }

    fn apply(
        state: &mut State,
        key: &str,
        new_state: String,
        effects: Effects,
        now: DateTime<Utc>,
    ) {
        let instance = state
            .instances
            .entry(key.to_owned())
            .or_insert_with(|| Instance {
                state: None,
                status: InstanceStatus::Active,
                error: None,
                parked_at: None,
                waiting: VecDeque::new(),
            });
        instance.state = Some(new_state);
        if effects.ended {
            instance.status = InstanceStatus::Ended;
            state.deadlines.retain(|d| d.instance != key);
        } else {
            state
                .deadlines
                .retain(|d| d.instance != key || !effects.cancelled.contains(&d.due.name.as_str()));
            for scheduled in effects.scheduled {
                state
                    .deadlines
                    .retain(|d| d.instance != key || d.due.name != scheduled.name);
                state.deadlines.push(Deadline {
                    instance: key.to_owned(),
                    due: DeadlineDue {
                        name: scheduled.name.to_owned(),
                        payload: scheduled.payload,
                        id: scheduled.id,
                        due_at: due_at(now, scheduled.after),
                    },
                });
            }
        }
        state
            .outbox
            .extend(effects.commands.into_iter().map(|command| Pending {
                command,
                attempts: 0,
                not_before: DateTime::<Utc>::MIN_UTC,
            }));
    }

    /// The instance `key`, if it exists.
    pub async fn instance(&self, key: &str) -> Option<SagaInstance<S>> {
        let state = self.inner.state.lock().await;
        let found = state.instances.get(key)?;
        Some(SagaInstance {
            key: key.to_owned(),
            state: found
                .state
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok()),
            status: found.status,
        })
    }

    /// The pending deadlines: instance key, deadline name, when due.
    pub async fn deadlines(&self) -> Vec<(String, String, DateTime<Utc>)> {
        let state = self.inner.state.lock().await;
        state
            .deadlines
            .iter()
            .map(|d| (d.instance.clone(), d.due.name.clone(), d.due.due_at))
            .collect()
    }

    /// How many commands wait to be sent.
    pub async fn outbox_len(&self) -> usize {
        self.inner.state.lock().await.outbox.len()
    }

    /// The parked instances, with the error and the message they failed on.
    pub async fn parked(&self) -> Vec<ParkedInstance> {
        let state = self.inner.state.lock().await;
        state
            .instances
            .iter()
            .filter(|(_, i)| i.status == InstanceStatus::Parked)
            .map(|(key, i)| ParkedInstance {
                saga: S::NAME.to_owned(),
                key: key.clone(),
                error: i.error.clone().unwrap_or_default(),
                failed_on: i
                    .waiting
                    .front()
                    .map(SagaMessage::describe)
                    .unwrap_or_default(),
                waiting: i.waiting.len(),
                parked_at: i.parked_at.unwrap_or(DateTime::<Utc>::MIN_UTC),
            })
            .collect()
    }

    /// Hands the parked instance `key` its waiting messages again, the failed one first.
    /// It stays parked (with the new error) if the handler fails again.
    pub async fn retry(&self, key: &str) -> Result<(), SagaRunError> {
        self.release(key, false).await
    }

    /// Drops the message the parked instance `key` failed on, then hands it the others.
    pub async fn skip(&self, key: &str) -> Result<(), SagaRunError> {
        self.release(key, true).await
    }

    async fn release(&self, key: &str, skip: bool) -> Result<(), SagaRunError> {
        let mut state = self.inner.state.lock().await;
        let not_parked = || SagaRunError::NotParked {
            saga: S::NAME,
            key: key.to_owned(),
        };
        let instance = state.instances.get_mut(key).ok_or_else(not_parked)?;
        if instance.status != InstanceStatus::Parked {
            return Err(not_parked());
        }
        let mut waiting = std::mem::take(&mut instance.waiting);
        if skip {
            waiting.pop_front();
        }
        instance.status = InstanceStatus::Active;
        instance.error = None;
        instance.parked_at = None;
        if instance.state.is_none() {
            // Parked on the message that was to start it: it does not exist yet.
            state.instances.remove(key);
        }
        for message in waiting {
            self.deliver(&mut state, message, Some(key)).await?;
        }
        Ok(())
    }

    /// Runs the saga in a background task: [`run_until_idle`](Self::run_until_idle) every
    /// poll interval. Errors are logged and the run tried again at the next interval.
    pub fn start(&self) -> SagaRunnerHandle {
        let (shutdown, mut stop) = watch::channel(false);
        let runner = self.clone();
        let every = self.inner.options.poll_interval;
        let task = tokio::spawn(async move {
            loop {
                if let Err(error) = runner.run_until_idle().await {
                    tracing::error!(saga = S::NAME, %error, "saga run failed; trying again");
                }
                if tokio::time::timeout(every, stop.changed()).await.is_ok() {
                    return;
                }
            }
        });
        SagaRunnerHandle { shutdown, task }
    }
}

/// A saga running in the background ([`InMemorySagaRunner::start`]).
#[derive(Debug)]
pub struct SagaRunnerHandle {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SagaRunnerHandle {
    /// Stops the runner after its current run and waits for it.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

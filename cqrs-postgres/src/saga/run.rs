//! The runner task: take the leadership, then handle events, send commands and fire
//! deadlines until shut down.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_core::saga::{
    CommandFailure, CommandSender, DeadlineDue, OutgoingCommand, Saga, SagaMessage, SagaOptions,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::tx::{DeliverError, deliver};
use super::{SagaRunnerError, SagaStatus, SagaStep, checkpoint_name};
use crate::sql;
use crate::subscription::checkpoint::{self, Checkpoint};
use crate::subscription::read::next_batch;
use crate::subscription::run::Listener;

/// Most commands sent and deadlines fired per round.
const ROUND: i64 = 100;

pub(crate) struct Runner<S> {
    pub pool: PgPool,
    pub sender: CommandSender,
    pub options: SagaOptions,
    pub lead_retry: Duration,
    pub observe: Option<Arc<dyn Fn(SagaStep) + Send + Sync>>,
    pub status: watch::Sender<SagaStatus>,
    /// Events come from elsewhere ([`SagaInput`](super::SagaInput)): the store's are not read.
    pub external: bool,
    /// Wakes the command dispatcher: after an event's step here, or a step committed by an
    /// external input.
    pub wake: Arc<Notify>,
    pub saga: PhantomData<fn() -> S>,
}

impl<S: Saga> Runner<S> {
    fn observe(&self, step: SagaStep) {
        if let Some(observe) = &self.observe {
            observe(step);
        }
    }

    #[allow(clippy::unused_self)] // read as `self.database(e)` beside the other helpers
    fn database(&self, source: sqlx::Error) -> SagaRunnerError {
        SagaRunnerError::Database {
            saga: S::NAME,
            source: Arc::new(source),
        }
    }

    fn deliver_error(&self, error: DeliverError) -> SagaRunnerError {
        match error {
            DeliverError::Database(source) => self.database(source),
            DeliverError::Route(error) => SagaRunnerError::Route {
                saga: S::NAME,
                message: error.to_string(),
            },
            DeliverError::Serialize(error) => SagaRunnerError::Serialize {
                saga: S::NAME,
                message: error.to_string(),
            },
        }
    }

    /// Runs until `shutdown` says so: leads when it can, stands by otherwise; a failed round
    /// is logged and tried again after a backoff.
    pub async fn supervise(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.options.send_retry_initial;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.lead(&mut shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(saga = S::NAME, %error, "saga runner failed; trying again");
                    self.status.send_modify(|status| {
                        status.leading = false;
                        status.last_error = Some(error.to_string());
                    });
                    if tokio::time::timeout(backoff, shutdown.changed())
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    backoff = (backoff * 2).min(self.options.send_retry_max);
                }
            }
        }
    }

    /// Takes the leadership (waiting as a standby while another process has it), then runs
    /// rounds until shut down. Returns `Ok` on shutdown.
    async fn lead(
        self: &Arc<Self>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SagaRunnerError> {
        let options: PgConnectOptions = (*self.pool.connect_options()).clone();
        // A connection of its own, out of the pool: the session lock goes with it when it is
        // dropped or the process dies, never back into the pool.
        let mut lock = options.connect().await.map_err(|e| self.database(e))?;
        loop {
            let leading: bool = sqlx::query_scalar(sql::SAGA_TRY_LEAD)
                .bind(S::NAME)
                .fetch_one(&mut lock)
                .await
                .map_err(|e| self.database(e))?;
            if leading {
                break;
            }
            if tokio::time::timeout(self.lead_retry, shutdown.changed())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        self.status.send_modify(|status| status.leading = true);
        tracing::info!(saga = S::NAME, "saga runner leads");
        // The transactions of this runner run on connections of its own too: a runner
        // aborted in the middle of one (even of its `BEGIN`) closes them, and the server
        // rolls back; a pooled connection could go back to the pool with the transaction
        // still open.
        let mut work = self.own_connection(&options).await?;
        // Commands are sent by a task of their own, on its own connection, while events are
        // handled here: the two overlap. It dies with this leadership (its guard aborts it).
        let wake = Arc::clone(&self.wake);
        let mut dispatcher = AbortOnDrop(tokio::spawn({
            let runner = Arc::clone(self);
            let wake = Arc::clone(&wake);
            let conn = self.own_connection(&options).await?;
            async move { runner.dispatch(conn, &wake).await }
        }));
        // Fed from elsewhere, the runner has no store events to wait for.
        let mut listener = if self.external {
            None
        } else {
            Some(
                Listener::start(&self.pool)
                    .await
                    .map_err(|e| self.database(e))?,
            )
        };
        let name = checkpoint_name::<S>();
        let mut at = checkpoint::ensure(&self.pool, &name)
            .await
            .map_err(|e| self.database(e))?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if dispatcher.0.is_finished() {
                return Self::dispatcher_ended((&mut dispatcher.0).await);
            }
            let handled = !self.external && self.read_events(&mut work, &name, &mut at).await?;
            if handled {
                wake.notify_one();
            }
            let fired = self.fire_deadlines(&mut work).await?;
            if fired {
                wake.notify_one();
            }
            self.status.send_modify(|status| {
                status.checkpoint = at;
                status.last_error = None;
            });
            if handled || fired {
                continue;
            }
            sqlx::query(sql::SAGA_STILL_LEADING)
                .execute(&mut lock)
                .await
                .map_err(|e| self.database(e))?;
            let wait = self.next_wait().await?;
            let woken = async {
                match listener.as_mut() {
                    Some(listener) => listener.woken().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                woken = woken => woken.map_err(|e| self.database(e))?,
                () = tokio::time::sleep(wait) => {}
                ended = &mut dispatcher.0 => return Self::dispatcher_ended(ended),
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// A connection out of the pool, committing asynchronously (see "Commits" in the module
    /// docs for why a server crash cannot lose a commit whose effects survived).
    async fn own_connection(
        &self,
        options: &PgConnectOptions,
    ) -> Result<PgConnection, SagaRunnerError> {
        let mut conn = options.connect().await.map_err(|e| self.database(e))?;
        sqlx::query(sql::SAGA_ASYNC_COMMIT)
            .execute(&mut conn)
            .await
            .map_err(|e| self.database(e))?;
        Ok(conn)
    }

    /// The dispatcher's end ends the leadership; its panic is this task's.
    fn dispatcher_ended(
        ended: Result<Result<(), SagaRunnerError>, tokio::task::JoinError>,
    ) -> Result<(), SagaRunnerError> {
        match ended {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(SagaRunnerError::Serialize {
                saga: S::NAME,
                message: "the command dispatcher was cancelled".to_owned(),
            }),
        }
    }

    /// Sends the outbox's commands until an error: woken when events were handled, and every
    /// poll interval (for commands put off after a passing failure).
    async fn dispatch(&self, mut conn: PgConnection, wake: &Notify) -> Result<(), SagaRunnerError> {
        loop {
            if !self.send_commands(&mut conn).await? {
                let _ = tokio::time::timeout(self.options.poll_interval, wake.notified()).await;
            }
        }
    }

    /// How long to sleep when idle: the poll interval, or less when a deadline or a delayed
    /// command comes due sooner.
    async fn next_wait(&self) -> Result<Duration, SagaRunnerError> {
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(sql::SAGA_NEXT_WAKE)
            .bind(S::NAME)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.database(e))?;
        let poll = self.options.poll_interval;
        Ok(match next {
            None => poll,
            Some(at) => (at - self.options.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(poll)
                .max(Duration::from_millis(1)),
        })
    }

    /// Handles the next batch of events, one transaction each. Returns whether it did.
    async fn read_events(
        &self,
        work: &mut PgConnection,
        name: &str,
        at: &mut Checkpoint,
    ) -> Result<bool, SagaRunnerError> {
        let batch = next_batch(
            &self.pool,
            S::NAME,
            *at,
            crate::subscription::EventTypes::Only(S::EVENT_TYPES),
            self.options.batch_size,
        )
        .await
        .map_err(|e| SagaRunnerError::Subscription(Arc::new(e)))?;
        let handled = !batch.events.is_empty();
        for (position, event) in batch.events {
            let mut tx = work.begin().await.map_err(|e| self.database(e))?;
            // Claim the event: the checkpoint moves in this transaction, its row locked until
            // the commit; no row means another runner is already past it.
            let claimed = sqlx::query(sql::SAGA_CLAIM_EVENT)
                .bind(name)
                .bind(position.tx.to_string())
                .bind(i64::try_from(position.position.0).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.database(e))?;
            if claimed.rows_affected() == 0 {
                tx.rollback().await.map_err(|e| self.database(e))?;
                *at = checkpoint::ensure(&self.pool, name)
                    .await
                    .map_err(|e| self.database(e))?;
                return Ok(true);
            }
            let message = SagaMessage::Event(event);
            deliver::<S>(
                &mut tx,
                &message,
                None,
                self.options.clock.now(),
                self.options.handler_attempts,
            )
            .await
            .map_err(|e| self.deliver_error(e))?;
            tx.commit().await.map_err(|e| self.database(e))?;
            *at = position;
            self.observe(SagaStep::StateCommitted {
                position: position.position,
            });
        }
        if batch.next > *at {
            let mut tx = work.begin().await.map_err(|e| self.database(e))?;
            checkpoint::advance(&mut tx, name, batch.next)
                .await
                .map_err(|e| self.database(e))?;
            tx.commit().await.map_err(|e| self.database(e))?;
            *at = batch.next;
        }
        Ok(handled || batch.full)
    }

    /// Executes the commands due: the commands of different instances at once, each
    /// instance's in order. Returns them with their outcomes, by outbox id.
    async fn execute_due(&self) -> Result<Vec<Executed>, SagaRunnerError> {
        let due: Vec<(i64, String, i32)> = sqlx::query_as(sql::SAGA_OUTBOX_DUE)
            .bind(S::NAME)
            .bind(self.options.clock.now())
            .bind(ROUND)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.database(e))?;
        let mut by_instance: Vec<(String, Vec<Due>)> = Vec::new();
        for (id, command, attempts) in due {
            let command: OutgoingCommand =
                serde_json::from_str(&command).map_err(|e| SagaRunnerError::Serialize {
                    saga: S::NAME,
                    message: e.to_string(),
                })?;
            match by_instance
                .iter_mut()
                .find(|(key, _)| *key == command.instance)
            {
                Some((_, commands)) => commands.push((id, command, attempts)),
                None => by_instance.push((command.instance.clone(), vec![(id, command, attempts)])),
            }
        }
        // Each instance's commands on a task of their own: aborting the runner never cancels
        // a command halfway through the store's transaction; it finishes, and its outcome is
        // found again by its idempotency key. An instance's commands stop at the first that
        // does not succeed, so that none overtakes a failed one.
        let tasks: Vec<_> = by_instance
            .into_iter()
            .map(|(_, commands)| {
                let sender = self.sender.clone();
                tokio::spawn(async move {
                    let mut results = Vec::with_capacity(commands.len());
                    for (id, command, attempts) in commands {
                        let result = sender.send(S::NAME, &command).await;
                        let stop = result.is_err();
                        results.push((id, command, attempts, result));
                        if stop {
                            break;
                        }
                    }
                    results
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            match task.await {
                Ok(done) => results.extend(done),
                Err(panicked) => {
                    tracing::error!(saga = S::NAME, %panicked, "a saga command's execution panicked; it is sent again later");
                }
            }
        }
        results.sort_by_key(|(id, ..)| *id);
        Ok(results)
    }

    /// Sends the commands due and records their outcomes. Returns whether there were any.
    async fn send_commands(&self, work: &mut PgConnection) -> Result<bool, SagaRunnerError> {
        let results = self.execute_due().await?;
        if results.is_empty() {
            return Ok(false);
        }
        let mut sent = Vec::new();
        for (id, command, attempts, result) in results {
            self.observe(SagaStep::CommandExecuted {
                idempotency_key: command.idempotency_key.clone(),
            });
            match result {
                Ok(_) => sent.push((id, command.idempotency_key)),
                Err(failure) if failure.is_transient() => {
                    let attempts = u32::try_from(attempts).unwrap_or(0) + 1;
                    tracing::warn!(
                        saga = S::NAME,
                        command = command.command_name,
                        attempts,
                        error = failure.message,
                        "saga command failed for a passing reason; it is sent again later"
                    );
                    let not_before = cqrs_core::saga::due_at(
                        self.options.clock.now(),
                        self.options.send_backoff(attempts),
                    );
                    sqlx::query(sql::SAGA_OUTBOX_RETRY)
                        .bind(id)
                        .bind(&failure.message)
                        .bind(not_before)
                        .execute(&mut *work)
                        .await
                        .map_err(|e| self.database(e))?;
                }
                Err(failure) => {
                    // The failure goes back to the saga in the transaction that removes the
                    // command: both or neither.
                    let mut tx = work.begin().await.map_err(|e| self.database(e))?;
                    let taken = sqlx::query(sql::SAGA_OUTBOX_DELETE)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.database(e))?;
                    if taken.rows_affected() == 1 {
                        let instance = command.instance.clone();
                        let message = SagaMessage::Failure(CommandFailure::of(&command, failure));
                        deliver::<S>(
                            &mut tx,
                            &message,
                            Some(&instance),
                            self.options.clock.now(),
                            self.options.handler_attempts,
                        )
                        .await
                        .map_err(|e| self.deliver_error(e))?;
                    }
                    tx.commit().await.map_err(|e| self.database(e))?;
                    self.observe(SagaStep::ResultRecorded {
                        idempotency_key: command.idempotency_key,
                    });
                }
            }
        }
        if !sent.is_empty() {
            let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
            sqlx::query(sql::SAGA_OUTBOX_DELETE_MANY)
                .bind(&ids)
                .execute(&mut *work)
                .await
                .map_err(|e| self.database(e))?;
            for (_, idempotency_key) in sent {
                self.observe(SagaStep::ResultRecorded { idempotency_key });
            }
        }
        Ok(true)
    }

    /// Fires the deadlines due, one transaction each. Returns whether it fired any.
    async fn fire_deadlines(&self, work: &mut PgConnection) -> Result<bool, SagaRunnerError> {
        let now = self.options.clock.now();
        let due: Vec<(String, String, uuid::Uuid, String, DateTime<Utc>)> =
            sqlx::query_as(sql::SAGA_DEADLINES_DUE)
                .bind(S::NAME)
                .bind(now)
                .bind(ROUND)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.database(e))?;
        let fired = !due.is_empty();
        for (key, name, id, payload, due_at) in due {
            let mut tx = work.begin().await.map_err(|e| self.database(e))?;
            let taken = sqlx::query(sql::SAGA_DEADLINE_TAKE)
                .bind(S::NAME)
                .bind(&key)
                .bind(&name)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.database(e))?;
            if taken.rows_affected() == 1 {
                let message = SagaMessage::Deadline(DeadlineDue {
                    name,
                    payload,
                    id,
                    due_at,
                });
                deliver::<S>(
                    &mut tx,
                    &message,
                    Some(&key),
                    now,
                    self.options.handler_attempts,
                )
                .await
                .map_err(|e| self.deliver_error(e))?;
            }
            tx.commit().await.map_err(|e| self.database(e))?;
            self.observe(SagaStep::DeadlineFired { key });
        }
        Ok(fired)
    }
}

/// An outbox row due: id, command, attempts so far.
type Due = (i64, OutgoingCommand, i32);

/// An outbox row after its execution.
type Executed = (
    i64,
    OutgoingCommand,
    i32,
    Result<cqrs_core::Committed, cqrs_core::saga::SendFailure>,
);

/// Aborts the task when dropped: a leadership's helper tasks end with it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

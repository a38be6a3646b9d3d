//! The task behind a running subscription: read, deliver, checkpoint, wait, retry.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::trace_context::event_span;
use cqrs_core::{BoxFuture, Projection, ReadModel, StateLocation, Subscriber};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::checkpoint::{self, Checkpoint};
use super::fault::{self, DeadLetters, FailedEvent, FaultPolicy, GiveUp, Pending, Request, Route};
use super::lease::Lease;
use super::read::{self, Batch};
use super::{
    EventTypes, NOTIFY_CHANNEL, SubscriptionError, SubscriptionOptions, SubscriptionStatus,
};
use crate::sql;

/// What a delivery reached: where the next read starts, and how far the consumer is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delivered {
    /// The next read starts after this point.
    pub read: Checkpoint,
    /// Every event at or before this point is done (and, for a durable subscription, so
    /// stored). Behind `read` while deliveries are still being confirmed.
    pub done: Checkpoint,
}

impl Delivered {
    /// Read and done alike: a delivery that finishes each batch before returning.
    pub(super) fn at(checkpoint: Checkpoint) -> Self {
        Self {
            read: checkpoint,
            done: checkpoint,
        }
    }
}

/// How a batch reaches its consumer and how the checkpoint follows.
pub(super) trait Deliver: Send + 'static {
    fn name(&self) -> &'static str;
    fn event_types(&self) -> EventTypes;

    /// Where this attempt starts: the stored checkpoint, created at the start if missing.
    /// Anything a failed attempt left unfinished is dropped here.
    fn resume<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<Checkpoint, sqlx::Error>> {
        Box::pin(checkpoint::ensure(pool, self.name()))
    }

    /// Finishes what earlier deliveries left in flight and returns how far the consumer is
    /// done; called once the subscription has caught up, before it waits. `None`: nothing is
    /// ever left in flight.
    fn settle<'a>(
        &'a mut self,
        _pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, SubscriptionError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether the next batch may be read while this one is delivered: only for a delivery
    /// whose next read always starts at the batch's end.
    fn reads_ahead(&self) -> bool {
        false
    }

    /// Whether `start` returns only once the consumer holds every event committed before it.
    fn waits_for_replay(&self) -> bool {
        false
    }

    /// Whether the consumer may start from `from`: refuses what cannot be right there.
    fn check_start(&self, _from: Checkpoint) -> Result<(), SubscriptionError> {
        Ok(())
    }

    /// Whether one worker per name runs at a time, across processes (a durable
    /// subscription); `false` for a consumer each process holds its own of.
    fn exclusive(&self) -> bool {
        true
    }

    /// Takes `name` as the subscription's name instead of its own; `false` when the
    /// delivery cannot.
    fn rename(&mut self, _name: &'static str) -> bool {
        false
    }

    /// The parked streams and the fault policy's verdicts, for a delivery that keeps them.
    fn dead_letters(&mut self) -> Option<&mut DeadLetters> {
        None
    }

    /// Carries out operators' requests on parked streams; called before each batch.
    fn maintain<'a>(
        &'a mut self,
        _pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<(), SubscriptionError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Delivers `batch`, read after checkpoint `from`, and returns where the next read
    /// starts and how far the consumer is done.
    fn deliver<'a>(
        &'a mut self,
        pool: &'a PgPool,
        from: Checkpoint,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivered, SubscriptionError>>;
}

/// Read-model rows and checkpoint in one transaction per batch: exactly once.
pub(super) struct Transactional<P> {
    projection: P,
    name: &'static str,
    dead: DeadLetters,
}

impl<P: Projection<Context = PgConnection>> Transactional<P> {
    pub(super) fn new(projection: P) -> Self {
        Self {
            projection,
            name: P::NAME,
            dead: DeadLetters::default(),
        }
    }

    /// Replays the events held behind `stream`, in order, in one transaction with their
    /// release; on a failure nothing of it is kept and the stream stays parked.
    async fn replay(
        &mut self,
        pool: &PgPool,
        stream: &str,
        request: Request,
        error: &str,
    ) -> Result<(), SubscriptionError> {
        let name = self.name;
        let database = |source| SubscriptionError::database(name, source);
        let mut tx = pool.begin().await.map_err(database)?;
        // The checkpoint row lock keeps the replay and a batch of another instance apart.
        checkpoint::lock(&mut tx, name).await.map_err(database)?;
        let row: Option<(Option<String>, String)> = sqlx::query_as(sql::PARKED_STREAM_FOR_UPDATE)
            .bind(name)
            .bind(stream)
            .fetch_optional(&mut *tx)
            .await
            .map_err(database)?;
        if !matches!(row, Some((Some(_), _))) {
            // Carried out (or the stream released) meanwhile.
            tx.rollback().await.map_err(database)?;
            return Ok(());
        }
        let mut held = fault::held(&mut tx, name, stream).await?;
        if request == Request::Skip && !held.is_empty() {
            let (at, event) = held.remove(0);
            fault::record_skip(
                &mut tx,
                name,
                at,
                stream,
                event.event_id,
                &event.event_type,
                error,
                "operator",
            )
            .await
            .map_err(database)?;
            fault::release(&mut tx, name, stream, &[at], false)
                .await
                .map_err(database)?;
        }
        let mut savepoint = tx.begin().await.map_err(database)?;
        for (at, event) in &held {
            if let Err(failure) = self
                .projection
                .project(event, &mut savepoint)
                .instrument(event_span(name, event))
                .await
            {
                savepoint.rollback().await.map_err(database)?;
                tracing::warn!(subscription = name, stream, %failure, "a parked stream failed again; it stays parked");
                fault::repark(&mut tx, name, stream, *at, &failure.to_string())
                    .await
                    .map_err(database)?;
                tx.commit().await.map_err(database)?;
                return Ok(());
            }
        }
        savepoint.commit().await.map_err(database)?;
        let done: Vec<Checkpoint> = held.iter().map(|(at, _)| *at).collect();
        fault::release(&mut tx, name, stream, &done, true)
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        self.dead.unparked(stream);
        tracing::info!(
            subscription = name,
            stream,
            replayed = done.len(),
            "a parked stream is live again"
        );
        Ok(())
    }
}

impl<P: Projection<Context = PgConnection>> Deliver for Transactional<P> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn event_types(&self) -> EventTypes {
        EventTypes::Only(P::EVENT_TYPES)
    }

    fn rename(&mut self, name: &'static str) -> bool {
        self.name = name;
        true
    }

    fn dead_letters(&mut self) -> Option<&mut DeadLetters> {
        Some(&mut self.dead)
    }

    fn resume<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<Checkpoint, sqlx::Error>> {
        Box::pin(self.dead.resume(pool, self.name))
    }

    fn maintain<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<(), SubscriptionError>> {
        Box::pin(async move {
            if self.dead.parked_streams() == 0 {
                return Ok(());
            }
            for (stream, request, error) in self.dead.requests(pool, self.name).await? {
                self.replay(pool, &stream, request, &error).await?;
            }
            self.dead.reload(pool, self.name).await
        })
    }

    fn deliver<'a>(
        &'a mut self,
        pool: &'a PgPool,
        from: Checkpoint,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivered, SubscriptionError>> {
        Box::pin(async move {
            let name = self.name;
            let database = |source| SubscriptionError::database(name, source);
            let mut tx = pool.begin().await.map_err(database)?;
            // The row lock serializes two instances of one subscription; the comparison makes
            // the loser drop a batch the winner already applied.
            let stored = checkpoint::lock(&mut tx, name).await.map_err(database)?;
            if stored != from {
                tx.rollback().await.map_err(database)?;
                tracing::info!(
                    subscription = name,
                    %stored,
                    expected = %from,
                    "checkpoint moved under this subscription; continuing from the stored one"
                );
                return Ok(Delivered::at(stored));
            }
            let mut rows = Vec::new();
            for (at, event) in &batch.events {
                match self.dead.route(*at, event, &rows) {
                    Route::Deliver => {
                        if let Err(error) = self
                            .projection
                            .project(event, &mut tx)
                            .instrument(event_span(name, event))
                            .await
                        {
                            self.dead.failed = Some(FailedEvent::new(*at, event, &error));
                            return Err(SubscriptionError::Projection(Arc::new(error)));
                        }
                    }
                    route => rows.push(DeadLetters::pending(*at, event, route)),
                }
            }
            fault::write(&mut tx, name, &rows).await.map_err(database)?;
            checkpoint::advance(&mut tx, name, batch.next)
                .await
                .map_err(database)?;
            tx.commit().await.map_err(database)?;
            self.dead.committed(rows);
            Ok(Delivered::at(batch.next))
        })
    }
}

/// Handler first, checkpoint after: at least once.
pub(super) struct AtLeastOnce<S> {
    subscriber: S,
    name: &'static str,
    dead: DeadLetters,
}

impl<S: Subscriber> AtLeastOnce<S> {
    pub(super) fn new(subscriber: S) -> Self {
        let name = subscriber.name();
        Self {
            subscriber,
            name,
            dead: DeadLetters::default(),
        }
    }

    /// Stores the checkpoint at `to` with the dead-letter `rows` in one transaction.
    async fn store(
        &mut self,
        pool: &PgPool,
        to: Checkpoint,
        rows: Vec<Pending>,
    ) -> Result<(), SubscriptionError> {
        let name = self.name;
        let database = |source| SubscriptionError::database(name, source);
        if rows.is_empty() {
            let mut conn = pool.acquire().await.map_err(database)?;
            return checkpoint::advance(&mut conn, name, to)
                .await
                .map_err(database);
        }
        let mut tx = pool.begin().await.map_err(database)?;
        fault::write(&mut tx, name, &rows).await.map_err(database)?;
        checkpoint::advance(&mut tx, name, to)
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        self.dead.committed(rows);
        Ok(())
    }

    /// Hands the events held behind `stream` to the subscriber again, in order; releases
    /// each one handled, and leaves the stream parked on one that fails again.
    async fn replay(
        &mut self,
        pool: &PgPool,
        stream: &str,
        request: Request,
        error: &str,
    ) -> Result<(), SubscriptionError> {
        let name = self.name;
        let database = |source| SubscriptionError::database(name, source);
        let mut conn = pool.acquire().await.map_err(database)?;
        let mut held = fault::held(&mut conn, name, stream).await?;
        if request == Request::Skip && !held.is_empty() {
            let (at, event) = held.remove(0);
            let mut tx = conn.begin().await.map_err(database)?;
            fault::record_skip(
                &mut tx,
                name,
                at,
                stream,
                event.event_id,
                &event.event_type,
                error,
                "operator",
            )
            .await
            .map_err(database)?;
            fault::release(&mut tx, name, stream, &[at], false)
                .await
                .map_err(database)?;
            tx.commit().await.map_err(database)?;
        }
        let mut done = Vec::with_capacity(held.len());
        let mut failed = None;
        for (at, event) in &held {
            match self
                .subscriber
                .handle(event)
                .instrument(event_span(name, event))
                .await
            {
                Ok(()) => done.push(*at),
                Err(failure) => {
                    failed = Some((*at, failure));
                    break;
                }
            }
        }
        let mut tx = conn.begin().await.map_err(database)?;
        fault::release(&mut tx, name, stream, &done, failed.is_none())
            .await
            .map_err(database)?;
        match &failed {
            Some((at, failure)) => {
                tracing::warn!(subscription = name, stream, %failure, "a parked stream failed again; it stays parked");
                fault::repark(&mut tx, name, stream, *at, &failure.to_string())
                    .await
                    .map_err(database)?;
            }
            None => {
                tracing::info!(
                    subscription = name,
                    stream,
                    replayed = done.len(),
                    "a parked stream is live again"
                );
            }
        }
        tx.commit().await.map_err(database)?;
        if failed.is_none() {
            self.dead.unparked(stream);
        }
        Ok(())
    }
}

impl<S: Subscriber> Deliver for AtLeastOnce<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn event_types(&self) -> EventTypes {
        EventTypes::Only(self.subscriber.event_types())
    }

    fn rename(&mut self, name: &'static str) -> bool {
        self.name = name;
        true
    }

    fn dead_letters(&mut self) -> Option<&mut DeadLetters> {
        Some(&mut self.dead)
    }

    fn resume<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<Checkpoint, sqlx::Error>> {
        Box::pin(self.dead.resume(pool, self.name))
    }

    fn maintain<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<(), SubscriptionError>> {
        Box::pin(async move {
            if self.dead.parked_streams() == 0 {
                return Ok(());
            }
            for (stream, request, error) in self.dead.requests(pool, self.name).await? {
                self.replay(pool, &stream, request, &error).await?;
            }
            self.dead.reload(pool, self.name).await
        })
    }

    /// A subscriber whose state lives in process memory starts empty: resuming it from a
    /// stored checkpoint past the start would leave out every event before it, silently.
    fn check_start(&self, from: Checkpoint) -> Result<(), SubscriptionError> {
        if self.subscriber.state_location() != StateLocation::InMemory {
            return Ok(());
        }
        let name = self.name;
        if from != Checkpoint::START {
            return Err(SubscriptionError::InMemoryBehindCheckpoint {
                name,
                checkpoint: from,
            });
        }
        tracing::warn!(
            subscription = name,
            "an in-memory read model under a stored checkpoint: the next start will be refused; \
             feed it with `Subscription::in_memory`"
        );
        Ok(())
    }

    fn deliver<'a>(
        &'a mut self,
        pool: &'a PgPool,
        from: Checkpoint,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivered, SubscriptionError>> {
        Box::pin(async move {
            let name = self.name;
            let mut done = from;
            let mut rows = Vec::new();
            for (at, event) in &batch.events {
                match self.dead.route(*at, event, &rows) {
                    Route::Deliver => {
                        if let Err(error) = self
                            .subscriber
                            .handle(event)
                            .instrument(event_span(name, event))
                            .await
                        {
                            self.dead.failed = Some(FailedEvent::new(*at, event, &error));
                            // Keep what succeeded so the retry starts at the failed event.
                            if done > from {
                                self.store(pool, done, rows).await?;
                            }
                            return Err(SubscriptionError::Projection(Arc::new(error)));
                        }
                    }
                    route => rows.push(DeadLetters::pending(*at, event, route)),
                }
                done = *at;
            }
            self.store(pool, batch.next, rows).await?;
            Ok(Delivered::at(batch.next))
        })
    }
}

/// A read model in process memory, with its checkpoint beside it: nothing is stored, so every
/// start replays from the first event, and a retry after a failure resumes where the model is.
pub(super) struct InMemory<P> {
    model: ReadModel<P>,
    done: Checkpoint,
}

impl<P> InMemory<P> {
    pub(super) fn new(model: ReadModel<P>) -> Self {
        Self {
            model,
            done: Checkpoint::START,
        }
    }
}

impl<P: Projection<Context = ()>> Deliver for InMemory<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn event_types(&self) -> EventTypes {
        EventTypes::Only(P::EVENT_TYPES)
    }

    fn resume<'a>(&'a mut self, _: &'a PgPool) -> BoxFuture<'a, Result<Checkpoint, sqlx::Error>> {
        Box::pin(std::future::ready(Ok(self.done)))
    }

    fn waits_for_replay(&self) -> bool {
        true
    }

    /// Each process feeds its own model.
    fn exclusive(&self) -> bool {
        false
    }

    fn deliver<'a>(
        &'a mut self,
        _: &'a PgPool,
        _: Checkpoint,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivered, SubscriptionError>> {
        Box::pin(async move {
            for (at, event) in &batch.events {
                self.model
                    .project(event)
                    .instrument(event_span(P::NAME, event))
                    .await
                    .map_err(|e| SubscriptionError::Projection(Arc::new(e)))?;
                // Kept per event, so a retry starts at the failed one.
                self.done = *at;
            }
            self.done = batch.next;
            Ok(Delivered::at(self.done))
        })
    }
}

/// Runs a subscription until shutdown: takes the name's lease (standing by while another
/// worker has it), retries failures with backoff, and applies the fault policy to an event
/// the projection keeps failing on.
pub(super) async fn supervise(
    mut delivery: Box<dyn Deliver>,
    pool: PgPool,
    options: SubscriptionOptions,
    mut shutdown: watch::Receiver<bool>,
    status: watch::Sender<SubscriptionStatus>,
) -> Result<(), SubscriptionError> {
    let name = delivery.name();
    let policy = options.fault_policy;
    let mut lease: Option<Lease> = None;
    let mut failures = 0u32;
    // The event the projection failed on last, and how many attempts in a row it failed.
    let mut failing: Option<(uuid::Uuid, u32)> = None;
    loop {
        let attempt = async {
            if delivery.exclusive() && lease.is_none() {
                match Lease::acquire(&pool, name, options.lead_retry, &mut shutdown, &status).await
                {
                    Ok(Some(acquired)) => lease = Some(acquired),
                    Ok(None) => return Ok(()),
                    Err(error) => return Err(SubscriptionError::database(name, error)),
                }
            }
            run(
                &mut *delivery,
                &pool,
                &options,
                &mut shutdown,
                &status,
                &mut failures,
                lease.as_mut(),
            )
            .await
        };
        let error = match attempt.await {
            Ok(()) => {
                if let Some(lease) = lease.take() {
                    lease.release().await;
                }
                return Ok(());
            }
            Err(error) => error,
        };
        if let Some(held) = lease.as_mut()
            && held.confirm(true).await.is_err()
        {
            // The lock's session is gone, and the lock with it: another worker may lead now.
            tracing::warn!(subscription = name, "lost the subscription's lease");
            lease = None;
            status.send_modify(|s| s.leading = false);
        }
        match judge(&mut *delivery, &error, policy, failures, &mut failing) {
            Judgement::Retry => {}
            Judgement::Passed => continue,
            Judgement::Stop => {
                status.send_modify(|s| {
                    s.failures = failures.saturating_add(1);
                    s.last_error = Some(error.clone());
                    s.leading = false;
                });
                if let Some(lease) = lease.take() {
                    lease.release().await;
                }
                return Err(error);
            }
        }
        failures = failures.saturating_add(1);
        status.send_modify(|s| {
            s.failures = failures;
            s.last_error = Some(error.clone());
        });
        if options
            .max_consecutive_failures
            .is_some_and(|max| failures >= max)
        {
            tracing::error!(subscription = name, failures, %error, "subscription stopped: too many consecutive failures");
            status.send_modify(|s| s.leading = false);
            if let Some(lease) = lease.take() {
                lease.release().await;
            }
            return Err(error);
        }
        let delay = backoff(&options, failures);
        tracing::warn!(subscription = name, failures, retry_in = ?delay, %error, "subscription failed; retrying");
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// What the fault policy makes of a failed attempt.
enum Judgement {
    /// Try again after the backoff (an outage, or attempts left).
    Retry,
    /// The policy gave up on the event and skips or parks it: try again at once.
    Passed,
    /// The policy gave up on the event: stop.
    Stop,
}

/// Applies `policy` to `error`; `failing` is the event failed on last and its attempts in a
/// row, `failures` the failed attempts in a row before this one.
fn judge(
    delivery: &mut dyn Deliver,
    error: &SubscriptionError,
    policy: FaultPolicy,
    failures: u32,
    failing: &mut Option<(uuid::Uuid, u32)>,
) -> Judgement {
    let SubscriptionError::Projection(failure) = error else {
        return Judgement::Retry;
    };
    if fault::is_outage(failure) {
        return Judgement::Retry;
    }
    let name = delivery.name();
    let failed = delivery.dead_letters().and_then(|dead| dead.failed.take());
    let id = failed.as_ref().map(|f| f.event_id);
    // A run of failures ended by a delivered batch (`failures` back at 0) starts the count
    // again.
    let attempts = match *failing {
        Some((on, n)) if failures > 0 && (Some(on) == id || id.is_none()) => n + 1,
        _ => 1,
    };
    *failing = Some((id.unwrap_or_default(), attempts));
    if policy.attempts().is_none_or(|max| attempts < max) {
        return Judgement::Retry;
    }
    if let (GiveUp::Skip | GiveUp::Park, Some(failed), Some(dead)) =
        (policy.then(), failed, delivery.dead_letters())
    {
        tracing::error!(subscription = name, %error, attempts, policy = ?policy.then(), stream = %failed.stream_id, "giving up on an event");
        dead.give_up(failed, policy.then());
        *failing = None;
        return Judgement::Passed;
    }
    tracing::error!(subscription = name, attempts, %error, "subscription stopped: its projection keeps failing on an event");
    Judgement::Stop
}

fn backoff(options: &SubscriptionOptions, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    options
        .retry_initial
        .saturating_mul(1 << doublings)
        .min(options.retry_max)
}

/// One attempt: connect the listener, load the checkpoint, then follow until shutdown or the
/// first error.
async fn run(
    delivery: &mut dyn Deliver,
    pool: &PgPool,
    options: &SubscriptionOptions,
    shutdown: &mut watch::Receiver<bool>,
    status: &watch::Sender<SubscriptionStatus>,
    failures: &mut u32,
    mut lease: Option<&mut Lease>,
) -> Result<(), SubscriptionError> {
    let name = delivery.name();
    let types = delivery.event_types();
    let database = |source| SubscriptionError::database(name, source);

    // Listen before the first read, so an append committed in between still wakes us.
    let mut wake_up = if options.notifications {
        Some(Listener::start(pool).await.map_err(database)?)
    } else {
        None
    };
    let mut checkpoint = delivery.resume(pool).await.map_err(database)?;
    let parked = delivery.dead_letters().map_or(0, |d| d.parked_streams());
    status.send_modify(|s| {
        s.checkpoint = checkpoint;
        s.parked_streams = parked;
    });

    let mut pending_delay = PENDING_DELAY_MIN;
    let mut ahead: Option<Batch> = None;
    loop {
        if *shutdown.borrow() {
            // Whatever is in flight is finished, so that the next start need not redo it.
            delivery.settle(pool).await?;
            return Ok(());
        }
        if let Some(lease) = lease.as_deref_mut() {
            lease.confirm(false).await.map_err(database)?;
        }
        delivery.maintain(pool).await?;
        if let Some(dead) = delivery.dead_letters() {
            let parked = dead.parked_streams();
            status.send_modify(|s| s.parked_streams = parked);
        }
        let batch = match ahead.take() {
            Some(batch) => batch,
            None => read::next_batch(pool, name, checkpoint, types, options.batch_size).await?,
        };
        let moved = batch.next != checkpoint;
        if moved {
            let delivered = if batch.full && delivery.reads_ahead() {
                // More is waiting: read it while this batch is delivered. The read is the
                // one the next turn would make, only earlier. A task of its own, so that
                // decoding the rows runs on another worker thread beside the delivery rather
                // than taking turns with it; aborted if the delivery fails.
                let next = AbortOnDrop(tokio::spawn({
                    let (pool, after, limit) = (pool.clone(), batch.next, options.batch_size);
                    async move { read::next_batch(&pool, name, after, types, limit).await }
                }));
                let delivered = delivery.deliver(pool, checkpoint, &batch).await?;
                if delivered.read == batch.next {
                    ahead = Some(next.finish(name).await?);
                }
                delivered
            } else {
                delivery.deliver(pool, checkpoint, &batch).await?
            };
            checkpoint = delivered.read;
            recovered(failures, status, delivered.done);
            if let Some(dead) = delivery.dead_letters() {
                let parked = dead.parked_streams();
                status.send_modify(|s| s.parked_streams = parked);
            }
            pending_delay = PENDING_DELAY_MIN;
            if batch.full || checkpoint != batch.next {
                continue;
            }
        }
        // Caught up: deliveries still in flight are finished before waiting.
        if let Some(done) = delivery.settle(pool).await? {
            status.send_modify(|s| s.checkpoint = done);
        }
        if !moved && *failures > 0 {
            // Nothing to deliver, and the read worked: the outage is over. Counting on until
            // the next event would add up separate outages of a quiet store. (A batch that
            // fails to deliver is not a recovery: a failing handler keeps counting.)
            recovered(failures, status, checkpoint);
        }
        // Events committed behind a still-open older transaction settle when it
        // ends, which nobody announces: look again soon, backing off while it stays open.
        let delay = if batch.pending {
            let delay = pending_delay;
            pending_delay = (pending_delay * 2).min(options.poll_interval.min(PENDING_DELAY_MAX));
            delay
        } else {
            options.poll_interval
        };
        let notified = async {
            match wake_up.as_mut() {
                Some(listener) => listener.woken().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            woken = notified => woken.map_err(database)?,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Ends a run of failures: the attempt read (and delivered) successfully up to `checkpoint`.
fn recovered(
    failures: &mut u32,
    status: &watch::Sender<SubscriptionStatus>,
    checkpoint: Checkpoint,
) {
    *failures = 0;
    status.send_modify(|s| {
        s.checkpoint = checkpoint;
        s.failures = 0;
        s.last_error = None;
    });
}

/// A spawned read that is aborted when dropped unfinished.
struct AbortOnDrop(JoinHandle<Result<Batch, SubscriptionError>>);

impl AbortOnDrop {
    async fn finish(mut self, name: &'static str) -> Result<Batch, SubscriptionError> {
        match (&mut self.0).await {
            Ok(read) => read,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only a runtime shutting down cancels it: this guard alone aborts it.
            Err(error) => Err(SubscriptionError::database(
                name,
                sqlx::Error::Io(std::io::Error::other(error.to_string())),
            )),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const PENDING_DELAY_MIN: Duration = Duration::from_millis(5);
const PENDING_DELAY_MAX: Duration = Duration::from_secs(1);

/// `LISTEN` on the events channel in a task of its own, so that waiting for a notification
/// never cancels a half-read message; the task turns notifications into wake-ups.
pub(crate) struct Listener {
    wake: Arc<Notify>,
    failed: oneshot::Receiver<sqlx::Error>,
    task: JoinHandle<()>,
}

impl Listener {
    pub(crate) async fn start(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let wake = Arc::new(Notify::new());
        let (report, failed) = oneshot::channel();
        let task = tokio::spawn({
            let wake = Arc::clone(&wake);
            async move {
                loop {
                    match listener.try_recv().await {
                        // `None`: the connection dropped and is being re-established;
                        // notifications may have been lost meanwhile, so read anyway.
                        Ok(_) => wake.notify_one(),
                        Err(error) => {
                            let _ = report.send(error);
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self { wake, failed, task })
    }

    /// Resolves on the next notification (or one that arrived since the last call), or with
    /// the error that ended the listener.
    pub(crate) async fn woken(&mut self) -> Result<(), sqlx::Error> {
        tokio::select! {
            () = self.wake.notified() => Ok(()),
            failed = &mut self.failed => Err(failed.unwrap_or(sqlx::Error::WorkerCrashed)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

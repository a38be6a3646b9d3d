//! Forwarding to a system that confirms each event later: a bounded window of deliveries in
//! flight, the checkpoint stored only behind confirmed events.

use std::collections::VecDeque;
use std::sync::Arc;

use cqrs_core::trace_context::event_span;
use cqrs_core::{BoxFuture, RecordedEvent};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

use super::checkpoint::{self, Checkpoint};
use super::read::Batch;
use super::run::{Deliver, Delivered};
use super::{EventTypes, SubscriptionError};

/// An error of a [`Forwarder`], on sending or in a confirmation.
pub type ForwardError = Box<dyn std::error::Error + Send + Sync>;

/// The receiving system's confirmation of one forwarded event: resolves once the event is
/// safely stored there (a broker's acknowledgement), or with why it is not.
pub type Confirmation = BoxFuture<'static, Result<(), ForwardError>>;

/// Hands events on to another system that confirms each of them later, such as a message
/// broker acknowledging a publish. Started with [`Subscription::acknowledged`](super::Subscription::acknowledged).
///
/// [`forward`](Self::forward) is called once per event, in the store's global order, and
/// returns as soon as the event is on its way; the [`Confirmation`] it returns resolves when
/// the receiver has it. The subscription keeps a bounded number of confirmations in flight,
/// awaits them in order, and stores its checkpoint only behind events whose confirmation, and
/// every earlier one's, has arrived. After a crash the events after the stored checkpoint are
/// forwarded again: delivery is at least once, and
/// [`RecordedEvent::event_id`] is the key by which the receiver drops a repeat.
///
/// Events are forwarded in order and one at a time; only the confirmations overlap. A
/// forwarder that sends over one ordered connection therefore hands the receiver each stream's
/// events in version order.
pub trait Forwarder: Send + 'static {
    /// The subscription's name: the key of its stored checkpoint.
    fn name(&self) -> &'static str;

    /// Which events to forward.
    fn event_types(&self) -> EventTypes;

    /// Sends `event` on; returns once it is sent, with the confirmation to await.
    ///
    /// An error here, or in a confirmation, ends the attempt: the checkpoint stays behind the
    /// first event not confirmed, and the subscription retries from there after its backoff.
    fn forward<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Confirmation, ForwardError>>;
}

/// The delivery behind [`Subscription::acknowledged`](super::Subscription::acknowledged).
///
/// Why the stored checkpoint never passes an event that is not confirmed:
/// - `in_flight` holds the confirmations in forwarding order, each with its event's
///   checkpoint, and a batch's end marker after its events; later batches' entries come after
///   earlier ones, so the checkpoints in it only grow.
/// - `confirmed` moves only when the front entry is popped after its confirmation resolved
///   `Ok` (or is a marker), so every entry before it was popped the same way: a later
///   confirmation arriving first is not looked at until the earlier ones have.
/// - Entries leave otherwise only by `clear`, on an error that ends the attempt, and nothing
///   is forwarded again before `resume` sets `confirmed` back to the stored checkpoint.
/// - `stored` is only ever written from `confirmed`, and the update never moves it back, so
///   stores that finish late or out of turn cannot pass it either.
pub(super) struct Acknowledged<F> {
    forwarder: F,
    max_in_flight: usize,
    /// Confirmations not yet awaited, in order, each with the checkpoint it completes. An
    /// entry without a confirmation marks a point reached once everything before it is.
    in_flight: VecDeque<(Checkpoint, Option<(Uuid, Confirmation)>)>,
    /// Every event at or before this point is confirmed.
    confirmed: Checkpoint,
    /// The stored checkpoint.
    stored: Checkpoint,
    /// A store of a confirmed checkpoint still running, beside the forwarding of the next
    /// batch: what it stores once it has.
    storing: Option<(Checkpoint, JoinHandle<Result<(), sqlx::Error>>)>,
}

impl<F> Acknowledged<F> {
    pub(super) fn new(forwarder: F, max_in_flight: usize) -> Self {
        Self {
            forwarder,
            max_in_flight: max_in_flight.max(1),
            in_flight: VecDeque::new(),
            confirmed: Checkpoint::START,
            stored: Checkpoint::START,
            storing: None,
        }
    }
}

impl<F: Forwarder> Acknowledged<F> {
    fn failed(&self, event_id: Uuid, source: ForwardError) -> SubscriptionError {
        SubscriptionError::Forward {
            name: self.forwarder.name(),
            event_id,
            source: Arc::from(source),
        }
    }

    /// Awaits the oldest confirmation in flight.
    async fn confirm_oldest(&mut self) -> Result<(), SubscriptionError> {
        let Some((at, confirmation)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        if let Some((event_id, confirmation)) = confirmation {
            confirmation.await.map_err(|e| self.failed(event_id, e))?;
        }
        self.confirmed = at;
        Ok(())
    }

    /// Takes in the confirmations that have already arrived, without waiting.
    fn confirm_arrived(&mut self) -> Result<(), SubscriptionError> {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        while let Some((at, confirmation)) = self.in_flight.front_mut() {
            if let Some((event_id, pending)) = confirmation {
                match pending.as_mut().poll(&mut cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Err(e)) => {
                        let event_id = *event_id;
                        self.in_flight.clear();
                        return Err(self.failed(event_id, e));
                    }
                    Poll::Ready(Ok(())) => {}
                }
            }
            self.confirmed = *at;
            self.in_flight.pop_front();
        }
        Ok(())
    }

    /// Waits for the store running in the background, if any; on success its checkpoint is
    /// the stored one.
    async fn stored_in_background(&mut self) -> Result<(), SubscriptionError> {
        let Some((at, task)) = self.storing.take() else {
            return Ok(());
        };
        let name = self.forwarder.name();
        match task.await {
            Ok(Ok(())) => {
                self.stored = self.stored.max(at);
                Ok(())
            }
            Ok(Err(source)) => Err(SubscriptionError::database(name, source)),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(SubscriptionError::database(
                name,
                sqlx::Error::Io(std::io::Error::other(error.to_string())),
            )),
        }
    }

    /// Stores the confirmed checkpoint, if it moved, in a task beside the forwarding: a
    /// batch's end does not wait for the database. One store runs at a time; its outcome
    /// (an error ends the attempt) is taken in at the next batch's end. The stored checkpoint
    /// only ever trails the confirmed one, and the update never moves it back, so storing it
    /// later weakens nothing: a crash meanwhile forwards a few more events again.
    async fn store_beside(&mut self, pool: &PgPool) -> Result<(), SubscriptionError> {
        if self
            .storing
            .as_ref()
            .is_some_and(|(_, task)| task.is_finished())
        {
            self.stored_in_background().await?;
        }
        if self.storing.is_none() && self.confirmed > self.stored {
            let (pool, name, at) = (pool.clone(), self.forwarder.name(), self.confirmed);
            let task = tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                checkpoint::advance(&mut conn, name, at).await
            });
            self.storing = Some((at, task));
        }
        Ok(())
    }

    /// Stores the confirmed checkpoint if it moved, after any store running beside.
    async fn store(&mut self, pool: &PgPool) -> Result<(), SubscriptionError> {
        self.stored_in_background().await?;
        if self.confirmed > self.stored {
            let name = self.forwarder.name();
            let database = |source| SubscriptionError::database(name, source);
            let mut conn = pool.acquire().await.map_err(database)?;
            checkpoint::advance(&mut conn, name, self.confirmed)
                .await
                .map_err(database)?;
            self.stored = self.confirmed;
        }
        Ok(())
    }

    async fn forward_batch(
        &mut self,
        pool: &PgPool,
        batch: &Batch,
    ) -> Result<Delivered, SubscriptionError> {
        let name = self.forwarder.name();
        for (at, event) in &batch.events {
            while self.in_flight.len() >= self.max_in_flight {
                self.confirm_oldest().await?;
            }
            let confirmation = self
                .forwarder
                .forward(event)
                .instrument(event_span(name, event))
                .await
                .map_err(|e| self.failed(event.event_id, e))?;
            self.in_flight
                .push_back((*at, Some((event.event_id, confirmation))));
        }
        // Past the batch's last event (events of other types, for a filtered forwarder) once
        // everything before is confirmed.
        self.in_flight.push_back((batch.next, None));
        self.confirm_arrived()?;
        self.store_beside(pool).await?;
        Ok(Delivered {
            read: batch.next,
            done: self.stored,
        })
    }

    async fn settle_all(&mut self, pool: &PgPool) -> Result<Checkpoint, SubscriptionError> {
        while !self.in_flight.is_empty() {
            self.confirm_oldest().await?;
        }
        self.store(pool).await?;
        Ok(self.confirmed)
    }

    /// On a failure, keep what was confirmed: the retry starts at the first event that was not.
    async fn keep_confirmed(&mut self, pool: &PgPool) {
        self.in_flight.clear();
        if let Err(error) = self.stored_in_background().await {
            tracing::warn!(subscription = self.forwarder.name(), %error, "a checkpoint store beside the forwarding failed");
        }
        if let Err(error) = self.store(pool).await {
            tracing::warn!(subscription = self.forwarder.name(), %error, "could not store the confirmed checkpoint after a failure");
        }
    }
}

impl<F: Forwarder> Deliver for Acknowledged<F> {
    fn name(&self) -> &'static str {
        self.forwarder.name()
    }

    fn event_types(&self) -> EventTypes {
        self.forwarder.event_types()
    }

    /// The next read always starts at the batch's end, so it can run beside the delivery.
    fn reads_ahead(&self) -> bool {
        true
    }

    fn resume<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<Checkpoint, sqlx::Error>> {
        Box::pin(async move {
            // What a failed attempt left in flight is forwarded again from the stored point;
            // a store it left running finishes first, so that the point read is its latest.
            self.in_flight.clear();
            if let Some((_, task)) = self.storing.take() {
                let _ = task.await;
            }
            let stored = checkpoint::ensure(pool, self.forwarder.name()).await?;
            self.confirmed = stored;
            self.stored = stored;
            Ok(stored)
        })
    }

    fn settle<'a>(
        &'a mut self,
        pool: &'a PgPool,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, SubscriptionError>> {
        Box::pin(async move {
            match self.settle_all(pool).await {
                Ok(done) => Ok(Some(done)),
                Err(error) => {
                    self.keep_confirmed(pool).await;
                    Err(error)
                }
            }
        })
    }

    fn deliver<'a>(
        &'a mut self,
        pool: &'a PgPool,
        _from: Checkpoint,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivered, SubscriptionError>> {
        Box::pin(async move {
            match self.forward_batch(pool, batch).await {
                Ok(delivered) => Ok(delivered),
                Err(error) => {
                    self.keep_confirmed(pool).await;
                    Err(error)
                }
            }
        })
    }
}

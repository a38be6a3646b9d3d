use std::time::Instant;

use tracing::Instrument;

use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::trace_context::{self, METADATA_KEY};
use crate::{Command, CommandContext, Query, QueryError, TraceParent};

/// A `tracing` span per command or query, and W3C trace context propagation.
///
/// Commands get a `command` span with `command`, `aggregate_id`, `correlation_id`,
/// `command_id`, `trace_id` and `span_id`; the outcome (`ok`, `rejected`, `conflict`, ...)
/// and `duration_us` are recorded on it when the command ends. Queries get a `query` span
/// with `query`, `outcome` and `duration_us`.
///
/// The trace: the caller's `traceparent` is read from its metadata
/// ([`Metadata::traceparent`](crate::Metadata::traceparent)); without one, or with a
/// malformed one (logged as a warning, never failing the command), the command starts a new
/// trace. The command's own traceparent — the caller's trace id, the command's span id as
/// parent id — replaces the caller's in the context metadata, so every event the command
/// records carries it and projections continue the trace from there
/// ([`trace_context`](crate::trace_context)).
///
/// With feature `otel` and a `tracing-opentelemetry` layer installed, the exported `command`
/// span's parent is the caller's traceparent and the traceparent recorded on the events is
/// the exported span's own, so the spans of the projections that handle them are its
/// children ([OpenTelemetry export](crate::trace_context#opentelemetry-export-feature-otel)).
///
/// ```
/// use cqrs_core::middleware::Tracing;
/// use cqrs_core::prelude::*;
/// use cqrs_core::{EventStore, TraceParent};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Opened;
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum AccountEvent {
///     #[event(name = "account.opened")]
///     Opened(Opened),
/// }
///
/// #[derive(Debug, Deserialize, Command)]
/// #[command(aggregate = Account, id = account_id)]
/// pub struct Open { pub account_id: u32 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("never")]
/// pub struct Never;
///
/// #[derive(Debug, Default)]
/// pub struct Account;
///
/// #[aggregate(event = AccountEvent, error = Never)]
/// impl Account {
///     #[command_handler]
///     fn open(&self, _: &Open) -> Result<Opened, Never> {
///         Ok(Opened)
///     }
///
///     #[event_handler]
///     fn on_opened(&mut self, _: &Opened) {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = InMemoryEventStore::new();
/// let bus = CommandBus::builder(store.clone())
///     .aggregate::<Account>(())
///     .middleware(Tracing)
///     .build();
///
/// let caller: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
///     .parse()
///     .unwrap();
/// bus.execute_with(Open { account_id: 1 }, Metadata::default().with_traceparent(caller))
///     .await
///     .unwrap();
///
/// let events = store.load_stream("Account-1", 1).await.unwrap();
/// let recorded = events[0].traceparent().unwrap();
/// assert_eq!(recorded.trace_id(), caller.trace_id());
/// assert_ne!(recorded.parent_id(), caller.parent_id());
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

impl CommandMiddleware for Tracing {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        mut ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        let caller = ctx.metadata.try_traceparent().unwrap_or_else(|error| {
            tracing::warn!(
                command = C::NAME,
                %error,
                "malformed traceparent in the command metadata; starting a new trace"
            );
            None
        });
        let span = tracing::info_span!(
            "command",
            command = C::NAME,
            aggregate_id = %ctx.aggregate_id,
            correlation_id = %ctx.correlation_id(),
            command_id = %ctx.command_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        // With OpenTelemetry, the exported span's ids are the ones handed on.
        let own = trace_context::adopt(&span, caller)
            .unwrap_or_else(|| caller.map_or_else(TraceParent::new_root, |caller| caller.child()));
        if !span.is_disabled() {
            span.record("trace_id", tracing::field::display(own.trace_id()));
            span.record("span_id", tracing::field::display(own.parent_id()));
        }
        let own = serde_json::Value::String(own.to_string());
        match ctx.metadata.extra.get_mut(METADATA_KEY) {
            // The caller's, replaced in place: no new key to allocate.
            Some(value) => *value = own,
            None => {
                ctx.metadata.extra.insert(METADATA_KEY.to_owned(), own);
            }
        }
        // Only a span someone listens to records the duration: no clock read otherwise.
        let started = (!span.is_disabled()).then(Instant::now);
        let result = next.run(command, ctx).instrument(span.clone()).await;
        if let Some(started) = started {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(crate::CommandError::Rejected(_)) => "rejected",
                Err(crate::CommandError::Invalid(_)) => "invalid",
                Err(crate::CommandError::Conflict { .. }) => "conflict",
                Err(crate::CommandError::UniqueKeyTaken { .. }) => "key_taken",
                Err(crate::CommandError::Timeout { .. }) => "timeout",
                Err(crate::CommandError::Refused { .. }) => "refused",
                Err(_) => "error",
            };
            span.record("outcome", outcome);
            span.record(
                "duration_us",
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
        }
        span.in_scope(|| match &result {
            Ok(committed) => tracing::debug!(
                events = committed.events,
                stream_version = committed.stream_version,
                "command committed"
            ),
            Err(error) => tracing::info!(%error, "command failed"),
        });
        result
    }
}

impl QueryMiddleware for Tracing {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        let span = tracing::info_span!(
            "query",
            query = Q::NAME,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = (!span.is_disabled()).then(Instant::now);
        let result = next.run(query).instrument(span.clone()).await;
        if let Some(started) = started {
            span.record("outcome", if result.is_ok() { "ok" } else { "error" });
            span.record(
                "duration_us",
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
        }
        result
    }
}

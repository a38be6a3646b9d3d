use std::time::Instant;

use tracing::Instrument;

use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::{Command, CommandContext, Query, QueryError};

/// A `tracing` span per command or query.
///
/// Commands get a `command` span with `command`, `aggregate_id`, `correlation_id` and
/// `command_id`; the outcome (`ok`, `rejected`, `conflict`, ...) and `duration_us` are
/// recorded on it when the command ends. Queries get a `query` span with `query`, `outcome`
/// and `duration_us`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

impl CommandMiddleware for Tracing {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        let span = tracing::info_span!(
            "command",
            command = C::NAME,
            aggregate_id = %ctx.aggregate_id,
            correlation_id = %ctx.correlation_id(),
            command_id = %ctx.command_id,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = next.run(command, ctx).instrument(span.clone()).await;
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
        let started = Instant::now();
        let result = next.run(query).instrument(span.clone()).await;
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        span.record(
            "duration_us",
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        result
    }
}

use std::time::Duration;

use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::{Command, CommandContext, CommandError, Query, QueryError};

/// Fails a command or query that takes longer than a limit.
///
/// A command that times out may still commit if the store had already received the append:
/// the caller learns "unknown outcome", not "not written". Use the command id (in the
/// events' causation id) to find out.
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// A timeout of `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl CommandMiddleware for Timeout {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        tokio::time::timeout(self.limit, next.run(command, ctx))
            .await
            .unwrap_or(Err(CommandError::Timeout {
                command: C::NAME,
                after: self.limit,
                idempotency_key: None,
            }))
    }
}

impl QueryMiddleware for Timeout {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        tokio::time::timeout(self.limit, next.run(query))
            .await
            .unwrap_or(Err(QueryError::Timeout {
                query: Q::NAME,
                after: self.limit,
            }))
    }
}

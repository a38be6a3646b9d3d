use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::{Command, CommandContext, CommandError, Query, QueryError};

/// Rejects commands and queries whose [`Command::validate`] / [`Query::validate`] fails,
/// before anything is loaded or written.
///
/// `#[command(validate)]` makes `validate` run the type's `validator::Validate` impl
/// (feature `validator`), so rules are written with the `validator` crate's attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validation;

impl CommandMiddleware for Validation {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        command.validate().map_err(CommandError::Invalid)?;
        next.run(command, ctx).await
    }
}

impl QueryMiddleware for Validation {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        query.validate().map_err(QueryError::Invalid)?;
        next.run(query).await
    }
}

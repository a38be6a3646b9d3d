use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext};
use crate::{Command, CommandContext, CommandError, Query, QueryError};

/// Chooses where in the middleware chain commands and queries are validated: an invalid one
/// ([`Command::validate`] / [`Query::validate`] fails) is refused here, before the layers
/// after this one run and before anything is loaded or written.
///
/// Validation does not depend on this middleware: a bus without it validates every command
/// and query at the end of its chain, right before the handler. With it, the bus does not
/// validate a second time. Put it first to refuse invalid input before tracing or rate
/// limiting counts it; leave it out and the other layers see invalid input too.
///
/// `#[command(validate)]` makes `validate` run the type's `validator::Validate` impl
/// (feature `validator`), so rules are written with the `validator` crate's attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validation;

impl CommandMiddleware for Validation {
    const VALIDATES: bool = true;

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
    const VALIDATES: bool = true;

    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        query.validate().map_err(QueryError::Invalid)?;
        next.run(query).await
    }
}

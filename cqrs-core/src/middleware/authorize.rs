//! Authorization: a user-supplied policy decides, per command or query and acting user,
//! before anything is loaded.

use std::any::type_name;
use std::borrow::Cow;
use std::fmt;

use super::{CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext, current_caller};
use crate::{Command, CommandContext, CommandError, Forbidden, Metadata, Query, QueryError};

/// Whether a request is a command or a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A command.
    Command,
    /// A query.
    Query,
}

/// What an authorization [`Policy`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Command or query.
    pub kind: RequestKind,
    /// The command's or query's stable name (`"account.close"`).
    pub name: &'static str,
    /// The Rust type's name, for policies written against types rather than wire names.
    pub type_name: &'static str,
    /// The target aggregate's id, for a command.
    pub aggregate_id: Option<&'a str>,
    /// The caller's metadata: the command's, or for a query the enclosing
    /// [`as_caller`](super::as_caller)'s; `None` for an anonymous query.
    pub metadata: Option<&'a Metadata>,
}

impl<'a> Request<'a> {
    /// The acting user ([`Metadata::user_id`]), when the caller named one.
    pub fn user(&self) -> Option<&'a str> {
        self.metadata.and_then(|m| m.user_id.as_deref())
    }

    /// The caller's roles: the strings of `Metadata::extra["roles"]` (an array of strings, or
    /// one string).
    pub fn roles(&self) -> impl Iterator<Item = &'a str> + 'a {
        let roles = self.metadata.and_then(|m| m.extra.get("roles"));
        let (many, one) = match roles {
            Some(serde_json::Value::Array(items)) => (Some(items.iter()), None),
            Some(serde_json::Value::String(role)) => (None, Some(role.as_str())),
            _ => (None, None),
        };
        many.into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .chain(one)
    }

    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles().any(|r| r == role)
    }
}

/// Decides whether a caller may run a command or query; `Err` carries the reason, reported
/// in [`Forbidden::reason`].
///
/// Any `Fn(&Request) -> Result<(), Cow<'static, str>>` is a policy. A policy is synchronous
/// and runs on every command: look permissions up before the command reaches the bus (where
/// the request is authenticated) and pass them in the metadata, as roles in
/// `Metadata::extra["roles"]`.
pub trait Policy: Send + Sync + 'static {
    /// `Ok` to let the request through, `Err(reason)` to refuse it.
    fn authorize(&self, request: &Request<'_>) -> Result<(), Cow<'static, str>>;
}

impl<F> Policy for F
where
    F: Fn(&Request<'_>) -> Result<(), Cow<'static, str>> + Send + Sync + 'static,
{
    fn authorize(&self, request: &Request<'_>) -> Result<(), Cow<'static, str>> {
        self(request)
    }
}

/// Asks a [`Policy`] about every command and query, and refuses denied ones with
/// [`Forbidden`] (code `forbidden`) before the aggregate is loaded or the handler runs.
///
/// Roles are read from `Metadata::extra["roles"]` rather than a field of their own:
/// [`Metadata`] is recorded on every event, and which roles exist is the application's
/// business. (Being in `extra`, they are recorded on the command's events too, which
/// serves as an audit trail.) Queries carry no metadata: run them inside
/// [`as_caller`](super::as_caller) to name the caller.
///
/// ```
/// use std::borrow::Cow;
/// use cqrs_core::middleware::{Authorize, Request, RequestKind};
///
/// let policy = |request: &Request<'_>| -> Result<(), Cow<'static, str>> {
///     match (request.kind, request.name) {
///         (RequestKind::Query, _) => Ok(()),
///         (_, "account.close") if !request.has_role("admin") => {
///             Err("closing an account takes the `admin` role".into())
///         }
///         _ if request.user().is_none() => Err("sign in first".into()),
///         _ => Ok(()),
///     }
/// };
/// let authorize = Authorize::new(policy);
/// // CommandBus::builder(store).aggregate::<Account>(()).middleware(authorize).build()
/// # let _ = authorize;
/// ```
#[derive(Clone, Default)]
pub struct Authorize<P> {
    policy: P,
}

impl<P: Policy> Authorize<P> {
    /// Authorization by `policy`.
    pub fn new(policy: P) -> Self {
        Self { policy }
    }

    fn check(&self, request: &Request<'_>) -> Result<(), Forbidden> {
        self.policy.authorize(request).map_err(|reason| {
            tracing::info!(
                name = request.name,
                user = request.user(),
                %reason,
                "forbidden"
            );
            Forbidden {
                name: request.name,
                user: request.user().map(str::to_owned),
                reason,
            }
        })
    }
}

impl<P> fmt::Debug for Authorize<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorize").finish_non_exhaustive()
    }
}

impl<P: Policy> CommandMiddleware for Authorize<P> {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        self.check(&Request {
            kind: RequestKind::Command,
            name: C::NAME,
            type_name: type_name::<C>(),
            aggregate_id: Some(&ctx.aggregate_id),
            metadata: Some(&ctx.metadata),
        })
        .map_err(CommandError::Forbidden)?;
        next.run(command, ctx).await
    }
}

impl<P: Policy> QueryMiddleware for Authorize<P> {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        current_caller(|metadata| {
            self.check(&Request {
                kind: RequestKind::Query,
                name: Q::NAME,
                type_name: type_name::<Q>(),
                aggregate_id: None,
                metadata,
            })
        })
        .map_err(QueryError::Forbidden)?;
        next.run(query).await
    }
}

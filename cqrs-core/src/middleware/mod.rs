//! Middleware around the command and query buses.
//!
//! A middleware is a value whose generic `handle` method sees every command (or query) with its
//! concrete type, and calls `next` to continue. The bus stores its middleware as a type-level
//! list, so a chain is a sequence of direct, inlinable calls, and a bus without middleware runs
//! the handler with no indirection at all.
//!
//! Writing one takes a struct and an impl:
//!
//! ```
//! use cqrs_core::middleware::{CommandMiddleware, CommandResult, Next};
//! use cqrs_core::{Command, CommandContext};
//!
//! /// Counts commands.
//! #[derive(Default)]
//! struct Count(std::sync::atomic::AtomicU64);
//!
//! impl CommandMiddleware for Count {
//!     async fn handle<C: Command, N: Next<C>>(
//!         &self,
//!         command: C,
//!         ctx: CommandContext,
//!         next: N,
//!     ) -> CommandResult<C> {
//!         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         next.run(command, ctx).await
//!     }
//! }
//! ```
//!
//! # Our middleware or a tower layer?
//!
//! With feature `tower`, the JSON dispatchers and `CommandService` / `QueryService`
//! (typed) implement `tower::Service`, so tower layers wrap them and axum mounts them.
//!
//! A tower layer sees a request and a response; our middleware sees the typed command or
//! query with its name, its aggregate and its caller, and fails with a typed error whose
//! stable code is the same on the typed and the JSON path. Layers wrap a whole HTTP request
//! (body parsing included); middleware also run where there is no HTTP (a message consumer,
//! a scheduled job, a test).
//!
//! | ours | tower equivalent | prefer ours for | prefer tower for |
//! |---|---|---|---|
//! | [`Tracing`] | `tower_http::trace::TraceLayer` | spans with command name, aggregate, correlation and command ids, outcome code | the HTTP request's span (method, route, status) |
//! | [`Timeout`] | `tower::timeout::TimeoutLayer` | a limit per command on every path, typed `timeout` | the whole HTTP request, body included |
//! | [`RateLimit`] | `tower::limit::RateLimitLayer` (global, makes callers wait) | per user, per tenant, per command name; refuses at once with `rate_limited` and a retry-after | smoothing the traffic of one HTTP route |
//! | [`ConcurrencyLimit`] | `tower::limit::ConcurrencyLimitLayer`, `tower::load_shed` | per user or per name, refusal typed `concurrency_limited` | global back-pressure of a server |
//! | [`CircuitBreaker`] | none in tower | failures classified as infrastructure vs domain | — |
//! | [`Authorize`] | `tower_http::auth` | decisions by command or query name, aggregate and roles, typed `forbidden` | authenticating the request (tokens, sessions) |
//! | `Metrics` (feature `metrics`) | `tower_http` metrics/trace layers | counts per command or query name and outcome code | counts per route and HTTP status |
//! | [`Retry`] (a bus option) | `tower::retry::RetryLayer` (a cloneable request and a policy) | conflicts (the aggregate reloaded and the handler run again, no `Clone` needed), transient store failures, lost connections only for commands with an idempotency key | retrying an outgoing call a handler makes |
//! | [`Validation`] | none | — | — |
//! | [`QueryCache`] | none | answers invalidated by the read model's events | — (HTTP caching headers) |
//!
//! The usual arrangement: authenticate, trace and shed load with tower layers at the HTTP
//! edge; authorize, limit per caller, break circuits and measure per command with ours.
//! With feature `otel`, an HTTP layer's OpenTelemetry span and ours join one trace: the
//! command span is a child of the current span, or of the caller's `traceparent` when the
//! metadata carries one ([`trace_context`](crate::trace_context)).
//!
//! # Cost
//!
//! Each middleware that does no I/O is meant to add at most 100 ns per command; the
//! `dispatch` benchmark of this crate measures each one, and all of them together, against
//! the same bus without middleware in the same run (`BENCHMARKS.md` has the figures).

mod retry;
mod timeout;
mod trace;
mod validate;

mod authorize;
mod cache;
mod caller;
mod circuit;
mod clock;
mod limit;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "tower")]
mod tower;

use std::future::Future;

pub use retry::Retry;
pub use timeout::Timeout;
pub use trace::Tracing;
pub use validate::Validation;

pub use authorize::{Authorize, Policy, Request, RequestKind};
pub use cache::QueryCache;
pub use caller::{as_caller, current_caller};
pub use circuit::{CircuitBreaker, CircuitError, CircuitState, CircuitStats, TripsCircuit};
pub use clock::{Clock, ManualClock, SystemClock};
pub use limit::{ConcurrencyLimit, Permit, Quota, RateLimit, Scope};
#[cfg(feature = "metrics")]
pub use metrics::{EventMetrics, Metrics};
#[cfg(feature = "tower")]
pub use tower::{CommandService, JsonRequest, QueryService};

use crate::{Aggregate, Command, CommandContext, CommandError, Committed, Query, QueryError};

/// What executing command `C` returns.
pub type CommandResult<C> =
    Result<Committed, CommandError<<<C as Command>::Aggregate as Aggregate>::Error>>;

/// The rest of the command pipeline after a middleware.
pub trait Next<C: Command>: Send {
    /// Continues with the next middleware, or the handler.
    fn run(self, command: C, ctx: CommandContext) -> impl Future<Output = CommandResult<C>> + Send;
}

/// A layer around every command.
pub trait CommandMiddleware: Send + Sync + 'static {
    /// Whether `handle` runs [`Command::validate`] and refuses an invalid command before
    /// calling `next`, as [`Validation`] does.
    ///
    /// The bus validates every command at the end of the chain unless a middleware of the
    /// chain declares that it does, so validation is never skipped for want of a middleware
    /// and never runs twice. Set it only in a middleware that validates every command.
    const VALIDATES: bool = false;

    /// Handles one command, usually by calling `next.run(command, ctx)`.
    fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> impl Future<Output = CommandResult<C>> + Send;
}

/// A type-level list of command middleware; `()` is the empty chain.
pub trait CommandChain: Send + Sync + 'static {
    /// Whether a middleware of the chain validates commands
    /// ([`CommandMiddleware::VALIDATES`]); when none does, the bus validates them last.
    const VALIDATES: bool = false;

    /// Runs the chain, ending in `terminal`.
    fn run<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        terminal: N,
    ) -> impl Future<Output = CommandResult<C>> + Send;
}

impl CommandChain for () {
    fn run<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        terminal: N,
    ) -> impl Future<Output = CommandResult<C>> + Send {
        terminal.run(command, ctx)
    }
}

impl<H: CommandMiddleware, T: CommandChain> CommandChain for (H, T) {
    const VALIDATES: bool = H::VALIDATES || T::VALIDATES;

    fn run<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        terminal: N,
    ) -> impl Future<Output = CommandResult<C>> + Send {
        self.0.handle(
            command,
            ctx,
            Link {
                rest: &self.1,
                terminal,
            },
        )
    }
}

/// One step down a middleware chain.
pub struct Link<'a, T, N> {
    rest: &'a T,
    terminal: N,
}

impl<C: Command, T: CommandChain, N: Next<C>> Next<C> for Link<'_, T, N> {
    fn run(self, command: C, ctx: CommandContext) -> impl Future<Output = CommandResult<C>> + Send {
        self.rest.run(command, ctx, self.terminal)
    }
}

/// The rest of the query pipeline after a middleware. `E` is the handler's error type.
pub trait QueryNext<Q: Query, E>: Send {
    /// Continues with the next middleware, or the handler.
    fn run(self, query: Q) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send;
}

/// A layer around every query.
pub trait QueryMiddleware: Send + Sync + 'static {
    /// Whether `handle_query` runs [`Query::validate`] and refuses an invalid query before
    /// calling `next`, as [`Validation`] does; see [`CommandMiddleware::VALIDATES`].
    const VALIDATES: bool = false;

    /// Handles one query, usually by calling `next.run(query)`.
    fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send;
}

/// A type-level list of query middleware; `()` is the empty chain.
pub trait QueryChain: Send + Sync + 'static {
    /// Whether a middleware of the chain validates queries ([`QueryMiddleware::VALIDATES`]);
    /// when none does, the bus validates them last.
    const VALIDATES: bool = false;

    /// Runs the chain, ending in `terminal`.
    fn run<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        terminal: N,
    ) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send;
}

impl QueryChain for () {
    fn run<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        terminal: N,
    ) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send {
        terminal.run(query)
    }
}

impl<H: QueryMiddleware, T: QueryChain> QueryChain for (H, T) {
    const VALIDATES: bool = H::VALIDATES || T::VALIDATES;

    fn run<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        terminal: N,
    ) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send {
        self.0.handle_query(
            query,
            Link {
                rest: &self.1,
                terminal,
            },
        )
    }
}

impl<Q: Query, E: Send, T: QueryChain, N: QueryNext<Q, E>> QueryNext<Q, E> for Link<'_, T, N> {
    fn run(self, query: Q) -> impl Future<Output = Result<Q::Output, QueryError<E>>> + Send {
        self.rest.run(query, self.terminal)
    }
}

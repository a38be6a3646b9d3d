//! Read your writes through the query bus: a query that waits for a projection first.

use std::time::Duration;

use cqrs_core::{
    AnsweredQueries, DispatchQueries, GlobalPosition, HandlesQuery, Query, ValidationErrors,
};

use super::{Checkpoints, Progress, WaitError};

/// A query to answer only once the projection behind it has processed `position`: the
/// position a command committed at ([`Committed::position`](cqrs_core::Committed::position)).
///
/// Answered by a [`ReadYourWrites`] handler on the query bus. It has the inner query's
/// name, output and validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterPosition<Q> {
    /// The global position whose effects the answer must include.
    pub position: GlobalPosition,
    /// The query itself.
    pub query: Q,
}

impl<Q> AfterPosition<Q> {
    /// `query`, to be answered once `position` is processed.
    pub fn new(position: GlobalPosition, query: Q) -> Self {
        Self { position, query }
    }
}

impl<Q: Query> Query for AfterPosition<Q> {
    const NAME: &'static str = Q::NAME;
    type Output = Q::Output;

    fn validate(&self) -> Result<(), ValidationErrors> {
        self.query.validate()
    }
}

/// What a [`ReadYourWrites`] handler waits for before it answers: a value, so that one
/// handler type (and so one query bus type) serves every way of feeding the read model.
#[derive(Debug, Clone)]
pub enum Consistency {
    /// Nothing: answer at once. Right for a read model fed in process by the command bus
    /// ([`CommandBusBuilder::subscribe`](cqrs_core::CommandBusBuilder::subscribe)), which
    /// applies a command's events before `execute` returns, for commands sent through that
    /// bus (the in-memory store's set-up).
    Immediate,
    /// The progress of a subscription running in this process (no polling).
    Progress(Progress),
    /// The stored checkpoint of subscription `name`, which may run in another process
    /// (polls the checkpoint table).
    Stored {
        /// The checkpoint table.
        checkpoints: Checkpoints,
        /// The subscription.
        name: &'static str,
    },
}

impl Consistency {
    /// Waits until the read model has processed `position`, or `timeout` passes.
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        match self {
            Consistency::Immediate => Ok(()),
            Consistency::Progress(progress) => progress.wait_for(position, timeout).await,
            Consistency::Stored { checkpoints, name } => {
                checkpoints.wait_for(name, position, timeout).await
            }
        }
    }
}

impl From<Progress> for Consistency {
    fn from(progress: Progress) -> Self {
        Consistency::Progress(progress)
    }
}

/// A query handler that answers [`AfterPosition<Q>`] by waiting until a projection has
/// processed the position, then asking the wrapped handler `H` for `Q`.
///
/// Register it next to the plain handler: plain queries go to `H`, wrapped ones wait first.
/// What it waits for is a value ([`Consistency`]), not part of its type: a service built on
/// the in-memory store ([`Consistency::Immediate`]) and on PostgreSQL
/// ([`Consistency::Progress`]) has one query bus type, and callers send `AfterPosition`
/// queries to both.
///
/// ```no_run
/// # use cqrs_core::{HandlesQuery, Query, QueryBus, Committed};
/// # use cqrs_postgres::subscription::{AfterPosition, Progress, ReadYourWrites};
/// # #[derive(Clone)] struct Totals;
/// # struct GetTotal { account: String }
/// # impl Query for GetTotal { const NAME: &'static str = "GetTotal"; type Output = u64; }
/// # impl cqrs_core::AnsweredQueries for Totals { const NAMES: &'static [&'static str] = &["GetTotal"]; }
/// # impl HandlesQuery<GetTotal> for Totals {
/// #     type Error = std::io::Error;
/// #     async fn handle_query(&self, _: &GetTotal) -> Result<u64, std::io::Error> { Ok(0) }
/// # }
/// # async fn doc(totals: Totals, progress: Progress, committed: Committed) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// // `progress` comes from the running subscription: `handle.progress()`.
/// let queries = QueryBus::builder()
///     .handler(totals.clone())
///     .handler(ReadYourWrites::new(totals, progress, Duration::from_secs(5)))
///     .build();
///
/// // `committed` is what the command bus returned for the write to read back.
/// let total = queries
///     .execute(AfterPosition::new(
///         committed.position,
///         GetTotal { account: committed.stream_id.clone() },
///     ))
///     .await?;
/// # let _ = total; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ReadYourWrites<H> {
    handler: H,
    consistency: Consistency,
    timeout: Duration,
}

impl<H> ReadYourWrites<H> {
    /// Waits on a subscription running in this process (no polling).
    pub fn new(handler: H, progress: Progress, timeout: Duration) -> Self {
        Self::with_consistency(handler, Consistency::Progress(progress), timeout)
    }

    /// Waits for what `consistency` says, at most `timeout`.
    pub fn with_consistency(handler: H, consistency: Consistency, timeout: Duration) -> Self {
        Self {
            handler,
            consistency,
            timeout,
        }
    }

    /// Answers at once ([`Consistency::Immediate`]): for a read model the command bus feeds
    /// in process.
    pub fn immediate(handler: H) -> Self {
        Self::with_consistency(handler, Consistency::Immediate, Duration::ZERO)
    }

    /// Waits on the stored checkpoint of subscription `name`, which may run in another
    /// process (polls the checkpoint table).
    pub fn stored(
        handler: H,
        checkpoints: Checkpoints,
        name: &'static str,
        timeout: Duration,
    ) -> Self {
        Self::with_consistency(handler, Consistency::Stored { checkpoints, name }, timeout)
    }

    /// The wrapped handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// What it waits for.
    pub fn consistency(&self) -> &Consistency {
        &self.consistency
    }
}

/// Why a [`ReadYourWrites`] handler did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadYourWritesError<E> {
    /// The projection did not reach the position in time (or could not be asked).
    #[error(transparent)]
    Wait(WaitError),
    /// The wrapped handler failed.
    #[error(transparent)]
    Handler(E),
}

impl<H, Q> HandlesQuery<AfterPosition<Q>> for ReadYourWrites<H>
where
    H: HandlesQuery<Q>,
    Q: Query,
{
    type Error = ReadYourWritesError<H::Error>;

    async fn handle_query(&self, query: &AfterPosition<Q>) -> Result<Q::Output, Self::Error> {
        self.consistency
            .wait_for(query.position, self.timeout)
            .await
            .map_err(ReadYourWritesError::Wait)?;
        self.handler
            .handle_query(&query.query)
            .await
            .map_err(ReadYourWritesError::Handler)
    }
}

/// No names: the wrapped queries share their names with the plain ones, which the handler
/// registered alongside answers.
impl<H> AnsweredQueries for ReadYourWrites<H> {
    const NAMES: &'static [&'static str] = &[];
}

/// Nothing to dispatch by name: a JSON caller sends the inner query to the wrapped handler
/// (registered alongside). This impl lets a bus holding the wrapper still build a
/// [`QueryDispatcher`](cqrs_core::QueryDispatcher).
impl<H: Send + Sync + 'static> DispatchQueries for ReadYourWrites<H> {
    fn visit_queries<V: cqrs_core::dispatch::QueryVisitor<Self>>(_: &mut V) {}
}

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

/// Where a [`ReadYourWrites`] handler learns a projection's progress.
#[derive(Debug, Clone)]
enum Source {
    InProcess(Progress),
    Stored {
        checkpoints: Checkpoints,
        name: &'static str,
    },
}

/// A query handler that answers [`AfterPosition<Q>`] by waiting until a projection has
/// processed the position, then asking the wrapped handler `H` for `Q`.
///
/// Register it next to the plain handler: plain queries go to `H`, wrapped ones wait first.
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
    source: Source,
    timeout: Duration,
}

impl<H> ReadYourWrites<H> {
    /// Waits on a subscription running in this process (no polling).
    pub fn new(handler: H, progress: Progress, timeout: Duration) -> Self {
        Self {
            handler,
            source: Source::InProcess(progress),
            timeout,
        }
    }

    /// Waits on the stored checkpoint of subscription `name`, which may run in another
    /// process (polls the checkpoint table).
    pub fn stored(
        handler: H,
        checkpoints: Checkpoints,
        name: &'static str,
        timeout: Duration,
    ) -> Self {
        Self {
            handler,
            source: Source::Stored { checkpoints, name },
            timeout,
        }
    }

    /// The wrapped handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    async fn wait(&self, position: GlobalPosition) -> Result<(), WaitError> {
        match &self.source {
            Source::InProcess(progress) => progress.wait_for(position, self.timeout).await,
            Source::Stored { checkpoints, name } => {
                checkpoints.wait_for(name, position, self.timeout).await
            }
        }
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
        self.wait(query.position)
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

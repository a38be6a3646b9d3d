//! Inline projections: read-model updates in the append's own transaction.

use chrono::{DateTime, Utc};
use cqrs_core::{BoxFuture, GlobalPosition, NewEvent, Projection, ProjectionError, RecordedEvent};
use sqlx::PgConnection;

use super::PostgresEventStore;
use super::append::AppendFailure;
use crate::PostgresStoreError;

/// A read-model update that runs inside the transaction of every append, after the events are
/// inserted, so the read model and the events commit together or not at all.
///
/// Every [`Projection`] with `Context = sqlx::PgConnection` that is `Clone` implements it:
/// each append works on a fresh clone, so a projection's in-memory fields never hold changes
/// of a transaction that rolled back (keep the read model in the database). Implement it by
/// hand for anything else.
pub trait InlineProjection: Send + Sync + 'static {
    /// A name for error messages and logs.
    fn name(&self) -> &'static str;

    /// Applies the events of one append, through `conn` (the append's transaction). An error
    /// fails the append.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

impl<P> InlineProjection for P
where
    P: Projection<Context = PgConnection> + Clone,
{
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let handled =
                |event: &RecordedEvent| P::EVENT_TYPES.contains(&event.event_type.as_str());
            if !events.iter().any(handled) {
                return Ok(());
            }
            let mut projection = self.clone();
            for event in events.iter().filter(|event| handled(event)) {
                projection.project(event, conn).await?;
            }
            Ok(())
        })
    }
}

impl PostgresEventStore {
    /// Runs every inline projection on the events just inserted (`written`: version,
    /// position and time of each, in batch order).
    pub(super) async fn run_inline(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        events: &[NewEvent],
        written: &[(u64, GlobalPosition, DateTime<Utc>)],
    ) -> Result<(), AppendFailure> {
        let recorded: Vec<RecordedEvent> = events
            .iter()
            .zip(written)
            .map(
                |(event, &(stream_version, position, recorded_at))| RecordedEvent {
                    event_id: event.event_id,
                    event_type: event.event_type.clone().into_owned(),
                    schema_version: event.schema_version,
                    stream_id: stream_id.to_owned(),
                    stream_version,
                    position,
                    recorded_at,
                    payload: event.payload.clone(),
                    metadata: event.metadata.clone(),
                },
            )
            .collect();
        for projection in self.inline.iter() {
            projection.apply(conn, &recorded).await.map_err(|source| {
                AppendFailure::Store(
                    PostgresStoreError::InlineProjection {
                        name: projection.name(),
                        source,
                    }
                    .into(),
                )
            })?;
        }
        Ok(())
    }
}

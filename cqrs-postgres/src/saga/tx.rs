//! What one message does to a saga instance, inside a transaction the caller commits.

use chrono::{DateTime, Utc};
use cqrs_core::saga::{
    Effects, InstanceStatus, Saga, SagaError, SagaMessage, due_at, handle, route,
};
use sqlx::PgConnection;

use crate::sql;

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// No instance takes it.
    Ignored,
    /// Its instance is parked: it waits in the inbox.
    Queued,
    /// The handler ran; state, commands and deadlines are written.
    Handled,
    /// The handler kept failing: the instance is parked on it.
    Parked,
}

/// Why a message could not be delivered (the transaction must be rolled back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The message does not say which instance it is for.
    #[error(transparent)]
    Route(SagaError),
    #[error("cannot serialize a saga message: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Hands `message` to its instance through `conn` (in the caller's transaction).
pub(crate) async fn deliver<S: Saga>(
    conn: &mut PgConnection,
    message: &SagaMessage,
    instance: Option<&str>,
    now: DateTime<Utc>,
    attempts: u32,
) -> Result<Delivered, DeliverError> {
    let Some(association) = route::<S>(message, instance).map_err(DeliverError::Route)? else {
        return Ok(Delivered::Ignored);
    };
    let key = association.key.as_str();
    let row: Option<(Option<String>, String)> = sqlx::query_as(sql::SAGA_INSTANCE_FOR_UPDATE)
        .bind(S::NAME)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    let stored = match row {
        Some((_, status)) if status == InstanceStatus::Ended.as_str() => {
            return Ok(Delivered::Ignored);
        }
        Some((_, status)) if status == InstanceStatus::Parked.as_str() => {
            push_inbox::<S>(conn, key, message).await?;
            return Ok(Delivered::Queued);
        }
        Some((state, _)) => state,
        None if association.start => None,
        None => return Ok(Delivered::Ignored),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match handle::<S>(stored.as_deref(), key, message, association.end, now).await {
            Ok((state, effects)) => {
                apply::<S>(conn, key, &state, effects, now).await?;
                return Ok(Delivered::Handled);
            }
            Err(error) if attempt < attempts => {
                tracing::warn!(saga = S::NAME, instance = key, attempt, %error, "saga handler failed; trying again");
            }
            Err(error) => {
                tracing::error!(saga = S::NAME, instance = key, %error, "saga handler keeps failing; the instance is parked");
                sqlx::query(sql::SAGA_SAVE_INSTANCE)
                    .bind(S::NAME)
                    .bind(key)
                    .bind(stored.as_deref())
                    .bind(InstanceStatus::Parked.as_str())
                    .bind(error.to_string())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                push_inbox::<S>(conn, key, message).await?;
                return Ok(Delivered::Parked);
            }
        }
    }
}

async fn push_inbox<S: Saga>(
    conn: &mut PgConnection,
    key: &str,
    message: &SagaMessage,
) -> Result<(), DeliverError> {
    sqlx::query(sql::SAGA_INBOX_PUSH)
        .bind(S::NAME)
        .bind(key)
        .bind(serde_json::to_string(message)?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes the new state, the commands to send and the deadline changes.
async fn apply<S: Saga>(
    conn: &mut PgConnection,
    key: &str,
    state: &str,
    effects: Effects,
    now: DateTime<Utc>,
) -> Result<(), DeliverError> {
    let status = if effects.ended {
        InstanceStatus::Ended
    } else {
        InstanceStatus::Active
    };
    if effects.commands.is_empty() {
        sqlx::query(sql::SAGA_SAVE_INSTANCE)
            .bind(S::NAME)
            .bind(key)
            .bind(state)
            .bind(status.as_str())
            .bind(None::<String>)
            .bind(None::<DateTime<Utc>>)
            .execute(&mut *conn)
            .await?;
    } else {
        // The state and the commands it sends in one statement.
        let commands = effects
            .commands
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(sql::SAGA_SAVE_AND_SEND)
            .bind(S::NAME)
            .bind(key)
            .bind(state)
            .bind(status.as_str())
            .bind(commands)
            .execute(&mut *conn)
            .await?;
    }
    if effects.ended {
        sqlx::query(sql::SAGA_DEADLINE_CANCEL_ALL)
            .bind(S::NAME)
            .bind(key)
            .execute(&mut *conn)
            .await?;
    } else {
        if !effects.cancelled.is_empty() {
            sqlx::query(sql::SAGA_DEADLINE_CANCEL)
                .bind(S::NAME)
                .bind(key)
                .bind(&effects.cancelled)
                .execute(&mut *conn)
                .await?;
        }
        for deadline in &effects.scheduled {
            sqlx::query(sql::SAGA_DEADLINE_SCHEDULE)
                .bind(S::NAME)
                .bind(key)
                .bind(deadline.name)
                .bind(deadline.id)
                .bind(&deadline.payload)
                .bind(due_at(now, deadline.after))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Releases the parked instance `key` in the caller's transaction: takes its waiting
/// messages (dropping the first when `skip`), marks it active (or forgets it when it never
/// started), and hands it the messages in order. Returns `false` when it is not parked.
pub(crate) async fn release<S: Saga>(
    conn: &mut PgConnection,
    key: &str,
    skip: bool,
    now: DateTime<Utc>,
    attempts: u32,
) -> Result<bool, DeliverError> {
    let row: Option<(Option<String>, String)> = sqlx::query_as(sql::SAGA_INSTANCE_FOR_UPDATE)
        .bind(S::NAME)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((state, status)) = row else {
        return Ok(false);
    };
    if status != InstanceStatus::Parked.as_str() {
        return Ok(false);
    }
    let mut waiting: Vec<(i64, String)> = sqlx::query_as(sql::SAGA_INBOX_TAKE)
        .bind(S::NAME)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?;
    waiting.sort_by_key(|(id, _)| *id);
    if skip && !waiting.is_empty() {
        waiting.remove(0);
    }
    match &state {
        None => {
            sqlx::query(sql::SAGA_DELETE_INSTANCE)
                .bind(S::NAME)
                .bind(key)
                .execute(&mut *conn)
                .await?;
        }
        Some(state) => {
            sqlx::query(sql::SAGA_SAVE_INSTANCE)
                .bind(S::NAME)
                .bind(key)
                .bind(state)
                .bind(InstanceStatus::Active.as_str())
                .bind(None::<String>)
                .bind(None::<DateTime<Utc>>)
                .execute(&mut *conn)
                .await?;
        }
    }
    for (_, message) in waiting {
        let message: SagaMessage = serde_json::from_str(&message)?;
        deliver::<S>(conn, &message, Some(key), now, attempts).await?;
    }
    Ok(true)
}

//! A reporting read model in PostgreSQL: one row per account. The same projection can be fed
//! by a store subscription in the writing service (`Subscription::transactional`) or, in a
//! separate reporting service, from NATS JetStream (`cqrs_nats::consumer::PgProjection`): only
//! the wiring differs (see `src/bin/bank-nats.rs`).

use cqrs_core::prelude::*;
use sqlx::PgConnection;

use crate::domain::{Deposited, Opened, Withdrawn};

/// The table the report writes, created by the service that owns it.
pub const REPORT_TABLE: &str = "CREATE TABLE IF NOT EXISTS account_report (
    account   text   PRIMARY KEY,
    owner     text   NOT NULL,
    balance   bigint NOT NULL,
    movements bigint NOT NULL
)";

/// Balance and number of movements per account, as rows.
pub struct AccountReport;

fn cents(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

#[projection(name = "account_report", context = PgConnection)]
impl AccountReport {
    #[event_handler]
    async fn on_opened(
        &mut self,
        opened: &Opened,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO account_report (account, owner, balance, movements) VALUES ($1, $2, 0, 0)",
        )
        .bind(&event.stream_id)
        .bind(&opened.owner)
        .execute(db)
        .await?;
        Ok(())
    }

    #[event_handler]
    async fn on_deposited(
        &mut self,
        deposited: &Deposited,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE account_report SET balance = balance + $2, movements = movements + 1 \
             WHERE account = $1",
        )
        .bind(&event.stream_id)
        .bind(cents(deposited.amount))
        .execute(db)
        .await?;
        Ok(())
    }

    #[event_handler]
    async fn on_withdrawn(
        &mut self,
        withdrawn: &Withdrawn,
        event: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE account_report SET balance = balance - $2, movements = movements + 1 \
             WHERE account = $1",
        )
        .bind(&event.stream_id)
        .bind(cents(withdrawn.amount))
        .execute(db)
        .await?;
        Ok(())
    }
}

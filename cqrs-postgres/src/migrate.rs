//! The schema migrations shipped with the crate, and the runner that applies them.

use sqlx::{Executor, PgConnection, PgPool};

use crate::MigrateError;

/// Every migration, in the order they apply: `(version, name, SQL)`.
///
/// Each file creates its objects `IF NOT EXISTS`, so it can also be run by hand or by another
/// migration tool. [`PostgresEventStore::migrate`](crate::PostgresEventStore::migrate)
/// applies the ones a database has not recorded yet.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "events", include_str!("../migrations/0001_events.sql")),
    (
        2,
        "subscriptions",
        include_str!("../migrations/0002_subscriptions.sql"),
    ),
    (
        3,
        "unique_keys",
        include_str!("../migrations/0003_unique_keys.sql"),
    ),
    (
        4,
        "idempotency",
        include_str!("../migrations/0004_idempotency.sql"),
    ),
    (5, "sagas", include_str!("../migrations/0005_sagas.sql")),
    (
        6,
        "projection_faults",
        include_str!("../migrations/0006_projection_faults.sql"),
    ),
];

/// Serializes concurrent runners within one database (`pg_advisory_xact_lock` key:
/// the ASCII bytes of `cqrs_mig`).
const LOCK_KEY: i64 = 0x6371_7273_5f6d_6967;

const BOOKKEEPING: &str = "\
CREATE TABLE IF NOT EXISTS cqrs_schema_migrations (
    version    bigint      PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies the migrations `pool`'s database has not recorded, in one transaction.
pub(crate) async fn run(pool: &PgPool) -> Result<Vec<i64>, MigrateError> {
    let mut tx = pool.begin().await?;
    let conn: &mut PgConnection = &mut tx;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut *conn)
        .await?;
    if schema.is_none() {
        return Err(MigrateError::NoSchema);
    }
    sqlx::query(BOOKKEEPING).execute(&mut *conn).await?;
    let recorded: Vec<i64> = sqlx::query_scalar("SELECT version FROM cqrs_schema_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if recorded.contains(&version) {
            continue;
        }
        // `Executor::execute` with the raw text: the simple query protocol, which runs a
        // file of several statements (and whose future stays `Send` for any lifetime).
        conn.execute(sqlx::raw_sql(sql))
            .await
            .map_err(|source| MigrateError::Migration {
                version,
                name,
                source,
            })?;
        sqlx::query("INSERT INTO cqrs_schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}

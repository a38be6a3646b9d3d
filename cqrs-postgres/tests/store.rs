//! The PostgreSQL event store against a real server: the conformance kit, then what only a
//! real database can get wrong (concurrency, the global order, bad stored data, plans).

#[path = "common/bank.rs"]
mod bank;
mod common;

use common::TestDb;
use cqrs_postgres::PostgresEventStore;

async fn migrated(max_connections: u32) -> (TestDb, PostgresEventStore) {
    let db = TestDb::create(max_connections).await;
    PostgresEventStore::migrate(&db.pool)
        .await
        .expect("migrate");
    let store = PostgresEventStore::new(db.pool.clone());
    (db, store)
}

#[tokio::test]
async fn passes_the_event_store_conformance_kit() {
    let (_db, store) = migrated(8).await;
    cqrs_core::testing::conformance::run_all(&store).await;
}

//! The in-memory store passes the conformance kit and the idempotency checks it is the reference for.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_passes_the_conformance_kit() {
    let store = cqrs_core::InMemoryEventStore::new();
    cqrs_core::testing::conformance::run_all(&store).await;
}

#[tokio::test]
async fn the_in_memory_store_passes_the_idempotency_checks() {
    cqrs_core::testing::idempotency::run_all(&cqrs_core::InMemoryEventStore::new()).await;
}

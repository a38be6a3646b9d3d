//! The in-memory store passes the conformance kit it is the reference for.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_passes_the_conformance_kit() {
    let store = cqrs_core::InMemoryEventStore::new();
    cqrs_core::testing::conformance::run_all(&store).await;
}

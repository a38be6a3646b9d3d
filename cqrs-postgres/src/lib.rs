//! PostgreSQL event store for `cqrs-core`.
//!
//! (Crate documentation with the five-line set-up follows with the store.)

mod store;
pub mod subscription;

//! Bank accounts, as a template for a service built on `cqrs-core`.
//!
//! - [`domain`]: the `Account` aggregate, its events, commands and errors;
//! - [`read_model`]: the `Balances` projection and its `GetBalance` query;
//! - [`wire`]: one function that builds the command bus, the query bus and the JSON
//!   dispatcher on any event store.
//!
//! `src/main.rs` runs a short story on the in-memory store, or on PostgreSQL when
//! `DATABASE_URL` is set.

pub mod domain;
pub mod read_model;
pub mod wire;

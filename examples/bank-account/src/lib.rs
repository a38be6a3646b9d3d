//! Bank accounts, as a template for a service built on `cqrs-core`.
//!
//! - [`domain`]: the `Account` aggregate, its events, commands and errors;
//! - [`read_model`]: the `Balances` projection and its `GetBalance` query;
//! - [`wire`]: the command bus, the query bus and the JSON dispatchers, built on the
//!   in-memory store or on PostgreSQL as one `Service` type; on PostgreSQL the balances
//!   are replayed from every stored event at start, so they survive restarts.
//!
//! - [`report`]: `AccountReport`, a read model in PostgreSQL rows, fed from NATS by the
//!   reporting process of `src/bin/bank-nats.rs`.
//!
//! `src/main.rs` runs a short story on the in-memory store, or on PostgreSQL when
//! `DATABASE_URL` is set.

pub mod domain;
pub mod read_model;
pub mod report;
pub mod wire;

//! The workloads, one module per part of `BENCHMARKS.md`.

pub mod append;
pub mod catch_up;
pub mod commands;
pub mod group;
pub mod hot;
pub mod load;
pub mod memory;
pub mod wal;

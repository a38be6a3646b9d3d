//! Cross-crate tests of the cqrs workspace; the library itself is empty.
//!
//! - `ui.rs` runs the compile-fail cases under `ui/<macro>/`, each with its expected
//!   compiler output in a `.stderr` file beside it.
//! - `macros.rs` runs a small domain written with the macros on the in-memory store.
//! - `lints.rs` compiles the macros' output under strict lints.

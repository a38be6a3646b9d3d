//! What every macro shares: error collection, attribute keys, the runtime crate's path and the
//! small readers of Rust syntax the handler macros agree on.

pub mod attr;
pub mod ctxt;
pub mod krate;
pub mod symbol;
pub mod syntax;

pub use ctxt::Ctxt;

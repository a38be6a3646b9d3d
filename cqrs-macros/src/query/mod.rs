//! `#[derive(Query)]`: links a query type to its answer's type and wire name.

mod ast;
mod check;
mod expand;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::internals::Ctxt;

/// Expands `#[derive(Query)]` on `input`.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = ast::Query::from_ast(&cx, input);
    let checked = check::check(&cx, &parsed);
    match (cx.check(), checked) {
        (Ok(()), Some(query)) => expand::expand(&query),
        (Err(error), _) => expand::fallback(&parsed, &error),
        (Ok(()), None) => unreachable!("a query that fails its checks records an error"),
    }
}

//! `#[derive(Event)]`: an event enum's stable names and versions, its payload types' links to
//! it, and how it is applied to an aggregate.

mod ast;
mod check;
mod expand;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::internals::Ctxt;

/// Expands `#[derive(Event)]` on `input`.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = ast::Event::from_ast(&cx, input);
    let checked = check::check(&cx, &parsed);
    match cx.check() {
        Ok(()) => expand::expand(&checked),
        Err(error) => expand::fallback(&parsed, &error),
    }
}

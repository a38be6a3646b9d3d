//! `#[derive(Command)]`: links a command struct to its aggregate, wire name and id field.

mod ast;
mod check;
mod expand;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::internals::Ctxt;

/// Expands `#[derive(Command)]` on `input`.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = ast::Command::from_ast(&cx, input);
    let checked = check::check(&cx, &parsed);
    match (cx.check(), checked) {
        (Ok(()), Some(command)) => expand::expand(&command),
        (Err(error), _) => expand::fallback(&parsed, &error),
        (Ok(()), None) => unreachable!("a command that fails its checks records an error"),
    }
}

//! `#[saga]`: a saga's impl block whose `#[event_handler]`, `#[failure_handler]` and
//! `#[deadline_handler]` methods become its `Saga` impl, with the routing of events to
//! instances and the typed sending of its commands.

mod ast;
mod check;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;

use crate::internals::Ctxt;
use crate::internals::symbol::SAGA;

/// Expands `#[saga(args)]` on `item`.
pub fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    let mut block = match crate::internals::syntax::inherent_impl(SAGA, item) {
        Ok(block) => block,
        Err(error) => return error,
    };
    let cx = Ctxt::new();
    let parsed = ast::Saga::from_ast(&cx, args, &mut block);
    let checked = check::check(&cx, &parsed);
    match (cx.check(), checked) {
        (Ok(()), Some(saga)) => {
            let generated = expand::expand(&saga);
            quote!(#block #generated)
        }
        (Err(error), _) => {
            let error = error.to_compile_error();
            quote!(#block #error)
        }
        (Ok(()), None) => unreachable!("a saga that fails its checks records an error"),
    }
}

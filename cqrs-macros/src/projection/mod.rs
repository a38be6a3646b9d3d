//! `#[projection]`: a read model's impl block whose `#[event_handler]` methods become its
//! `Projection` impl and whose `#[query_handler]` methods become its `HandlesQuery<Q>` impls.

mod ast;
mod check;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;

use crate::internals::Ctxt;
use crate::internals::symbol::PROJECTION;

/// Expands `#[projection(args)]` on `item`.
pub fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    let mut block = match crate::internals::syntax::inherent_impl(PROJECTION, item) {
        Ok(block) => block,
        Err(error) => return error,
    };
    let cx = Ctxt::new();
    let parsed = ast::Projection::from_ast(&cx, args, &mut block);
    let checked = check::check(&cx, &parsed);
    match (cx.check(), checked) {
        (Ok(()), Some(projection)) => {
            let generated = expand::expand(&projection);
            quote!(#block #generated)
        }
        (Err(error), _) => {
            let error = error.to_compile_error();
            quote!(#block #error)
        }
        (Ok(()), None) => unreachable!("a projection that fails its checks records an error"),
    }
}

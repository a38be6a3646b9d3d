//! `#[aggregate]`: an aggregate's impl block whose `#[command_handler]` and `#[event_handler]`
//! methods become its `Handles<C>` and `Apply<P>` impls.

mod ast;
mod check;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;

use crate::internals::Ctxt;
use crate::internals::symbol::AGGREGATE;

/// Expands `#[aggregate(args)]` on `item`.
pub fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    let mut block = match crate::internals::syntax::inherent_impl(AGGREGATE, item) {
        Ok(block) => block,
        Err(error) => return error,
    };
    let cx = Ctxt::new();
    let parsed = ast::Aggregate::from_ast(&cx, args, &mut block);
    let checked = check::check(&cx, &parsed);
    match (cx.check(), checked) {
        (Ok(()), Some(aggregate)) => {
            let generated = expand::expand(&aggregate);
            quote!(#block #generated)
        }
        (Err(error), _) => {
            let error = error.to_compile_error();
            let fallback = expand::fallback(&parsed);
            quote!(#block #error #fallback)
        }
        (Ok(()), None) => unreachable!("an aggregate that fails its checks records an error"),
    }
}

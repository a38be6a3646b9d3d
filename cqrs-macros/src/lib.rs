//! Procedural macros for `cqrs-core`. Use them through `cqrs_core`, which re-exports them.
use proc_macro::TokenStream;

/// Derives `cqrs_core::Command`.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
/// Derives `cqrs_core::Query`.
#[proc_macro_derive(Query, attributes(query))]
pub fn derive_query(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
/// Derives `cqrs_core::Event`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
/// Generates an aggregate.
#[proc_macro_attribute]
pub fn aggregate(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
/// Generates a projection.
#[proc_macro_attribute]
pub fn projection(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}

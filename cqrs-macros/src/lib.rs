//! Procedural macros for `cqrs-core`. Use them through `cqrs_core`, which re-exports them.

mod aggregate;
mod command;
mod event;
#[cfg(test)]
mod expand_tests;
mod internals;
mod projection;
mod query;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `cqrs_core::Command`.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    command::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Derives `cqrs_core::Query`.
#[proc_macro_derive(Query, attributes(query))]
pub fn derive_query(input: TokenStream) -> TokenStream {
    query::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Derives `cqrs_core::Event`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Generates an aggregate.
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, item: TokenStream) -> TokenStream {
    aggregate::expand(args.into(), &item.into()).into()
}

/// Generates a projection.
#[proc_macro_attribute]
pub fn projection(args: TokenStream, item: TokenStream) -> TokenStream {
    projection::expand(args.into(), &item.into()).into()
}

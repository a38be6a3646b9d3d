//! Checks on `#[query(...)]`: the answer's type is given.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::{Generics, Ident, LitStr, Path, Type};

use super::ast;
use crate::internals::Ctxt;

/// A query ready to expand.
pub struct Query<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub output: &'a Type,
    pub name: LitStr,
    pub validate: Option<&'a TokenStream>,
    pub krate: &'a Path,
}

/// Records what is missing; returns the query when nothing is.
pub fn check<'a>(cx: &Ctxt, query: &'a ast::Query<'a>) -> Option<Query<'a>> {
    // A misspelt key is already reported; calling the key it meant missing would repeat it.
    if query.output.is_none() && !query.unknown_keys {
        let message = "missing `output = ...` in `#[query(...)]`";
        match &query.attr {
            Some(attr) => cx.error_spanned_by(attr, message),
            None => cx.error_at(Span::call_site(), message),
        }
    }
    let ident = &query.input.ident;
    Some(Query {
        ident,
        generics: &query.input.generics,
        output: query.output.as_ref()?,
        name: query
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span())),
        validate: query.validate.as_ref(),
        krate: &query.krate,
    })
}

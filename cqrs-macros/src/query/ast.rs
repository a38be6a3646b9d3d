//! What the user wrote: the type and its `#[query(...)]` keys, tokens kept for spans.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{DeriveInput, LitStr, Path, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{CRATE, NAME, OUTPUT, QUERY, Symbol, VALIDATE};
use crate::internals::{Ctxt, krate};

/// A type deriving `Query`.
pub struct Query<'a> {
    pub input: &'a DeriveInput,
    /// The first `#[query(...)]` attribute, where a missing key is reported.
    pub attr: Option<TokenStream>,
    pub output: Option<Type>,
    pub name: Option<LitStr>,
    /// The `validate` key itself, when given.
    pub validate: Option<TokenStream>,
    pub krate: Path,
    /// Whether an unknown key was given: likely a misspelt required key, already reported.
    pub unknown_keys: bool,
}

/// The keys `#[query(...)]` accepts.
const KEYS: &[Symbol] = &[OUTPUT, NAME, VALIDATE, CRATE];

impl<'a> Query<'a> {
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut output = Attr::none(cx, QUERY, OUTPUT);
        let mut name = Attr::none(cx, QUERY, NAME);
        let mut validate = Attr::none(cx, QUERY, VALIDATE);
        let mut krate = Attr::none(cx, QUERY, CRATE);
        let mut unknown_keys = false;
        attr::parse_each(cx, &input.attrs, QUERY, |meta| {
            if meta.path == OUTPUT {
                output.set(&meta.path, meta.value()?.parse::<Type>()?);
            } else if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == VALIDATE {
                attr::flag(&meta, VALIDATE)?;
                validate.set(&meta.path, meta.path.to_token_stream());
            } else if meta.path == CRATE {
                krate.set(&meta.path, krate::parse(&meta)?);
            } else {
                unknown_keys = true;
                attr::unknown_key(cx, QUERY, &meta, KEYS)?;
            }
            Ok(())
        });
        Query {
            input,
            attr: input
                .attrs
                .iter()
                .find(|a| a.path() == QUERY)
                .map(ToTokens::to_token_stream),
            output: output.get(),
            name: name.get(),
            validate: validate.get(),
            krate: krate.get().unwrap_or_else(krate::default_path),
            unknown_keys,
        }
    }
}

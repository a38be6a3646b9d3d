//! Reading `key = value` attribute arguments: each key at most once, unknown keys named with the
//! keys that are known.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, LitStr, Token};

use super::Ctxt;
use super::symbol::Symbol;

/// A key of one attribute that may be given at most once.
pub struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: Symbol,
    key: Symbol,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    /// The unset key `key` of attribute `attr`.
    pub fn none(cx: &'c Ctxt, attr: Symbol, key: Symbol) -> Self {
        Attr {
            cx,
            name: attr,
            key,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    /// Sets the key, spanned at `at`; a second setting is an error there.
    pub fn set<A: ToTokens>(&mut self, at: A, value: T) {
        let tokens = at.into_token_stream();
        if self.value.is_some() {
            self.cx.error_spanned_by(
                tokens,
                format!("duplicate `{}` attribute `{}`", self.name, self.key),
            );
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    /// The value.
    pub fn get(self) -> Option<T> {
        self.value
    }
}

/// Runs `f` on each nested meta of every `#[attr(...)]` in `attrs`, recording parse errors.
pub fn parse_each<F>(cx: &Ctxt, attrs: &[Attribute], attr: Symbol, mut f: F)
where
    F: FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
{
    for attribute in attrs.iter().filter(|a| a.path() == attr) {
        if let Err(error) = attribute.parse_nested_meta(&mut f) {
            cx.syn_error(error);
        }
    }
}

/// Runs `f` on each nested meta of an attribute macro's arguments, recording parse errors.
pub fn parse_args<F>(cx: &Ctxt, args: TokenStream, f: F)
where
    F: FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
{
    if let Err(error) = syn::meta::parser(f).parse2(args) {
        cx.syn_error(error);
    }
}

/// Records an unknown key of `attr` and skips its value so the keys after it are still read.
pub fn unknown_key(
    cx: &Ctxt,
    attr: Symbol,
    meta: &ParseNestedMeta<'_>,
    expected: &[Symbol],
) -> syn::Result<()> {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let expected = if let [only] = expected {
        format!("expected `{only}`")
    } else {
        let list: Vec<String> = expected.iter().map(|s| format!("`{s}`")).collect();
        format!("expected one of {}", list.join(", "))
    };
    cx.error_spanned_by(
        &meta.path,
        format!("unknown `{attr}` attribute `{key}`; {expected}"),
    );
    skip_value(meta.input)
}

/// Consumes the rest of one `key ...` entry, up to the next top-level comma.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// Reads a key that takes no value (`validate`).
pub fn flag(meta: &ParseNestedMeta<'_>, key: Symbol) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        Ok(())
    } else {
        Err(meta.error(format!("`{key}` takes no value")))
    }
}

/// Reads `key = "string"`.
pub fn lit_str(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    meta.value()?.parse()
}

/// Reads `key = "non-empty name"`.
pub fn name(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    let lit = lit_str(meta)?;
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new(lit.span(), "a name cannot be empty"));
    }
    Ok(lit)
}

//! Checks across variants: event names and payload types are each used once.

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Ident, Path, Type};

use super::ast;
use crate::internals::Ctxt;
use crate::internals::syntax::display;

/// An event enum ready to expand.
pub struct Event<'a> {
    pub ident: &'a Ident,
    pub variants: Vec<Variant<'a>>,
    pub krate: &'a Path,
}

/// A variant with its final name and version.
pub struct Variant<'a> {
    pub ident: &'a Ident,
    pub payload: Option<&'a Type>,
    pub name: String,
    pub version: u32,
}

/// Records duplicate names and payload types; returns the enum with defaults filled in.
pub fn check<'a>(cx: &Ctxt, event: &'a ast::Event<'a>) -> Event<'a> {
    let ident = &event.input.ident;
    let enum_name = ident.unraw().to_string();
    let mut names: HashMap<String, &Ident> = HashMap::new();
    let mut payloads: HashMap<String, &Ident> = HashMap::new();
    let mut variants = Vec::new();
    for variant in &event.variants {
        let (name, name_tokens): (String, TokenStream) = match &variant.name {
            Some(lit) => (lit.value(), lit.to_token_stream()),
            None => (
                format!("{enum_name}.{}", variant.ident.unraw()),
                variant.ident.to_token_stream(),
            ),
        };
        if let Some(first) = names.get(&name) {
            cx.error_spanned_by(
                name_tokens,
                format!(
                    "duplicate event name `{name}`: variant `{first}` already uses it; stored events are found by name, so each variant needs its own"
                ),
            );
        } else {
            names.insert(name.clone(), variant.ident);
        }
        if let Some(payload) = variant.payload {
            let key = payload.to_token_stream().to_string();
            if let Some(first) = payloads.get(&key) {
                cx.error_spanned_by(
                    payload,
                    format!(
                        "payload type `{}` is already carried by variant `{first}`; a payload type belongs to one variant, so give this one its own type",
                        display(payload)
                    ),
                );
            } else {
                payloads.insert(key, variant.ident);
            }
        }
        variants.push(Variant {
            ident: variant.ident,
            payload: variant.payload,
            name,
            version: variant.version.as_ref().map_or(1, |(_, version)| *version),
        });
    }
    Event {
        ident,
        variants,
        krate: &event.krate,
    }
}

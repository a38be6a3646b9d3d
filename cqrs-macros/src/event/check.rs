//! Checks across variants: event names, aliases and payload types are each used once, and
//! every declared old version has exactly one path to the current one.

use std::collections::{BTreeMap, HashMap};

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Ident, Path, Type};

use super::ast::{self, Step};
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
    /// Old names, each also read as this variant.
    pub aliases: Vec<String>,
    /// The upcaster of each old version that has one.
    pub upcasts: BTreeMap<u32, &'a Step>,
}

impl Variant<'_> {
    /// Whether an upcaster may turn a stored event of this variant into other events.
    pub fn has_many(&self) -> bool {
        self.upcasts
            .values()
            .any(|step| matches!(step, Step::Many(_)))
    }
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
        let version = variant.version.as_ref().map_or(1, |(_, version)| *version);
        variants.push(Variant {
            ident: variant.ident,
            payload: variant.payload,
            name,
            version,
            aliases: Vec::new(),
            upcasts: check_upcasts(cx, variant, version),
        });
    }
    for (checked, variant) in variants.iter_mut().zip(&event.variants) {
        for alias in &variant.aliases {
            let value = alias.value();
            if let Some(owner) = names.get(&value) {
                let whose = if *owner == variant.ident {
                    "this variant's own name".to_owned()
                } else {
                    format!("the name of variant `{owner}`")
                };
                cx.error_spanned_by(
                    alias,
                    format!(
                        "alias `{value}` is {whose}; an old name must be read as one variant only"
                    ),
                );
            } else {
                names.insert(value.clone(), variant.ident);
                checked.aliases.push(value);
            }
        }
    }
    Event {
        ident,
        variants,
        krate: &event.krate,
    }
}

/// Each old version with an upcaster must reach the current version (or an upcaster of the
/// `many` kind, which yields current events) by exactly one path; returns the upcasters by
/// the version they read.
fn check_upcasts<'a>(
    cx: &Ctxt,
    variant: &'a ast::Variant<'a>,
    version: u32,
) -> BTreeMap<u32, &'a Step> {
    let mut upcasts = BTreeMap::new();
    for upcaster in &variant.upcasts {
        let (lit, from) = &upcaster.from;
        if *from >= version {
            cx.error_spanned_by(
                lit,
                format!(
                    "`upcast(from = {from})` must read an older version than the variant's version {version}; declare `version = N` above {from} on the variant"
                ),
            );
        } else if upcasts.contains_key(from) {
            cx.error_spanned_by(
                lit,
                format!(
                    "two upcasters from version {from}: a stored version-{from} event must have one path to version {version}"
                ),
            );
        } else {
            upcasts.insert(*from, &upcaster.step);
        }
    }
    for upcaster in &variant.upcasts {
        let (lit, from) = &upcaster.from;
        let next = from + 1;
        if *from < version
            && !matches!(upcaster.step, Step::Many(_))
            && next < version
            && !upcasts.contains_key(&next)
        {
            cx.error_spanned_by(
                lit,
                format!(
                    "no upcaster from version {next}: version {from} cannot reach version {version}; add `upcast(from = {next}, ...)`"
                ),
            );
        }
    }
    upcasts
}

//! What the user wrote: the enum, its variants and their `#[event(...)]` keys.

use syn::{Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{CRATE, EVENT, NAME, Symbol, VERSION};
use crate::internals::{Ctxt, krate};

/// An enum deriving `Event`.
pub struct Event<'a> {
    pub input: &'a DeriveInput,
    /// The variants of a well-formed shape, in declaration order.
    pub variants: Vec<Variant<'a>>,
    pub krate: Path,
}

/// One variant: one event type.
pub struct Variant<'a> {
    pub ident: &'a Ident,
    /// The payload type of `Variant(Payload)`; `None` for a unit variant.
    pub payload: Option<&'a Type>,
    pub name: Option<LitStr>,
    /// The version literal and its value (at least 1).
    pub version: Option<(LitInt, u32)>,
}

const CONTAINER_KEYS: &[Symbol] = &[CRATE];
const VARIANT_KEYS: &[Symbol] = &[NAME, VERSION];

impl<'a> Event<'a> {
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut krate = Attr::none(cx, EVENT, CRATE);
        attr::parse_each(cx, &input.attrs, EVENT, |meta| {
            if meta.path == CRATE {
                krate.set(&meta.path, krate::parse(&meta)?);
            } else if meta.path == NAME || meta.path == VERSION {
                cx.error_spanned_by(
                    &meta.path,
                    "`name` and `version` belong on a variant: `#[event(name = \"...\", version = N)]`",
                );
                meta.value()?.parse::<syn::Expr>()?;
            } else {
                attr::unknown_key(cx, EVENT, &meta, CONTAINER_KEYS)?;
            }
            Ok(())
        });

        if !input.generics.params.is_empty() {
            cx.error_spanned_by(
                &input.generics,
                "`#[derive(Event)]` does not support generic enums",
            );
        }

        let variants = match &input.data {
            Data::Enum(data) => {
                if data.variants.is_empty() {
                    cx.error_spanned_by(
                        &input.ident,
                        "an event enum needs at least one variant: each variant is one event type",
                    );
                }
                data.variants
                    .iter()
                    .filter_map(|variant| Variant::from_ast(cx, variant))
                    .collect()
            }
            Data::Struct(data) => {
                cx.error_spanned_by(data.struct_token, NOT_ENUM);
                Vec::new()
            }
            Data::Union(data) => {
                cx.error_spanned_by(data.union_token, NOT_ENUM);
                Vec::new()
            }
        };

        Event {
            input,
            variants,
            krate: krate.get().unwrap_or_else(krate::default_path),
        }
    }
}

impl<'a> Variant<'a> {
    fn from_ast(cx: &Ctxt, variant: &'a syn::Variant) -> Option<Self> {
        let mut name = Attr::none(cx, EVENT, NAME);
        let mut version = Attr::none(cx, EVENT, VERSION);
        attr::parse_each(cx, &variant.attrs, EVENT, |meta| {
            if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == VERSION {
                let lit: LitInt = meta.value()?.parse()?;
                let value: u32 = lit.base10_parse()?;
                if value == 0 {
                    return Err(syn::Error::new(lit.span(), "event versions start at 1"));
                }
                version.set(&meta.path, (lit, value));
            } else if meta.path == CRATE {
                cx.error_spanned_by(
                    &meta.path,
                    "`crate` belongs on the enum: `#[event(crate = \"...\")]` above `enum`",
                );
                meta.value()?.parse::<LitStr>()?;
            } else {
                attr::unknown_key(cx, EVENT, &meta, VARIANT_KEYS)?;
            }
            Ok(())
        });

        let payload = match &variant.fields {
            Fields::Unit => None,
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => Some(&fields.unnamed[0].ty),
            fields => {
                cx.error_spanned_by(
                    fields,
                    format!(
                        "an event variant is a unit variant or carries one payload type, like `{0}({0})`; move these fields into a payload struct",
                        variant.ident
                    ),
                );
                return None;
            }
        };
        Some(Variant {
            ident: &variant.ident,
            payload,
            name: name.get(),
            version: version.get(),
        })
    }
}

const NOT_ENUM: &str = "`#[derive(Event)]` is for enums: each variant is one event type";

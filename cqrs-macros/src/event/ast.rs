//! What the user wrote: the enum, its variants and their `#[event(...)]` keys.

use syn::{Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{
    ALIAS, CRATE, EVENT, FROM, MANY, NAME, RAW, Symbol, UPCAST, VERSION, WITH,
};
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
    /// Old names (`alias = "..."`), in order.
    pub aliases: Vec<LitStr>,
    /// How old versions become the current one (`upcast(...)`), in order.
    pub upcasts: Vec<Upcaster>,
}

/// One `upcast(from = N, with = T | raw = f | many = f)`.
pub struct Upcaster {
    /// The `from` literal and its value.
    pub from: (LitInt, u32),
    pub step: Step,
}

/// What an upcaster does with the payload of its version.
pub enum Step {
    /// `with = T`: the payload is a `T`, and `T: Upcast` gives the next version.
    With(Type),
    /// `raw = f`: `f(serde_json::Value) -> Result<serde_json::Value, E>` gives the next
    /// version's JSON.
    Raw(Path),
    /// `many = f`: `f(payload) -> Vec<Enum>` gives current events, any number.
    Many(Path),
}

const CONTAINER_KEYS: &[Symbol] = &[CRATE];
const VARIANT_KEYS: &[Symbol] = &[NAME, VERSION, ALIAS, UPCAST];
const UPCAST_KEYS: &[Symbol] = &[FROM, WITH, RAW, MANY];

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
        let mut aliases = Vec::new();
        let mut upcasts = Vec::new();
        attr::parse_each(cx, &variant.attrs, EVENT, |meta| {
            if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == ALIAS {
                aliases.push(attr::name(&meta)?);
            } else if meta.path == UPCAST {
                if let Some(upcaster) = Upcaster::parse(cx, &meta)? {
                    upcasts.push(upcaster);
                }
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
            aliases,
            upcasts,
        })
    }
}

impl Upcaster {
    /// Reads `upcast(from = N, with = T)` (or `raw = f`, `many = f`); `None` after an
    /// error was recorded.
    fn parse(cx: &Ctxt, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Option<Self>> {
        let mut from = Attr::none(cx, UPCAST, FROM);
        let mut step = Attr::none(cx, UPCAST, Symbol("with` / `raw` / `many"));
        meta.parse_nested_meta(|inner| {
            if inner.path == FROM {
                let lit: LitInt = inner.value()?.parse()?;
                let value: u32 = lit.base10_parse()?;
                if value == 0 {
                    return Err(syn::Error::new(lit.span(), "event versions start at 1"));
                }
                from.set(&inner.path, (lit, value));
            } else if inner.path == WITH {
                step.set(&inner.path, Step::With(inner.value()?.parse()?));
            } else if inner.path == RAW {
                step.set(&inner.path, Step::Raw(inner.value()?.parse()?));
            } else if inner.path == MANY {
                step.set(&inner.path, Step::Many(inner.value()?.parse()?));
            } else {
                attr::unknown_key(cx, UPCAST, &inner, UPCAST_KEYS)?;
            }
            Ok(())
        })?;
        let (Some(from), Some(step)) = (from.get(), step.get()) else {
            cx.error_spanned_by(
                &meta.path,
                "an upcaster needs `from = N` and one of `with = OldPayload`, `raw = path::to::fn`, `many = path::to::fn`",
            );
            return Ok(None);
        };
        Ok(Some(Upcaster { from, step }))
    }
}

const NOT_ENUM: &str = "`#[derive(Event)]` is for enums: each variant is one event type";

//! What the user wrote: the struct and its `#[command(...)]` keys, tokens kept for spans.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{
    AGGREGATE, COMMAND, CRATE, ID, IDEMPOTENCY_KEY, IDEMPOTENT, NAME, VALIDATE,
};
use crate::internals::{Ctxt, krate};

/// A struct deriving `Command`.
pub struct Command<'a> {
    pub input: &'a DeriveInput,
    /// The named fields, or `None` when the input is not a struct with named fields.
    pub fields: Option<Vec<&'a Ident>>,
    /// The first `#[command(...)]` attribute, where a missing key is reported.
    pub attr: Option<TokenStream>,
    pub aggregate: Option<Type>,
    pub id: Option<Ident>,
    pub name: Option<LitStr>,
    /// The `validate` key itself, when given.
    pub validate: Option<TokenStream>,
    /// The field holding the idempotency key (`idempotency_key = field`).
    pub idempotency_key: Option<Ident>,
    /// The `idempotent` key itself, when given.
    pub idempotent: Option<TokenStream>,
    pub krate: Path,
    /// Whether an unknown key was given: likely a misspelt required key, already reported.
    pub unknown_keys: bool,
}

/// The keys `#[command(...)]` accepts.
const KEYS: &[crate::internals::symbol::Symbol] = &[
    AGGREGATE,
    ID,
    NAME,
    VALIDATE,
    IDEMPOTENCY_KEY,
    IDEMPOTENT,
    CRATE,
];

impl<'a> Command<'a> {
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => Some(
                    named
                        .named
                        .iter()
                        .filter_map(|field| field.ident.as_ref())
                        .collect(),
                ),
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(unnamed, NOT_NAMED);
                    None
                }
                Fields::Unit => {
                    cx.error_spanned_by(&input.ident, NOT_NAMED);
                    None
                }
            },
            Data::Enum(data) => {
                cx.error_spanned_by(data.enum_token, NOT_NAMED);
                None
            }
            Data::Union(data) => {
                cx.error_spanned_by(data.union_token, NOT_NAMED);
                None
            }
        };

        let mut aggregate = Attr::none(cx, COMMAND, AGGREGATE);
        let mut id = Attr::none(cx, COMMAND, ID);
        let mut name = Attr::none(cx, COMMAND, NAME);
        let mut validate = Attr::none(cx, COMMAND, VALIDATE);
        let mut idempotency_key = Attr::none(cx, COMMAND, IDEMPOTENCY_KEY);
        let mut idempotent = Attr::none(cx, COMMAND, IDEMPOTENT);
        let mut krate = Attr::none(cx, COMMAND, CRATE);
        let mut unknown_keys = false;
        attr::parse_each(cx, &input.attrs, COMMAND, |meta| {
            if meta.path == AGGREGATE {
                aggregate.set(&meta.path, meta.value()?.parse::<Type>()?);
            } else if meta.path == ID {
                id.set(&meta.path, meta.value()?.parse::<Ident>()?);
            } else if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == VALIDATE {
                attr::flag(&meta, VALIDATE)?;
                validate.set(&meta.path, meta.path.to_token_stream());
            } else if meta.path == IDEMPOTENCY_KEY {
                idempotency_key.set(&meta.path, meta.value()?.parse::<Ident>()?);
            } else if meta.path == IDEMPOTENT {
                attr::flag(&meta, IDEMPOTENT)?;
                idempotent.set(&meta.path, meta.path.to_token_stream());
            } else if meta.path == CRATE {
                krate.set(&meta.path, krate::parse(&meta)?);
            } else {
                unknown_keys = true;
                attr::unknown_key(cx, COMMAND, &meta, KEYS)?;
            }
            Ok(())
        });

        Command {
            input,
            fields,
            attr: input
                .attrs
                .iter()
                .find(|a| a.path() == COMMAND)
                .map(ToTokens::to_token_stream),
            aggregate: aggregate.get(),
            id: id.get(),
            name: name.get(),
            validate: validate.get(),
            idempotency_key: idempotency_key.get(),
            idempotent: idempotent.get(),
            krate: krate.get().unwrap_or_else(krate::default_path),
            unknown_keys,
        }
    }
}

const NOT_NAMED: &str = "`#[derive(Command)]` supports structs with named fields";

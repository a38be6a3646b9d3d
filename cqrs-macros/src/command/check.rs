//! Checks across the keys of `#[command(...)]`: the required ones are there and `id` names a
//! field.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::{Generics, Ident, LitStr, Path, Type};

use super::ast;
use crate::internals::Ctxt;

/// A command ready to expand.
pub struct Command<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub aggregate: &'a Type,
    pub id: &'a Ident,
    pub name: LitStr,
    pub validate: Option<&'a TokenStream>,
    /// Set when the command takes idempotency keys: the key's field, if it carries one,
    /// and the token that asked for keys (for spans).
    pub idempotency: Option<Idempotency<'a>>,
    pub krate: &'a Path,
}

/// How a command takes idempotency keys.
pub struct Idempotency<'a> {
    /// The field holding the key, or `None` when keys come from the caller's metadata.
    pub key: Option<&'a Ident>,
    /// The token asking for keys (the field name, or `idempotent`), where a missing
    /// `Serialize` impl is reported.
    pub at: TokenStream,
}

/// Records what is missing or wrong; returns the command when nothing is.
pub fn check<'a>(cx: &Ctxt, command: &'a ast::Command<'a>) -> Option<Command<'a>> {
    let missing = |key: &str| {
        let message = format!("missing `{key} = ...` in `#[command(...)]`");
        match &command.attr {
            Some(attr) => cx.error_spanned_by(attr, message),
            None => cx.error_at(Span::call_site(), message),
        }
    };
    // A misspelt key is already reported; calling the key it meant missing would repeat it.
    if !command.unknown_keys {
        if command.aggregate.is_none() {
            missing("aggregate");
        }
        if command.id.is_none() {
            missing("id");
        }
    }
    if let (Some(id), Some(fields)) = (&command.id, &command.fields)
        && !fields.contains(&id)
    {
        {
            let list: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
            let expected = if list.is_empty() {
                format!("`{}` has no fields", command.input.ident)
            } else {
                format!("expected one of {}", list.join(", "))
            };
            cx.error_spanned_by(
                id,
                format!(
                    "`id = {id}` names no field of `{}`; {expected}",
                    command.input.ident
                ),
            );
        }
    }
    if let (Some(key), Some(fields)) = (&command.idempotency_key, &command.fields)
        && !fields.contains(&key)
    {
        let list: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
        cx.error_spanned_by(
            key,
            format!(
                "`idempotency_key = {key}` names no field of `{}`; expected one of {}",
                command.input.ident,
                list.join(", ")
            ),
        );
    }
    let idempotency = match (&command.idempotency_key, &command.idempotent) {
        (Some(key), _) => Some(Idempotency {
            key: Some(key),
            at: quote::ToTokens::to_token_stream(key),
        }),
        (None, Some(flag)) => Some(Idempotency {
            key: None,
            at: flag.clone(),
        }),
        (None, None) => None,
    };
    let ident = &command.input.ident;
    Some(Command {
        ident,
        generics: &command.input.generics,
        aggregate: command.aggregate.as_ref()?,
        id: command.id.as_ref()?,
        name: command
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span())),
        validate: command.validate.as_ref(),
        idempotency,
        krate: &command.krate,
    })
}

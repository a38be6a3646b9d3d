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
    pub krate: &'a Path,
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
        krate: &command.krate,
    })
}

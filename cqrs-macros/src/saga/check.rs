//! Checks across the attribute and the handlers: a key on every event handler, at least one
//! starting handler, each message type handled once, failures only of declared commands,
//! deadline names distinct.

use std::collections::HashMap;

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Ident, LitStr, Path, Type};

use super::ast::{self, DeadlineHandler, EventHandler, FailureHandler};
use crate::internals::Ctxt;
use crate::internals::syntax::{display, last_ident, same_tokens};

/// A saga ready to expand.
pub struct Saga<'a> {
    pub self_ty: &'a Type,
    pub name: LitStr,
    pub krate: &'a Path,
    pub commands: &'a [Type],
    pub events: &'a [EventHandler],
    pub failures: &'a [FailureHandler],
    pub deadlines: Vec<(&'a DeadlineHandler, LitStr)>,
}

pub fn check<'a>(cx: &Ctxt, saga: &'a ast::Saga) -> Option<Saga<'a>> {
    for handler in &saga.events {
        if handler.key.is_none() {
            cx.error_spanned_by(
                &handler.marker,
                "a saga's `#[event_handler]` says which payload field finds the instance: `#[event_handler(key = field)]`",
            );
        }
    }
    if !saga.events.iter().any(|h| h.start) && !cx.has_errors() {
        cx.error_spanned_by(
            &saga.span_tokens,
            "this `#[saga]` has no `#[event_handler(key = ..., start)]`: nothing would ever start an instance",
        );
    }
    once(
        cx,
        saga.events
            .iter()
            .map(|h| (&h.handler.message, &h.handler.method)),
        "event",
        "#[event_handler]",
    );
    once(
        cx,
        saga.failures
            .iter()
            .map(|h| (&h.handler.message, &h.handler.method)),
        "failures of command",
        "#[failure_handler]",
    );
    once(
        cx,
        saga.deadlines
            .iter()
            .map(|h| (&h.handler.message, &h.handler.method)),
        "deadline",
        "#[deadline_handler]",
    );
    let mut listed: HashMap<String, &Type> = HashMap::new();
    for command in &saga.commands {
        let key = command.to_token_stream().to_string();
        if listed.insert(key, command).is_some() {
            cx.error_spanned_by(
                command,
                format!(
                    "command `{}` is listed twice in `commands(...)`",
                    display(command)
                ),
            );
        }
    }
    for failure in &saga.failures {
        let command = &failure.handler.message;
        if !saga.commands.iter().any(|c| same_tokens(c, command)) {
            cx.error_spanned_by(
                command,
                format!(
                    "`{}` is not in `#[saga(commands(...))]`: the saga never sends it, so it never fails",
                    display(command)
                ),
            );
        }
    }
    let mut deadlines = Vec::new();
    let mut names: HashMap<String, &Type> = HashMap::new();
    for handler in &saga.deadlines {
        let ty = &handler.handler.message;
        let Some(ident) = last_ident(ty) else {
            cx.error_spanned_by(ty, "a deadline is a named type (a struct or an enum)");
            continue;
        };
        let name = ident.unraw().to_string();
        if let Some(first) = names.insert(name.clone(), ty) {
            cx.error_spanned_by(
                ty,
                format!(
                    "deadline types are stored by name, and `{}` has the name of `{}`",
                    display(ty),
                    display(first)
                ),
            );
        }
        deadlines.push((handler, LitStr::new(&name, ident.span())));
    }
    let ident = saga.ident.as_ref()?;
    Some(Saga {
        self_ty: &saga.self_ty,
        name: saga
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span())),
        krate: &saga.krate,
        commands: &saga.commands,
        events: &saga.events,
        failures: &saga.failures,
        deadlines,
    })
}

/// Errors at the second handler of the same type.
fn once<'a>(
    cx: &Ctxt,
    handlers: impl Iterator<Item = (&'a Type, &'a Ident)>,
    kind: &str,
    marker: &str,
) {
    let mut seen: HashMap<String, &Ident> = HashMap::new();
    for (ty, method) in handlers {
        let key = ty.to_token_stream().to_string();
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                ty,
                format!(
                    "{kind} `{}` already has a `{marker}`: `{first}`",
                    display(ty)
                ),
            );
        } else {
            seen.insert(key, method);
        }
    }
}

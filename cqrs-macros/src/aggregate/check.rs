//! Checks across the attribute and the handlers: required keys, services declared, and each
//! command, payload and unit variant handled once.

use std::collections::{HashMap, HashSet};

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Ident, LitInt, LitStr, Path, Type};

use super::ast::{self, CommandHandler, EventHandler, HandlerArg, UnitHandler};
use crate::internals::Ctxt;
use crate::internals::syntax::display;

/// An aggregate ready to expand.
pub struct Aggregate<'a> {
    pub self_ty: &'a Type,
    pub name: LitStr,
    pub event: &'a Type,
    pub error: &'a Type,
    pub services: Option<&'a Type>,
    pub snapshot: Option<&'a (TokenStream, LitInt)>,
    pub ignore: &'a [Type],
    pub unique_keys: Option<&'a TokenStream>,
    pub krate: &'a Path,
    pub commands: &'a [CommandHandler],
    pub events: &'a [EventHandler],
    pub units: &'a [UnitHandler],
}

pub fn check<'a>(cx: &Ctxt, aggregate: &'a ast::Aggregate) -> Option<Aggregate<'a>> {
    for (key, value) in [("event", &aggregate.event), ("error", &aggregate.error)] {
        // A misspelt key is already reported; calling the key it meant missing would repeat it.
        if value.is_none() && !aggregate.unknown_keys {
            cx.error_at(
                Span::call_site(),
                format!("missing `{key} = ...` in `#[aggregate(...)]`"),
            );
        }
    }
    check_services(cx, aggregate);
    check_commands_once(cx, &aggregate.commands);
    check_payloads_once(cx, aggregate);
    check_units_once(cx, &aggregate.units);

    let ident = aggregate.ident.as_ref()?;
    Some(Aggregate {
        self_ty: &aggregate.self_ty,
        name: aggregate
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span())),
        event: aggregate.event.as_ref()?,
        error: aggregate.error.as_ref()?,
        services: aggregate.services.as_ref(),
        snapshot: aggregate.snapshot.as_ref(),
        ignore: &aggregate.ignore,
        unique_keys: aggregate.unique_keys.as_ref(),
        krate: &aggregate.krate,
        commands: &aggregate.commands,
        events: &aggregate.events,
        units: &aggregate.units,
    })
}

/// A handler that borrows services needs them declared. Whether the type it borrows is the
/// declared one (under another spelling, or inside an `Arc`/`Box`) is for the type checker to
/// say: the generated call requires `ServicesAs`, spanned at the handler's type.
fn check_services(cx: &Ctxt, aggregate: &ast::Aggregate) {
    if aggregate.services.is_some() {
        return;
    }
    for handler in &aggregate.commands {
        for arg in &handler.args {
            if let HandlerArg::Services(asked) = arg {
                cx.error_spanned_by(
                    asked,
                    format!(
                        "this handler asks for services `&{}`, but `#[aggregate]` declares none; add `services = {}`",
                        display(asked),
                        display(asked)
                    ),
                );
            }
        }
    }
}

fn check_commands_once(cx: &Ctxt, commands: &[CommandHandler]) {
    let mut seen: HashMap<String, &Ident> = HashMap::new();
    for handler in commands {
        let key = handler.command.to_token_stream().to_string();
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                &handler.command,
                format!(
                    "command `{}` already has a `#[command_handler]`: `{first}`",
                    display(&handler.command)
                ),
            );
        } else {
            seen.insert(key, &handler.method);
        }
    }
}

fn check_payloads_once(cx: &Ctxt, aggregate: &ast::Aggregate) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for handler in &aggregate.events {
        let key = handler.payload.to_token_stream().to_string();
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                &handler.payload,
                format!(
                    "event `{}` already has an `#[event_handler]`: `{first}`",
                    display(&handler.payload)
                ),
            );
        } else {
            seen.insert(key, handler.method.to_string());
        }
    }
    let mut ignored = HashSet::new();
    for ty in &aggregate.ignore {
        let key = ty.to_token_stream().to_string();
        if let Some(handler) = seen.get(&key) {
            cx.error_spanned_by(
                ty,
                format!(
                    "event `{}` is both ignored and applied by `#[event_handler]` `{handler}`",
                    display(ty)
                ),
            );
        } else if !ignored.insert(key) {
            cx.error_spanned_by(ty, format!("event `{}` is ignored twice", display(ty)));
        }
    }
}

fn check_units_once(cx: &Ctxt, units: &[UnitHandler]) {
    let mut seen: HashMap<String, &Ident> = HashMap::new();
    for handler in units {
        let key = handler.variant.unraw().to_string();
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                &handler.variant,
                format!("unit event `{key}` already has an `#[event_handler({key})]`: `{first}`"),
            );
        } else {
            seen.insert(key, &handler.method);
        }
    }
}

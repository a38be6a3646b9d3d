//! Checks across the attribute and the handlers: the context as declared, each payload type and
//! query handled once, and at least one handler.

use std::collections::HashMap;

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Generics, Ident, LitStr, Path, Type};

use super::ast::{self, EventArg, EventHandler, QueryHandler};
use crate::internals::Ctxt;
use crate::internals::syntax::{display, same_tokens};

/// A projection ready to expand.
pub struct Projection<'a> {
    pub self_ty: &'a Type,
    pub generics: &'a Generics,
    pub name: LitStr,
    pub context: Option<&'a Type>,
    pub krate: &'a Path,
    pub events: &'a [EventHandler],
    pub queries: &'a [QueryHandler],
}

pub fn check<'a>(cx: &Ctxt, projection: &'a ast::Projection) -> Option<Projection<'a>> {
    if projection.events.is_empty() && projection.queries.is_empty() && !cx.has_errors() {
        cx.error_spanned_by(
            &projection.span_tokens,
            "this `#[projection]` has no `#[event_handler]` and no `#[query_handler]` methods",
        );
    }
    check_context(cx, projection);
    once(
        cx,
        projection.events.iter().map(|h| (&h.payload, &h.method)),
        "event",
        "#[event_handler]",
    );
    once(
        cx,
        projection.queries.iter().map(|h| (&h.query, &h.method)),
        "query",
        "#[query_handler]",
    );
    let ident = projection.ident.as_ref()?;
    Some(Projection {
        self_ty: &projection.self_ty,
        generics: &projection.generics,
        name: projection
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span())),
        context: projection.context.as_ref(),
        krate: &projection.krate,
        events: &projection.events,
        queries: &projection.queries,
    })
}

fn check_context(cx: &Ctxt, projection: &ast::Projection) {
    for handler in &projection.events {
        for arg in &handler.args {
            let EventArg::Context(asked) = arg else {
                continue;
            };
            match &projection.context {
                None => cx.error_spanned_by(
                    asked,
                    format!(
                        "this handler asks for a context `&mut {}`, but `#[projection]` declares none; add `context = {}`",
                        display(asked),
                        display(asked)
                    ),
                ),
                Some(declared) if !same_tokens(declared, asked) => cx.error_spanned_by(
                    asked,
                    format!(
                        "`#[projection]` declares `context = {}`, so handlers borrow it as `&mut {}`; found `&mut {}`",
                        display(declared),
                        display(declared),
                        display(asked)
                    ),
                ),
                Some(_) => {}
            }
        }
    }
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

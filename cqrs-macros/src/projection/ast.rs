//! What the user wrote: the `#[projection(...)]` keys and the marked methods of the impl block,
//! whose markers are removed as they are read.

use proc_macro2::TokenStream;
use syn::{Generics, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Path, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{
    COMMAND_HANDLER, CONTEXT, CRATE, EVENT_HANDLER, NAME, PROJECTION, QUERY_HANDLER, Symbol,
};
use crate::internals::syntax::{self, Borrow, Receiver};
use crate::internals::{Ctxt, krate};

/// A projection's impl block.
pub struct Projection {
    pub self_ty: Type,
    pub generics: Generics,
    /// The type's own name: the default projection name.
    pub ident: Option<Ident>,
    pub name: Option<LitStr>,
    pub context: Option<Type>,
    pub krate: Path,
    /// Where to report a block without handlers.
    pub span_tokens: TokenStream,
    pub events: Vec<EventHandler>,
    pub queries: Vec<QueryHandler>,
}

/// An `#[event_handler]` method.
pub struct EventHandler {
    pub method: Ident,
    pub is_async: bool,
    pub payload: Type,
    /// What the method takes after the payload, in order.
    pub args: Vec<EventArg>,
    /// The returned `Result`, when the handler can fail the projection.
    pub fallible: Option<Type>,
}

/// An argument of a projection event handler after the payload.
pub enum EventArg {
    /// `&RecordedEvent`.
    Recorded,
    /// `&mut T`: the projection's context.
    Context(Box<Type>),
}

/// A `#[query_handler]` method.
pub struct QueryHandler {
    pub method: Ident,
    pub is_async: bool,
    pub query: Type,
    /// The `Result`'s `Ok` type, where a mismatch with the query's output is reported.
    pub output: Type,
    pub error: Type,
}

const KEYS: &[Symbol] = &[NAME, CONTEXT, CRATE];

impl Projection {
    pub fn from_ast(cx: &Ctxt, args: TokenStream, block: &mut ItemImpl) -> Self {
        let mut name = Attr::none(cx, PROJECTION, NAME);
        let mut context = Attr::none(cx, PROJECTION, CONTEXT);
        let mut krate = Attr::none(cx, PROJECTION, CRATE);
        attr::parse_args(cx, args, |meta| {
            if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == CONTEXT {
                context.set(&meta.path, meta.value()?.parse::<Type>()?);
            } else if meta.path == CRATE {
                krate.set(&meta.path, krate::parse(&meta)?);
            } else {
                attr::unknown_key(cx, PROJECTION, &meta, KEYS)?;
            }
            Ok(())
        });

        if let Some((_, path, _)) = &block.trait_ {
            cx.error_spanned_by(
                path,
                "`#[projection]` goes on an inherent `impl Type { ... }` block, not on a trait impl",
            );
        }
        let ident = syntax::last_ident(&block.self_ty).cloned();
        if ident.is_none() {
            cx.error_spanned_by(
                &block.self_ty,
                "`#[projection]` goes on the impl block of a named type",
            );
        }

        let mut events = Vec::new();
        let mut queries = Vec::new();
        for item in &mut block.items {
            let ImplItem::Fn(method) = item else {
                continue;
            };
            let Some((marker, attribute)) = syntax::take_marker(cx, &mut method.attrs) else {
                continue;
            };
            if marker == EVENT_HANDLER {
                syntax::marker_without_args(cx, &attribute, EVENT_HANDLER);
                syntax::allow_required_shape(method, &["unused_self"]);
                events.extend(EventHandler::from_ast(cx, method));
            } else if marker == QUERY_HANDLER {
                syntax::marker_without_args(cx, &attribute, QUERY_HANDLER);
                syntax::allow_required_shape(method, &["unused_self", "unnecessary_wraps"]);
                queries.extend(QueryHandler::from_ast(cx, method));
            } else if marker == COMMAND_HANDLER {
                cx.error_spanned_by(
                    attribute,
                    "`#[command_handler]` belongs in an `#[aggregate]` impl; a projection reads events and answers queries",
                );
            }
        }

        Projection {
            self_ty: (*block.self_ty).clone(),
            generics: block.generics.clone(),
            ident,
            name: name.get(),
            context: context.get(),
            krate: krate.get().unwrap_or_else(krate::default_path),
            span_tokens: quote::ToTokens::to_token_stream(&block.self_ty),
            events,
            queries,
        }
    }
}

const EVENT_ARGS: &str = "a projection's `#[event_handler]` takes the event payload `&Payload`, then optionally `&RecordedEvent` and the projection's context `&mut Context`";

impl EventHandler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn) -> Option<Self> {
        let sig = &method.sig;
        syntax::no_generics(cx, sig, EVENT_HANDLER);
        if !matches!(syntax::receiver(sig), Receiver::Ref | Receiver::RefMut) {
            cx.error_at(
                syntax::receiver_span(sig),
                "a projection's `#[event_handler]` takes `&mut self` or `&self`",
            );
        }
        let types = syntax::arg_types(sig);
        let Some((first, rest)) = types.split_first() else {
            cx.error_spanned_by(&sig.ident, EVENT_ARGS);
            return None;
        };
        let payload = match syntax::borrow(first) {
            Borrow::Shared(ty) if !syntax::is_named(ty, "RecordedEvent") => ty.clone(),
            _ => {
                cx.error_spanned_by(first, EVENT_ARGS);
                return None;
            }
        };
        let mut args = Vec::new();
        for ty in rest {
            match syntax::borrow(ty) {
                Borrow::Shared(inner) if syntax::is_named(inner, "RecordedEvent") => {
                    args.push(EventArg::Recorded);
                }
                Borrow::Mut(inner) => args.push(EventArg::Context(Box::new(inner.clone()))),
                Borrow::Shared(_) | Borrow::Owned(_) => cx.error_spanned_by(ty, EVENT_ARGS),
            }
        }
        let fallible = match &sig.output {
            syn::ReturnType::Default => None,
            syn::ReturnType::Type(_, ty) if syntax::is_unit(ty) => None,
            syn::ReturnType::Type(_, ty) if syntax::result_args(ty).is_some() => {
                Some((**ty).clone())
            }
            syn::ReturnType::Type(_, ty) => {
                cx.error_spanned_by(
                    ty,
                    "a projection's `#[event_handler]` returns nothing, or `Result<(), E>` to fail the projection",
                );
                return None;
            }
        };
        Some(EventHandler {
            method: sig.ident.clone(),
            is_async: sig.asyncness.is_some(),
            payload,
            args,
            fallible,
        })
    }
}

const QUERY_RETURN: &str = "a `#[query_handler]` returns `Result<Output, Error>`, with the query's output type and the handler's error type written out";

impl QueryHandler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn) -> Option<Self> {
        let sig = &method.sig;
        syntax::no_generics(cx, sig, QUERY_HANDLER);
        if syntax::receiver(sig) != Receiver::Ref {
            cx.error_at(
                syntax::receiver_span(sig),
                "a `#[query_handler]` takes `&self`: answering a query does not change the read model",
            );
        }
        let query = match syntax::arg_types(sig).as_slice() {
            [ty] => {
                let Borrow::Shared(query) = syntax::borrow(ty) else {
                    cx.error_spanned_by(ty, "a `#[query_handler]` borrows the query: `&Query`");
                    return None;
                };
                query.clone()
            }
            [] => {
                cx.error_spanned_by(
                    &sig.ident,
                    "a `#[query_handler]` takes the query as `&Query` after `&self`",
                );
                return None;
            }
            [_, extra, ..] => {
                cx.error_spanned_by(
                    extra,
                    "a `#[query_handler]` takes one argument, the query as `&Query`",
                );
                return None;
            }
        };
        let syn::ReturnType::Type(_, output) = &sig.output else {
            cx.error_at(syntax::output_span(sig), QUERY_RETURN);
            return None;
        };
        let args = syntax::result_args(output);
        let Some([ok, error]) = args.as_deref() else {
            cx.error_spanned_by(output, QUERY_RETURN);
            return None;
        };
        let (ok, error) = ((*ok).clone(), (*error).clone());
        Some(QueryHandler {
            method: sig.ident.clone(),
            is_async: sig.asyncness.is_some(),
            query,
            output: ok,
            error,
        })
    }
}

//! What the user wrote: the `#[saga(...)]` keys and the marked methods of the impl block,
//! whose markers are removed as they are read.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Member, Path, Token, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{
    COMMAND_HANDLER, COMMANDS, CRATE, DEADLINE_HANDLER, END, EVENT_HANDLER, FAILURE_HANDLER, KEY,
    NAME, QUERY_HANDLER, SAGA, START, Symbol,
};
use crate::internals::syntax::{self, Borrow, Receiver};
use crate::internals::{Ctxt, krate};

/// A saga's impl block.
pub struct Saga {
    pub self_ty: Type,
    /// The type's own name: the default saga name.
    pub ident: Option<Ident>,
    pub name: Option<LitStr>,
    pub krate: Path,
    /// The commands it may send, as listed.
    pub commands: Vec<Type>,
    /// Where to report a block without a starting handler.
    pub span_tokens: TokenStream,
    pub events: Vec<EventHandler>,
    pub failures: Vec<FailureHandler>,
    pub deadlines: Vec<DeadlineHandler>,
}

/// What a handler takes after its message.
pub enum Arg {
    /// `&RecordedEvent` (event handlers only).
    Recorded,
    /// `&mut SagaContext<Self>`.
    Context,
}

/// What a handler returns.
pub enum Output {
    /// Nothing.
    Unit,
    /// Commands to send (`IntoCommands`).
    Commands(Box<Type>),
    /// `Result<T, E>`: an error parks the instance; `T` is `()` or commands.
    Result {
        ok: Option<Box<Type>>,
        err: Box<Type>,
    },
}

/// The common shape of a saga handler.
pub struct Handler {
    pub method: Ident,
    pub is_async: bool,
    /// The message type (payload, command, deadline) the handler is for.
    pub message: Type,
    pub args: Vec<Arg>,
    pub output: Output,
}

/// An `#[event_handler(key = field, start, end)]` method.
pub struct EventHandler {
    pub handler: Handler,
    /// The payload field holding the instance key (`order_id`, `order.id`).
    pub key: Option<Vec<Member>>,
    /// The tokens of the key, for spans.
    pub key_tokens: TokenStream,
    pub start: bool,
    pub end: bool,
    /// The marker, for errors about its arguments.
    pub marker: Attribute,
}

/// A `#[failure_handler]` method taking `&CommandFailed<C>`.
pub struct FailureHandler {
    pub handler: Handler,
}

/// A `#[deadline_handler]` method taking `&Deadline`.
pub struct DeadlineHandler {
    pub handler: Handler,
}

const KEYS: &[Symbol] = &[COMMANDS, NAME, CRATE];
const MARKERS: &[Symbol] = &[
    EVENT_HANDLER,
    FAILURE_HANDLER,
    DEADLINE_HANDLER,
    COMMAND_HANDLER,
    QUERY_HANDLER,
];

impl Saga {
    pub fn from_ast(cx: &Ctxt, args: TokenStream, block: &mut ItemImpl) -> Self {
        let mut name = Attr::none(cx, SAGA, NAME);
        let mut krate = Attr::none(cx, SAGA, CRATE);
        let mut commands = Attr::none(cx, SAGA, COMMANDS);
        attr::parse_args(cx, args, |meta| {
            if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == CRATE {
                krate.set(&meta.path, krate::parse(&meta)?);
            } else if meta.path == COMMANDS {
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                commands.set(&meta.path, list.into_iter().collect::<Vec<_>>());
            } else {
                attr::unknown_key(cx, SAGA, &meta, KEYS)?;
            }
            Ok(())
        });

        if let Some((_, path, _)) = &block.trait_ {
            cx.error_spanned_by(
                path,
                "`#[saga]` goes on an inherent `impl Type { ... }` block, not on a trait impl",
            );
        }
        if !block.generics.params.is_empty() {
            cx.error_spanned_by(
                &block.generics,
                "a `#[saga]` type cannot be generic: its stored instances are of one type",
            );
        }
        let ident = syntax::last_ident(&block.self_ty).cloned();
        if ident.is_none() {
            cx.error_spanned_by(
                &block.self_ty,
                "`#[saga]` goes on the impl block of a named type",
            );
        }

        let mut events = Vec::new();
        let mut failures = Vec::new();
        let mut deadlines = Vec::new();
        for item in &mut block.items {
            let ImplItem::Fn(method) = item else {
                continue;
            };
            let Some((marker, attribute)) = take_marker(cx, &mut method.attrs) else {
                continue;
            };
            syntax::allow_required_shape(method, &["unused_self", "needless_pass_by_value"]);
            if marker == EVENT_HANDLER {
                events.extend(EventHandler::from_ast(cx, method, attribute));
            } else if marker == FAILURE_HANDLER {
                syntax::marker_without_args(cx, &attribute, FAILURE_HANDLER);
                failures.extend(
                    Handler::from_ast(cx, method, FAILURE_HANDLER, FAILURE_ARGS)
                        .and_then(|handler| FailureHandler::from_handler(cx, handler)),
                );
            } else if marker == DEADLINE_HANDLER {
                syntax::marker_without_args(cx, &attribute, DEADLINE_HANDLER);
                deadlines.extend(
                    Handler::from_ast(cx, method, DEADLINE_HANDLER, DEADLINE_ARGS)
                        .map(|handler| DeadlineHandler { handler }),
                );
            } else {
                cx.error_spanned_by(
                    attribute,
                    format!(
                        "`#[{marker}]` does not belong in a `#[saga]` impl; a saga has `#[event_handler]`, `#[failure_handler]` and `#[deadline_handler]` methods"
                    ),
                );
            }
        }

        Saga {
            self_ty: (*block.self_ty).clone(),
            ident,
            name: name.get(),
            krate: krate.get().unwrap_or_else(krate::default_path),
            commands: commands.get().unwrap_or_default(),
            span_tokens: block.self_ty.to_token_stream(),
            events,
            failures,
            deadlines,
        }
    }
}

/// The saga handler marker of a method, removed from its attributes. A second marker is an
/// error.
fn take_marker(cx: &Ctxt, attrs: &mut Vec<Attribute>) -> Option<(Symbol, Attribute)> {
    let mut found: Option<(Symbol, Attribute)> = None;
    attrs.retain(|attr| {
        let Some(symbol) = MARKERS
            .iter()
            .copied()
            .find(|symbol| attr.path() == *symbol)
        else {
            return true;
        };
        match &found {
            Some((first, _)) => cx.error_spanned_by(
                attr,
                format!("a method is one handler, and this one is already `#[{first}]`"),
            ),
            None => found = Some((symbol, attr.clone())),
        }
        false
    });
    found
}

const EVENT_ARGS: &str = "a saga's `#[event_handler]` takes the event payload `&Payload`, then optionally `&RecordedEvent` and `&mut SagaContext<Self>`";
const FAILURE_ARGS: &str = "a `#[failure_handler]` takes `&CommandFailed<Command>`, then optionally `&mut SagaContext<Self>`";
const DEADLINE_ARGS: &str = "a `#[deadline_handler]` takes the deadline `&Deadline`, then optionally `&mut SagaContext<Self>`";
const RETURNS: &str = "a saga handler returns nothing, commands to send (a declared command, a tuple, `Option` or `Vec` of them), or a `Result` of either to park the instance on an error";

impl Handler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn, marker: Symbol, shape: &str) -> Option<Self> {
        let sig = &method.sig;
        syntax::no_generics(cx, sig, marker);
        if syntax::receiver(sig) != Receiver::RefMut {
            cx.error_at(
                syntax::receiver_span(sig),
                format!("a saga's `#[{marker}]` takes `&mut self`: it changes the saga's state"),
            );
        }
        let types = syntax::arg_types(sig);
        let Some((first, rest)) = types.split_first() else {
            cx.error_spanned_by(&sig.ident, shape);
            return None;
        };
        let message = match syntax::borrow(first) {
            Borrow::Shared(ty)
                if !syntax::is_named(ty, "RecordedEvent")
                    && !syntax::is_named(ty, "SagaContext") =>
            {
                ty.clone()
            }
            _ => {
                cx.error_spanned_by(first, shape);
                return None;
            }
        };
        let mut args = Vec::new();
        for ty in rest {
            match syntax::borrow(ty) {
                Borrow::Shared(inner)
                    if marker == EVENT_HANDLER && syntax::is_named(inner, "RecordedEvent") =>
                {
                    args.push(Arg::Recorded);
                }
                Borrow::Mut(inner) if syntax::is_named(inner, "SagaContext") => {
                    args.push(Arg::Context);
                }
                _ => cx.error_spanned_by(ty, shape),
            }
        }
        let output = match &sig.output {
            syn::ReturnType::Default => Output::Unit,
            syn::ReturnType::Type(_, ty) if syntax::is_unit(ty) => Output::Unit,
            syn::ReturnType::Type(_, ty) => match syntax::result_args(ty).as_deref() {
                Some([ok, err]) => Output::Result {
                    ok: (!syntax::is_unit(ok)).then(|| Box::new((*ok).clone())),
                    err: Box::new((*err).clone()),
                },
                Some(_) => {
                    cx.error_spanned_by(ty, RETURNS);
                    return None;
                }
                None => Output::Commands(ty.clone()),
            },
        };
        Some(Handler {
            method: sig.ident.clone(),
            is_async: sig.asyncness.is_some(),
            message,
            args,
            output,
        })
    }
}

impl EventHandler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn, marker: Attribute) -> Option<Self> {
        let mut key = None;
        let mut key_tokens = TokenStream::new();
        let mut start = false;
        let mut end = false;
        if !matches!(marker.meta, syn::Meta::Path(_)) {
            let parsed = marker.parse_nested_meta(|meta| {
                if meta.path == KEY {
                    let value = meta.value()?;
                    let fork = value.fork();
                    let mut members = vec![value.parse::<Member>()?];
                    while value.peek(Token![.]) {
                        value.parse::<Token![.]>()?;
                        members.push(value.parse::<Member>()?);
                    }
                    key_tokens = fork
                        .cursor()
                        .token_stream()
                        .into_iter()
                        .take(members.len() * 2 - 1)
                        .collect();
                    if key.is_some() {
                        return Err(meta.error("duplicate `event_handler` attribute `key`"));
                    }
                    key = Some(members);
                } else if meta.path == START {
                    attr::flag(&meta, START)?;
                    start = true;
                } else if meta.path == END {
                    attr::flag(&meta, END)?;
                    end = true;
                } else {
                    attr::unknown_key(cx, EVENT_HANDLER, &meta, &[KEY, START, END])?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
            }
        }
        let handler = Handler::from_ast(cx, method, EVENT_HANDLER, EVENT_ARGS)?;
        Some(EventHandler {
            handler,
            key,
            key_tokens,
            start,
            end,
            marker,
        })
    }
}

impl FailureHandler {
    fn from_handler(cx: &Ctxt, mut handler: Handler) -> Option<Self> {
        let message = &handler.message;
        let command = match message {
            Type::Path(p) if syntax::is_named(message, "CommandFailed") => {
                match p.path.segments.last().map(|s| &s.arguments) {
                    Some(syn::PathArguments::AngleBracketed(args)) if args.args.len() == 1 => {
                        match args.args.first() {
                            Some(syn::GenericArgument::Type(ty)) => Some(ty.clone()),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(command) = command else {
            cx.error_spanned_by(message, FAILURE_ARGS);
            return None;
        };
        handler.message = command;
        Some(FailureHandler { handler })
    }
}

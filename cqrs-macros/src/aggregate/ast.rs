//! What the user wrote: the `#[aggregate(...)]` keys and the marked methods of the impl block,
//! whose markers are removed as they are read.

use proc_macro2::TokenStream;
use syn::parse::Parse;
use syn::punctuated::Punctuated;
use syn::{Ident, ImplItem, ImplItemFn, ItemImpl, LitInt, LitStr, Path, Token, Type};

use crate::internals::attr::{self, Attr};
use crate::internals::symbol::{
    AGGREGATE, COMMAND_HANDLER, CRATE, ERROR, EVENT, EVENT_HANDLER, IGNORE, NAME, QUERY_HANDLER,
    SERVICES, SNAPSHOT, Symbol, UNIQUE_KEYS,
};
use crate::internals::syntax::{self, Borrow, Receiver};
use crate::internals::{Ctxt, krate};

/// An aggregate's impl block.
pub struct Aggregate {
    /// The type the block is for.
    pub self_ty: Type,
    /// The type's own name: the default stream category. `None` when nothing can be generated
    /// for the block (a trait impl, a generic impl, an unnamed type).
    pub ident: Option<Ident>,
    pub event: Option<Type>,
    pub error: Option<Type>,
    pub services: Option<Type>,
    pub name: Option<LitStr>,
    /// The `snapshot` key and its schema version.
    pub snapshot: Option<(TokenStream, LitInt)>,
    /// The payload types applied as no-ops.
    pub ignore: Vec<Type>,
    /// The `unique_keys` key itself, when given: the user implements `UniqueKeys`.
    pub unique_keys: Option<TokenStream>,
    pub krate: Path,
    /// Whether an unknown key was given: likely a misspelt required key, already reported.
    pub unknown_keys: bool,
    pub commands: Vec<CommandHandler>,
    pub events: Vec<EventHandler>,
    pub units: Vec<UnitHandler>,
}

/// A `#[command_handler]` method.
pub struct CommandHandler {
    pub method: Ident,
    pub is_async: bool,
    /// The command type, without its `&`.
    pub command: Type,
    /// Whether the method takes the command by value (and so needs a clone of it).
    pub by_value: bool,
    /// What the method takes after the command, in order.
    pub args: Vec<HandlerArg>,
    /// The `Ok` type of the returned `Result`, when written out.
    pub events: Option<Type>,
    /// The returned type.
    pub output: Type,
}

/// An argument of a command handler after the command.
pub enum HandlerArg {
    /// `&CommandContext`.
    Context,
    /// `&T`: the aggregate's services.
    Services(Box<Type>),
}

/// An `#[event_handler]` method taking a payload.
pub struct EventHandler {
    pub method: Ident,
    pub payload: Type,
}

/// An `#[event_handler(Variant)]` method for a unit variant.
pub struct UnitHandler {
    pub method: Ident,
    pub variant: Ident,
}

const KEYS: &[Symbol] = &[
    EVENT,
    ERROR,
    SERVICES,
    NAME,
    SNAPSHOT,
    IGNORE,
    UNIQUE_KEYS,
    CRATE,
];

impl Aggregate {
    pub fn from_ast(cx: &Ctxt, args: TokenStream, block: &mut ItemImpl) -> Self {
        let keys = Keys::parse(cx, args);

        let mut supported = true;
        if let Some((_, path, _)) = &block.trait_ {
            supported = false;
            cx.error_spanned_by(
                path,
                "`#[aggregate]` goes on an inherent `impl Type { ... }` block, not on a trait impl",
            );
        }
        if !block.generics.params.is_empty() {
            supported = false;
            cx.error_spanned_by(
                &block.generics,
                "`#[aggregate]` does not support generic impl blocks",
            );
        }
        let ident = syntax::last_ident(&block.self_ty).cloned();
        if ident.is_none() {
            cx.error_spanned_by(
                &block.self_ty,
                "`#[aggregate]` goes on the impl block of a named type",
            );
        }
        // Nothing is generated for a block of an unsupported kind, not even a stand-in.
        let ident = ident.filter(|_| supported);

        let mut commands = Vec::new();
        let mut events = Vec::new();
        let mut units = Vec::new();
        for item in &mut block.items {
            let ImplItem::Fn(method) = item else {
                continue;
            };
            let Some((marker, attribute)) = syntax::take_marker(cx, &mut method.attrs) else {
                continue;
            };
            if marker == COMMAND_HANDLER {
                syntax::marker_without_args(cx, &attribute, COMMAND_HANDLER);
                syntax::allow_required_shape(method, &["unused_self", "unnecessary_wraps"]);
                commands.extend(CommandHandler::from_ast(cx, method));
            } else if marker == EVENT_HANDLER {
                syntax::allow_required_shape(method, &["unused_self"]);
                match event_handler_variant(cx, &attribute) {
                    Ok(Some(variant)) => units.extend(UnitHandler::from_ast(cx, method, variant)),
                    Ok(None) => events.extend(EventHandler::from_ast(cx, method)),
                    Err(()) => {}
                }
            } else if marker == QUERY_HANDLER {
                cx.error_spanned_by(
                    attribute,
                    "`#[query_handler]` belongs in a `#[projection]` impl; an aggregate handles commands",
                );
            }
        }

        Aggregate {
            self_ty: (*block.self_ty).clone(),
            ident,
            event: keys.event,
            error: keys.error,
            services: keys.services,
            name: keys.name,
            snapshot: keys.snapshot,
            ignore: keys.ignore,
            unique_keys: keys.unique,
            krate: keys.krate,
            unknown_keys: keys.unknown,
            commands,
            events,
            units,
        }
    }
}

/// The keys of `#[aggregate(...)]`.
struct Keys {
    event: Option<Type>,
    error: Option<Type>,
    services: Option<Type>,
    name: Option<LitStr>,
    snapshot: Option<(TokenStream, LitInt)>,
    ignore: Vec<Type>,
    /// The `unique_keys` key.
    unique: Option<TokenStream>,
    krate: Path,
    unknown: bool,
}

impl Keys {
    fn parse(cx: &Ctxt, args: TokenStream) -> Self {
        let mut event = Attr::none(cx, AGGREGATE, EVENT);
        let mut error = Attr::none(cx, AGGREGATE, ERROR);
        let mut services = Attr::none(cx, AGGREGATE, SERVICES);
        let mut name = Attr::none(cx, AGGREGATE, NAME);
        let mut snapshot = Attr::none(cx, AGGREGATE, SNAPSHOT);
        let mut ignore = Attr::none(cx, AGGREGATE, IGNORE);
        let mut unique_keys = Attr::none(cx, AGGREGATE, UNIQUE_KEYS);
        let mut krate = Attr::none(cx, AGGREGATE, CRATE);
        let mut unknown_keys = false;
        attr::parse_args(cx, args, |meta| {
            if meta.path == EVENT {
                event.set(&meta.path, meta.value()?.parse::<Type>()?);
            } else if meta.path == ERROR {
                error.set(&meta.path, meta.value()?.parse::<Type>()?);
            } else if meta.path == SERVICES {
                services.set(&meta.path, meta.value()?.parse::<Type>()?);
            } else if meta.path == NAME {
                name.set(&meta.path, attr::name(&meta)?);
            } else if meta.path == SNAPSHOT {
                let lit: LitInt = meta.value()?.parse()?;
                lit.base10_parse::<u32>()?;
                snapshot.set(
                    &meta.path,
                    (quote::ToTokens::to_token_stream(&meta.path), lit),
                );
            } else if meta.path == IGNORE {
                let content;
                syn::parenthesized!(content in meta.input);
                let types =
                    Punctuated::<Type, Token![,]>::parse_terminated_with(&content, Type::parse)?;
                ignore.set(&meta.path, types.into_iter().collect::<Vec<_>>());
            } else if meta.path == UNIQUE_KEYS {
                attr::flag(&meta, UNIQUE_KEYS)?;
                unique_keys.set(&meta.path, quote::ToTokens::to_token_stream(&meta.path));
            } else if meta.path == CRATE {
                krate.set(&meta.path, krate::parse(&meta)?);
            } else {
                unknown_keys = true;
                attr::unknown_key(cx, AGGREGATE, &meta, KEYS)?;
            }
            Ok(())
        });
        Keys {
            event: event.get(),
            error: error.get(),
            services: services.get(),
            name: name.get(),
            snapshot: snapshot.get(),
            ignore: ignore.get().unwrap_or_default(),
            unique: unique_keys.get(),
            krate: krate.get().unwrap_or_else(krate::default_path),
            unknown: unknown_keys,
        }
    }
}

/// The unit variant named by `#[event_handler(Variant)]`, `None` for a bare `#[event_handler]`.
fn event_handler_variant(cx: &Ctxt, attribute: &syn::Attribute) -> Result<Option<Ident>, ()> {
    match &attribute.meta {
        syn::Meta::Path(_) => Ok(None),
        syn::Meta::List(_) => attribute.parse_args::<Ident>().map(Some).map_err(|_| {
            cx.error_spanned_by(
                attribute,
                "`#[event_handler(...)]` names one unit variant of the event enum: `#[event_handler(Closed)]`",
            );
        }),
        syn::Meta::NameValue(_) => {
            cx.error_spanned_by(
                attribute,
                "write `#[event_handler]` for a payload, or `#[event_handler(Variant)]` for a unit variant",
            );
            Err(())
        }
    }
}

const COMMAND_RETURN: &str = "a `#[command_handler]` returns `Result<Events, Error>`, where `Events` is a payload type, the event enum, a `Vec` or `Option` of it, or `()`";

impl CommandHandler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn) -> Option<Self> {
        let sig = &method.sig;
        syntax::no_generics(cx, sig, COMMAND_HANDLER);
        if syntax::receiver(sig) != Receiver::Ref {
            cx.error_at(
                syntax::receiver_span(sig),
                "a `#[command_handler]` takes `&self`: it decides on events from the state and does not change it",
            );
        }
        let types = syntax::arg_types(sig);
        let Some((first, rest)) = types.split_first() else {
            cx.error_spanned_by(
                &sig.ident,
                "a `#[command_handler]` takes the command as its first argument after `&self`",
            );
            return None;
        };
        let (command, by_value) = match syntax::borrow(first) {
            Borrow::Shared(ty) if syntax::is_named(ty, "CommandContext") => {
                cx.error_spanned_by(
                    first,
                    "the command comes first in a `#[command_handler]`, before `&CommandContext`",
                );
                return None;
            }
            Borrow::Shared(ty) => (ty.clone(), false),
            Borrow::Owned(ty) => (ty.clone(), true),
            Borrow::Mut(_) => {
                cx.error_spanned_by(
                    first,
                    "a `#[command_handler]` takes the command by reference (`&C`) or by value, not by `&mut`",
                );
                return None;
            }
        };
        let mut args = Vec::new();
        for ty in rest {
            match syntax::borrow(ty) {
                Borrow::Shared(inner) if syntax::is_named(inner, "CommandContext") => {
                    args.push(HandlerArg::Context);
                }
                Borrow::Shared(inner) => args.push(HandlerArg::Services(Box::new(inner.clone()))),
                Borrow::Owned(_) => cx.error_spanned_by(
                    ty,
                    "a `#[command_handler]` takes exactly one command; after it come only the aggregate's services (`&T`) and the command context (`&CommandContext`)",
                ),
                Borrow::Mut(_) => cx.error_spanned_by(
                    ty,
                    "a `#[command_handler]` cannot take `&mut` arguments; it borrows the aggregate's services (`&T`) and the command context (`&CommandContext`)",
                ),
            }
        }
        let output = match &sig.output {
            syn::ReturnType::Type(_, ty) => (**ty).clone(),
            syn::ReturnType::Default => {
                cx.error_at(syntax::output_span(sig), COMMAND_RETURN);
                return None;
            }
        };
        let Some(result_args) = syntax::result_args(&output) else {
            cx.error_spanned_by(&output, COMMAND_RETURN);
            return None;
        };
        Some(CommandHandler {
            method: sig.ident.clone(),
            is_async: sig.asyncness.is_some(),
            command,
            by_value,
            args,
            events: result_args.first().map(|ty| (*ty).clone()),
            output,
        })
    }
}

/// Checks what every aggregate event handler shares: `&mut self`, synchronous, returns nothing.
fn check_event_handler_shape(cx: &Ctxt, method: &ImplItemFn) {
    let sig = &method.sig;
    syntax::no_generics(cx, sig, EVENT_HANDLER);
    if syntax::receiver(sig) != Receiver::RefMut {
        cx.error_at(
            syntax::receiver_span(sig),
            "an aggregate's `#[event_handler]` takes `&mut self`: it applies the event to the state",
        );
    }
    if let Some(asyncness) = &sig.asyncness {
        cx.error_spanned_by(
            asyncness,
            "an aggregate's `#[event_handler]` cannot be `async`: applying an event only changes the state",
        );
    }
    if let syn::ReturnType::Type(_, ty) = &sig.output
        && !syntax::is_unit(ty)
    {
        cx.error_spanned_by(
            ty,
            "an aggregate's `#[event_handler]` returns nothing: an event already happened, so applying it cannot fail",
        );
    }
}

impl EventHandler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn) -> Option<Self> {
        check_event_handler_shape(cx, method);
        let sig = &method.sig;
        let types = syntax::arg_types(sig);
        match types.as_slice() {
            [] => {
                cx.error_spanned_by(
                    &sig.ident,
                    "an `#[event_handler]` takes the event payload as `&Payload`; for a unit variant, name it: `#[event_handler(Variant)]`",
                );
                None
            }
            [ty] => {
                if let Borrow::Shared(payload) = syntax::borrow(ty) {
                    Some(EventHandler {
                        method: sig.ident.clone(),
                        payload: payload.clone(),
                    })
                } else {
                    cx.error_spanned_by(
                        ty,
                        "an `#[event_handler]` borrows the event payload: `&Payload`",
                    );
                    None
                }
            }
            [_, extra, ..] => {
                cx.error_spanned_by(
                    extra,
                    "an aggregate's `#[event_handler]` takes one argument, the event payload as `&Payload`",
                );
                None
            }
        }
    }
}

impl UnitHandler {
    fn from_ast(cx: &Ctxt, method: &ImplItemFn, variant: Ident) -> Option<Self> {
        check_event_handler_shape(cx, method);
        let sig = &method.sig;
        if let Some(first) = syntax::arg_types(sig).first() {
            cx.error_spanned_by(
                first,
                format!(
                    "`#[event_handler({variant})]` applies the unit variant `{variant}` and takes no event argument; a handler taking a payload is marked `#[event_handler]`"
                ),
            );
            return None;
        }
        Some(UnitHandler {
            method: sig.ident.clone(),
            variant,
        })
    }
}

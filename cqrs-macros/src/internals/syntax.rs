//! Reading handler signatures and types the way every macro here agrees on, and placing
//! generated tokens at the user's.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, GenericArgument, Ident, PathArguments, Signature, Type};

/// How a method takes `self`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// An associated function: no `self`.
    None,
    /// `&self`.
    Ref,
    /// `&mut self`.
    RefMut,
    /// `self`, `mut self`, `self: Box<Self>`, ...
    Other,
}

/// How `sig` takes `self`.
pub fn receiver(sig: &Signature) -> Receiver {
    match sig.receiver() {
        None => Receiver::None,
        Some(receiver) if receiver.colon_token.is_some() => match &*receiver.ty {
            Type::Reference(r) if is_self(&r.elem) => {
                if r.mutability.is_some() {
                    Receiver::RefMut
                } else {
                    Receiver::Ref
                }
            }
            _ => Receiver::Other,
        },
        Some(receiver) => match (&receiver.reference, &receiver.mutability) {
            (Some(_), None) => Receiver::Ref,
            (Some(_), Some(_)) => Receiver::RefMut,
            (None, _) => Receiver::Other,
        },
    }
}

fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// Where to point at a method's receiver, or at its name when it has none.
pub fn receiver_span(sig: &Signature) -> Span {
    sig.receiver().map_or_else(|| sig.ident.span(), first_span)
}

/// The types of the arguments after the receiver.
pub fn arg_types(sig: &Signature) -> Vec<&Type> {
    sig.inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(&*typed.ty),
            FnArg::Receiver(_) => None,
        })
        .collect()
}

/// How an argument's type borrows.
#[derive(Clone, Copy)]
pub enum Borrow<'a> {
    /// `&T`: the referenced type.
    Shared(&'a Type),
    /// `&mut T`: the referenced type.
    Mut(&'a Type),
    /// `T` by value.
    Owned(&'a Type),
}

/// Splits `&T`, `&mut T` and `T`, looking through invisible groups.
pub fn borrow(ty: &Type) -> Borrow<'_> {
    match ungroup(ty) {
        Type::Reference(r) if r.mutability.is_some() => Borrow::Mut(ungroup(&r.elem)),
        Type::Reference(r) => Borrow::Shared(ungroup(&r.elem)),
        other => Borrow::Owned(other),
    }
}

fn ungroup(mut ty: &Type) -> &Type {
    while let Type::Group(group) = ty {
        ty = &group.elem;
    }
    ty
}

/// The last identifier of a plain path type (`CommandContext` in `cqrs_core::CommandContext`).
pub fn last_ident(ty: &Type) -> Option<&Ident> {
    match ungroup(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| &s.ident),
        _ => None,
    }
}

/// Whether `ty` is a path type whose last segment is `name`.
pub fn is_named(ty: &Type, name: &str) -> bool {
    last_ident(ty).is_some_and(|ident| ident == name)
}

/// For a type whose last segment is `Result`: its type arguments (none, one for an alias
/// like `Result<T>`, or two).
pub fn result_args(ty: &Type) -> Option<Vec<&Type>> {
    let Type::Path(p) = ungroup(ty) else {
        return None;
    };
    let last = p.path.segments.last()?;
    if p.qself.is_some() || last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Some(Vec::new());
    };
    Some(
        args.args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
    )
}

/// Whether `ty` is `()`.
pub fn is_unit(ty: &Type) -> bool {
    matches!(ungroup(ty), Type::Tuple(t) if t.elems.is_empty())
}

/// Whether two types are written with the same tokens (the only comparison a macro can make).
pub fn same_tokens<A: ToTokens, B: ToTokens>(a: A, b: B) -> bool {
    a.into_token_stream().to_string() == b.into_token_stream().to_string()
}

/// Tokens as a user would write them, for messages: `Vec<Opened>`, `crate::Account`.
pub fn display<T: ToTokens>(tokens: T) -> String {
    let text = tokens.into_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        let next = chars.peek().copied().unwrap_or(' ');
        let drop_space = c == ' '
            && (matches!(previous, ':' | '<' | '&' | '(' | '[')
                || matches!(next, ':' | '<' | '>' | ',' | ')' | ']'));
        if !drop_space {
            out.push(c);
        }
        previous = c;
    }
    out
}

/// The span of the first token of `tokens`, or the call site when there is none.
pub fn first_span<T: ToTokens>(tokens: T) -> Span {
    tokens
        .into_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |token| token.span())
}

/// A span that points at the user's `tokens` but resolves names like the macro's own output.
///
/// Generated code placed here reports type errors at the user's token, while lints that skip
/// macro output (`unused_qualifications`, clippy's) still see it as generated.
pub fn at_user<T: ToTokens>(tokens: T) -> Span {
    first_span(tokens).resolved_at(Span::call_site())
}

/// The crate path `p` placed at `span` (see [`respan`]).
pub fn path_at(p: &proc_macro2::TokenStream, span: Span) -> proc_macro2::TokenStream {
    respan(p.clone(), span)
}

/// The `validate` method of `#[command(validate)]` and `#[query(validate)]`, spanned at the
/// user's `validate` key so a missing `Validate` impl or feature is reported there.
pub fn validate_fn(
    p: &proc_macro2::TokenStream,
    key: &proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let span = at_user(key);
    let p = path_at(p, span);
    quote::quote_spanned! {span=>
        fn validate(&self) -> ::core::result::Result<(), #p::ValidationErrors> {
            #p::validate(self)
        }
    }
}

/// Where to point at a signature's return type, or at its closing parenthesis when it has none.
pub fn output_span(sig: &Signature) -> Span {
    match &sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => sig.paren_token.span.close(),
    }
}

/// Parses the item an impl-block attribute is on. When it is not an impl block, the item comes
/// back untouched with the error, so that it still compiles as the user wrote it.
pub fn inherent_impl(
    attr: super::symbol::Symbol,
    item: &proc_macro2::TokenStream,
) -> Result<syn::ItemImpl, proc_macro2::TokenStream> {
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Impl(block)) => Ok(block),
        Ok(other) => {
            let error = syn::Error::new_spanned(
                other,
                format!("`#[{attr}]` goes on an inherent `impl Type {{ ... }}` block"),
            )
            .to_compile_error();
            Err(quote::quote!(#item #error))
        }
        Err(error) => {
            let error = error.to_compile_error();
            Err(quote::quote!(#item #error))
        }
    }
}

/// The handler marker of a method (`#[command_handler]`, `#[event_handler]`,
/// `#[query_handler]`), removed from its attributes. A second marker is an error.
pub fn take_marker(
    cx: &super::Ctxt,
    attrs: &mut Vec<Attribute>,
) -> Option<(super::symbol::Symbol, Attribute)> {
    use super::symbol::{COMMAND_HANDLER, EVENT_HANDLER, QUERY_HANDLER};
    let mut found: Option<(super::symbol::Symbol, Attribute)> = None;
    attrs.retain(|attr| {
        let Some(symbol) = [COMMAND_HANDLER, EVENT_HANDLER, QUERY_HANDLER]
            .into_iter()
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

/// Errors unless a marker attribute is written bare (`#[command_handler]`).
pub fn marker_without_args(cx: &super::Ctxt, attr: &Attribute, name: super::symbol::Symbol) {
    if !matches!(attr.meta, syn::Meta::Path(_)) {
        cx.error_spanned_by(attr, format!("`#[{name}]` takes no arguments"));
    }
}

/// Errors when a handler method has generic parameters.
pub fn no_generics(cx: &super::Ctxt, sig: &Signature, name: super::symbol::Symbol) {
    let message =
        format!("a `#[{name}]` cannot be generic: its argument types say what it handles");
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(&sig.generics, message);
    } else if let Some(where_clause) = &sig.generics.where_clause {
        cx.error_spanned_by(where_clause, message);
    }
}

/// `tokens` with every token, nested ones included, placed at `span`.
///
/// Used for paths the macro interpolates (the crate path) into code placed at a user's token,
/// so that an error there covers the user's token alone rather than reaching back to the
/// attribute.
pub fn respan(tokens: proc_macro2::TokenStream, span: Span) -> proc_macro2::TokenStream {
    use proc_macro2::{Group, TokenTree};
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Allows, on a handler method, the clippy lints that its required shape trips: a command
/// handler takes `&self` and returns a `Result` even when it reads no state and cannot fail.
/// The lints would blame the user for the macro's contract.
pub fn allow_required_shape(method: &mut syn::ImplItemFn, lints: &[&str]) {
    let lints = lints.iter().map(|lint| {
        let lint = Ident::new(lint, Span::call_site());
        quote::quote!(clippy::#lint)
    });
    method.attrs.push(syn::parse_quote!(#[allow(#(#lints),*)]));
}

/// The body of the `domain_code` method of `Aggregate` and `HandlesQuery`: the error's
/// `DomainError` code when its (concrete) type implements the trait, `None` otherwise.
pub fn domain_code_fn(p: &proc_macro2::TokenStream, error: &Type) -> proc_macro2::TokenStream {
    quote::quote! {
        fn domain_code(error: &#error) -> ::core::option::Option<&'static str> {
            #[allow(unused_imports)]
            use #p::{ViaAnyError as _, ViaDomainError as _};
            (&#p::DomainCode(error)).domain_code()
        }
    }
}

/// The distinct stored type names of `payloads` (`EventPayload::STORED_TYPES`), as one
/// constant slice. Payload types come from `#[derive(Event)]` enums, which are never generic,
/// so the inner constants name no generic parameter of the impl.
pub fn stored_types(payloads: &[&Type], p: &proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let groups = payloads.iter().map(|payload| {
        let span = at_user(payload);
        let p = path_at(p, span);
        quote::quote_spanned!(span=> <#payload as #p::EventPayload>::STORED_TYPES)
    });
    quote::quote! {
        {
            const __CQRS_GROUPS: &[&[&str]] = &[#(#groups),*];
            const __CQRS_LEN: usize = #p::distinct_len(__CQRS_GROUPS);
            const __CQRS_TYPES: [&str; __CQRS_LEN] = #p::distinct(__CQRS_GROUPS);
            &__CQRS_TYPES
        }
    }
}

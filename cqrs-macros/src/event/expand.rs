//! The `Event` impl, the payload links, the application to an aggregate, and the stand-in
//! emitted with the errors when the input is wrong.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;

use super::ast::Step;
use super::{ast, check};
use crate::internals::syntax::{at_user, path_at};

pub fn expand(event: &check::Event<'_>) -> TokenStream {
    let krate = event.krate;
    let p = quote!(#krate::__private);
    let event_impl = event_impl(event, &p);
    let payload_impls = event.variants.iter().filter_map(|variant| {
        let payload = variant.payload?;
        Some(payload_impls(event, variant, payload, &p))
    });
    let apply_to = apply_to(event, &p);
    let unit_checks = unit_checks(event, &p);
    quote! {
        const _: () = {
            #event_impl
            #(#payload_impls)*
            #apply_to
            #unit_checks
        };
    }
}

fn event_impl(event: &check::Event<'_>, p: &TokenStream) -> TokenStream {
    let ident = event.ident;
    let mut types = Vec::new();
    let mut aliases = Vec::new();
    let mut event_types = Vec::new();
    let mut versions = Vec::new();
    let mut to_payload = Vec::new();
    let mut decoding = Decoding::default();
    for variant in &event.variants {
        let v = variant.ident;
        let name = &variant.name;
        let version = Literal::u32_unsuffixed(variant.version);
        let variant_name = v.unraw().to_string();
        types.push(quote! {
            #p::EventType { name: #name, version: #version, variant: #variant_name }
        });
        for alias in &variant.aliases {
            aliases.push(quote!(#p::EventAlias { alias: #alias, name: #name }));
        }
        let pattern = if variant.payload.is_some() {
            quote!(Self::#v(..))
        } else {
            quote!(Self::#v)
        };
        event_types.push(quote!(#pattern => #name));
        versions.push(quote!(#pattern => #version));
        if let Some(payload) = variant.payload {
            let span = at_user(payload);
            let p = path_at(p, span);
            to_payload.push(quote_spanned! {span=>
                Self::#v(payload) => #p::encode_variant(payload)
            });
        } else {
            to_payload.push(quote! {
                Self::#v => ::core::result::Result::Ok(#p::Payload::null())
            });
        }
        let index = decoding.upcast_fns.len();
        variant_decoding(ident, variant, index, p, &mut decoding);
    }
    let Decoding {
        from_payload,
        alias_arms,
        upcast_fns,
        decode_all,
    } = decoding;
    let payload_unused = event
        .variants
        .iter()
        .all(|variant| variant.payload.is_none() && variant.upcasts.is_empty())
        .then(|| quote!(let _ = payload;));
    let (aliases_fn, unknown) = aliases_fn(ident, &alias_arms, p);
    let aliases = (!aliases.is_empty())
        .then(|| quote!(const ALIASES: &'static [#p::EventAlias] = &[#(#aliases),*];));
    let decode_all = decode_all_fn(&decode_all, p);
    quote! {
        #[automatically_derived]
        impl #p::Event for #ident {
            const TYPES: &'static [#p::EventType] = &[#(#types),*];
            #aliases
            fn event_type(&self) -> &'static str {
                match self {
                    #(#event_types,)*
                }
            }
            fn schema_version(&self) -> u32 {
                match self {
                    #(#versions,)*
                }
            }
            fn to_payload(
                &self,
            ) -> ::core::result::Result<#p::Payload, #p::serde_json::Error> {
                match self {
                    #(#to_payload,)*
                }
            }
            fn from_payload(
                event_type: &str,
                version: u32,
                payload: &#p::Payload,
            ) -> ::core::result::Result<Self, #p::EventDecodeError> {
                #payload_unused
                #(#upcast_fns)*
                #aliases_fn
                match event_type {
                    #(#from_payload)*
                    _ => #unknown,
                }
            }
            #decode_all
        }
    }
}

/// The out-of-line match over old names, and what `from_payload` returns for a name it does
/// not know. Old names out of line too: the match over current names is the one an enum
/// without aliases has.
fn aliases_fn(
    ident: &syn::Ident,
    alias_arms: &[TokenStream],
    p: &TokenStream,
) -> (Option<TokenStream>, TokenStream) {
    if alias_arms.is_empty() {
        (
            None,
            quote!(::core::result::Result::Err(#p::unknown_event(event_type))),
        )
    } else {
        let aliases_fn = quote! {
            #[cold]
            #[inline(never)]
            fn __cqrs_alias(
                event_type: &str,
                version: u32,
                payload: &#p::Payload,
            ) -> ::core::result::Result<#ident, #p::EventDecodeError> {
                match event_type {
                    #(#alias_arms,)*
                    _ => ::core::result::Result::Err(#p::unknown_event(event_type)),
                }
            }
        };
        (
            Some(aliases_fn),
            quote!(__cqrs_alias(event_type, version, payload)),
        )
    }
}

/// `decode_all`, when some variant has an upcaster of the `many` kind.
fn decode_all_fn(arms: &[TokenStream], p: &TokenStream) -> Option<TokenStream> {
    (!arms.is_empty()).then(|| {
        quote! {
            fn decode_all(
                event_type: &str,
                version: u32,
                payload: &#p::Payload,
            ) -> ::core::result::Result<#p::Decoded<Self>, #p::EventDecodeError> {
                match event_type {
                    #(#arms)*
                    _ => {}
                }
                <Self as #p::Event>::from_payload(event_type, version, payload)
                    .map(#p::Decoded::One)
            }
        }
    })
}

/// The generated decoding, gathered over the variants.
#[derive(Default)]
struct Decoding {
    /// `from_payload`'s arms for the current names.
    from_payload: Vec<TokenStream>,
    /// Arms for the old names, matched out of line.
    alias_arms: Vec<TokenStream>,
    /// The out-of-line functions reading old versions.
    upcast_fns: Vec<TokenStream>,
    /// `decode_all`'s arms for the stored forms an upcaster of the `many` kind reads.
    decode_all: Vec<TokenStream>,
}

/// How `variant` is read: its current name and version straight to serde, older versions
/// and old names through an out-of-line function (`__cqrs_upcast_{index}`), so the current
/// name and version cost what they cost without upcasters.
fn variant_decoding(
    ident: &syn::Ident,
    variant: &check::Variant<'_>,
    index: usize,
    p: &TokenStream,
    out: &mut Decoding,
) {
    let v = variant.ident;
    let name = &variant.name;
    let version = Literal::u32_unsuffixed(variant.version);
    // `at` is `Self` in the method, the enum's name in the out-of-line function.
    let decode = |at: &TokenStream| {
        if let Some(payload) = variant.payload {
            let span = at_user(payload);
            let p = path_at(p, span);
            quote_spanned! {span=>
                #p::decode_variant(event_type, payload).map(#at::#v)
            }
        } else {
            quote!(::core::result::Result::Ok(#at::#v))
        }
    };
    let decode_here = decode(&quote!(Self));
    let unsupported = quote! {
        ::core::result::Result::Err(#p::unsupported_version(event_type, version, #version))
    };
    if variant.upcasts.is_empty() {
        let arm = |decode: &TokenStream| {
            quote! {
                {
                    if version != #version {
                        return #unsupported;
                    }
                    #decode
                }
            }
        };
        let here = arm(&decode_here);
        out.from_payload.push(quote!(#name => #here));
        let there = arm(&decode(&quote!(#ident)));
        for alias in &variant.aliases {
            out.alias_arms.push(quote!(#alias => #there));
        }
        return;
    }
    let (old_versions, many_versions) = old_versions(ident, variant, p);
    // Every version but the current one, for the variant's name, and every version for its
    // aliases: out of line, so the current name and version cost what they cost without
    // upcasters.
    let upcast = format_ident!("__cqrs_upcast_{index}");
    let decode_elsewhere = decode(&quote!(#ident));
    out.upcast_fns.push(quote! {
        #[cold]
        #[inline(never)]
        fn #upcast(
            event_type: &str,
            version: u32,
            payload: &#p::Payload,
        ) -> ::core::result::Result<#ident, #p::EventDecodeError> {
            match version {
                #version => #decode_elsewhere,
                #(#old_versions)*
                _ => #unsupported,
            }
        }
    });
    out.from_payload.push(quote! {
        #name => {
            if version == #version {
                return #decode_here;
            }
            #upcast(event_type, version, payload)
        }
    });
    for alias in &variant.aliases {
        out.alias_arms
            .push(quote!(#alias => #upcast(event_type, version, payload)));
    }
    let stored_names = stored_names(variant);
    if !many_versions.is_empty() {
        out.decode_all.push(quote! {
            #stored_names => match version {
                #(#many_versions)*
                _ => {}
            },
        });
    }
}

/// The arms reading each old version of `variant` (the out-of-line function's), and those of
/// `decode_all` for the versions an upcaster of the `many` kind ends.
fn old_versions(
    ident: &syn::Ident,
    variant: &check::Variant<'_>,
    p: &TokenStream,
) -> (Vec<TokenStream>, Vec<TokenStream>) {
    let mut old_versions = Vec::new();
    let mut many_versions = Vec::new();
    for from in variant.upcasts.keys() {
        let from_lit = Literal::u32_unsuffixed(*from);
        let (steps, end) = chain(ident, variant, *from, p);
        match end {
            End::Event(event) => old_versions.push(quote! {
                #from_lit => {
                    #(#steps)*
                    ::core::result::Result::Ok(#event)
                },
            }),
            End::Many(events) => {
                old_versions.push(quote! {
                    #from_lit => #p::exactly_one(
                        event_type,
                        version,
                        <#ident as #p::Event>::decode_all(event_type, version, payload)?,
                    ),
                });
                many_versions.push(quote! {
                    #from_lit => {
                        #(#steps)*
                        return ::core::result::Result::Ok(#p::Decoded::Many(#events));
                    }
                });
            }
        }
    }
    (old_versions, many_versions)
}

/// The pattern of the names a variant is stored under: its name and its aliases.
fn stored_names(variant: &check::Variant<'_>) -> TokenStream {
    let name = &variant.name;
    let aliases = &variant.aliases;
    quote!(#name #(| #aliases)*)
}

/// Where an upcast chain ends.
enum End {
    /// The variant, built from `v`.
    Event(TokenStream),
    /// Current events, from an upcaster of the `many` kind.
    Many(TokenStream),
}

/// What `v` holds between two steps of a chain.
#[derive(Clone, Copy)]
enum Held {
    /// Nothing yet: the stored payload is still text.
    Stored,
    /// A JSON value (after a raw upcaster).
    Json,
    /// The typed payload the next step reads (annotated by the step before).
    Typed,
}

/// The statements taking a stored payload of version `from` through the upcasters to the
/// current version. Each typed step's output is annotated with the type the next step reads,
/// spanned at the user's `with = T`, so a wrong `Upcast::Next` is reported there.
fn chain(
    ident: &syn::Ident,
    variant: &check::Variant<'_>,
    from: u32,
    p: &TokenStream,
) -> (Vec<TokenStream>, End) {
    let mut steps = Vec::new();
    let mut held = Held::Stored;
    let mut at = from;
    let value = quote!(#p::serde_json::Value);
    while at < variant.version {
        let Some(step) = variant.upcasts.get(&at) else {
            // The check rejected chains with a gap.
            break;
        };
        match step {
            Step::With(ty) => {
                let span = at_user(ty);
                let ps = path_at(p, span);
                match held {
                    Held::Stored => steps.push(quote_spanned! {span=>
                        let v: #ty = #ps::decode_variant(event_type, payload)?;
                    }),
                    Held::Json => steps.push(quote_spanned! {span=>
                        let v: #ty = #ps::from_json_value(event_type, v)?;
                    }),
                    Held::Typed => {}
                }
                let next = at + 1;
                let upcast = quote_spanned!(span=> #ps::upcast::<#ty>(v));
                if next == variant.version {
                    let target = variant.payload.map_or_else(|| quote!(()), |t| quote!(#t));
                    steps.push(quote_spanned!(span=> let v: #target = #upcast;));
                    held = Held::Typed;
                } else {
                    match variant.upcasts.get(&next) {
                        Some(Step::With(target)) => {
                            steps.push(quote_spanned!(span=> let v: #target = #upcast;));
                            held = Held::Typed;
                        }
                        Some(Step::Raw(_)) => {
                            let next = Literal::u32_unsuffixed(next);
                            steps.push(quote_spanned! {span=>
                                let v: #value = #ps::to_json_value(event_type, #next, &#upcast)?;
                            });
                            held = Held::Json;
                        }
                        Some(Step::Many(_)) | None => {
                            steps.push(quote_spanned!(span=> let v = #upcast;));
                            held = Held::Typed;
                        }
                    }
                }
            }
            Step::Raw(f) => {
                let span = at_user(f);
                let ps = path_at(p, span);
                if let Held::Stored = held {
                    steps.push(quote_spanned! {span=>
                        let v: #value = #ps::decode_variant(event_type, payload)?;
                    });
                }
                let at_lit = Literal::u32_unsuffixed(at);
                steps.push(quote_spanned! {span=>
                    let v: #value = #ps::raw_step(event_type, #at_lit, #f(v))?;
                });
                held = Held::Json;
            }
            Step::Many(f) => {
                let span = at_user(f);
                let ps = path_at(p, span);
                let arg = match held {
                    Held::Stored => {
                        quote_spanned!(span=> #ps::decode_variant(event_type, payload)?)
                    }
                    Held::Json => quote_spanned!(span=> #ps::from_json_value(event_type, v)?),
                    Held::Typed => quote!(v),
                };
                let events = quote_spanned! {span=>
                    {
                        let events: #ps::std::vec::Vec<#ident> = #f(#arg);
                        events
                    }
                };
                return (steps, End::Many(events));
            }
        }
        at += 1;
    }
    let v = variant.ident;
    let event = match (variant.payload, held) {
        (Some(payload), Held::Json) => {
            let span = at_user(payload);
            let ps = path_at(p, span);
            steps.push(quote_spanned! {span=>
                let v: #payload = #ps::from_json_value(event_type, v)?;
            });
            quote!(#ident::#v(v))
        }
        (Some(_), _) => quote!(#ident::#v(v)),
        (None, _) => {
            steps.push(quote!(let _ = v;));
            quote!(#ident::#v)
        }
    };
    (steps, End::Event(event))
}

fn payload_impls(
    event: &check::Event<'_>,
    variant: &check::Variant<'_>,
    payload: &syn::Type,
    p: &TokenStream,
) -> TokenStream {
    let ident = event.ident;
    let v = variant.ident;
    let name = &variant.name;
    let version = Literal::u32_unsuffixed(variant.version);
    let other_variants =
        (event.variants.len() > 1).then(|| quote!(_ => ::core::option::Option::None,));
    let stored = stored_types(event, variant);
    let stored_types = (stored.len() > 1)
        .then(|| quote!(const STORED_TYPES: &'static [&'static str] = &[#(#stored),*];));
    quote! {
        #[automatically_derived]
        impl #p::EventPayload for #payload {
            type Event = #ident;
            const EVENT_TYPE: &'static str = #name;
            const SCHEMA_VERSION: u32 = #version;
            #stored_types
            fn into_event(self) -> #ident {
                #ident::#v(self)
            }
            fn from_event(event: #ident) -> ::core::option::Option<Self> {
                match event {
                    #ident::#v(payload) => ::core::option::Option::Some(payload),
                    #other_variants
                }
            }
        }
        #[automatically_derived]
        impl #p::PayloadOf<#ident> for #payload {}
        #[automatically_derived]
        impl ::core::convert::From<#payload> for #ident {
            fn from(payload: #payload) -> Self {
                Self::#v(payload)
            }
        }
        #[automatically_derived]
        impl #p::IntoEvents<#ident> for #payload {
            fn into_events(self) -> #p::std::vec::Vec<#ident> {
                #p::std::vec![#ident::#v(self)]
            }
        }
    }
}

/// The names a stored event read as `variant` may carry: its name, its aliases, and those of
/// every variant with an upcaster of the `many` kind (which may produce any variant).
fn stored_types<'a>(event: &'a check::Event<'_>, variant: &'a check::Variant<'_>) -> Vec<&'a str> {
    let mut names = vec![variant.name.as_str()];
    let own = std::iter::once(variant);
    let splitting = event.variants.iter().filter(|v| v.has_many());
    for v in own.chain(splitting) {
        for name in std::iter::once(&v.name).chain(&v.aliases) {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    names
}

/// The generic parameter naming the aggregate in the impls below.
fn aggregate_param() -> syn::Ident {
    format_ident!("__CqrsAggregate")
}

fn unit_message(event: &check::Event<'_>, variant: &syn::Ident) -> String {
    let variant = variant.unraw();
    format!(
        "the aggregate has no `#[event_handler({variant})]` for unit event `{}::{variant}`",
        event.ident.unraw()
    )
}

fn apply_to(event: &check::Event<'_>, p: &TokenStream) -> TokenStream {
    let ident = event.ident;
    let a = aggregate_param();
    let bounds = event.variants.iter().filter_map(|variant| {
        let payload = variant.payload?;
        let span = at_user(payload);
        let p = path_at(p, span);
        Some(quote_spanned!(span=> #a: #p::Apply<#payload>))
    });
    let const_checks = event
        .variants
        .iter()
        .filter(|v| v.payload.is_none())
        .map(|variant| {
            let name = variant.ident.unraw().to_string();
            let message = unit_message(event, variant.ident);
            quote! {
                const {
                    ::core::assert!(
                        #p::contains_str(<#a as #p::ApplyUnit<#ident>>::HANDLED, #name),
                        #message
                    );
                }
            }
        });
    let arms = event.variants.iter().map(|variant| {
        let v = variant.ident;
        if let Some(payload) = variant.payload {
            quote! {
                Self::#v(payload) => #p::Apply::<#payload>::apply(aggregate, payload)
            }
        } else {
            let name = v.unraw().to_string();
            quote! {
                Self::#v => #p::ApplyUnit::<#ident>::apply_unit(aggregate, #name)
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl<#a> #p::ApplyTo<#a> for #ident
        where
            #(#bounds,)*
            #a: #p::ApplyUnit<#ident>,
        {
            fn apply_to(&self, aggregate: &mut #a) {
                #(#const_checks)*
                match self {
                    #(#arms,)*
                }
            }
        }
    }
}

fn unit_checks(event: &check::Event<'_>, p: &TokenStream) -> TokenStream {
    let ident = event.ident;
    let a = aggregate_param();
    let units: Vec<&check::Variant<'_>> = event
        .variants
        .iter()
        .filter(|v| v.payload.is_none())
        .collect();
    let names = units.iter().map(|v| v.ident.unraw().to_string());
    let asserts = units.iter().map(|variant| {
        let name = variant.ident.unraw().to_string();
        let message = unit_message(event, variant.ident);
        let span = at_user(variant.ident);
        let p = path_at(p, span);
        quote_spanned! {span=>
            ::core::assert!(
                #p::contains_str(<#a as #p::ApplyUnit<#ident>>::HANDLED, #name),
                #message
            );
        }
    });
    quote! {
        #[automatically_derived]
        impl #p::UnitVariants for #ident {
            const UNIT_VARIANTS: &'static [&'static str] = &[#(#names),*];
        }
        #[automatically_derived]
        impl<#a: #p::ApplyUnit<#ident>> #p::UnitHandlersCheck<#a> for #ident {
            const CHECK: () = {
                #(#asserts)*
            };
        }
    }
}

/// The errors, plus stand-in impls so that the aggregates using the enum do not fail too.
pub fn fallback(event: &ast::Event<'_>, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    if !event.input.generics.params.is_empty() {
        return errors;
    }
    let ident = &event.input.ident;
    let krate = &event.krate;
    let p = quote!(#krate::__private);
    let a = aggregate_param();
    let units = event
        .variants
        .iter()
        .filter(|v| v.payload.is_none())
        .map(|v| v.ident.unraw().to_string());
    // Each payload type once: a payload shared by two variants is one of the reported errors.
    let mut seen = std::collections::HashSet::new();
    let payloads = event
        .variants
        .iter()
        .filter_map(|v| v.payload)
        .filter(|payload| seen.insert(payload.to_token_stream().to_string()));
    quote! {
        #errors
        const _: () = {
            #(
                #[automatically_derived]
                impl #p::PayloadOf<#ident> for #payloads {}
            )*
            #[automatically_derived]
            impl #p::Event for #ident {
                const TYPES: &'static [#p::EventType] = &[];
                fn event_type(&self) -> &'static str {
                    ::core::unreachable!()
                }
                fn schema_version(&self) -> u32 {
                    ::core::unreachable!()
                }
                fn to_payload(
                    &self,
                ) -> ::core::result::Result<#p::Payload, #p::serde_json::Error> {
                    ::core::unreachable!()
                }
                fn from_payload(
                    event_type: &str,
                    _: u32,
                    _: &#p::Payload,
                ) -> ::core::result::Result<Self, #p::EventDecodeError> {
                    ::core::result::Result::Err(#p::unknown_event(event_type))
                }
            }
            #[automatically_derived]
            impl<#a> #p::ApplyTo<#a> for #ident {
                fn apply_to(&self, _: &mut #a) {
                    ::core::unreachable!()
                }
            }
            #[automatically_derived]
            impl #p::UnitVariants for #ident {
                const UNIT_VARIANTS: &'static [&'static str] = &[#(#units),*];
            }
            #[automatically_derived]
            impl<#a> #p::UnitHandlersCheck<#a> for #ident {
                const CHECK: () = ();
            }
        };
    }
}

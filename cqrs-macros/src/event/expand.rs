//! The `Event` impl, the payload links, the application to an aggregate, and the stand-in
//! emitted with the errors when the input is wrong.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;

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
    let mut event_types = Vec::new();
    let mut versions = Vec::new();
    let mut to_payload = Vec::new();
    let mut from_payload = Vec::new();
    for variant in &event.variants {
        let v = variant.ident;
        let name = &variant.name;
        let version = Literal::u32_unsuffixed(variant.version);
        let variant_name = v.unraw().to_string();
        types.push(quote! {
            #p::EventType { name: #name, version: #version, variant: #variant_name }
        });
        let pattern = if variant.payload.is_some() {
            quote!(Self::#v(..))
        } else {
            quote!(Self::#v)
        };
        event_types.push(quote!(#pattern => #name));
        versions.push(quote!(#pattern => #version));
        let decode = if let Some(payload) = variant.payload {
            let span = at_user(payload);
            let p = path_at(p, span);
            to_payload.push(quote_spanned! {span=>
                Self::#v(payload) => #p::encode_variant(payload)
            });
            quote_spanned! {span=>
                #p::decode_variant(event_type, payload).map(Self::#v)
            }
        } else {
            to_payload.push(quote! {
                Self::#v => ::core::result::Result::Ok(#p::Payload::null())
            });
            quote!(::core::result::Result::Ok(Self::#v))
        };
        from_payload.push(quote! {
            #name => {
                if version != #version {
                    return ::core::result::Result::Err(
                        #p::unsupported_version(event_type, version, #version),
                    );
                }
                #decode
            }
        });
    }
    let payload_unused = event
        .variants
        .iter()
        .all(|variant| variant.payload.is_none())
        .then(|| quote!(let _ = payload;));
    quote! {
        #[automatically_derived]
        impl #p::Event for #ident {
            const TYPES: &'static [#p::EventType] = &[#(#types),*];
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
                match event_type {
                    #(#from_payload)*
                    _ => ::core::result::Result::Err(#p::unknown_event(event_type)),
                }
            }
        }
    }
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
    quote! {
        #[automatically_derived]
        impl #p::EventPayload for #payload {
            type Event = #ident;
            const EVENT_TYPE: &'static str = #name;
            const SCHEMA_VERSION: u32 = #version;
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

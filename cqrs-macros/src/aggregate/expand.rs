//! The `Aggregate`, `Apply<P>`, `ApplyUnit<E>`, `Handles<C>`, `DispatchCommands` and (unless
//! the user writes it) `UniqueKeys` impls.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;

use super::ast::{self, CommandHandler, HandlerArg};
use super::check::Aggregate;
use crate::internals::syntax::{at_user, display, domain_code_fn, path_at};

pub fn expand(aggregate: &Aggregate<'_>) -> TokenStream {
    let krate = aggregate.krate;
    let p = quote!(#krate::__private);
    let aggregate_impl = aggregate_impl(aggregate, &p);
    let apply_impls = apply_impls(aggregate, &p);
    let apply_unit = apply_unit(aggregate, &p);
    let handles = aggregate
        .commands
        .iter()
        .map(|handler| handles(aggregate, handler, &p));
    let dispatch = dispatch_commands(aggregate, &p);
    let no_unique_keys = no_unique_keys(aggregate, &p);
    quote! {
        const _: () = {
            #aggregate_impl
            #apply_impls
            #apply_unit
            #(#handles)*
            #dispatch
            #no_unique_keys
        };
    }
}

/// Without `unique_keys`, an impl claiming no keys: a `UniqueKeys` impl the user wrote without
/// opting in then conflicts with it, instead of being silently ignored.
fn no_unique_keys(aggregate: &Aggregate<'_>, p: &TokenStream) -> Option<TokenStream> {
    if aggregate.unique_keys.is_some() {
        return None;
    }
    let Aggregate { self_ty, event, .. } = aggregate;
    Some(quote! {
        #[automatically_derived]
        impl #p::UniqueKeys for #self_ty {
            fn unique_keys(&self, _: &#event, _: &mut #p::KeyChanges) {}
        }
    })
}

fn services_type(aggregate: &Aggregate<'_>) -> TokenStream {
    unit_or(aggregate.services)
}

/// The type, or `()` when none is declared.
pub fn unit_or(ty: Option<&syn::Type>) -> TokenStream {
    ty.map_or_else(|| quote!(()), |ty| quote!(#ty))
}

fn aggregate_impl(aggregate: &Aggregate<'_>, p: &TokenStream) -> TokenStream {
    let Aggregate {
        self_ty,
        name,
        event,
        error,
        ..
    } = aggregate;
    let services = services_type(aggregate);
    let at_event = at_user(event);
    let pe = path_at(p, at_event);
    let apply = quote_spanned! {at_event=>
        #pe::ApplyTo::<Self>::apply_to(event, self);
    };
    let snapshot = aggregate.snapshot.map(|(key, version)| {
        let span = at_user(key);
        let p = path_at(p, span);
        quote_spanned! {span=>
            const SNAPSHOT_VERSION: ::core::option::Option<u32> =
                ::core::option::Option::Some(#version);
            fn to_snapshot(
                &self,
            ) -> ::core::option::Option<
                ::core::result::Result<#p::serde_json::Value, #p::serde_json::Error>,
            > {
                #p::to_snapshot(self)
            }
            fn from_snapshot(
                state: &#p::serde_json::Value,
            ) -> ::core::option::Option<::core::result::Result<Self, #p::serde_json::Error>> {
                #p::from_snapshot(state)
            }
        }
    });
    let key_changes = aggregate.unique_keys.map(|key| {
        let span = at_user(key);
        let p = path_at(p, span);
        quote_spanned! {span=>
            fn key_changes(&self, event: &#event, keys: &mut #p::KeyChanges) {
                <Self as #p::UniqueKeys>::unique_keys(self, event, keys);
            }
        }
    });
    let domain_code = domain_code_fn(p, error);
    let unit_check = quote_spanned! {at_event=>
        const _: () = <#event as #pe::UnitHandlersCheck<#self_ty>>::CHECK;
    };
    let variants_exist = aggregate.units.iter().map(|unit| {
        let variant = unit.variant.unraw().to_string();
        let message = format!(
            "`{}` has no unit variant `{variant}`; a variant with a payload is applied by `#[event_handler] fn ...(&mut self, event: &Payload)`",
            display(event)
        );
        let span = at_user(&unit.variant);
        let p = path_at(p, span);
        quote_spanned! {span=>
            const _: () = ::core::assert!(
                #p::contains_str(<#event as #p::UnitVariants>::UNIT_VARIANTS, #variant),
                #message
            );
        }
    });
    quote! {
        #[automatically_derived]
        impl #p::Aggregate for #self_ty {
            const NAME: &'static str = #name;
            type Event = #event;
            type Error = #error;
            type Services = #services;
            fn apply(&mut self, event: &#event) {
                #apply
            }
            #domain_code
            #snapshot
            #key_changes
        }
        #unit_check
        #(#variants_exist)*
    }
}

fn apply_impls(aggregate: &Aggregate<'_>, p: &TokenStream) -> TokenStream {
    let Aggregate { self_ty, event, .. } = aggregate;
    let handled = aggregate.events.iter().map(|handler| {
        let payload = &handler.payload;
        let method = &handler.method;
        let span = at_user(payload);
        let p = path_at(p, span);
        let header = quote_spanned!(span=> impl #p::Apply<#payload> for #self_ty);
        let check = payload_of(payload, event, &p);
        quote! {
            #check
            #[automatically_derived]
            #header {
                fn apply(&mut self, payload: &#payload) {
                    self.#method(payload);
                }
            }
        }
    });
    let ignored = aggregate.ignore.iter().map(|payload| {
        let span = at_user(payload);
        let p = path_at(p, span);
        let header = quote_spanned!(span=> impl #p::Apply<#payload> for #self_ty);
        let check = payload_of(payload, event, &p);
        quote! {
            #check
            #[automatically_derived]
            #header {
                fn apply(&mut self, _: &#payload) {}
            }
        }
    });
    quote!(#(#handled)* #(#ignored)*)
}

/// Requires `payload` to be a payload type of the aggregate's event enum, at the user's type:
/// an `Apply` impl for another type compiles but is never called.
fn payload_of(payload: &syn::Type, event: &syn::Type, p: &TokenStream) -> TokenStream {
    quote_spanned! {at_user(payload)=>
        const _: () = #p::payload_of::<#payload, #event>();
    }
}

fn apply_unit(aggregate: &Aggregate<'_>, p: &TokenStream) -> TokenStream {
    let Aggregate { self_ty, event, .. } = aggregate;
    let names: Vec<String> = aggregate
        .units
        .iter()
        .map(|unit| unit.variant.unraw().to_string())
        .collect();
    let body = if aggregate.units.is_empty() {
        quote!(let _ = variant;)
    } else {
        let arms = aggregate.units.iter().zip(&names).map(|(unit, name)| {
            let method = &unit.method;
            quote!(#name => self.#method(),)
        });
        quote! {
            match variant {
                #(#arms)*
                _ => {}
            }
        }
    };
    quote! {
        #[automatically_derived]
        impl #p::ApplyUnit<#event> for #self_ty {
            const HANDLED: &'static [&'static str] = &[#(#names),*];
            fn apply_unit(&mut self, variant: &'static str) {
                #body
            }
        }
    }
}

fn handles(aggregate: &Aggregate<'_>, handler: &CommandHandler, p: &TokenStream) -> TokenStream {
    let Aggregate {
        self_ty,
        event,
        error,
        ..
    } = aggregate;
    let services = services_type(aggregate);
    let CommandHandler {
        method,
        command,
        by_value,
        args,
        events,
        output,
        is_async,
    } = handler;
    let command_arg = if *by_value {
        quote_spanned!(at_user(command)=> ::core::clone::Clone::clone(command))
    } else {
        quote!(command)
    };
    let args = args.iter().map(|arg| match arg {
        HandlerArg::Context => quote!(ctx),
        HandlerArg::Services(asked) => {
            let span = at_user(asked);
            let p = path_at(p, span);
            quote_spanned! {span=>
                #p::services_as::<#asked, _>(services)
            }
        }
    });
    let await_ = is_async.then(|| quote!(.await));
    let call = quote_spanned! {at_user(output)=>
        self.#method(#command_arg, #(#args),*)#await_?
    };
    let events_span = events.as_ref().map_or_else(|| at_user(output), at_user);
    let pe = path_at(p, events_span);
    let into_events = quote_spanned! {events_span=>
        #pe::IntoEvents::<#event>::into_events(#call)
    };
    let at_command = at_user(command);
    let pc = path_at(p, at_command);
    let header = quote_spanned!(at_command=> impl #pc::Handles<#command> for #self_ty);
    quote! {
        #[automatically_derived]
        #header {
            async fn handle(
                &self,
                command: &#command,
                services: &#services,
                ctx: &#p::CommandContext,
            ) -> ::core::result::Result<#p::std::vec::Vec<#event>, #error> {
                let _ = (services, ctx);
                ::core::result::Result::Ok(#into_events)
            }
        }
    }
}

/// The commands for dynamic dispatch. Like the deserialization bound, the bound that each
/// command targets this aggregate only removes the impl when it fails: the `Handles<C>` impl
/// already reports that mistake, at the command type.
fn dispatch_commands(aggregate: &Aggregate<'_>, p: &TokenStream) -> TokenStream {
    let self_ty = aggregate.self_ty;
    let commands: Vec<_> = aggregate.commands.iter().map(|h| &h.command).collect();
    let body = if commands.is_empty() {
        quote!(let _ = visitor;)
    } else {
        quote!(#(visitor.visit::<#commands>();)*)
    };
    quote! {
        #[automatically_derived]
        impl #p::DispatchCommands for #self_ty
        where
            #(
                for<'__cqrs> #commands: #p::serde::de::DeserializeOwned,
                for<'__cqrs> #commands: #p::Command<Aggregate = Self>,
            )*
        {
            fn visit_commands<__CqrsVisitor: #p::CommandVisitor<Self>>(
                visitor: &mut __CqrsVisitor,
            ) {
                #body
            }
        }
    }
}

/// An `Aggregate` impl that applies nothing, emitted with the errors when the event and error
/// types are known, so that the commands naming this aggregate do not fail too.
pub fn fallback(aggregate: &ast::Aggregate) -> Option<TokenStream> {
    let (Some(event), Some(error), Some(ident)) =
        (&aggregate.event, &aggregate.error, &aggregate.ident)
    else {
        return None;
    };
    let self_ty = &aggregate.self_ty;
    let krate = &aggregate.krate;
    let name = ident.unraw().to_string();
    let services = unit_or(aggregate.services.as_ref());
    Some(quote! {
        const _: () = {
            #[automatically_derived]
            impl #krate::__private::Aggregate for #self_ty {
                const NAME: &'static str = #name;
                type Event = #event;
                type Error = #error;
                type Services = #services;
                fn apply(&mut self, _: &#event) {}
            }
        };
    })
}

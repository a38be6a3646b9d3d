//! The `Saga`, `Sends<C>`, `IntoCommands<S>`, `HandlesDeadline<D>` and `SendCommands<R, M, I>`
//! impls.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};

use super::ast::{Arg, Handler, Output};
use super::check::Saga;
use crate::internals::syntax::{at_user, path_at, stored_types};

pub fn expand(saga: &Saga<'_>) -> TokenStream {
    let krate = saga.krate;
    let p = quote!(#krate::__private::saga);
    let saga_impl = saga_impl(saga, &p);
    let commands = saga.commands.iter().map(|command| sends(saga, command, &p));
    let deadlines = saga.deadlines.iter().map(|(handler, name)| {
        let self_ty = saga.self_ty;
        let deadline = &handler.handler.message;
        let span = at_user(deadline);
        let pd = path_at(&p, span);
        quote_spanned! {span=>
            #[automatically_derived]
            impl #pd::HandlesDeadline<#deadline> for #self_ty {
                const NAME: &'static str = #name;
            }
            const _: () = #pd::deadline_type::<#deadline>();
        }
    });
    let send_commands = send_commands(saga, &p);
    quote! {
        const _: () = {
            #saga_impl
            #(#commands)*
            #(#deadlines)*
            #send_commands
        };
    }
}

// One impl, written out as the user would read it in `cargo expand`.
#[allow(clippy::too_many_lines)]
fn saga_impl(saga: &Saga<'_>, p: &TokenStream) -> TokenStream {
    let Saga { self_ty, name, .. } = saga;
    let krate = saga.krate;
    let payloads: Vec<&syn::Type> = saga.events.iter().map(|h| &h.handler.message).collect();
    let event_types = stored_types(&payloads, &quote!(#krate::__private));
    // The current names of the handlers' types: what an event split by an upcaster is
    // checked against (`EVENT_TYPES` may name more, see `EventPayload::STORED_TYPES`).
    let handled = quote! {
        const HANDLED: &[&str] = &[#(<#payloads as #p::EventPayload>::EVENT_TYPE),*];
    };
    let command_names = saga
        .commands
        .iter()
        .map(|command| quote!(<#command as #p::Command>::NAME));
    let deadline_names = saga.deadlines.iter().map(|(_, name)| name);
    let associate = saga.events.iter().map(|h| {
        let payload = &h.handler.message;
        let members = h.key.iter().flatten();
        let span = at_user(&h.key_tokens);
        let pk = path_at(p, span);
        let key = quote_spanned!(span=> #pk::ToString::to_string(&payload #(.#members)*));
        let (start, end) = (h.start, h.end);
        quote! {
            if let ::core::option::Option::Some(payload) = #p::decode::<Self, #payload>(event, HANDLED)? {
                return ::core::result::Result::Ok(::core::option::Option::Some(
                    #p::association(#key, #start, #end),
                ));
            }
        }
    });
    let on_event = saga.events.iter().map(|h| {
        let payload = &h.handler.message;
        let call = call(&h.handler, p, &quote!(&payload));
        quote! {
            if let ::core::option::Option::Some(payload) = #p::decode::<Self, #payload>(event, HANDLED)? {
                #call
                return ::core::result::Result::Ok(());
            }
        }
    });
    let on_failure = saga.failures.iter().map(|h| {
        let command = &h.handler.message;
        let call = call(&h.handler, p, &quote!(&failed));
        quote! {
            if failure.command_name == <#command as #p::Command>::NAME {
                let failed = #p::failed::<Self, #command>(failure)?;
                #call
                return ::core::result::Result::Ok(());
            }
        }
    });
    let on_deadline = saga.deadlines.iter().map(|(h, name)| {
        let deadline = &h.handler.message;
        let call = call(&h.handler, p, &quote!(&deadline));
        quote! {
            if due.name == #name {
                let deadline = #p::deadline::<Self, #deadline>(due)?;
                #call
                return ::core::result::Result::Ok(());
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #p::Saga for #self_ty {
            const NAME: &'static str = #name;
            const EVENT_TYPES: &'static [&'static str] = #event_types;
            const COMMANDS: &'static [&'static str] = &[#(#command_names),*];
            const DEADLINES: &'static [&'static str] = &[#(#deadline_names),*];

            fn associate(
                event: &#p::RecordedEvent,
            ) -> ::core::result::Result<::core::option::Option<#p::Association>, #p::SagaError> {
                #handled
                #(#associate)*
                ::core::result::Result::Ok(::core::option::Option::None)
            }

            async fn handle_event(
                &mut self,
                event: &#p::RecordedEvent,
                ctx: &mut #p::SagaContext<Self>,
            ) -> ::core::result::Result<(), #p::SagaError> {
                #handled
                #(#on_event)*
                let _ = ctx;
                ::core::result::Result::Ok(())
            }

            async fn handle_failure(
                &mut self,
                failure: &#p::CommandFailure,
                ctx: &mut #p::SagaContext<Self>,
            ) -> ::core::result::Result<(), #p::SagaError> {
                #(#on_failure)*
                let _ = ctx;
                ::core::result::Result::Err(#p::unhandled::<Self>(failure))
            }

            async fn handle_deadline(
                &mut self,
                due: &#p::DeadlineDue,
                ctx: &mut #p::SagaContext<Self>,
            ) -> ::core::result::Result<(), #p::SagaError> {
                #(#on_deadline)*
                let _ = ctx;
                ::core::result::Result::Err(#p::unknown_deadline::<Self>(due))
            }
        }
    }
}

/// Calls a handler with its message and the arguments it asked for, and sends what it
/// returns.
fn call(handler: &Handler, p: &TokenStream, message: &TokenStream) -> TokenStream {
    let Handler {
        method,
        is_async,
        args,
        output,
        ..
    } = handler;
    let args = args.iter().map(|arg| match arg {
        Arg::Recorded => quote!(event),
        Arg::Context => quote!(&mut *ctx),
    });
    let await_ = is_async.then(|| quote!(.await));
    let call = quote!(self.#method(#message, #(#args),*)#await_);
    let send = |ty: &syn::Type| {
        let span = at_user(ty);
        let ps = path_at(p, span);
        quote_spanned! {span=>
            #ps::IntoCommands::<Self>::send_all(commands, ctx);
        }
    };
    match output {
        Output::Unit => quote!(#call;),
        Output::Commands(ty) => {
            let send = send(ty);
            quote! {
                let commands = #call;
                #send
            }
        }
        Output::Result { ok, err } => {
            let span = at_user(err);
            let pe = path_at(p, span);
            let unwrap = quote_spanned! {span=>
                .map_err(#pe::handler_error::<Self, _>)?
            };
            match ok {
                None => quote!(#call #unwrap;),
                Some(ty) => {
                    let send = send(ty);
                    quote! {
                        let commands = #call #unwrap;
                        #send
                    }
                }
            }
        }
    }
}

/// `Sends<C>`, `IntoCommands<Self>` for `C`, and the check that `C` can be sent by a saga.
fn sends(saga: &Saga<'_>, command: &syn::Type, p: &TokenStream) -> TokenStream {
    let self_ty = saga.self_ty;
    let span = at_user(command);
    let pc = path_at(p, span);
    quote_spanned! {span=>
        #[automatically_derived]
        impl #pc::Sends<#command> for #self_ty {}
        #[automatically_derived]
        impl #pc::IntoCommands<#self_ty> for #command {
            fn send_all(self, ctx: &mut #pc::SagaContext<#self_ty>) {
                ctx.send(self);
            }
        }
        const _: () = #pc::saga_command::<#command>();
    }
}

/// `SendCommands<R, M, (I0, (I1, ..))>`: the bus must carry every command.
fn send_commands(saga: &Saga<'_>, p: &TokenStream) -> TokenStream {
    let self_ty = saga.self_ty;
    let indexes: Vec<_> = (0..saga.commands.len())
        .map(|i| format_ident!("__I{}", i, span = Span::call_site()))
        .collect();
    let index_list = indexes
        .iter()
        .rev()
        .fold(quote!(()), |tail, index| quote!((#index, #tail)));
    let routes = saga.commands.iter().zip(&indexes).map(
        |(command, index)| quote!(__R: #p::SagaRoute<#self_ty, #command, #index>, #index: 'static,),
    );
    let branches = saga.commands.iter().zip(&indexes).map(|(command, index)| {
        quote! {
            if name == <#command as #p::Command>::NAME {
                return ::std::boxed::Box::pin(
                    #p::send::<Self, #command, __R, __M, #index>(bus, command, metadata),
                );
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl<__R, __M, #(#indexes),*> #p::SendCommands<__R, __M, #index_list> for #self_ty
        where
            #(#routes)*
            __R: ::core::marker::Send + ::core::marker::Sync + 'static,
            __M: #p::CommandChain,
        {
            fn send<'a>(
                bus: &'a #p::CommandBus<__R, __M>,
                command: &'a #p::OutgoingCommand,
                metadata: #p::Metadata,
            ) -> #p::BoxFuture<'a, ::core::result::Result<#p::Committed, #p::SendFailure>> {
                let name = command.command_name.as_str();
                #(#branches)*
                let _ = metadata;
                let failure = #p::unknown_command::<Self>(command);
                ::std::boxed::Box::pin(async move { ::core::result::Result::Err(failure) })
            }
        }
    }
}

//! The `Projection`, `HandlesQuery<Q>` and `DispatchQueries` impls.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::ast::{EventArg, EventHandler, QueryHandler};
use super::check::Projection;
use crate::internals::syntax::{at_user, domain_code_fn, path_at, stored_types};

pub fn expand(projection: &Projection<'_>) -> TokenStream {
    let krate = projection.krate;
    let p = quote!(#krate::__private);
    let projection_impl = (!projection.events.is_empty()).then(|| projection_impl(projection, &p));
    let handles = projection
        .queries
        .iter()
        .map(|handler| handles_query(projection, handler, &p));
    let dispatch = (!projection.queries.is_empty()).then(|| dispatch_queries(projection, &p));
    let answered = answered_queries(projection, &p);
    quote! {
        const _: () = {
            #projection_impl
            #(#handles)*
            #answered
            #dispatch
        };
    }
}

/// The names the query bus checks for two handlers of one query.
fn answered_queries(projection: &Projection<'_>, p: &TokenStream) -> TokenStream {
    let Projection {
        self_ty, generics, ..
    } = projection;
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let queries = projection.queries.iter().map(|h| &h.query);
    quote! {
        #[automatically_derived]
        impl #impl_generics #p::AnsweredQueries for #self_ty #where_clause {
            const NAMES: &'static [&'static str] = &[#(<#queries as #p::Query>::NAME),*];
        }
    }
}

fn projection_impl(projection: &Projection<'_>, p: &TokenStream) -> TokenStream {
    let Projection {
        self_ty,
        generics,
        name,
        ..
    } = projection;
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let context = projection
        .context
        .map_or_else(|| quote!(()), |ty| quote!(#ty));
    let payloads: Vec<&syn::Type> = projection.events.iter().map(|h| &h.payload).collect();
    let event_types = stored_types(&payloads, p);
    let branches = projection.events.iter().map(|handler| branch(handler, p));
    let upcasted = upcasted(projection, p);
    quote! {
        #[automatically_derived]
        impl #impl_generics #p::Projection for #self_ty #where_clause {
            const NAME: &'static str = #name;
            const EVENT_TYPES: &'static [&'static str] = #event_types;
            type Context = #context;
            async fn project(
                &mut self,
                event: &#p::RecordedEvent,
                ctx: &mut #context,
            ) -> ::core::result::Result<(), #p::ProjectionError> {
                let _ = ctx;
                let event_type = event.event_type.as_str();
                #(#branches)*
                #upcasted
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// The events an old stored form stands for, each to the handler of its payload type, in
/// order (reached only when no handler took the event in its current form).
fn upcasted(projection: &Projection<'_>, p: &TokenStream) -> TokenStream {
    let decode = projection.events.iter().map(|handler| {
        let payload = &handler.payload;
        quote!(upcasted.decode::<#payload>()?;)
    });
    let take = projection.events.iter().map(|handler| {
        let payload = &handler.payload;
        let apply = apply(handler, p);
        quote! {
            if let ::core::option::Option::Some(payload) = upcasted.take::<#payload>() {
                #apply
            }
        }
    });
    quote! {
        let mut upcasted =
            #p::UpcastedEvents::new(<Self as #p::Projection>::NAME, event);
        #(#decode)*
        for mut upcasted in upcasted.into_events() {
            #(#take)else*
        }
    }
}

/// Calls the handler with `payload`, mapping its error.
fn apply(handler: &EventHandler, p: &TokenStream) -> TokenStream {
    let EventHandler {
        method,
        is_async,
        args,
        fallible,
        ..
    } = handler;
    let args = args.iter().map(|arg| match arg {
        EventArg::Recorded => quote!(event),
        EventArg::Context(_) => quote!(ctx),
    });
    let await_ = is_async.then(|| quote!(.await));
    let call = quote!(self.#method(&payload, #(#args),*)#await_);
    match fallible {
        None => quote!(#call;),
        Some(output) => {
            let span = at_user(output);
            let p = path_at(p, span);
            quote_spanned! {span=>
            #call.map_err(|error| {
                #p::handler_error(<Self as #p::Projection>::NAME, event, error)
            })?;
            }
        }
    }
}

/// Decodes and applies one payload type, when the event is of that type in its current
/// version: straight to serde.
fn branch(handler: &EventHandler, p: &TokenStream) -> TokenStream {
    let payload = &handler.payload;
    let apply = apply(handler, p);
    let span = at_user(payload);
    let pp = path_at(p, span);
    let decode = quote_spanned! {span=>
        #pp::decode_payload::<#payload>(<Self as #pp::Projection>::NAME, event)?
    };
    quote! {
        if event_type == <#payload as #p::EventPayload>::EVENT_TYPE
            && event.schema_version == <#payload as #p::EventPayload>::SCHEMA_VERSION
        {
            let payload = #decode;
            #apply
            return ::core::result::Result::Ok(());
        }
    }
}

fn handles_query(
    projection: &Projection<'_>,
    handler: &QueryHandler,
    p: &TokenStream,
) -> TokenStream {
    let Projection {
        self_ty, generics, ..
    } = projection;
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let QueryHandler {
        method,
        is_async,
        query,
        output,
        error,
    } = handler;
    let await_ = is_async.then(|| quote!(.await));
    let call = quote_spanned!(at_user(output)=> self.#method(query)#await_);
    let at_query = at_user(query);
    let pq = path_at(p, at_query);
    let header = quote_spanned! {at_query=>
        impl #impl_generics #pq::HandlesQuery<#query> for #self_ty #where_clause
    };
    let domain_code = domain_code_fn(p, error);
    quote! {
        #[automatically_derived]
        #header {
            type Error = #error;
            async fn handle_query(
                &self,
                query: &#query,
            ) -> ::core::result::Result<<#query as #p::Query>::Output, #error> {
                #call
            }
            #domain_code
        }
    }
}

fn dispatch_queries(projection: &Projection<'_>, p: &TokenStream) -> TokenStream {
    let Projection {
        self_ty, generics, ..
    } = projection;
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let existing = where_clause.map(|w| {
        let predicates = w.predicates.iter();
        quote!(#(#predicates,)*)
    });
    let queries: Vec<_> = projection.queries.iter().map(|h| &h.query).collect();
    quote! {
        #[automatically_derived]
        impl #impl_generics #p::DispatchQueries for #self_ty
        where
            #existing
            #(
                for<'__cqrs> #queries: #p::serde::de::DeserializeOwned,
                for<'__cqrs> <#queries as #p::Query>::Output: #p::serde::Serialize,
            )*
        {
            fn visit_queries<__CqrsVisitor: #p::QueryVisitor<Self>>(visitor: &mut __CqrsVisitor) {
                #(visitor.visit::<#queries>();)*
            }
        }
    }
}

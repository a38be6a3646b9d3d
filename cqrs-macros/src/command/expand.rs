//! The `Command` impl, and the stand-in emitted with the errors when the input is wrong.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::{ast, check};
use crate::internals::syntax::{at_user, path_at, validate_fn};

pub fn expand(command: &check::Command<'_>) -> TokenStream {
    let check::Command {
        ident,
        generics,
        aggregate,
        id,
        name,
        validate,
        idempotency,
        krate,
    } = command;
    let p = quote!(#krate::__private);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let pi = path_at(&p, at_user(id));
    let aggregate_id = quote_spanned! {at_user(id)=>
        #pi::std::string::ToString::to_string(&self.#id)
    };
    let validate = validate.map(|key| validate_fn(&p, key));
    let idempotency = idempotency.as_ref().map(|idempotency| {
        let pi = path_at(&p, at_user(&idempotency.at));
        // Spanned at the user's key, so a command that is not `Serialize` is reported there.
        let body = quote_spanned! {at_user(&idempotency.at)=>
            fn idempotency_body(
                &self,
            ) -> ::core::option::Option<
                ::core::result::Result<#p::std::string::String, #p::serde_json::Error>,
            > {
                ::core::option::Option::Some(#pi::serde_json::to_string(self))
            }
        };
        let key = idempotency.key.map(|field| {
            let pk = path_at(&p, at_user(field));
            quote_spanned! {at_user(field)=>
                fn idempotency_key(&self) -> ::core::option::Option<#p::std::string::String> {
                    ::core::option::Option::Some(#pk::std::string::ToString::to_string(&self.#field))
                }
            }
        });
        quote!(#key #body)
    });
    // Sagas send only commands that take keys; this marks them.
    let idempotent_marker = idempotency.as_ref().map(|_| {
        quote! {
            #[automatically_derived]
            impl #impl_generics #p::IdempotentCommand for #ident #ty_generics #where_clause {}
        }
    });
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::Command for #ident #ty_generics #where_clause {
                const NAME: &'static str = #name;
                type Aggregate = #aggregate;
                fn aggregate_id(&self) -> #p::std::string::String {
                    #aggregate_id
                }
                #validate
                #idempotency
            }
            #idempotent_marker
        };
    }
}

/// The errors, plus a `Command` impl when the aggregate is known, so that the command's
/// handlers elsewhere do not fail too.
pub fn fallback(command: &ast::Command<'_>, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    let Some(aggregate) = &command.aggregate else {
        return errors;
    };
    let ident = &command.input.ident;
    let krate = &command.krate;
    let (impl_generics, ty_generics, where_clause) = command.input.generics.split_for_impl();
    quote! {
        #errors
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::__private::Command for #ident #ty_generics #where_clause {
                const NAME: &'static str = ::core::stringify!(#ident);
                type Aggregate = #aggregate;
                fn aggregate_id(&self) -> #krate::__private::std::string::String {
                    ::core::unreachable!()
                }
            }
        };
    }
}

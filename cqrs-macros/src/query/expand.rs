//! The `Query` impl, and the stand-in emitted with the errors when the input is wrong.

use proc_macro2::TokenStream;
use quote::quote;

use super::{ast, check};
use crate::internals::syntax::validate_fn;

pub fn expand(query: &check::Query<'_>) -> TokenStream {
    let check::Query {
        ident,
        generics,
        output,
        name,
        validate,
        krate,
    } = query;
    let p = quote!(#krate::__private);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let validate = validate.map(|key| validate_fn(&p, key));
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::Query for #ident #ty_generics #where_clause {
                const NAME: &'static str = #name;
                type Output = #output;
                #validate
            }
        };
    }
}

/// The errors, plus a `Query` impl when the output is known, so that the query's handlers
/// elsewhere do not fail too.
pub fn fallback(query: &ast::Query<'_>, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    let Some(output) = &query.output else {
        return errors;
    };
    let ident = &query.input.ident;
    let krate = &query.krate;
    let (impl_generics, ty_generics, where_clause) = query.input.generics.split_for_impl();
    quote! {
        #errors
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::__private::Query for #ident #ty_generics #where_clause {
                const NAME: &'static str = ::core::stringify!(#ident);
                type Output = #output;
            }
        };
    }
}

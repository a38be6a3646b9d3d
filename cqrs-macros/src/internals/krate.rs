//! The path generated code names the runtime crate by.

use syn::meta::ParseNestedMeta;
use syn::{LitStr, Path};

/// `::cqrs_core`: the crate users depend on.
pub fn default_path() -> Path {
    syn::parse_quote!(::cqrs_core)
}

/// Reads `crate = "path"`.
pub fn parse(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let lit: LitStr = meta.value()?.parse()?;
    lit.parse::<Path>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!(
                "`crate` must be a path to `cqrs_core`, like `crate = \"::cqrs_core\"`; found `{}`",
                lit.value()
            ),
        )
    })
}

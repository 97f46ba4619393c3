//! The service's description for reflection: its wire name, docs, and each method's
//! arguments (names and types as written), result and error types, and oneway and
//! idempotent flags.
//! The skeleton's `Service::descriptor` returns it; the server's built-in reflection
//! service serves it.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::Type;

use crate::parse::{doc_text, Output, ServiceDef};

/// The body of `Service::descriptor`. Built at run time, one `push` per method, so a
/// method's `#[cfg]` removes its entry with it (a statement can be configured out, an
/// array element cannot).
pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let wire_name = &def.wire_name;
    let service_docs = doc_text(&def.attrs);
    let pushes = def.methods.iter().map(|m| {
        let cfgs = m.cfgs();
        let name = &m.wire_name;
        let docs = doc_text(&m.attrs);
        let args = m.args.iter().map(|(arg, ty)| {
            let arg = arg.unraw().to_string();
            let ty = type_text(ty);
            quote!((#arg, #ty))
        });
        let (result, error) = match &m.output {
            Output::Unit => ("()".to_owned(), None),
            Output::Plain(ty) => (type_text(ty), None),
            Output::Result { ok, err } => (type_text(ok), Some(type_text(err))),
        };
        let error = match error {
            Some(e) => quote!(::core::option::Option::Some(#e)),
            None => quote!(::core::option::Option::None),
        };
        let (oneway, idempotent) = (m.oneway, m.idempotent);
        quote! {
            #(#cfgs)*
            __rpc_methods.push(::rpc_core::__private::method_descriptor(
                #name, #docs, &[#(#args),*], #result, #error, #oneway, #idempotent,
            ));
        }
    });
    quote! {
        #[allow(unused_mut)]
        let mut __rpc_methods = ::std::vec::Vec::new();
        #(#pushes)*
        ::rpc_core::__private::service_descriptor(#wire_name, #service_docs, __rpc_methods)
    }
}

/// A type as the user wrote it, spaced the way people write Rust: `quote!(#ty)`
/// prints `Vec < Option < u8 > >`, this gives `Vec<Option<u8>>`.
pub(crate) fn type_text(ty: &Type) -> String {
    let spaced = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(spaced.len());
    let chars: Vec<char> = spaced.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let before = out.chars().last();
            let after = chars.get(i + 1).copied();
            // No space after an opener, `&` or `:` (of `::`); none before a closer,
            // `,`, `;`, `<` or `:`.
            let drop_after = matches!(before, Some('<' | '(' | '[' | '&' | ':'));
            let drop_before = matches!(after, Some('>' | ')' | ']' | ',' | ';' | '<' | ':'));
            if drop_after || drop_before {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::type_text;

    fn text(ty: &str) -> String {
        type_text(&syn::parse_str(ty).unwrap())
    }

    #[test]
    fn types_read_as_written() {
        for ty in [
            "u64",
            "Vec<u8>",
            "Option<Vec<(u8,)>>",
            "HashMap<String, u32>",
            "Cow<'static, str>",
            "[u8; 4]",
            "(u32, String)",
            "::std::vec::Vec<crate::Item>",
            "Result<Vec<Item>, Error>",
            "rpc_core::Blob",
            "()",
        ] {
            assert_eq!(text(ty), ty);
        }
        assert_eq!(text("Vec < Option<u8 > >"), "Vec<Option<u8>>");
    }
}

//! The trait itself, with `async fn`s turned into `Send` futures.

use proc_macro2::TokenStream;
use quote::quote;

use crate::parse::ServiceDef;

/// The rewritten trait. Implementations still write `async fn`; the declared return
/// type `impl Future + Send` lets the server run handlers on any thread.
pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let attrs = &def.attrs;
    let vis = &def.vis;
    let ident = &def.ident;
    let methods = def.methods.iter().map(|m| {
        let attrs = &m.attrs;
        let name = &m.ident;
        let args = m.args.iter().map(|(arg, ty)| quote!(#arg: #ty));
        let output = m.output.declared();
        quote! {
            #(#attrs)*
            fn #name(&self, #(#args),*)
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
        }
    });
    quote! {
        #(#attrs)*
        #vis trait #ident: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#methods)*
        }
    }
}

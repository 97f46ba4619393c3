//! The client stub: one method per trait method, returning an `rpc_core::Call`.

use proc_macro2::TokenStream;
use quote::quote;

use super::{args_type, args_value, client_ident, docs};
use crate::parse::{Output, ServiceDef};

pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let vis = &def.vis;
    let trait_ident = &def.ident;
    let client = client_ident(def);
    let wire_name = &def.wire_name;
    let struct_doc = format!(
        "Client stub of [`{trait_ident}`]: each method returns an [`rpc_core::Call`](::rpc_core::Call) \
         to `.await` (future mode), `.blocking()` (sync), `.callback(f)` or `.oneway()`."
    );
    let methods = def.methods.iter().map(|m| {
        let docs = docs(&m.attrs);
        let name = &m.ident;
        let method_name = name.to_string();
        let params = m.args.iter().map(|(arg, ty)| quote!(#arg: #ty));
        let args_ty = args_type(m);
        let args = args_value(m);
        let (ok, err) = match &m.output {
            Output::Unit => (quote!(()), quote!(::rpc_core::NoError)),
            Output::Plain(ty) => (quote!(#ty), quote!(::rpc_core::NoError)),
            Output::Result { ok, err } => (quote!(#ok), quote!(#err)),
        };
        let oneway_note = m.oneway.then(|| {
            quote! {
                #[doc = ""]
                #[doc = "Oneway: the server sends no response; the call completes once the request is written."]
            }
        });
        let make = if m.oneway {
            quote!(::rpc_core::Call::<_, (), ::rpc_core::NoError>::new(::core::clone::Clone::clone(&self.client), #wire_name, #method_name, #args).oneway())
        } else {
            quote!(::rpc_core::Call::new(::core::clone::Clone::clone(&self.client), #wire_name, #method_name, #args))
        };
        quote! {
            #(#docs)*
            #oneway_note
            pub fn #name(&self, #(#params),*) -> ::rpc_core::Call<#args_ty, #ok, #err> {
                #make
            }
        }
    });
    quote! {
        #[doc = #struct_doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client {
            client: ::rpc_core::Client,
        }

        impl #client {
            /// The service's name on the wire.
            pub const SERVICE_NAME: &'static str = #wire_name;

            /// A stub making its calls through `client`.
            pub fn new(client: ::rpc_core::Client) -> Self {
                Self { client }
            }

            #(#methods)*
        }
    }
}

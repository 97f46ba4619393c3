//! The client stub: one method per trait method, returning an `rpc_core::Call`.

use proc_macro2::TokenStream;
use quote::quote;

use super::{args_type, args_value, checks, client_ident};
use crate::parse::{MethodDef, Output, ServiceDef};

pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let vis = &def.vis;
    let cfgs = &def.carried_attrs;
    let deprecated = &def.deprecated;
    let trait_ident = &def.ident;
    let client = client_ident(def);
    let wire_name = &def.wire_name;
    let struct_doc = format!(
        "Client stub of [`{trait_ident}`]: each method returns an [`rpc_core::Call`](::rpc_core::Call) \
         to `.await` (future mode), `.blocking()` (sync), `.callback(f)` or `.oneway()`."
    );
    // One impl block per method: it carries the method's `#[cfg]`s and the `where`
    // clause of its own serde bounds (see `checks`).
    let methods = def.methods.iter().map(|m| {
        let method = method(def, m);
        let method_cfgs = m.cfgs();
        let bounds = checks::client_bounds(m);
        let where_clause = (!bounds.is_empty()).then(|| quote!(where #(#bounds),*));
        quote! {
            #(#cfgs)*
            #(#method_cfgs)*
            #[allow(deprecated)]
            impl #client #where_clause {
                #method
            }
        }
    });
    let idempotent = super::name_list(def, |m| m.idempotent);
    quote! {
        #(#cfgs)*
        #[doc = #struct_doc]
        #deprecated
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client {
            client: ::rpc_core::Client,
        }

        #(#cfgs)*
        #[allow(deprecated)]
        impl #client {
            /// The service's name on the wire.
            pub const SERVICE_NAME: &'static str = #wire_name;

            /// The wire names of the methods marked `#[idempotent]`, for
            /// [`ClusterBuilder::idempotent_methods`](::rpc_core::filter::cluster::ClusterBuilder::idempotent_methods).
            pub const IDEMPOTENT_METHODS: &'static [&'static str] = #idempotent;

            /// A stub making its calls through `client`.
            pub fn new(client: ::rpc_core::Client) -> Self {
                Self { client }
            }
        }

        #(#methods)*
    }
}

/// The stub method for `m`.
fn method(def: &ServiceDef, m: &MethodDef) -> TokenStream {
    let wire_name = &def.wire_name;
    let docs = m.docs();
    let attrs = m.stub_attrs();
    let name = &m.ident;
    let method_name = &m.wire_name;
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
        #(#attrs)*
        pub fn #name(&self, #(#params),*) -> ::rpc_core::Call<#args_ty, #ok, #err> {
            #make
        }
    }
}

//! The server skeleton: decodes arguments, calls the implementation, encodes the reply.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{args_pattern, checks, decoded_args_type, server_ident, SERVER_TYPE_PARAM};
use crate::parse::{MethodDef, Output, ServiceDef};

pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let vis = &def.vis;
    let cfgs = &def.carried_attrs;
    let deprecated = &def.deprecated;
    let trait_ident = &def.ident;
    let server = server_ident(def);
    let s = format_ident!("{}", SERVER_TYPE_PARAM);
    let wire_name = &def.wire_name;
    let struct_doc = format!(
        "Server skeleton of [`{trait_ident}`]: wraps an implementation `{SERVER_TYPE_PARAM}` for \
         [`ServerBuilder::add_service`](::rpc_core::ServerBuilder::add_service)."
    );
    let arms = def.methods.iter().map(|m| arm(def, m));
    let method_list = super::name_list(def, |_| true);
    let descriptor = super::descriptor::generate(def);
    let bounds = checks::server_bounds(def);
    let where_clause = (!bounds.is_empty()).then(|| quote!(where #(#bounds),*));
    quote! {
        #(#cfgs)*
        #[doc = #struct_doc]
        #deprecated
        #vis struct #server<#s> {
            service: ::std::sync::Arc<#s>,
        }

        #(#cfgs)*
        #[allow(deprecated)]
        impl<#s: #trait_ident> #server<#s> {
            /// The skeleton for `service`.
            pub fn new(service: #s) -> Self {
                Self { service: ::std::sync::Arc::new(service) }
            }

            /// The skeleton for a shared `service`.
            pub fn from_arc(service: ::std::sync::Arc<#s>) -> Self {
                Self { service }
            }
        }

        #(#cfgs)*
        #[allow(deprecated)]
        impl<#s> ::core::clone::Clone for #server<#s> {
            fn clone(&self) -> Self {
                Self { service: <::std::sync::Arc<#s> as ::core::clone::Clone>::clone(&self.service) }
            }
        }

        #(#cfgs)*
        #[allow(deprecated)]
        impl<#s> ::core::fmt::Debug for #server<#s> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#server)).field("service", &#wire_name).finish()
            }
        }

        #(#cfgs)*
        #[allow(deprecated)]
        impl<#s: #trait_ident> ::rpc_core::server::Service for #server<#s> #where_clause {
            /// The service's name on the wire.
            fn name(&self) -> &str {
                #wire_name
            }

            /// The wire names of the service's methods.
            fn methods(&self) -> &'static [&'static str] {
                #method_list
            }

            /// The service's description, for the reflection service.
            fn descriptor(&self) -> ::rpc_core::reflection::ServiceDescriptor {
                #descriptor
            }

            /// Decodes the arguments of `method` and starts it on the implementation.
            fn call(
                &self,
                __rpc_method: &str,
                __rpc_args: &[u8],
            ) -> ::core::result::Result<::rpc_core::server::Dispatched, ::rpc_core::server::DispatchError> {
                match __rpc_method {
                    #(#arms)*
                    _ => ::core::result::Result::Err(::rpc_core::__private::method_not_found(#wire_name, __rpc_method)),
                }
            }
        }
    }
}

/// The dispatch arm of `m`, configured like the method.
fn arm(def: &ServiceDef, m: &MethodDef) -> TokenStream {
    let trait_ident = &def.ident;
    let s = format_ident!("{}", SERVER_TYPE_PARAM);
    let cfgs = m.cfgs();
    let name = &m.ident;
    let method_name = &m.wire_name;
    let args_ty = decoded_args_type(m);
    let pattern = args_pattern(m);
    let names = m.args.iter().map(|(arg, _)| arg);
    let wrap = match &m.output {
        Output::Result { .. } => quote!(::rpc_core::server::Fallible),
        _ => quote!(::rpc_core::server::Plain),
    };
    quote! {
        #(#cfgs)*
        #method_name => {
            let #pattern: #args_ty = ::rpc_core::__private::decode_args(__rpc_method, __rpc_args)?;
            let __rpc_service = <::std::sync::Arc<#s> as ::core::clone::Clone>::clone(&self.service);
            ::core::result::Result::Ok(::rpc_core::server::dispatched(async move {
                // Serving a deprecated method is not using it.
                #[allow(deprecated)]
                let __rpc_reply = <#s as #trait_ident>::#name(&*__rpc_service, #(#names),*).await;
                #wrap(__rpc_reply)
            }))
        }
    }
}

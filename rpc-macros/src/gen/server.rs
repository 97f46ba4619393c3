//! The server skeleton: decodes arguments, calls the implementation, encodes the reply.

use proc_macro2::TokenStream;
use quote::quote;

use super::{args_pattern, decoded_args_type, server_ident};
use crate::parse::{Output, ServiceDef};

pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let vis = &def.vis;
    let trait_ident = &def.ident;
    let server = server_ident(def);
    let wire_name = &def.wire_name;
    let struct_doc = format!(
        "Server skeleton of [`{trait_ident}`]: wraps an implementation for \
         [`ServerBuilder::add_service`](::rpc_core::ServerBuilder::add_service)."
    );
    let method_names: Vec<String> = def.methods.iter().map(|m| m.ident.to_string()).collect();
    let arms = def.methods.iter().map(|m| {
        let name = &m.ident;
        let method_name = name.to_string();
        let args_ty = decoded_args_type(m);
        let pattern = args_pattern(m);
        let names = m.args.iter().map(|(arg, _)| arg);
        let wrap = match &m.output {
            Output::Result { .. } => quote!(::rpc_core::__private::Fallible),
            _ => quote!(::rpc_core::__private::Plain),
        };
        quote! {
            #method_name => {
                let #pattern: #args_ty = ::rpc_core::__private::decode_args(__rpc_method, __rpc_args)?;
                let __rpc_service = <::std::sync::Arc<__RpcS> as ::core::clone::Clone>::clone(&self.service);
                ::core::result::Result::Ok(::rpc_core::__private::dispatched(async move {
                    #wrap(<__RpcS as #trait_ident>::#name(&*__rpc_service, #(#names),*).await)
                }))
            }
        }
    });
    quote! {
        #[doc = #struct_doc]
        #vis struct #server<__RpcS> {
            service: ::std::sync::Arc<__RpcS>,
        }

        impl<__RpcS: #trait_ident> #server<__RpcS> {
            /// The skeleton for `service`.
            pub fn new(service: __RpcS) -> Self {
                Self { service: ::std::sync::Arc::new(service) }
            }

            /// The skeleton for a shared `service`.
            pub fn from_arc(service: ::std::sync::Arc<__RpcS>) -> Self {
                Self { service }
            }
        }

        impl<__RpcS> ::core::clone::Clone for #server<__RpcS> {
            fn clone(&self) -> Self {
                Self { service: <::std::sync::Arc<__RpcS> as ::core::clone::Clone>::clone(&self.service) }
            }
        }

        impl<__RpcS> ::core::fmt::Debug for #server<__RpcS> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#server)).field("service", &#wire_name).finish()
            }
        }

        impl<__RpcS: #trait_ident> ::rpc_core::__private::Service for #server<__RpcS> {
            fn name(&self) -> &str {
                #wire_name
            }

            fn methods(&self) -> &'static [&'static str] {
                &[#(#method_names),*]
            }

            fn call(
                &self,
                __rpc_method: &str,
                __rpc_args: &[u8],
            ) -> ::core::result::Result<::rpc_core::__private::Dispatched, ::rpc_core::__private::DispatchError> {
                match __rpc_method {
                    #(#arms)*
                    _ => ::core::result::Result::Err(::rpc_core::__private::method_not_found(#wire_name, __rpc_method)),
                }
            }
        }
    }
}

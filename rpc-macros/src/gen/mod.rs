//! Code generation: one generator per emitted item. Generated code names everything by
//! absolute path (`::rpc_core::...`, `::core::...`) so it compiles in any scope.

mod checks;
mod client;
mod descriptor;
mod server;
mod service_trait;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::parse::{MethodDef, ServiceDef};

/// The name of the server skeleton's type parameter (`FooServer<S>`), chosen to read
/// well in the docs; `validate` refuses trait types that it would shadow.
pub(crate) const SERVER_TYPE_PARAM: &str = "S";

/// Everything `#[service]` emits for `def`.
pub(crate) fn generate(def: &ServiceDef) -> TokenStream {
    let service_trait = service_trait::generate(def);
    let checks = checks::generate(def);
    let client = client::generate(def);
    let server = server::generate(def);
    quote! {
        #service_trait
        #checks
        #client
        #server
    }
}

/// A `'static` list of the wire names of the configured-in methods that `keep`
/// selects: built in a constant, since `#[cfg]` can remove statements but not array
/// elements.
fn name_list(def: &ServiceDef, keep: impl Fn(&MethodDef) -> bool) -> TokenStream {
    let capacity = def.methods.len();
    let pushes = def.methods.iter().filter(|m| keep(m)).map(|m| {
        let cfgs = m.cfgs();
        let name = &m.wire_name;
        quote! {
            #(#cfgs)*
            {
                names[count] = #name;
                count += 1;
            }
        }
    });
    quote! {{
        const CONFIGURED: ([&str; #capacity], usize) = {
            #[allow(unused_mut)]
            let mut names = [""; #capacity];
            #[allow(unused_mut)]
            let mut count = 0usize;
            #(#pushes)*
            (names, count)
        };
        CONFIGURED.0.split_at(CONFIGURED.1).0
    }}
}

/// The argument tuple type of a method as callers see it: `(A, B,)`, or `()` for no
/// arguments (which the client sends as an empty MessagePack array).
fn args_type(method: &MethodDef) -> TokenStream {
    let types = method.args.iter().map(|(_, ty)| ty);
    quote!((#(#types,)*))
}

/// The type the server decodes a method's arguments as: the argument tuple, or
/// `[(); 0]` for none (it reads the empty array, where `()` would want nil).
fn decoded_args_type(method: &MethodDef) -> TokenStream {
    if method.args.is_empty() {
        return quote!([(); 0]);
    }
    args_type(method)
}

/// The argument tuple value built from the argument names.
fn args_value(method: &MethodDef) -> TokenStream {
    let names = method.args.iter().map(|(name, _)| name);
    quote!((#(#names,)*))
}

/// The argument tuple pattern binding the argument names.
fn args_pattern(method: &MethodDef) -> TokenStream {
    if method.args.is_empty() {
        return quote!([]);
    }
    let names = method.args.iter().map(|(name, _)| name);
    quote!((#(#names,)*))
}

/// `FooClient` for trait `Foo`.
fn client_ident(def: &ServiceDef) -> syn::Ident {
    format_ident!("{}Client", def.ident)
}

/// `FooServer` for trait `Foo`.
fn server_ident(def: &ServiceDef) -> syn::Ident {
    format_ident!("{}Server", def.ident)
}

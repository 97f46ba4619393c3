//! The `#[service]` attribute of the RPC framework. Use it through `rpc_core::service`,
//! which documents what it generates and the rules a service trait follows; this crate
//! is an implementation detail.
//!
//! # Layout
//!
//! - `parse`: reads the trait into our own small structs (`parse::ServiceDef`);
//! - `validate`: the checks on types and names, each error at the offending span, all
//!   of them collected before failing;
//! - `gen`: one generator per emitted item: the rewritten trait, the serde checks at
//!   the user's types, the client stub, the server skeleton, the service's
//!   description for reflection.

mod gen;
mod parse;
mod validate;

use proc_macro::TokenStream;

// Documented where users see it: rustdoc shows this function as `rpc_core::service`,
// with the docs of that re-export (which can link to `rpc_core`'s types) followed by
// any docs written here, so there are none here.
#[allow(missing_docs)]
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    match parse::ServiceDef::parse(attr.into(), item.into()) {
        Ok(def) => gen::generate(&def).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

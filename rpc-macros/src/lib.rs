//! The `#[service]` attribute of the RPC framework. Use it through `rpc_core::service`,
//! which documents what it generates; this crate is an implementation detail.
//!
//! # Layout
//!
//! - `parse`: reads the trait into our own small structs (`parse::ServiceDef`),
//!   collecting every unsupported signature as a spanned error;
//! - `gen`: one generator per emitted item: the rewritten trait, the client stub, the
//!   server skeleton.

mod gen;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Turns a trait into an RPC service. See `rpc_core::service` for the full description.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    match parse::ServiceDef::parse(attr.into(), item.into()) {
        Ok(def) => gen::generate(&def).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

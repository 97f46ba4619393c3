//! The serde bounds of every argument, result and error type, checked where the user
//! wrote the type.
//!
//! The wire needs each argument to be `Serialize` (client) and `DeserializeOwned`
//! (server), each result and error the other way round, and all of them `Send`. Left
//! to the generated bodies, a missing bound is reported at `#[service]` in terms of the
//! argument tuple and our plumbing, and again at every call site. So:
//!
//! - [`generate`] names each type in a struct field whose type parameter carries the
//!   bounds (`rpc_core::__private::Argument<T>` and friends), spanned at the user's
//!   type. Field types are checked before any function body, so this is the first
//!   error, at the type, worded by the bound's `#[diagnostic::on_unimplemented]`.
//! - [`client_bounds`] and [`server_bounds`] put the same bounds in `where` clauses
//!   of the stub's and skeleton's impls. The bodies then assume them (no second error
//!   in generated code), and a caller of a stub method whose bounds fail gets "method
//!   exists but its trait bounds were not satisfied", naming the bound, instead of
//!   "`Call<..>` is not a future"; a skeleton whose bounds fail is refused by
//!   `add_service` in the bound's words. The clauses are written `for<'rpc> T: ...`:
//!   a bound on a concrete type without a binder is itself an error
//!   (`trivial_bounds`). They show in the docs, so there is one per type and none for
//!   primitives and `String`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Type;

use crate::parse::{MethodDef, Output, ServiceDef};

/// A type sent over the wire, and which checks it gets.
#[derive(Clone, Copy)]
enum Role {
    Argument,
    Result,
    Error,
}

impl Role {
    /// The assertion struct whose type parameter carries both sides' bounds, naming
    /// `ty`, every token spanned at `ty` (a path with tokens from the macro would be
    /// reported at `#[service]`).
    fn assertion(self, ty: &Type) -> TokenStream {
        let span = ty.span();
        let name = match self {
            Role::Argument => "Argument",
            Role::Result => "ReturnValue",
            Role::Error => "ErrorValue",
        };
        let name = syn::Ident::new(name, span);
        quote_spanned!(span=> ::rpc_core::__private::#name<#ty>)
    }

    /// The bound the client stub relies on.
    fn client_bound(self) -> TokenStream {
        match self {
            Role::Argument => quote!(::rpc_core::__private::SerializeArgument),
            Role::Result => quote!(::rpc_core::__private::DeserializeResult),
            Role::Error => quote!(::rpc_core::__private::DeserializeError),
        }
    }

    /// The bound the server skeleton relies on.
    fn server_bound(self) -> TokenStream {
        match self {
            Role::Argument => quote!(::rpc_core::__private::DeserializeArgument),
            Role::Result => quote!(::rpc_core::__private::SerializeResult),
            Role::Error => quote!(::rpc_core::__private::SerializeError),
        }
    }
}

/// Every type of `method` that crosses the wire, with its role. A oneway method's
/// result is `()` and not checked.
fn wire_types(method: &MethodDef) -> Vec<(&Type, Role)> {
    let mut types: Vec<(&Type, Role)> = method
        .args
        .iter()
        .map(|(_, ty)| (ty, Role::Argument))
        .collect();
    match &method.output {
        Output::Unit => {}
        Output::Plain(ty) => types.push((ty, Role::Result)),
        Output::Result { ok, err } => {
            types.push((ok, Role::Result));
            types.push((err, Role::Error));
        }
    }
    types
}

/// One `const _` per method holding a struct whose fields name each type in its
/// assertion, spanned at the type.
pub(super) fn generate(def: &ServiceDef) -> TokenStream {
    let trait_cfgs = &def.carried_attrs;
    let checks = def.methods.iter().map(|m| {
        let cfgs = m.cfgs();
        let fields = wire_types(m)
            .into_iter()
            .map(|(ty, role)| role.assertion(ty));
        quote! {
            #(#trait_cfgs)*
            #(#cfgs)*
            const _: () = {
                #[allow(dead_code, deprecated)]
                struct __RpcCheck(#(#fields),*);
            };
        }
    });
    quote!(#(#checks)*)
}

/// `where` predicates for the stub method of `method`.
pub(super) fn client_bounds(method: &MethodDef) -> Vec<TokenStream> {
    let mut bounds = Bounds::default();
    for (ty, role) in wire_types(method) {
        bounds.add(ty, role.client_bound());
    }
    bounds.predicates()
}

/// `where` predicates for the skeleton: the server-side bounds of every method that has
/// no `#[cfg]` (a `where` clause cannot be configured per predicate on our minimum Rust
/// version, and a configured-out method's types may not exist).
pub(super) fn server_bounds(def: &ServiceDef) -> Vec<TokenStream> {
    let mut bounds = Bounds::default();
    for m in def.methods.iter().filter(|m| m.cfgs().next().is_none()) {
        for (ty, role) in wire_types(m) {
            bounds.add(ty, role.server_bound());
        }
    }
    bounds.predicates()
}

/// `where` predicates, one per distinct type (as written), so the documentation shows
/// `for<'rpc> u32: DeserializeArgument + SerializeResult + Send` once rather than a
/// clause per use.
#[derive(Default)]
struct Bounds<'a> {
    /// Each type with its traits, in order of first use.
    types: Vec<TypeBounds<'a>>,
}

/// The traits one type needs.
struct TypeBounds<'a> {
    /// The type's tokens, to recognise it when written again.
    key: String,
    ty: &'a Type,
    /// Each trait with its tokens as key.
    traits: Vec<(String, TokenStream)>,
}

impl<'a> Bounds<'a> {
    fn add(&mut self, ty: &'a Type, bound: TokenStream) {
        // A clause for a type that has every bound is only noise in the docs.
        if has_every_bound(ty) {
            return;
        }
        let key = quote!(#ty).to_string();
        let index = match self.types.iter().position(|t| t.key == key) {
            Some(index) => index,
            None => {
                self.types.push(TypeBounds {
                    key,
                    ty,
                    traits: Vec::new(),
                });
                self.types.len() - 1
            }
        };
        let traits = &mut self.types[index].traits;
        let bound_key = bound.to_string();
        if !traits.iter().any(|(k, _)| *k == bound_key) {
            traits.push((bound_key, bound));
        }
    }

    /// The predicates: `for<'rpc> T: A + B + Send`. A bound on a concrete type needs a
    /// binder not to be refused as a trivial bound.
    fn predicates(self) -> Vec<TokenStream> {
        self.types
            .into_iter()
            .map(|TypeBounds { ty, traits, .. }| {
                let traits = traits.into_iter().map(|(_, t)| t);
                quote!(for<'rpc> #ty: #(#traits +)* ::core::marker::Send)
            })
            .collect()
    }
}

/// `bool`, `char`, the integers, the floats and `String`, written as a bare name. (A
/// user's own type of one of these names loses only this tidying: the check at the
/// type still reports it.)
fn has_every_bound(ty: &Type) -> bool {
    const PRIMITIVES: &[&str] = &[
        "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
        "i128", "isize", "f32", "f64", "String",
    ];
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .get_ident()
            .is_some_and(|ident| PRIMITIVES.iter().any(|name| ident == name)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    #[test]
    fn one_predicate_per_type_and_none_for_primitives_and_strings() {
        let def = ServiceDef::parse(
            quote!(),
            quote!(
                trait T {
                    async fn a(&self, x: Item, n: u32) -> Result<Item, Error>;
                    async fn b(&self, x: Item, s: String) -> Vec<Item>;
                    #[cfg(feature = "never")]
                    async fn c(&self, x: Missing);
                }
            ),
        )
        .unwrap();
        let server: Vec<String> = server_bounds(&def).iter().map(|p| p.to_string()).collect();
        assert_eq!(server.len(), 3, "{server:?}");
        assert!(server[0].starts_with("for < 'rpc > Item :"), "{server:?}");
        assert!(server[0].contains("DeserializeArgument"));
        assert!(server[0].contains("SerializeResult"));
        assert!(server[1].starts_with("for < 'rpc > Error :"));
        assert!(server[2].starts_with("for < 'rpc > Vec < Item > :"));
        assert!(!server
            .iter()
            .any(|p| p.contains("Missing") || p.contains("u32") || p.contains("String")));
        let client: Vec<String> = client_bounds(&def.methods[0])
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(client.len(), 2, "{client:?}");
        assert!(client[0].contains("SerializeArgument") && client[0].contains("DeserializeResult"));
    }
}

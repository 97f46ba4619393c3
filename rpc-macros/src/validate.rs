//! Spanned checks on the trait's types and names, collected so that one compile reports
//! every problem.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::Type;

use crate::gen::SERVER_TYPE_PARAM;

/// Names the generated client stub defines itself; methods may not use them.
pub(crate) const RESERVED_METHOD_NAMES: &[&str] = &["new", "SERVICE_NAME"];

/// The prefix of the generated code's own local names; arguments may not use it.
const RESERVED_ARG_PREFIX: &str = "__rpc";

/// Errors collected while reading the trait.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// How many errors so far (to tell whether a method added any).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

/// An argument name the generated skeleton would shadow or be shadowed by.
pub(crate) fn check_arg_name(ident: &syn::Ident, errors: &mut Errors) {
    if ident.to_string().starts_with(RESERVED_ARG_PREFIX) {
        errors.push(
            ident.span(),
            format!("names starting with `{RESERVED_ARG_PREFIX}` are used by the generated code; rename the argument"),
        );
    }
}

/// Rejects types the wire cannot carry (references, borrowed lifetimes, `impl Trait`,
/// trait objects) and type names that the generated server's type parameter would
/// shadow.
pub(crate) fn check_type(ty: &Type, errors: &mut Errors) {
    struct Visitor<'a>(&'a mut Errors);
    impl<'ast> Visit<'ast> for Visitor<'_> {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            // Not descended into: one error per reference is enough.
            self.0.push(
                r.span(),
                "arguments and results must be owned types (no references): the receiving \
                 side deserializes its own copy",
            );
        }
        fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
            self.0.push(
                t.span(),
                "`impl Trait` cannot cross the network; use a concrete type",
            );
        }
        fn visit_type_trait_object(&mut self, t: &'ast syn::TypeTraitObject) {
            self.0.push(
                t.span(),
                "trait objects cannot cross the network; use a concrete type",
            );
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            if l.ident != "static" {
                self.0.push(
                    l.span(),
                    "arguments and results cannot borrow: use owned types (`'static` is allowed, \
                     as in `Cow<'static, str>`)",
                );
            }
        }
        fn visit_type_path(&mut self, p: &'ast syn::TypePath) {
            if p.qself.is_none() && p.path.leading_colon.is_none() {
                if let Some(first) = p.path.segments.first() {
                    if first.ident == SERVER_TYPE_PARAM {
                        self.0.push(
                            first.ident.span(),
                            format!(
                                "`{SERVER_TYPE_PARAM}` is the type parameter of the generated \
                                 server skeleton; name this type by a longer path (`self::{SERVER_TYPE_PARAM}`) \
                                 or rename it"
                            ),
                        );
                    }
                }
            }
            syn::visit::visit_type_path(self, p);
        }
    }
    Visitor(errors).visit_type(ty);
}

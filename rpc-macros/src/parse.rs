//! Parsing and validating the annotated trait into [`ServiceDef`].

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type, Visibility,
};

/// Names the generated client stub defines itself; methods may not use them.
const RESERVED_METHOD_NAMES: &[&str] = &["new", "SERVICE_NAME"];

/// The service as the generators need it.
pub(crate) struct ServiceDef {
    /// Attributes of the trait (doc comments and others), kept on the trait.
    pub(crate) attrs: Vec<Attribute>,
    /// Visibility of the trait, given to the generated types too.
    pub(crate) vis: Visibility,
    /// The trait's name.
    pub(crate) ident: syn::Ident,
    /// The service name on the wire.
    pub(crate) wire_name: String,
    /// The methods, in declaration order.
    pub(crate) methods: Vec<MethodDef>,
}

/// One method of the service.
pub(crate) struct MethodDef {
    /// Attributes with `#[oneway]` removed.
    pub(crate) attrs: Vec<Attribute>,
    /// The method's name.
    pub(crate) ident: syn::Ident,
    /// Arguments after `&self`, as (name, type).
    pub(crate) args: Vec<(syn::Ident, Type)>,
    /// What the method returns.
    pub(crate) output: Output,
    /// Marked `#[oneway]`: no response is sent.
    pub(crate) oneway: bool,
}

/// A method's return type, as the wire sees it.
pub(crate) enum Output {
    /// `()` or nothing.
    Unit,
    /// Any serde type, delivered as the call's result.
    Plain(Box<Type>),
    /// `Result<T, E>`: `T` is the result, `E` the typed application error.
    Result {
        /// The success type.
        ok: Box<Type>,
        /// The service's error type.
        err: Box<Type>,
    },
}

impl Output {
    /// The type the trait method returns.
    pub(crate) fn declared(&self) -> TokenStream {
        match self {
            Output::Unit => quote::quote!(()),
            Output::Plain(ty) => quote::quote!(#ty),
            Output::Result { ok, err } => quote::quote!(::core::result::Result<#ok, #err>),
        }
    }
}

/// Collects errors so that every problem is reported in one compile.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

impl ServiceDef {
    /// Parses `#[service(attr)] item`.
    pub(crate) fn parse(attr: TokenStream, item: TokenStream) -> syn::Result<ServiceDef> {
        let mut wire_name = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("name") {
                let value: syn::LitStr = meta.value()?.parse()?;
                if value.value().is_empty() {
                    return Err(syn::Error::new(
                        value.span(),
                        "the service name must not be empty",
                    ));
                }
                wire_name = Some(value.value());
                Ok(())
            } else {
                Err(meta.error("unknown #[service] option; the only option is `name = \"...\"`"))
            }
        });
        syn::parse::Parser::parse2(parser, attr)?;
        let item: ItemTrait = syn::parse2(item)
            .map_err(|e| syn::Error::new(e.span(), "#[service] goes on a trait"))?;

        let mut errors = Errors::default();
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(item.generics.span(), "a #[service] trait cannot be generic");
        }
        if !item.supertraits.is_empty() {
            errors.push(
                item.supertraits.span(),
                "a #[service] trait cannot declare supertraits (it gets `Send + Sync + 'static`)",
            );
        }
        if let Some(unsafety) = &item.unsafety {
            errors.push(unsafety.span(), "a #[service] trait cannot be unsafe");
        }
        let mut methods = Vec::new();
        for trait_item in &item.items {
            match trait_item {
                TraitItem::Fn(method) => {
                    if let Some(def) = parse_method(method, &mut errors) {
                        methods.push(def);
                    }
                }
                other => errors.push(
                    other.span(),
                    "a #[service] trait can only contain methods (`async fn`)",
                ),
            }
        }
        let def = ServiceDef {
            attrs: item.attrs,
            vis: item.vis,
            wire_name: wire_name.unwrap_or_else(|| item.ident.to_string()),
            ident: item.ident,
            methods,
        };
        errors.finish(def)
    }
}

fn parse_method(method: &TraitItemFn, errors: &mut Errors) -> Option<MethodDef> {
    let sig = &method.sig;
    let before = errors.0.is_some();
    let mut oneway = false;
    let mut attrs = Vec::new();
    for attr in &method.attrs {
        if attr.path().is_ident("oneway") {
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                errors.push(attr.span(), "#[oneway] takes no arguments");
            }
            oneway = true;
        } else {
            attrs.push(attr.clone());
        }
    }
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token.span(),
            "methods of a #[service] trait must be `async fn`",
        );
    }
    if let Some(c) = &sig.constness {
        errors.push(c.span(), "methods of a #[service] trait cannot be `const`");
    }
    if let Some(u) = &sig.unsafety {
        errors.push(u.span(), "methods of a #[service] trait cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.push(
            abi.span(),
            "methods of a #[service] trait cannot have an ABI",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push(v.span(), "methods of a #[service] trait cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            sig.generics.span(),
            "methods of a #[service] trait cannot be generic: the wire needs concrete types",
        );
    }
    if let Some(body) = &method.default {
        errors.push(
            body.span(),
            "methods of a #[service] trait cannot have a default body; implement them in the impl",
        );
    }
    let name = sig.ident.to_string();
    if RESERVED_METHOD_NAMES.contains(&name.as_str()) {
        errors.push(
            sig.ident.span(),
            format!("`{name}` is used by the generated client stub; rename the method"),
        );
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => {
            if receiver.reference.is_none()
                || receiver.mutability.is_some()
                || receiver.colon_token.is_some()
            {
                errors.push(
                    receiver.span(),
                    "the receiver must be `&self`: calls run concurrently on a shared service",
                );
            }
        }
        Some(other) => errors.push(other.span(), "the first argument must be `&self`"),
        None => errors.push(sig.paren_token.span.join(), "the method must take `&self`"),
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            errors.push(input.span(), "only the first argument can be `self`");
            continue;
        };
        let ident = match &*typed.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                errors.push(other.span(), "arguments must be plain names (no patterns)");
                continue;
            }
        };
        check_owned(&typed.ty, errors);
        args.push((ident, (*typed.ty).clone()));
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => {
            check_owned(ty, errors);
            match &**ty {
                Type::Tuple(t) if t.elems.is_empty() => Output::Unit,
                _ => split_result(ty).unwrap_or_else(|| Output::Plain(ty.clone())),
            }
        }
    };
    if oneway && !matches!(output, Output::Unit) {
        errors.push(
            sig.output.span(),
            "a #[oneway] method returns nothing: no response is sent",
        );
    }
    if errors.0.is_some() && !before {
        return None;
    }
    Some(MethodDef {
        attrs,
        ident: sig.ident.clone(),
        args,
        output,
        oneway,
    })
}

/// Rejects types the wire cannot carry: references and `impl Trait`.
fn check_owned(ty: &Type, errors: &mut Errors) {
    struct Visitor<'a>(&'a mut Errors);
    impl<'ast> syn::visit::Visit<'ast> for Visitor<'_> {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            self.0.push(
                r.span(),
                "arguments and results must be owned types (no references): they cross the network",
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
            self.0.push(
                l.span(),
                "arguments and results cannot borrow: use owned types",
            );
        }
    }
    syn::visit::Visit::visit_type(&mut Visitor(errors), ty);
}

/// `Result<T, E>` (by any path ending in `Result` with two type arguments).
fn split_result(ty: &Type) -> Option<Output> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let (ok, err) = (types.next()?, types.next()?);
    if types.next().is_some() || args.args.len() != 2 {
        return None;
    }
    Some(Output::Result {
        ok: Box::new(ok),
        err: Box::new(err),
    })
}

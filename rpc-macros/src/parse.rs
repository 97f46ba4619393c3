//! Parsing and validating the annotated trait into [`ServiceDef`].

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type, Visibility,
};

use crate::validate::{check_arg_name, check_type, Errors, RESERVED_METHOD_NAMES};

/// The service as the generators need it.
pub(crate) struct ServiceDef {
    /// Attributes of the trait (doc comments and others), kept on the trait.
    pub(crate) attrs: Vec<Attribute>,
    /// Visibility of the trait, given to the generated types too.
    pub(crate) vis: Visibility,
    /// The trait's name.
    pub(crate) ident: syn::Ident,
    /// The service name on the wire: the `name` option, or the trait's name without
    /// any `r#`.
    pub(crate) wire_name: String,
    /// The trait's `#[cfg]`s and lint levels, repeated on every generated item: they
    /// come and go together, and `#[allow(non_camel_case_types)]` on `trait r#match`
    /// covers `matchClient` too.
    pub(crate) carried_attrs: Vec<Attribute>,
    /// The trait's `#[deprecated]`, given to the stub and skeleton types too (their
    /// users are the trait's users).
    pub(crate) deprecated: Option<Attribute>,
    /// The methods, in declaration order.
    pub(crate) methods: Vec<MethodDef>,
}

/// The text of the `///` comments among `attrs`, one line per attribute with the one
/// space rustdoc's convention puts after `///` removed, for the service's description.
pub(crate) fn doc_text(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(text),
                        ..
                    }),
                ..
            }) => Some(text.value()),
            _ => None,
        })
        .flat_map(|text| {
            // `split`, not `lines`: an empty `///` line is one empty line.
            text.split('\n')
                .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    lines.join("\n").trim().to_owned()
}

/// One method of the service.
pub(crate) struct MethodDef {
    /// Attributes with `#[oneway]` and `#[idempotent]` removed, kept on the trait method.
    pub(crate) attrs: Vec<Attribute>,
    /// The method's name.
    pub(crate) ident: syn::Ident,
    /// The method name on the wire: the name without any `r#`. Both the stub and the
    /// skeleton use this one value.
    pub(crate) wire_name: String,
    /// Arguments after `&self`, as (name, type).
    pub(crate) args: Vec<(syn::Ident, Type)>,
    /// What the method returns.
    pub(crate) output: Output,
    /// Marked `#[oneway]`: no response is sent.
    pub(crate) oneway: bool,
    /// Marked `#[idempotent]`: running it twice does no harm, so a cluster may retry,
    /// fork or hedge it.
    pub(crate) idempotent: bool,
}

impl MethodDef {
    /// The doc comments, for the stub method.
    pub(crate) fn docs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|a| a.path().is_ident("doc"))
    }

    /// The `#[cfg]`s: every item generated for this method carries them, so a method
    /// configured out takes its stub method, dispatch arm and checks with it.
    pub(crate) fn cfgs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|a| is_cfg(a))
    }

    /// What the stub method carries besides docs and `#[cfg]`s: lint levels (the stub
    /// has the same signature, so `#[allow(clippy::too_many_arguments)]` applies to it
    /// too) and `#[deprecated]` (callers of the stub get the warning).
    pub(crate) fn stub_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs
            .iter()
            .filter(|a| is_lint_level(a) || a.path().is_ident("deprecated"))
    }
}

/// `#[cfg(...)]`; `#[cfg_attr]` is left on the trait method only, since what it
/// expands to may not fit the generated items.
fn is_cfg(attr: &Attribute) -> bool {
    attr.path().is_ident("cfg")
}

/// `#[allow]`, `#[warn]`, `#[deny]`, `#[forbid]`. Not `#[expect]`: repeated on items
/// where the lint does not fire, it would warn that the expectation is unfulfilled.
fn is_lint_level(attr: &Attribute) -> bool {
    const LEVELS: &[&str] = &["allow", "warn", "deny", "forbid"];
    LEVELS.iter().any(|level| attr.path().is_ident(level))
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
            deprecated: item
                .attrs
                .iter()
                .find(|a| a.path().is_ident("deprecated"))
                .cloned(),
            carried_attrs: item
                .attrs
                .iter()
                .filter(|a| is_cfg(a) || is_lint_level(a))
                .cloned()
                .collect(),
            attrs: item.attrs,
            vis: item.vis,
            wire_name: wire_name.unwrap_or_else(|| item.ident.unraw().to_string()),
            ident: item.ident,
            methods,
        };
        errors.finish(def)
    }
}

fn parse_method(method: &TraitItemFn, errors: &mut Errors) -> Option<MethodDef> {
    let sig = &method.sig;
    let before = errors.is_empty();
    let mut oneway = false;
    let mut idempotent = None;
    let mut attrs = Vec::new();
    for attr in &method.attrs {
        if attr.path().is_ident("oneway") {
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                errors.push(attr.span(), "#[oneway] takes no arguments");
            }
            oneway = true;
        } else if attr.path().is_ident("idempotent") {
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                errors.push(attr.span(), "#[idempotent] takes no arguments");
            }
            idempotent = Some(attr.span());
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
    let name = sig.ident.unraw().to_string();
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
        check_arg_name(&ident, errors);
        check_type(&typed.ty, errors);
        args.push((ident, (*typed.ty).clone()));
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => {
            check_type(ty, errors);
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
    if let (true, Some(span)) = (oneway, idempotent) {
        errors.push(
            span,
            "a #[oneway] method is never retried, forked or hedged: #[idempotent] does not apply",
        );
    }
    if before && !errors.is_empty() {
        return None;
    }
    Some(MethodDef {
        attrs,
        wire_name: name,
        ident: sig.ident.clone(),
        args,
        output,
        oneway,
        idempotent: idempotent.is_some(),
    })
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

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn parse(attr: TokenStream, item: TokenStream) -> syn::Result<ServiceDef> {
        ServiceDef::parse(attr, item)
    }

    #[test]
    fn raw_identifiers_lose_their_prefix_in_wire_names() {
        let def = parse(
            quote!(),
            quote!(
                trait r#match {
                    async fn r#type(&self) -> u64;
                }
            ),
        )
        .unwrap();
        assert_eq!(def.wire_name, "match");
        assert_eq!(def.methods[0].wire_name, "type");
        // The Rust names keep it: the stub's method is still `r#type`.
        assert_eq!(def.methods[0].ident.to_string(), "r#type");
    }

    #[test]
    fn the_name_option_overrides_the_trait_name() {
        let def = parse(
            quote!(name = "com.example.Match"),
            quote!(
                trait r#match {
                    async fn a(&self);
                }
            ),
        )
        .unwrap();
        assert_eq!(def.wire_name, "com.example.Match");
    }

    #[test]
    fn attributes_are_sorted_by_where_they_go() {
        let def = parse(
            quote!(),
            quote! {
                #[cfg(feature = "x")]
                #[allow(non_camel_case_types)]
                #[deprecated]
                /// Docs.
                trait T {
                    /// Docs.
                    #[cfg(feature = "y")]
                    #[allow(clippy::too_many_arguments)]
                    #[deprecated]
                    #[cfg_attr(feature = "z", must_use)]
                    #[oneway]
                    async fn a(&self);
                }
            },
        )
        .unwrap();
        let names = |attrs: &mut dyn Iterator<Item = &Attribute>| {
            attrs
                .map(|a| a.path().get_ident().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&mut def.carried_attrs.iter()), ["cfg", "allow"]);
        assert!(def.deprecated.is_some());
        let m = &def.methods[0];
        assert!(m.oneway);
        assert_eq!(
            names(&mut m.attrs.iter()),
            ["doc", "cfg", "allow", "deprecated", "cfg_attr"]
        );
        assert_eq!(names(&mut m.docs()), ["doc"]);
        assert_eq!(names(&mut m.cfgs()), ["cfg"]);
        assert_eq!(names(&mut m.stub_attrs()), ["allow", "deprecated"]);
    }

    #[test]
    fn idempotent_marks_a_method_and_is_refused_on_a_oneway_one() {
        let def = parse(
            quote!(),
            quote!(
                trait T {
                    #[idempotent]
                    async fn get(&self) -> u64;
                    async fn put(&self, x: u64);
                }
            ),
        )
        .unwrap();
        assert!(def.methods[0].idempotent);
        assert!(!def.methods[1].idempotent);
        assert!(def.methods[0].attrs.is_empty(), "the marker is not kept");
        for (attrs, message) in [
            (quote!(#[idempotent(yes)]), "takes no arguments"),
            (quote!(#[oneway] #[idempotent]), "does not apply"),
        ] {
            let error = parse(quote!(), quote!(trait T { #attrs async fn a(&self); }))
                .err()
                .unwrap_or_else(|| panic!("`{attrs}` accepted"));
            assert!(error.to_string().contains(message), "{error}");
        }
    }

    #[test]
    fn static_lifetimes_are_owned_and_others_borrow() {
        assert!(parse(
            quote!(),
            quote!(
                trait T {
                    async fn a(&self, x: Cow<'static, str>) -> Cow<'static, str>;
                }
            ),
        )
        .is_ok());
        for ty in [
            quote!(Cow<'_, str>),
            quote!(Cow<'a, str>),
            quote!(&'static str),
        ] {
            let error = parse(quote!(), quote!(trait T { async fn a(&self, x: #ty); }))
                .err()
                .unwrap_or_else(|| panic!("`{ty}` accepted"));
            assert!(
                error.to_string().contains("borrow") || error.to_string().contains("reference"),
                "{error}"
            );
        }
    }

    #[test]
    fn names_the_generated_code_uses_are_refused() {
        let error = parse(
            quote!(),
            quote!(
                trait T {
                    async fn a(&self, x: Vec<S>, __rpc_args: u8);
                }
            ),
        )
        .err()
        .unwrap();
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("`S` is the type parameter"));
        assert!(messages[1].contains("`__rpc`"));
        // A longer path names the user's type unambiguously.
        assert!(parse(
            quote!(),
            quote!(
                trait T {
                    async fn a(&self, x: self::S);
                }
            )
        )
        .is_ok());
    }
}

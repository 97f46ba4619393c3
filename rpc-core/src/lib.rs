//! The core of the RPC framework: annotate a trait with [`service`], get a client stub
//! and a server skeleton, and call it over TCP in four call modes.
//!
//! # What is here
//!
//! Following the path of a call:
//!
//! - [`service`]: the attribute that turns a trait into a client stub and a server
//!   skeleton;
//! - [`Client`] and [`ClientBuilder`] (multiplexed connections, timeouts, heartbeats,
//!   reconnect; one server or a balanced set of providers), [`Call`] (future, sync,
//!   callback and oneway modes) and [`RemoteCall`] (the one bound for code generic
//!   over calls);
//! - [`lb`]: client-side load balancing (strategies, providers, the balancer);
//! - [`protocol`]: the frame, its codec, metadata and status codes (the wire format of
//!   `docs/PROTOCOL.md`);
//! - [`Server`], [`ServerBuilder`] and the [`server`] module: boss and worker reactors,
//!   the [`CallContext`](server::CallContext) a handler sees, and the
//!   [`Service`](server::Service) contract the macro implements;
//! - [`RpcError`], the one error type callers see;
//! - [`Blob`]: byte payloads, encoded as one `bin` and received without a copy;
//! - [`reflection`]: the `rpc.Reflection` service every server hosts, listing and
//!   describing its services ([`ReflectionClient`](reflection::ReflectionClient),
//!   [`ServiceDescriptor`](reflection::ServiceDescriptor));
//! - generic invocation (feature `json`): `Client::call_json`, any method with JSON
//!   arguments and a JSON result, and `GenericError`.
//!
//! Every constructor returns `Result<_, RpcError>`: `connect`, `connect_providers`
//! and `bind` from async code on a tokio runtime, `connect_blocking` and
//! `connect_providers_blocking` from plain code (the client then owns a small runtime).
//! A provider needs tokio's `rt-multi-thread` and `macros` features (and `signal` to
//! stop on Ctrl-C); so does an async consumer; a sync-only consumer needs no tokio.
//!
//! # Example
//!
//! ```
//! use rpc_core::{service, Client, Server};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub enum MathError {
//!     DivideByZero,
//! }
//!
//! /// Arithmetic, remotely.
//! #[service]
//! pub trait Calculator {
//!     /// Adds two numbers.
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     /// Divides, failing on a zero divisor.
//!     async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
//! }
//!
//! struct Calc;
//!
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//!     async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
//!         if b == 0 { Err(MathError::DivideByZero) } else { Ok(a / b) }
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .add_service(CalculatorServer::new(Calc))
//!     .bind("127.0.0.1:0")
//!     .await?
//!     .spawn();
//!
//! let calc = CalculatorClient::new(Client::connect(server.local_addr()).await?);
//! assert_eq!(calc.add(2, 3).await?, 5);
//! assert!(matches!(
//!     calc.divide(1, 0).await,
//!     Err(rpc_core::RpcError::Application(MathError::DivideByZero))
//! ));
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

// The generated code names this crate `::rpc_core`; this makes that path work inside
// it too, for the services it defines with its own macro (reflection).
extern crate self as rpc_core;

mod blob;
mod client;
mod error;
pub mod filter;
pub mod protocol;
pub mod reflection;
mod runtime;
pub mod server;
mod transport;

pub use blob::Blob;
pub use client::{
    Balancer, Call, CallFuture, Client, ClientBuilder, ClientConfig, Endpoint, RemoteCall,
};
#[cfg(feature = "json")]
pub use client::{GenericError, JsonCall};

pub use error::{NoError, RpcError};
/// Client-side load balancing (the `rpc-lb` crate): strategies, providers, the balancer.
#[doc(inline)]
pub use rpc_lb as lb;
pub use server::{Server, ServerBuilder, ServerConfig, ServerHandle};
#[cfg(feature = "tls")]
pub use transport::tls::{ClientTls, ServerTls};

/// Turns a trait into an RPC service: a client stub and a server skeleton.
///
/// ```no_run
/// use rpc_core::{service, Client, RpcError, Server};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct Order {
///     pub sku: String,
///     pub quantity: u32,
/// }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub enum ShopError {
///     SoldOut,
/// }
///
/// /// A shop, remotely.
/// #[service(name = "example.Shop")]
/// pub trait Shop {
///     /// Places an order; returns its id.
///     async fn place(&self, order: Order) -> Result<u64, ShopError>;
///     /// How many orders so far.
///     async fn count(&self) -> u64;
///     /// Records a page view; nothing comes back.
///     #[oneway]
///     async fn viewed(&self, page: String);
/// }
///
/// struct Store;
///
/// impl Shop for Store {
///     async fn place(&self, order: Order) -> Result<u64, ShopError> {
///         if order.quantity > 10 { Err(ShopError::SoldOut) } else { Ok(1) }
///     }
///     async fn count(&self) -> u64 {
///         1
///     }
///     async fn viewed(&self, _page: String) {}
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .add_service(ShopServer::new(Store))
///     .bind("127.0.0.1:0")
///     .await?
///     .spawn();
/// let shop = ShopClient::new(Client::connect(server.local_addr()).await?);
/// let order = Order { sku: "tea".into(), quantity: 2 };
/// match shop.place(order).await {
///     Ok(id) => println!("order {id}"),
///     Err(RpcError::Application(ShopError::SoldOut)) => println!("sold out"),
///     Err(other) => println!("the call failed: {other:?}"),
/// }
/// shop.viewed("/tea".into()).await?;
/// # Ok(()) }
/// ```
///
/// # What it generates
///
/// On `trait Shop` it generates:
///
/// - the trait itself, with `Send + Sync + 'static` as supertraits and each `async fn`
///   declared as returning `impl Future<Output = ...> + Send`; implementations still
///   write plain `async fn`s;
/// - `ShopClient`, the client stub: `ShopClient::new(client)` over a [`Client`], the
///   constant `ShopClient::SERVICE_NAME`, and one method per trait method, taking the
///   same arguments and returning a [`Call<A, T, E>`](Call) (`A` the argument tuple,
///   `T` the result, `E` the error type, [`NoError`] if the method cannot fail).
///   Nothing is sent until the call is awaited, given to
///   [`blocking`](Call::blocking) or [`callback`](Call::callback);
/// - `ShopServer<S>`, the server skeleton for an implementation `S: Shop`, built with
///   `ShopServer::new(implementation)` or `ShopServer::from_arc(arc)`, to pass to
///   [`ServerBuilder::add_service`]. It decodes each request's arguments, runs the
///   method, and encodes its result.
///
/// The trait's doc comments are kept, and a method's doc comments are copied to its
/// stub method.
///
/// # Options
///
/// - `#[service(name = "com.example.Shop")]` sets the service's name on the wire.
///   Without it, the name is the trait's name (without `r#` for a raw identifier).
///   Clients and servers find each other by this name and by the method names, so a
///   renamed Rust trait can keep its wire name.
///
/// # Signature rules
///
/// Every rule is checked by the macro, which reports each broken one at the offending
/// code.
///
/// - The trait has no generic parameters, no `where` clause, no supertraits, and only
///   methods (no associated types or constants). It is not `unsafe`.
/// - Every method is an `async fn` taking `&self` first (the server runs calls
///   concurrently on one shared implementation), with no generic parameters, no
///   default body, and not `const`, `unsafe` or `extern`. Arguments are plain names
///   (no patterns); names starting with `__rpc` are reserved. The stub defines `new`
///   and `SERVICE_NAME`, so no method may be called that.
/// - Arguments, results and errors cross the network, so they are owned types that
///   implement serde's `Serialize` and `Deserialize` (as `DeserializeOwned`) and are
///   `Send`: no references, no lifetimes other than `'static` (`Cow<'static, str>` is
///   fine), no `impl Trait` and no trait objects. A type without a needed serde trait
///   is reported at the type, naming the trait (the client serializes arguments and
///   deserializes results and errors; the server does the opposite). A type named `S`
///   would be taken for the skeleton's type parameter: write it as `self::S` or
///   rename it.
/// - The return type says what callers get. None or `()`: `()`. Any other type `T`:
///   a `T`; failures of the call itself arrive as [`RpcError`]`<`[`NoError`]`>`.
///   `Result<T, E>` (any path whose last segment is `Result` with two type arguments):
///   `Ok(T)` arrives as `T`, and `Err(e)` arrives typed as
///   [`RpcError::Application(e)`](RpcError::Application); `E` needs the same serde
///   traits as a result.
/// - `#[oneway]` on a method: the server sends no response, and the call completes as
///   soon as the request is written, without waiting for the method to run. A oneway
///   method returns nothing (so it cannot report errors), and the attribute takes no
///   arguments. Any method can also be called one way with [`Call::oneway`].
/// - `#[idempotent]` on a method: running it twice does no harm (a read, a write that
///   sets rather than adds). The stub type lists such methods in
///   `FooClient::IDEMPOTENT_METHODS`, which
///   [`ClusterBuilder::idempotent_methods`](crate::filter::cluster::ClusterBuilder::idempotent_methods)
///   takes, so that failover, forking and hedging may repeat their calls; reflection
///   reports it. It takes no arguments and does not go with `#[oneway]`.
///
/// # Attributes and names
///
/// - `#[cfg(...)]` on a method (or on the trait, below `#[service]`) applies to
///   everything generated for it: a configured-out method has no stub method and no
///   dispatch entry, and its types need not exist.
/// - Lint levels (`#[allow]`, `#[warn]`, `#[deny]`, `#[forbid]`) and `#[deprecated]`
///   on a method are copied to its stub method; the skeleton serves a deprecated
///   method without a warning. Lint levels on the trait are copied to the generated
///   types.
/// - Raw identifiers lose their `r#` on the wire: `async fn r#type(...)` is the method
///   `"type"`.
///
/// # Implementations
///
/// Any type implementing the trait can be served. It must be `Send + Sync + 'static`
/// (the trait's supertraits): the server shares one implementation, behind an `Arc`,
/// across its worker threads, and runs calls concurrently on it, so mutable state goes
/// behind atomics or locks. The future each method returns must be `Send` (do not
/// hold an `Rc` or a `std::sync::MutexGuard` across an `.await`).
pub use rpc_macros::service;

/// Items the generated code uses. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;

    use crate::server::DispatchError;

    /// Decodes a method's argument tuple.
    ///
    /// # Errors
    ///
    /// A bad-request dispatch error naming the method.
    pub fn decode_args<A: serde::de::DeserializeOwned>(
        method: &str,
        body: &[u8],
    ) -> Result<A, DispatchError> {
        rmp_serde::from_slice(body).map_err(|e| DispatchError::BadRequest {
            method: method.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A method's description, as the macro writes it.
    pub fn method_descriptor(
        name: &str,
        docs: &str,
        args: &[(&str, &str)],
        result: &str,
        error: Option<&str>,
        oneway: bool,
        idempotent: bool,
    ) -> crate::reflection::MethodDescriptor {
        crate::reflection::MethodDescriptor {
            name: name.to_owned(),
            docs: docs.to_owned(),
            args: args
                .iter()
                .map(|(name, ty)| crate::reflection::ArgDescriptor {
                    name: (*name).to_owned(),
                    ty: (*ty).to_owned(),
                })
                .collect(),
            result: result.to_owned(),
            error: error.map(str::to_owned),
            oneway,
            idempotent,
        }
    }

    /// A service's description, as the macro writes it.
    pub fn service_descriptor(
        name: &str,
        docs: &str,
        methods: Vec<crate::reflection::MethodDescriptor>,
    ) -> crate::reflection::ServiceDescriptor {
        crate::reflection::ServiceDescriptor {
            name: name.to_owned(),
            docs: docs.to_owned(),
            described: true,
            methods,
        }
    }

    /// The error for a method the service does not have.
    pub fn method_not_found(service: &str, method: &str) -> DispatchError {
        DispatchError::MethodNotFound {
            service: service.to_owned(),
            method: method.to_owned(),
        }
    }

    // The serde bounds of the types in a service's signatures, under names that say
    // which side needs them and why. The macro names each type in `Argument<T>`,
    // `ReturnValue<T>` or `ErrorValue<T>`, spanned at the type, so a missing bound is
    // reported there in these words; `do_not_recommend` keeps the compiler from
    // reporting `serde`'s bound instead of ours. The stub's and skeleton's impls carry
    // the same bounds in `where` clauses (see `rpc-macros/src/gen/checks.rs`).

    /// What the client needs of an argument type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument of a #[service] method: it does not implement `serde::Serialize`",
        label = "the client serializes this argument",
        note = "arguments cross the network: derive `serde::Serialize` and `serde::Deserialize` for them"
    )]
    pub trait SerializeArgument: serde::Serialize {}
    #[diagnostic::do_not_recommend]
    impl<T: serde::Serialize> SerializeArgument for T {}

    /// What the server needs of an argument type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument of a #[service] method: it does not implement `serde::Deserialize` (as `serde::de::DeserializeOwned`)",
        label = "the server deserializes this argument",
        note = "arguments cross the network: derive `serde::Serialize` and `serde::Deserialize` for them"
    )]
    pub trait DeserializeArgument: serde::de::DeserializeOwned {}
    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> DeserializeArgument for T {}

    /// What the server needs of a result type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the result of a #[service] method: it does not implement `serde::Serialize`",
        label = "the server serializes this result",
        note = "results cross the network: derive `serde::Serialize` and `serde::Deserialize` for them"
    )]
    pub trait SerializeResult: serde::Serialize {}
    #[diagnostic::do_not_recommend]
    impl<T: serde::Serialize> SerializeResult for T {}

    /// What the client needs of a result type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the result of a #[service] method: it does not implement `serde::Deserialize` (as `serde::de::DeserializeOwned`)",
        label = "the client deserializes this result",
        note = "results cross the network: derive `serde::Serialize` and `serde::Deserialize` for them"
    )]
    pub trait DeserializeResult: serde::de::DeserializeOwned {}
    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> DeserializeResult for T {}

    /// What the server needs of the error type `E` of `Result<T, E>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error type of a #[service] method: it does not implement `serde::Serialize`",
        label = "the server serializes this error",
        note = "a method's `Err` crosses the network: derive `serde::Serialize` and `serde::Deserialize` for its type"
    )]
    pub trait SerializeError: serde::Serialize {}
    #[diagnostic::do_not_recommend]
    impl<T: serde::Serialize> SerializeError for T {}

    /// What the client needs of the error type `E` of `Result<T, E>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error type of a #[service] method: it does not implement `serde::Deserialize` (as `serde::de::DeserializeOwned`)",
        label = "the client deserializes this error",
        note = "a method's `Err` crosses the network: derive `serde::Serialize` and `serde::Deserialize` for its type"
    )]
    pub trait DeserializeError: serde::de::DeserializeOwned {}
    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> DeserializeError for T {}

    /// Names an argument type where the user wrote it, asserting both sides' bounds.
    #[derive(Debug)]
    pub struct Argument<T: SerializeArgument + DeserializeArgument + Send>(
        core::marker::PhantomData<T>,
    );

    /// Names a result type where the user wrote it, asserting both sides' bounds.
    #[derive(Debug)]
    pub struct ReturnValue<T: SerializeResult + DeserializeResult + Send>(
        core::marker::PhantomData<T>,
    );

    /// Names an error type where the user wrote it, asserting both sides' bounds.
    #[derive(Debug)]
    pub struct ErrorValue<T: SerializeError + DeserializeError + Send>(
        core::marker::PhantomData<T>,
    );
}

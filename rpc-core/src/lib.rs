//! The core of the RPC framework: annotate a trait with [`service`], get a client stub
//! and a server skeleton, and call it over TCP in four call modes.
//!
//! # Layout
//!
//! The modules follow the path of a call:
//!
//! - `client`: [`Client`] (multiplexed connections, timeouts, heartbeats, reconnect)
//!   and [`Call`] (future, sync, callback and oneway modes);
//! - [`protocol`]: the frame, its codec, metadata and status codes (the wire format of
//!   `docs/PROTOCOL.md`);
//! - `transport`: the server's boss (accept) and worker reactors (read, decode,
//!   dispatch, encode, write);
//! - [`server`]: [`Server`], its settings, and the [`Service`](server::Service) contract
//!   the macro implements;
//! - `error`: [`RpcError`], the one error type callers see;
//! - [`Blob`]: byte payloads, encoded as one `bin` and received without a copy.
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

mod blob;
mod client;
mod error;
pub mod protocol;
mod runtime;
pub mod server;
mod transport;

pub use blob::Blob;
pub use client::{Call, CallFuture, Client, ClientBuilder, ClientConfig};

pub use error::{NoError, RpcError};
/// Client-side load balancing (the `rpc-lb` crate): strategies, providers, the balancer.
pub use rpc_lb as lb;
pub use server::{Server, ServerBuilder, ServerConfig, ServerHandle};

/// Turns a trait into an RPC service: a client stub and a server skeleton.
///
/// On `trait Foo` it generates:
///
/// - the trait itself, with each `async fn` turned into a method returning a `Send`
///   future, so implementations write plain `async fn`s;
/// - `FooClient`, a stub with one method per trait method returning a [`Call`] that can
///   be awaited, blocked on, given a callback, or sent oneway;
/// - `FooServer<S: Foo>`, the skeleton to pass to [`ServerBuilder::add_service`].
///
/// Options: `#[service(name = "com.example.Foo")]` sets the wire name (default: the
/// trait name). Mark a method `#[oneway]` (no return type) for a fire-and-forget
/// method: the server sends no response. A method returning `Result<T, E>` delivers
/// `E` to callers as [`RpcError::Application`]. Arguments, results and errors are any
/// serde types.
pub use rpc_macros::service;

/// Items the generated code uses. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;

    pub use crate::server::{dispatched, DispatchError, Dispatched, Fallible, Plain, Service};

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

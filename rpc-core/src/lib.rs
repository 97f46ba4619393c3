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
//! - [`Blob`]: byte payloads, encoded as one `bin` and received without a copy.
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

mod blob;
mod client;
mod error;
pub mod protocol;
mod runtime;
pub mod server;
mod transport;

pub use blob::Blob;
pub use client::{Call, CallFuture, Client, ClientBuilder, ClientConfig, RemoteCall};

pub use error::{NoError, RpcError};
/// Client-side load balancing (the `rpc-lb` crate): strategies, providers, the balancer.
#[doc(inline)]
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
}

//! The filter chain: every call passes through a stack of [tower] layers, on the
//! server between the connection and the handler, on the client between the stub and
//! the connection.
//!
//! A server's chain is a [`tower::Service`] from [`ServerRequest`] to
//! [`ServerResponse`]; the innermost service, the [`Invoker`], decodes the arguments and
//! runs the handler. Add layers with [`ServerBuilder::layer`](crate::ServerBuilder::layer):
//! the first added is the outermost. Any tower middleware whose service is generic
//! over its inner service fits, besides the filters here. A server without layers
//! does not run a chain at all: its calls take the hand-tuned path, unchanged.
//!
//! The framework's own production filters need no chain either: added before any
//! other layer, a server's [`metrics`] ([`Metrics::server_layer`](metrics::Metrics::server_layer)),
//! [`trace`] ([`TraceLayer::server`](trace::TraceLayer::server)), static-token [`auth`]
//! ([`TokenAuthLayer::tokens`](auth::TokenAuthLayer::tokens)) and [`limit`] layers, and a
//! client's metrics and trace layers, run in the call's fast path (by the connection,
//! or the call's future), in the order they were added, doing what their tower
//! services do at a fraction of the cost. Layers after the first other layer run in
//! the chain, inside them. See `docs/FILTERS.md`.
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_core::filter::{auth::TokenAuthLayer, limit::LimitLayer};
//! # #[rpc_core::service] trait Echo { async fn echo(&self, s: String) -> String; }
//! # struct E; impl Echo for E { async fn echo(&self, s: String) -> String { s } }
//! # async fn run() -> Result<(), rpc_core::RpcError> {
//! let server = rpc_core::Server::builder()
//!     .layer(TokenAuthLayer::tokens(["s3cr3t"]))
//!     .layer(LimitLayer::builder().concurrency("Echo", "echo", 64).build()?)
//!     .add_service(EchoServer::new(E))
//!     .bind("127.0.0.1:0")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # The client's chain
//!
//! A client's chain is a [`tower::Service`] from [`ClientRequest`] (the arguments
//! already encoded, so a filter can send a call again without serializing it) to
//! [`ClientResponse`]; the innermost service, the [`Transport`], sends it over the
//! client's connections to the provider its balancer picks (or the one a filter
//! pinned). Add layers with [`ClientBuilder::layer`](crate::ClientBuilder::layer), the
//! first added outermost. The client-side filters here, in the order to add them:
//!
//! - [`fallback`]: a local answer per method when the service is failing;
//! - [`cluster`]: failover, failfast, failsafe, forking and hedged requests, with a
//!   retry budget;
//! - [`breaker`]: circuit breaking per provider.
//!
//! Any tower middleware fits too (`tower::timeout::TimeoutLayer`, a
//! `tower::ServiceBuilder` of several), and so does a layer of your own: a
//! `tower::Layer` whose service is a `Service<ClientRequest, Response =
//! ClientResponse, Error = BoxError>` over its inner service (see
//! `rpc-core/tests/cluster.rs`, `a_user_defined_tower_layer_runs_in_the_client_chain`).
//! A client without layers runs no chain: its calls take the hand-tuned path.
//!
//! ```no_run
//! use rpc_core::filter::{breaker::BreakerLayer, cluster::{ClusterLayer, Policy}, fallback::FallbackLayer};
//! # async fn run(providers: Vec<rpc_core::lb::Provider>) -> Result<(), rpc_core::RpcError> {
//! let client = rpc_core::Client::builder()
//!     .layer(FallbackLayer::builder().value("shop.Catalog", "count", |_, _| 0u64).build()?)
//!     .layer(
//!         ClusterLayer::builder()
//!             .idempotent("shop.Catalog", "count")
//!             .service("shop.Catalog", Policy::failover(2))
//!             .build()?,
//!     )
//!     .layer(BreakerLayer::builder().build()?)
//!     .connect_providers("shop.Catalog", providers)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A client filter fails a call with an error: an [`RpcError`](crate::RpcError) (from
//! the transport, wrapped in a [`ProviderError`] naming the provider; read it with
//! [`rpc_error_of`]) or any other error, which the caller receives as the status it
//! maps to (below).
//!
//! # Errors in a chain
//!
//! A server filter fails a call by returning an error; the reply's status comes from
//! it: a [`Rejection`] carries its own, tower's `Overloaded` (load shedding) becomes
//! [`Status::Overloaded`], tower's `Elapsed` (timeout) [`Status::Timeout`], anything
//! else [`Status::InternalError`] with the error's message. A chain that is not ready
//! when a call arrives (a tower limiter that is full) does not queue it: the call is
//! answered [`Status::Overloaded`] at once.
//!
//! Deadlines hold through the chain: the server stops a call whose deadline passed
//! wherever it is in the chain, and the [`Invoker`] does not start a handler whose
//! deadline passed while the call waited in a filter.

pub mod access_log;
pub mod auth;
pub mod breaker;
pub(crate) mod client;
pub mod cluster;
pub mod fallback;
pub mod fault;
pub(crate) mod inline;
pub mod isolation;
pub mod limit;
pub mod metrics;
pub(crate) mod server;
pub mod trace;
mod window;

use std::fmt;

pub use client::{
    into_rpc_error, is_provider_failure, provider_of, rpc_error_of, ClientRequest, ClientResponse,
    ProviderError, Transport,
};
pub use server::{Invocation, Invoker, ServerRequest, ServerResponse};

use crate::error::RpcError;
use crate::protocol::Status;

/// What a filter that works on both sides (metrics, access log, fault injection) can
/// ask of a call.
pub trait CallInfo {
    /// The service's wire name.
    fn service(&self) -> &str;
    /// The method's wire name.
    fn method(&self) -> &str;
    /// The other end: the client, on a server; `None` on a client.
    fn peer(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

impl CallInfo for ServerRequest {
    fn service(&self) -> &str {
        ServerRequest::service(self)
    }
    fn method(&self) -> &str {
        ServerRequest::method(self)
    }
    fn peer(&self) -> Option<std::net::SocketAddr> {
        Some(self.context().peer)
    }
}

impl CallInfo for ClientRequest {
    fn service(&self) -> &str {
        ClientRequest::service(self)
    }
    fn method(&self) -> &str {
        ClientRequest::method(self)
    }
}

/// A chain's response, on either side: its status.
pub trait ReplyStatus {
    /// OK, or APPLICATION_ERROR, or another status a filter answered with.
    fn status(&self) -> Status;
}

impl ReplyStatus for ServerResponse {
    fn status(&self) -> Status {
        ServerResponse::status(self)
    }
}

impl ReplyStatus for ClientResponse {
    fn status(&self) -> Status {
        ClientResponse::status(self)
    }
}

/// A short, fixed label for how a call ended (for metrics and logs): the reply's status
/// (`ok`, `application_error`, `timeout`, `overloaded`, ...) or, on a client, the
/// failure that left no status (`connection_lost`, `connect_failed`, `not_sent`,
/// `no_provider`, ...).
pub fn outcome_label<R: ReplyStatus>(result: &Result<R, BoxError>) -> &'static str {
    match result {
        Ok(response) => status_label(response.status()),
        Err(error) => match rpc_error_of(error) {
            Some(e) => error_label(e),
            None => status_label(status_of(&**error).0),
        },
    }
}

/// The label of a status.
pub fn status_label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::ApplicationError => "application_error",
        Status::ServiceNotFound => "service_not_found",
        Status::MethodNotFound => "method_not_found",
        Status::BadRequest => "bad_request",
        Status::Overloaded => "overloaded",
        Status::Timeout => "timeout",
        Status::InternalError => "internal_error",
        Status::Unauthenticated => "unauthenticated",
        Status::ShuttingDown => "shutting_down",
        Status::Unknown(_) => "unknown_status",
    }
}

/// The label of a client-side error.
pub(crate) fn error_label<E>(error: &RpcError<E>) -> &'static str {
    match error {
        RpcError::Application(_) => "application_error",
        RpcError::Timeout(_) => "timeout",
        RpcError::NoProvider { .. } => "no_provider",
        RpcError::Connect { .. } | RpcError::Resolve { .. } => "connect_failed",
        RpcError::NotSent { .. } => "not_sent",
        RpcError::RequestTooLarge { .. } => "request_too_large",
        RpcError::ConnectionLost { .. } => "connection_lost",
        RpcError::ShuttingDown => "shutting_down",
        RpcError::ServiceNotFound(_) => "service_not_found",
        RpcError::MethodNotFound(_) => "method_not_found",
        RpcError::BadRequest(_) => "bad_request",
        RpcError::Overloaded(_) => "overloaded",
        RpcError::Unauthenticated(_) => "unauthenticated",
        RpcError::Internal(_) => "internal_error",
        RpcError::Serialization { .. } => "serialization",
        RpcError::Protocol(_) => "protocol",
        RpcError::ClientClosed => "client_closed",
        _ => "error",
    }
}

/// The error type of every chain: any error, boxed (tower's convention).
pub type BoxError = tower::BoxError;

/// A filter's refusal of a call, with the status the caller receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reply's status.
    status: Status,
    /// Why, for the caller's error message.
    message: String,
}

impl Rejection {
    /// A refusal answered with `status` and `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// The status the caller receives.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Why.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for Rejection {}

/// The status and message a failed call is answered with (see the module docs).
pub(crate) fn status_of(
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> (Status, String) {
    if let Some(rejection) = error.downcast_ref::<Rejection>() {
        return (rejection.status, rejection.message.clone());
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return (Status::Overloaded, error.to_string());
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return (Status::Timeout, error.to_string());
    }
    (Status::InternalError, error.to_string())
}

//! The embedded heartbeat registry: providers register instances under a lease and
//! heartbeat it; consumers look services up, long-poll for changes and feed their
//! client's balancer. Soft state, no external dependency; several registries can run
//! side by side (providers register with each, consumers merge).
//!
//! # Layout
//!
//! - `api`: the wire contract, the `RegistryApi` service defined with our own
//!   `#[service]` macro, and its types ([`Instance`], [`Lease`], [`Revision`],
//!   [`ServiceView`], [`RegistryError`], ...);
//! - `server`: [`RegistryServer`] and [`RegistryConfig`]: the state in `DashMap`s,
//!   leases, per-service revisions, long polls, the TTL sweep with its mass-eviction
//!   guard, the caps, the operators' [`Override`]s and the providers' load reports;
//!   what operators see ([`ServiceStatus`], [`InstanceStatus`], [`Load`]); and
//!   `server/admin`, the admin dashboard over HTTP (feature `dashboard`): the page,
//!   its JSON API, the token-guarded actions and the registry's Prometheus metrics;
//! - `client`: the object-safe backend traits ([`Registry`], [`Discovery`],
//!   [`Backend`]) that our `rpc://` backend, the etcd backend and the ZooKeeper
//!   backend implement, [`connect`] picking a backend from a URL, the provider side
//!   ([`Publisher`]) and the consumer side ([`Consumer`]), with its on-disk snapshot;
//! - `validate`: the name and address rules both sides check;
//! - `cli`: [`RegistryArgs`], the flags of a registry process.
//!
//! The `rpc-registry` binary runs a registry from the command line.
//!
//! # Cargo features
//!
//! All off by default, so a user of the embedded registry compiles neither client, no
//! TLS and no HTTP server:
//!
//! - `dashboard`: [`RegistryConfig::admin`] ([`AdminConfig`]; the binary's
//!   `--admin-listen ADDR` and `--admin-token TOKEN`) serves the admin dashboard on an
//!   HTTP port of its own, with axum: a live page, a JSON API under `/api/`, operator
//!   actions (weight, disable, enable) behind `Authorization: Bearer <token>`, and the
//!   registry's metrics at `/metrics`. Without it, overrides and load reports still
//!   work ([`RegistryServer::status`],
//!   [`RegistryServer::set_override`]).
//! - `tls`: the registry over TLS (rpc-core's `tls`, rustls). A server takes
//!   `RegistryConfig::tls` (the binary: `--tls-cert PATH --tls-key PATH`, and
//!   `--tls-client-ca PATH` for mutual TLS); clients reach it at
//!   `rpcs://host:port[,host:port][?ca=PATH][&cert=PATH&key=PATH][&server_name=NAME]`
//!   (see [`connect`]). A plaintext `rpc://` URL against a TLS registry fails its first
//!   call with an error saying to use `rpcs://`. With `etcd` too,
//!   `etcds://h1:2379[,h2:2379][/root]` with the same query reaches etcd over TLS;
//!   with `zookeeper` too, `zookeepers://h1:2281[,h2:2281][/chroot]?ca=PATH` (`ca`
//!   required, `cert`/`key` optional, no `server_name`) reaches ZooKeeper's
//!   `secureClientPort`.
//! - `etcd`: the `etcd://h1:2379[,h2:2379][/root]` backend (leases with a TTL, watches
//!   from a revision), on `etcd-client`; needs `protoc` at build time.
//! - `zookeeper`: the `zookeeper://h1:2181[,h2:2181][/chroot]` backend (sessions,
//!   ephemeral nodes in Dubbo's `/dubbo/{service}/providers/{url}` layout, persistent
//!   recursive watches; ZooKeeper 3.6+), on `zookeeper-client`; pure Rust.
//!
//! The provider and consumer code is the same for every backend: only the URL given to
//! [`connect`] changes.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use rpc_core::{service, Server};
//! use rpc_registry::{Consumer, Instance, Publisher, RegistryConfig, RegistryServer};
//!
//! /// Says hello.
//! #[service(name = "example.Hello")]
//! pub trait Hello {
//!     /// Greets.
//!     async fn hello(&self, name: String) -> String;
//! }
//!
//! struct Greeter;
//! impl Hello for Greeter {
//!     async fn hello(&self, name: String) -> String {
//!         format!("hello, {name}")
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A registry.
//! let registry = RegistryServer::bind("127.0.0.1:0", RegistryConfig::default()).await?;
//! let url = format!("rpc://{}", registry.local_addr());
//!
//! // A provider: serve, then publish.
//! let server = Server::builder()
//!     .add_service(HelloServer::new(Greeter))
//!     .bind("127.0.0.1:0")
//!     .await?
//!     .spawn();
//! let publisher = Publisher::builder(rpc_registry::connect(&url)?).start();
//! publisher.publish(Instance::of(&HelloServer::new(Greeter), server.local_addr().to_string()))?;
//! publisher.wait_registered(Duration::from_secs(5)).await?;
//!
//! // A consumer: discover, call.
//! let consumer = Consumer::builder(rpc_registry::connect(&url)?)
//!     .connect("example.Hello")
//!     .await?;
//! let hello = HelloClient::new(consumer.client());
//! assert_eq!(hello.hello("registry".into()).await?, "hello, registry");
//!
//! // Graceful: deregister, let subscribers see it, then drain.
//! publisher.shutdown().await;
//! server.shutdown().await?;
//! consumer.shutdown().await;
//! registry.shutdown().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod api;
mod cli;
mod client;
mod server;
mod validate;

pub use api::{
    ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, LeaseRequest, LoadReport, MethodLoad,
    RegistryApi, RegistryApiClient, RegistryApiServer, RegistryError, Revision, ServiceSummary,
    ServiceView, METHODS_METADATA_KEY,
};
pub use cli::{init_logging, parse_duration, shutdown_signal, RegistryArgs};
pub use client::{
    connect, Backend, Consumer, ConsumerBuilder, Discovery, Error, Publisher, PublisherBuilder,
    Registries, Registry,
};
#[cfg(feature = "dashboard")]
pub use server::AdminConfig;
pub use server::{
    Health, InstanceStatus, Load, Override, RegistryConfig, RegistryServer, ServiceStatus,
};

//! This framework: an echo service made with `#[rpc_core::service]`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rpc_core::filter::auth::TokenAuthLayer;
use rpc_core::filter::breaker::BreakerLayer;
use rpc_core::filter::cluster::{ClusterLayer, Policy};
use rpc_core::filter::fallback::FallbackLayer;
use rpc_core::filter::limit::LimitLayer;
use rpc_core::filter::metrics::Metrics;
use rpc_core::filter::trace::TraceLayer;
use rpc_core::lb::Strategy;
use rpc_core::{Blob, Client, ClientBuilder, RpcError, Server, ServerConfig};

use super::LISTEN_ADDR;
use crate::load::{closed_loop, ClientChain, EchoCaller, Load, Measurement};

/// The benchmark's echo service.
#[rpc_core::service(name = "bench.Echo")]
pub trait Echo {
    /// Returns `data` unchanged.
    async fn echo(&self, data: Blob) -> Blob;
    /// Sleeps `ms` milliseconds, then returns `ms`: holds a call open on the server
    /// (`rpc-mem` measures the memory of calls in flight with it).
    async fn hold(&self, ms: u64) -> u64;
}

/// Echoes what it is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, data: Blob) -> Blob {
        data
    }

    async fn hold(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

/// Serves [`Echo`] with one worker reactor.
pub(super) async fn serve(ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    serve_with(ServerConfig::default(), ready).await
}

/// Runs the server of `rpc-bench server --system ours` (one worker reactor, [`Echo`] on
/// `127.0.0.1:0`) on a current-thread runtime, but with at most
/// `max_in_flight_per_connection` calls running per connection instead of the
/// default, and calls `ready` with the bound address. Returns only on failure.
///
/// # Errors
///
/// If the runtime cannot start or the socket cannot be bound or accepted on.
pub fn serve_with_in_flight_cap(
    max_in_flight_per_connection: usize,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let mut config = ServerConfig::default();
    config.max_in_flight_per_connection = max_in_flight_per_connection;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve_with(config, ready))
}

/// Serves [`Echo`] over TLS with the installed [`BenchTls`](crate::BenchTls)
/// certificate, otherwise as [`serve`].
pub(super) async fn serve_tls(ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let mut config = ServerConfig::default();
    config.tls = Some(crate::BenchTls::server()?);
    serve_with(config, ready).await
}

/// Serves [`Echo`] with `config`, on one worker reactor.
async fn serve_with(mut config: ServerConfig, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    // Every benchmark connection comes from 127.0.0.1 (rpc-mem opens 10 000).
    config.max_connections_per_peer = config.max_connections;
    let server = Server::builder()
        .config(config)
        .workers(1)
        .add_service(EchoServer::new(EchoImpl))
        .bind(LISTEN_ADDR)
        .await
        .map_err(io::Error::other)?;
    ready(server.local_addr());
    server.serve().await.map_err(io::Error::other)
}

/// Which filter chain a variant of ours runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chain {
    /// One layer that does nothing.
    Noop,
    /// Metrics, tracing, limits and auth.
    Production,
}

/// The token the production chain's client sends and its server accepts.
const TOKEN: &str = "bench-token";

/// Serves [`Echo`] on one worker reactor through `chain`.
pub(super) async fn serve_chain(chain: Chain, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let mut config = ServerConfig::default();
    config.max_connections_per_peer = config.max_connections;
    let builder = Server::builder().config(config).workers(1);
    let server = match chain {
        Chain::Noop => {
            builder
                .layer(tower::layer::util::Identity::new())
                .add_service(EchoServer::new(EchoImpl))
                .bind(LISTEN_ADDR)
                .await
        }
        Chain::Production => {
            let metrics = Metrics::new();
            let limits = LimitLayer::builder()
                .concurrency("bench.Echo", "*", 1 << 20)
                .rate("bench.Echo", "*", 1e9)
                .build()
                .map_err(io::Error::other)?;
            builder
                .layer(metrics.server_layer())
                .layer(TraceLayer::server())
                .layer(TokenAuthLayer::tokens([TOKEN]))
                .layer(limits)
                .add_service(EchoServer::new(EchoImpl))
                .bind(LISTEN_ADDR)
                .await
        }
    }
    .map_err(io::Error::other)?;
    ready(server.local_addr());
    server.serve().await.map_err(io::Error::other)
}

/// Runs `load` through one [`Client`] with `chain`.
pub(super) async fn drive_chain(
    addr: SocketAddr,
    load: &Load,
    chain: Chain,
) -> io::Result<Measurement> {
    let builder = Client::builder().connections(1);
    let builder = match chain {
        Chain::Noop => builder.layer(tower::layer::util::Identity::new()),
        Chain::Production => builder
            .auth_token(TOKEN)
            .layer(Metrics::new().client_layer())
            .layer(TraceLayer::client()),
    };
    let client = builder.connect(addr).await.map_err(io::Error::other)?;
    Ok(closed_loop(Caller(EchoClient::new(client)), load).await)
}

/// Runs `load` through one [`Client`] (default settings: one connection), with the
/// load's client chain, over TLS with the installed [`BenchTls`](crate::BenchTls) CA
/// when `tls`.
pub(super) async fn drive(addr: SocketAddr, load: &Load, tls: bool) -> io::Result<Measurement> {
    let mut builder = Client::builder().connections(1);
    if tls {
        builder = builder.tls(crate::BenchTls::client()?);
    }
    let client = with_chain(builder, load.chain, addr)
        .await
        .map_err(io::Error::other)?;
    Ok(closed_loop(Caller(EchoClient::new(client)), load).await)
}

/// A client made by `builder` with the client chain `chain`, to `addr` (through a
/// balancer over that one server for `lb` and `lb-full`).
async fn with_chain(
    builder: ClientBuilder,
    chain: ClientChain,
    addr: SocketAddr,
) -> Result<Client, RpcError> {
    let full = |builder: ClientBuilder| -> Result<ClientBuilder, RpcError> {
        Ok(builder
            .layer(
                FallbackLayer::builder()
                    .value("bench.Echo", "hold", |_, _| 0u64)
                    .build()?,
            )
            .layer(failover()?)
            .layer(BreakerLayer::builder().build()?))
    };
    match chain {
        ClientChain::None => builder.connect(addr).await,
        ClientChain::Failover => builder.layer(failover()?).connect(addr).await,
        ClientChain::Breaker => {
            builder
                .layer(BreakerLayer::builder().build()?)
                .connect(addr)
                .await
        }
        ClientChain::Full => full(builder)?.connect(addr).await,
        ClientChain::Lb => balanced(builder, addr).await,
        ClientChain::LbFull => balanced(full(builder)?, addr).await,
        ClientChain::LbAdaptive => balanced(builder.balancer(Strategy::Adaptive), addr).await,
    }
}

/// A cluster layer retrying `echo` (marked idempotent) twice.
fn failover() -> Result<ClusterLayer, RpcError> {
    ClusterLayer::builder()
        .idempotent("bench.Echo", "echo")
        .method("bench.Echo", "echo", Policy::failover(2))
        .build()
}

/// A client through a balancer over the one server at `addr`.
async fn balanced(builder: ClientBuilder, addr: SocketAddr) -> Result<Client, RpcError> {
    builder
        .connect_providers("bench.Echo", [rpc_core::lb::Provider::new(addr)])
        .await
}

/// Serves [`Echo`] with `Server::builder()` defaults, as a user's server does.
pub(super) async fn serve_defaults(ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let server = Server::builder()
        .add_service(EchoServer::new(EchoImpl))
        .bind(LISTEN_ADDR)
        .await
        .map_err(io::Error::other)?;
    ready(server.local_addr());
    server.serve().await.map_err(io::Error::other)
}

/// Runs `load` through a client made by `Client::connect`, as a user's client does.
/// With a client chain other than `none`, the same defaults (`Client::builder()`)
/// with that chain.
pub(super) async fn drive_defaults(addr: SocketAddr, load: &Load) -> io::Result<Measurement> {
    let client = match load.chain {
        ClientChain::None => Client::connect(addr).await,
        chain => with_chain(Client::builder(), chain, addr).await,
    }
    .map_err(io::Error::other)?;
    Ok(closed_loop(Caller(EchoClient::new(client)), load).await)
}

/// Runs `load` through one client with `Client::builder()` defaults but
/// `connections` connections per server: to the one server at `addrs`, or balanced
/// round-robin over all of them (`rpc-bench scaling`).
///
/// # Errors
///
/// No address, or the client cannot connect.
pub async fn drive_spread(
    addrs: &[SocketAddr],
    connections: usize,
    load: &Load,
) -> io::Result<Measurement> {
    let builder = Client::builder().connections(connections.max(1));
    let client = match addrs {
        [] => return Err(io::Error::other("no server to call")),
        [one] => builder.connect(*one).await,
        many => {
            builder
                .balancer(Strategy::RoundRobin)
                .connect_providers(
                    "bench.Echo",
                    many.iter().map(|addr| rpc_core::lb::Provider::new(*addr)),
                )
                .await
        }
    }
    .map_err(io::Error::other)?;
    Ok(closed_loop(Caller(EchoClient::new(client)), load).await)
}

/// Calls through the generated stub, in future mode.
#[derive(Debug, Clone)]
struct Caller(EchoClient);

impl EchoCaller for Caller {
    async fn echo(&self, payload: &Bytes) -> Result<usize, String> {
        // A `Blob` shares the caller's buffer: no copy (as the raw echo sends its
        // `Bytes`).
        self.0
            .echo(Blob::from(payload.clone()))
            .await
            .map(|echo| echo.len())
            .map_err(|e| e.to_string())
    }
}

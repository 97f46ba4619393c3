//! The client: multiplexed connections to one server or a balanced set of
//! providers, with timeouts, heartbeats and reconnection.
//!
//! A call's path through it, one file each:
//!
//! - `call`: [`Call`], what a stub method returns, and its future (the fast path
//!   queues a call on a ready connection in its first poll);
//! - `route`: where a call goes: one server, or the provider the balancer picks, and
//!   the one failover loop for calls that certainly did not run;
//! - `pool`: each server's pooled connections and their reconnect backoff;
//! - `connection`: one connection's task and the callers multiplexed on it;
//! - `pending`: the calls a connection waits on, by request id, and their deadlines;
//! - `sync`: sync mode's executor;
//! - `generic` (feature `json`): [`Client::call_json`], any method with JSON arguments
//!   and a JSON result;
//! - `config`: [`ClientConfig`] and [`ClientBuilder`], checked when connecting.
//!
//! A [`Client`] is cheap to clone; clones share connections. Generated stubs
//! (`XxxClient::new(client)`) make calls through it in any of the four call modes; see
//! [`Call`].
//!
//! ```no_run
//! # async fn run() -> Result<(), rpc_core::RpcError> {
//! use std::time::Duration;
//! let client = rpc_core::Client::builder()
//!     .timeout(Duration::from_secs(2))
//!     .connections(2)
//!     .connect("127.0.0.1:7000")
//!     .await?;
//! # Ok(()) }
//! ```

mod call;
mod config;
mod connection;
#[cfg(feature = "json")]
mod generic;
pub(crate) mod pending;
mod pool;
mod route;
mod sync;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

pub use call::{Call, CallFuture, RemoteCall};
pub use config::{ClientBuilder, ClientConfig};
#[cfg(feature = "json")]
pub use generic::{GenericError, JsonCall};
use rpc_lb::LoadBalancer;

use crate::error::RpcError;
use crate::runtime::OwnedRuntime;
pub(crate) use connection::PendingReply;
pub(crate) use pending::Timing;
pub use pool::Endpoint;
pub(crate) use route::Placement;
use route::Route;

/// The balancer of a client over several providers ([`Client::balancer`]): each
/// provider carries the client's connections to it ([`Endpoint`]), so a call's pick
/// hands over the connection to use with no lookup of its own.
pub type Balancer = LoadBalancer<Arc<Endpoint>>;

/// A connection to one server, multiplexing any number of concurrent calls.
#[derive(Clone)]
pub struct Client {
    /// Shared by all clones.
    inner: Arc<ClientInner>,
    /// The filter chain calls pass through, when layers were added; its
    /// [`Transport`](crate::filter::Transport) holds this client without it.
    chain: Option<Arc<crate::filter::client::ChainPool>>,
    /// The framework's own filters added before any other layer, which calls run
    /// without a chain (outside it, if there is one too).
    filters: Option<Arc<crate::filter::inline::ClientFilters>>,
}

struct ClientInner {
    /// Settings.
    config: ClientConfig,
    /// Where calls go: one server, or a balanced set of providers.
    route: Route,
    /// The runtime connection tasks and callbacks run on.
    runtime: Handle,
    /// Present when the client owns its runtime (built from non-async code).
    owned: Option<OwnedRuntime>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Client");
        match &self.inner.route {
            Route::Single(endpoint) => d.field("addr", &endpoint.addr),
            Route::Cluster(cluster) => d
                .field("service", &cluster.balancer.service())
                .field("strategy", &cluster.balancer.strategy())
                .field("providers", &cluster.balancer.providers().len()),
        };
        d.field("config", &self.inner.config)
            .field("filtered", &self.chain.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder with default settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Connects with default settings from async code; see [`ClientBuilder::connect`].
    ///
    /// # Errors
    ///
    /// If the address does not resolve or the connection fails.
    pub async fn connect(
        addr: impl tokio::net::ToSocketAddrs + fmt::Debug,
    ) -> Result<Client, RpcError> {
        ClientBuilder::default().connect(addr).await
    }

    /// Connects with default settings from plain code; see
    /// [`ClientBuilder::connect_blocking`].
    ///
    /// # Errors
    ///
    /// If the address does not resolve or the connection fails.
    pub fn connect_blocking(
        addr: impl std::net::ToSocketAddrs + fmt::Debug,
    ) -> Result<Client, RpcError> {
        ClientBuilder::default().connect_blocking(addr)
    }

    fn single(
        addr: SocketAddr,
        config: ClientConfig,
        runtime: Handle,
        owned: Option<OwnedRuntime>,
    ) -> Client {
        let endpoint = Endpoint::new(addr, &config);
        Client::with_route(Route::Single(endpoint), config, runtime, owned)
    }

    fn with_route(
        route: Route,
        config: ClientConfig,
        runtime: Handle,
        owned: Option<OwnedRuntime>,
    ) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                config,
                route,
                runtime,
                owned,
            }),
            chain: None,
            filters: None,
        }
    }

    /// This client with `filters` (run without a chain) and a chain made of `layers`
    /// (outermost first) around its transport; unchanged when there are none.
    fn with_layers(
        mut self,
        filters: &crate::filter::inline::ClientFilters,
        layers: &[crate::filter::client::ErasedLayer],
    ) -> Client {
        if !filters.is_empty() {
            self.filters = Some(Arc::new(filters.clone()));
        }
        if layers.is_empty() {
            return self;
        }
        let mut chain =
            crate::filter::client::ClientChain::new(crate::filter::Transport::new(&self));
        for layer in layers.iter().rev() {
            chain = layer(chain);
        }
        self.chain = Some(Arc::new(crate::filter::client::ChainPool::new(chain)));
        self
    }

    /// This client without its filter chain: what the chain's transport sends
    /// through.
    pub(crate) fn without_chain(&self) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            chain: None,
            filters: None,
        }
    }

    /// The filters calls run without a chain, if any.
    pub(crate) fn filters(&self) -> Option<&crate::filter::inline::ClientFilters> {
        self.filters.as_deref()
    }

    /// The filter chain, if layers were added.
    pub(crate) fn chain(&self) -> Option<&crate::filter::client::ChainPool> {
        self.chain.as_deref()
    }

    /// The server's address, for a single-server client; `None` for a client over
    /// several providers.
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.inner.route {
            Route::Single(endpoint) => Some(endpoint.addr),
            Route::Cluster(_) => None,
        }
    }

    /// The balancer of a client over several providers (its providers, their
    /// statistics, health marks); `None` for a single-server client.
    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.inner.route {
            Route::Single(_) => None,
            Route::Cluster(cluster) => Some(&cluster.balancer),
        }
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The runtime this client's connections and callbacks run on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// Runs `fut` to completion on this thread, with the client's runtime entered so
    /// timers work, giving up with [`RpcError::Timeout`] after `limit` whatever the
    /// connection task does (it enforces the call's deadline itself; this holds even if
    /// that task is gone).
    ///
    /// # Errors
    ///
    /// [`RpcError::BlockingInAsyncContext`] where blocking this thread could deadlock:
    /// on a thread of the runtime the client's own connections run on, or, for a client
    /// on the caller's runtime, anywhere inside a tokio runtime.
    pub(crate) fn block_on<T, E>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RpcError<E>>>,
        limit: Duration,
    ) -> Result<T, RpcError<E>> {
        let would_deadlock = match &self.inner.owned {
            // Its connections run on its own threads: only those must not block.
            Some(owned) => owned.is_current_thread(),
            None => Handle::try_current().is_ok(),
        };
        if would_deadlock {
            return Err(RpcError::BlockingInAsyncContext);
        }
        let _entered = self.inner.runtime.enter();
        sync::block_on(fut, limit).unwrap_or(Err(RpcError::Timeout(limit)))
    }

    /// Connects the first connection of a single-server client, so that building the
    /// client reports an unreachable server.
    async fn first_connection(&self) -> Result<(), RpcError> {
        if let Route::Single(endpoint) = &self.inner.route {
            endpoint.connection(&self.inner).await?;
        }
        Ok(())
    }
}

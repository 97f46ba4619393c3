//! Client settings and the builder that checks them and connects.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tower::Layer;

use rpc_lb::{LoadBalancer, Provider, Strategy};

use super::route::{Cluster, Route};
use super::Client;
use crate::error::RpcError;
use crate::filter::client::{ClientChain, ErasedLayer};
use crate::filter::{BoxError, ClientRequest, ClientResponse};
use crate::protocol::{DEFAULT_MAX_FRAME_LEN, MIN_FRAME_LEN};
use crate::runtime::OwnedRuntime;

/// Client settings. Build with [`ClientBuilder`] or start from `ClientConfig::default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Timeout of a call that sets none itself; also sent to the server as the call's
    /// deadline. Default: 5 s.
    pub timeout: Duration,
    /// How long connecting may take. Default: 3 s.
    pub connect_timeout: Duration,
    /// Connections kept to the server; calls are spread over them round-robin.
    /// Default: 1 (one connection multiplexes any number of calls).
    pub connections: usize,
    /// Send a heartbeat when nothing has been heard from the server for this long.
    /// Default: 10 s.
    pub heartbeat_interval: Duration,
    /// Close the connection, failing its calls, when nothing (not even a heartbeat
    /// reply) has been heard for this long. Default: 30 s.
    pub idle_timeout: Duration,
    /// Largest frame sent or accepted, header included. Default: 8 MiB.
    pub max_frame_len: usize,
    /// Wait after the first failed connection attempt; doubles per failure.
    /// Calls made while waiting fail at once. Default: 100 ms.
    pub reconnect_backoff: Duration,
    /// Upper bound of the reconnect wait. Default: 5 s.
    pub max_reconnect_backoff: Duration,
    /// Authentication token sent with every call (handlers read it from
    /// [`CallContext`](crate::server::CallContext)). Default: none.
    pub auth_token: Option<Vec<u8>>,
    /// TLS settings (the `tls` feature); `None`, the default, connects in plaintext.
    /// The TLS handshake counts against `connect_timeout`.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            connections: 1,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            reconnect_backoff: Duration::from_millis(100),
            max_reconnect_backoff: Duration::from_secs(5),
            auth_token: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Most connections a client may keep per server: far past any use (each multiplexes
/// any number of calls), low enough to catch a mistyped value.
const MAX_CONNECTIONS: usize = 1024;

impl ClientConfig {
    /// Checks the settings. Connecting runs this, so a client never runs with a
    /// setting it would have to change silently.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] naming the setting: a zero timeout, connect timeout,
    /// heartbeat interval or reconnect backoff; connections outside 1 to 1024; an idle
    /// timeout not longer than the heartbeat interval; a maximum reconnect backoff
    /// below the first; a maximum frame length under
    /// [`MIN_FRAME_LEN`](crate::protocol::MIN_FRAME_LEN).
    pub fn validate(&self) -> Result<(), RpcError> {
        let invalid = |message: String| Err(RpcError::InvalidConfig(message));
        let positive = [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("heartbeat interval", self.heartbeat_interval),
            ("reconnect_backoff", self.reconnect_backoff),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return invalid(format!("{name} must be more than zero"));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return invalid(format!(
                "connections must be between 1 and {MAX_CONNECTIONS}, not {}",
                self.connections
            ));
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return invalid(format!(
                "the idle timeout ({:?}) must be longer than the heartbeat interval ({:?}), \
                 or a healthy connection would be closed between heartbeats",
                self.idle_timeout, self.heartbeat_interval
            ));
        }
        if self.max_reconnect_backoff < self.reconnect_backoff {
            return invalid(format!(
                "the largest reconnect backoff ({:?}) is below the first ({:?})",
                self.max_reconnect_backoff, self.reconnect_backoff
            ));
        }
        if self.max_frame_len < MIN_FRAME_LEN {
            return invalid(format!(
                "max_frame_len must be at least {MIN_FRAME_LEN} bytes, not {}",
                self.max_frame_len
            ));
        }
        Ok(())
    }
}

/// Builds a [`Client`].
#[derive(Clone, Default)]
pub struct ClientBuilder {
    /// Settings so far.
    config: ClientConfig,
    /// How calls are spread over several providers.
    strategy: Strategy,
    /// Warm-up period, hash-ring size and latency decay of the balancer.
    balancer_config: rpc_lb::Config,
    /// Filter layers, outermost first.
    layers: Vec<ErasedLayer>,
    /// The framework's own filters added before any other layer, run without a
    /// chain.
    inline: crate::filter::inline::ClientFilters,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("strategy", &self.strategy)
            .field("balancer_config", &self.balancer_config)
            .field("layers", &self.layers.len())
            .field("inline", &self.inline)
            .finish()
    }
}

impl ClientBuilder {
    /// Replaces all settings.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the default call timeout.
    ///
    /// ```
    /// let b = rpc_core::Client::builder().timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    ///
    /// ```
    /// let b = rpc_core::Client::builder().connect_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets the number of connections to keep to the server.
    ///
    /// ```
    /// let b = rpc_core::Client::builder().connections(4);
    /// ```
    pub fn connections(mut self, connections: usize) -> Self {
        self.config.connections = connections;
        self
    }

    /// Sets the heartbeat interval and the idle timeout after which a silent
    /// connection is closed.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = rpc_core::Client::builder().heartbeat(Duration::from_secs(2), Duration::from_secs(6));
    /// ```
    pub fn heartbeat(mut self, interval: Duration, idle_timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.config.idle_timeout = idle_timeout;
        self
    }

    /// Sets the maximum frame length.
    ///
    /// ```
    /// let b = rpc_core::Client::builder().max_frame_len(1 << 20);
    /// ```
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.config.max_frame_len = len;
        self
    }

    /// Sets the first and the largest reconnect backoff.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = rpc_core::Client::builder()
    ///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// ```
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.reconnect_backoff = initial;
        self.config.max_reconnect_backoff = max;
        self
    }

    /// Sets the load-balancing strategy used by [`connect_providers`](Self::connect_providers)
    /// (default: weighted random). Strategies also parse from their names, such as
    /// `"least-connection"`.
    ///
    /// ```
    /// let b = rpc_core::Client::builder().balancer(rpc_core::lb::Strategy::LeastConnection);
    /// let by_name = rpc_core::Client::builder().balancer("round-robin".parse().unwrap());
    /// ```
    pub fn balancer(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the balancer's tuning: the warm-up period over which a newly started
    /// provider (one with [`Provider::started_at`]) ramps up to its full weight, the
    /// consistent-hash ring size, the latency decay of the adaptive strategy.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = rpc_core::Client::builder()
    ///     .balancer_config(rpc_core::lb::Config::default().warm_up(Duration::from_secs(60)));
    /// ```
    pub fn balancer_config(mut self, config: rpc_lb::Config) -> Self {
        self.balancer_config = config;
        self
    }

    /// A client spread over several providers of `service`, each call going to the
    /// provider the balancer picks.
    ///
    /// `service` names the provider set: it is what [`RpcError::NoProvider`] reports
    /// and what the balancer is labelled with. Calls are not checked against it: every
    /// stub built on this client (`FooClient::new(client.clone())`) sends its own
    /// service name to the providers picked, so give each service its own client
    /// unless the same providers host them all.
    ///
    /// Nothing is dialled yet: a provider is connected on its first call. One that
    /// cannot be reached, or announces shutdown, is skipped by the balancer for
    /// [`ClientConfig::reconnect_backoff`] (at least 50 ms) and the call goes to
    /// another. Change the set later with [`Client::update_providers`]. Connection tasks
    /// run on the current tokio runtime, which must outlive the client.
    ///
    /// ```
    /// # async fn run() -> Result<(), rpc_core::RpcError> {
    /// use rpc_core::lb::{Provider, Strategy};
    /// let client = rpc_core::Client::builder()
    ///     .balancer(Strategy::RoundRobin)
    ///     .connect_providers("example.Inventory", [
    ///         Provider::new("127.0.0.1:7001".parse().unwrap()),
    ///         Provider::new("127.0.0.1:7002".parse().unwrap()).weight(200),
    ///     ])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RpcError::NoRuntime`] outside a tokio runtime (use
    /// [`connect_providers_blocking`](Self::connect_providers_blocking) there), or
    /// [`RpcError::InvalidConfig`] for invalid settings.
    pub async fn connect_providers(
        self,
        service: &str,
        providers: impl IntoIterator<Item = Provider>,
    ) -> Result<Client, RpcError> {
        self.config.validate()?;
        let runtime = current_runtime("ClientBuilder::connect_providers")?;
        self.cluster(service, providers, runtime, None)
    }

    /// [`connect_providers`](Self::connect_providers) from plain (non-async) code: the
    /// client starts and owns a small runtime of its own.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for invalid settings, or
    /// [`RpcError::NoRuntime`] if the client's runtime cannot start.
    pub fn connect_providers_blocking(
        self,
        service: &str,
        providers: impl IntoIterator<Item = Provider>,
    ) -> Result<Client, RpcError> {
        self.config.validate()?;
        let runtime = start_runtime()?;
        let handle = runtime.handle().clone();
        self.cluster(service, providers, handle, Some(runtime))
    }

    fn cluster(
        self,
        service: &str,
        providers: impl IntoIterator<Item = Provider>,
        runtime: Handle,
        owned: Option<OwnedRuntime>,
    ) -> Result<Client, RpcError> {
        if service.is_empty() {
            return Err(RpcError::InvalidConfig(
                "connect_providers needs a service name".to_owned(),
            ));
        }
        let cluster = Cluster::new(LoadBalancer::carrying(
            service,
            self.strategy,
            self.balancer_config,
        ));
        let client = Client::with_route(Route::Cluster(cluster), self.config, runtime, owned)
            .with_layers(&self.inline, &self.layers);
        client.update_providers(providers);
        Ok(client)
    }

    /// Connects with TLS, with these settings (the `tls` feature).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::ClientTls) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Adds a filter layer (any [`tower::Layer`] over the client's chain, see
    /// [`filter`](crate::filter)). The first layer added is the outermost: it sees a
    /// call first and its result last. A client with no layers runs no chain: its
    /// calls take the hand-tuned path. Each layer added costs a boxed future per call;
    /// several layers composed into one `tower::ServiceBuilder` and added at once cost
    /// one.
    ///
    /// ```
    /// use rpc_core::filter::trace::TraceLayer;
    /// let builder = rpc_core::Client::builder().layer(TraceLayer::client());
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<ClientChain> + Send + Sync + 'static,
        L::Service: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<ClientRequest>>::Future: Send + 'static,
    {
        let mut slot = Some(layer);
        if self.layers.is_empty() {
            self.inline.take(&mut slot);
        }
        if let Some(layer) = slot {
            self.layers
                .push(Arc::new(move |inner| ClientChain::new(layer.layer(inner))));
        }
        self
    }

    /// Sends `token` as the authentication token of every call.
    ///
    /// ```
    /// let b = rpc_core::Client::builder().auth_token("s3cr3t");
    /// ```
    pub fn auth_token(mut self, token: impl Into<Vec<u8>>) -> Self {
        self.config.auth_token = Some(token.into());
        self
    }

    /// Connects from async code. Connection tasks run on the current tokio runtime,
    /// which must outlive the client (calls on a client whose runtime has shut down
    /// fail at once with [`RpcError::ClientClosed`]).
    ///
    /// # Errors
    ///
    /// [`RpcError::Resolve`] if the address does not resolve, [`RpcError::Connect`]
    /// if the first connection fails, [`RpcError::NoRuntime`] outside a tokio runtime
    /// (use [`connect_blocking`](Self::connect_blocking) there).
    pub async fn connect(
        self,
        addr: impl tokio::net::ToSocketAddrs + fmt::Debug,
    ) -> Result<Client, RpcError> {
        self.config.validate()?;
        let runtime = current_runtime("ClientBuilder::connect")?;
        let shown = format!("{addr:?}");
        let addr = resolve(shown, tokio::net::lookup_host(addr).await)?;
        let client = Client::single(addr, self.config, runtime, None)
            .with_layers(&self.inline, &self.layers);
        client.first_connection().await?;
        Ok(client)
    }

    /// Connects from plain (non-async) code. The client starts and owns a small runtime
    /// of its own, so sync calls work from `fn main` without any runtime.
    ///
    /// # Errors
    ///
    /// If the address does not resolve, the runtime cannot start, or the first
    /// connection fails.
    pub fn connect_blocking(
        self,
        addr: impl std::net::ToSocketAddrs + fmt::Debug,
    ) -> Result<Client, RpcError> {
        self.config.validate()?;
        let addr = resolve(format!("{addr:?}"), addr.to_socket_addrs())?;
        let runtime = start_runtime()?;
        let handle = runtime.handle().clone();
        let client = Client::single(addr, self.config, handle, Some(runtime))
            .with_layers(&self.inline, &self.layers);
        // The connect attempt times out by itself; this only guards against its task
        // never running.
        let limit = client.inner.config.connect_timeout + Duration::from_secs(1);
        client.block_on(client.first_connection(), limit)?;
        Ok(client)
    }
}

/// The runtime of the calling task, for `what` (named in the error).
fn current_runtime(what: &'static str) -> Result<Handle, RpcError> {
    Handle::try_current().map_err(|_| RpcError::NoRuntime(what))
}

/// Starts the small runtime a client built from plain code owns.
fn start_runtime() -> Result<OwnedRuntime, RpcError> {
    OwnedRuntime::start("rpc-client", 1)
        .map_err(|e| RpcError::Internal(format!("cannot start the client's own runtime: {e}")))
}

/// The first address `addrs` (the resolution of `shown`) gave.
fn resolve<I: Iterator<Item = SocketAddr>>(
    shown: String,
    addrs: io::Result<I>,
) -> Result<SocketAddr, RpcError> {
    let first = addrs.and_then(|mut addrs| {
        addrs
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "it resolved to no address"))
    });
    first.map_err(|e| RpcError::Resolve {
        addr: shown,
        source: Arc::new(e),
    })
}

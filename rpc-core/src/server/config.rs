//! Server settings and the builder that checks them.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::runtime::Handle;

use tower::layer::util::{Identity, Stack};
use tower::util::Either;
use tower::Layer;

use super::{Server, Service};
use crate::error::RpcError;
use crate::filter::inline::ServerFilters;
use crate::filter::server::ServerChain;
use crate::filter::{BoxError, Invoker, ServerRequest, ServerResponse};
use crate::protocol::{DEFAULT_MAX_FRAME_LEN, MIN_FRAME_LEN};

/// Where handlers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Execution {
    /// On the worker reactor that owns the connection, with no thread hop. Fastest;
    /// right for handlers that never block and finish quickly.
    Worker,
    /// On a separate multi-threaded business pool with this many threads, so slow or
    /// CPU-heavy handlers never stall I/O.
    Pool {
        /// Threads in the pool.
        threads: usize,
    },
}

/// Server settings. Build with [`ServerBuilder`] or start from `ServerConfig::default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Worker reactors. Default: the number of CPUs.
    pub workers: usize,
    /// Where handlers run. Default: [`Execution::Worker`].
    pub execution: Execution,
    /// Largest frame accepted or sent, header included. Default: 8 MiB.
    pub max_frame_len: usize,
    /// Calls one connection may have running at once; past it the server stops
    /// reading from that connection until some finish. Default: 4096.
    pub max_in_flight_per_connection: usize,
    /// Open connections at most; more are closed as they are accepted. Default: 65 536.
    pub max_connections: usize,
    /// A connection that sends nothing (not even heartbeats) for this long while no
    /// call of it is running is closed. Default: 90 s.
    pub idle_timeout: Duration,
    /// On shutdown, how long running calls get to finish before connections are
    /// closed regardless. Default: 10 s.
    pub drain_timeout: Duration,
    /// A frame whose first bytes have arrived must be complete this long after; a
    /// peer that stalls in the middle of a frame (a slow-loris) is closed with a
    /// logged reason instead of holding the connection until the idle timeout. It
    /// also bounds how long a peer that stopped reading its replies may keep the
    /// server's write buffer full without the socket taking a byte. Default: 5 s
    /// (a frame of the default 8 MiB maximum then needs at least 1.7 MB/s).
    pub frame_timeout: Duration,
    /// Open connections at most from one IP address; more are closed as they are
    /// accepted, with a logged reason. Default: 1024.
    pub max_connections_per_peer: usize,
    /// Reply bytes one connection may have waiting to be written: past it the server
    /// stops reading that connection's requests (its peer is not reading replies, or
    /// reads them slower than it sends requests), and a connection whose waiting
    /// replies reach this plus one maximum frame (replies of calls already running)
    /// is closed with a logged reason. Default: 4 MiB.
    pub max_write_buffer: usize,
    /// TLS settings (the `tls` feature); `None`, the default, serves plaintext.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::ServerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: std::thread::available_parallelism().map_or(2, usize::from),
            execution: Execution::Worker,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_in_flight_per_connection: 4096,
            max_connections: 65_536,
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(5),
            max_connections_per_peer: 1024,
            max_write_buffer: 4 * 1024 * 1024,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Most threads a worker group or business pool may be given: far past any machine's
/// cores, low enough to catch a mistyped value before it starts thousands of threads.
const MAX_THREADS: usize = 1024;

/// The shortest idle timeout: the idle check runs every half of it.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_millis(10);

impl ServerConfig {
    /// Checks the settings. [`ServerBuilder::bind`] runs this, so a server never starts
    /// with a setting it would have to change silently.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] naming the setting: zero workers, threads or limits,
    /// more than 1024 workers or pool threads, a maximum frame length under
    /// [`MIN_FRAME_LEN`] (1 KiB: room for every error reply), an idle timeout under
    /// 10 ms, a frame timeout under 10 ms, a
    /// per-peer connection cap of zero, a write buffer cap
    /// under [`MIN_FRAME_LEN`], a zero TLS handshake timeout.
    pub fn validate(&self) -> Result<(), RpcError> {
        let invalid = |message: String| Err(RpcError::InvalidConfig(message));
        if !(1..=MAX_THREADS).contains(&self.workers) {
            return invalid(format!(
                "workers must be between 1 and {MAX_THREADS}, not {}",
                self.workers
            ));
        }
        if let Execution::Pool { threads } = self.execution {
            if !(1..=MAX_THREADS).contains(&threads) {
                return invalid(format!(
                    "the business pool needs between 1 and {MAX_THREADS} threads, not {threads}"
                ));
            }
        }
        if self.max_frame_len < MIN_FRAME_LEN {
            return invalid(format!(
                "max_frame_len must be at least {MIN_FRAME_LEN} bytes (room for an error \
                 reply), not {}",
                self.max_frame_len
            ));
        }
        if self.max_in_flight_per_connection == 0 {
            return invalid("max_in_flight_per_connection must be at least 1".to_owned());
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".to_owned());
        }
        if self.idle_timeout < MIN_IDLE_TIMEOUT {
            return invalid(format!(
                "idle_timeout must be at least {MIN_IDLE_TIMEOUT:?}, not {:?}",
                self.idle_timeout
            ));
        }
        if self.frame_timeout < MIN_IDLE_TIMEOUT {
            return invalid(format!(
                "frame_timeout must be at least {MIN_IDLE_TIMEOUT:?}, not {:?}",
                self.frame_timeout
            ));
        }
        if self.max_connections_per_peer == 0 {
            return invalid("max_connections_per_peer must be at least 1".to_owned());
        }
        if self.max_write_buffer < MIN_FRAME_LEN {
            return invalid(format!(
                "max_write_buffer must be at least {MIN_FRAME_LEN} bytes, not {}",
                self.max_write_buffer
            ));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

/// Builds a [`Server`]: settings, services and filter layers, then
/// [`bind`](Self::bind). `L` is the stack of layers added with
/// [`layer`](Self::layer) (none by default).
pub struct ServerBuilder<L = Identity> {
    /// Settings so far.
    config: ServerConfig,
    /// Services so far, by name.
    services: HashMap<String, Arc<dyn Service>>,
    /// The filter layers, outermost first.
    layers: L,
    /// Whether any layer was added to the chain: without one the server runs no
    /// chain at all.
    layered: bool,
    /// The framework's own filters added before any other layer, which the server
    /// runs without a chain.
    inline: ServerFilters,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: ServerConfig::default(),
            services: HashMap::new(),
            layers: Identity::new(),
            layered: false,
            inline: ServerFilters::default(),
        }
    }
}

impl<L> fmt::Debug for ServerBuilder<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("layered", &self.layered)
            .field("inline", &self.inline)
            .finish()
    }
}

impl<L> ServerBuilder<L> {
    /// Replaces all settings.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the number of worker reactors.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().workers(4);
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// Runs handlers on a business pool of `threads` threads instead of the workers.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().business_pool(8);
    /// ```
    pub fn business_pool(mut self, threads: usize) -> Self {
        self.config.execution = Execution::Pool { threads };
        self
    }

    /// Sets the maximum frame length.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().max_frame_len(1 << 20);
    /// ```
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.config.max_frame_len = len;
        self
    }

    /// Sets how long running calls get to finish on shutdown.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().drain_timeout(std::time::Duration::from_secs(30));
    /// ```
    pub fn drain_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Sets how long a silent connection is kept.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().idle_timeout(std::time::Duration::from_secs(60));
    /// ```
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Sets how long a frame that has begun may take to arrive in full (see
    /// [`ServerConfig::frame_timeout`]).
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().frame_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn frame_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.frame_timeout = timeout;
        self
    }

    /// Sets the most connections open at once, in all and from one IP address.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().max_connections(10_000, 100);
    /// ```
    pub fn max_connections(mut self, total: usize, per_peer: usize) -> Self {
        self.config.max_connections = total;
        self.config.max_connections_per_peer = per_peer;
        self
    }

    /// Sets how many reply bytes may wait for a peer before the server stops reading
    /// its requests (see [`ServerConfig::max_write_buffer`]).
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().max_write_buffer(1 << 20);
    /// ```
    pub fn max_write_buffer(mut self, bytes: usize) -> Self {
        self.config.max_write_buffer = bytes;
        self
    }

    /// Serves TLS only, with these settings (the `tls` feature).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::ServerTls) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Adds a filter layer (any [`tower::Layer`] over the server's chain, see
    /// [`filter`](crate::filter)). The first layer added is the outermost: it sees a
    /// call first and its reply last. A server with no layers runs no chain.
    ///
    /// The framework's own metrics, tracing, static-token authentication and limits,
    /// when added before any other layer, run without a chain, in the call's fast path
    /// (same behaviour, a fraction of the cost; see [`filter`](crate::filter)); the
    /// stack then holds an `Identity` in their place.
    ///
    /// ```
    /// use rpc_core::filter::auth::TokenAuthLayer;
    /// let builder = rpc_core::Server::builder().layer(TokenAuthLayer::tokens(["s3cr3t"]));
    /// ```
    pub fn layer<N: 'static>(mut self, layer: N) -> ServerBuilder<Stack<Either<N, Identity>, L>> {
        let mut slot = Some(layer);
        if !self.layered {
            self.inline.take(&mut slot);
        }
        let (layered, layer) = match slot {
            Some(layer) => (true, Either::Left(layer)),
            None => (self.layered, Either::Right(Identity::new())),
        };
        ServerBuilder {
            config: self.config,
            services: self.services,
            layered,
            layers: Stack::new(layer, self.layers),
            inline: self.inline,
        }
    }

    /// Hosts a service. A later service with the same name replaces an earlier one.
    pub fn add_service(mut self, service: impl Service) -> Self {
        self.services
            .insert(service.name().to_owned(), Arc::new(service));
        self
    }

    /// Binds the listening socket. Use port 0 for an ephemeral port and read it back
    /// with [`Server::local_addr`].
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a setting out of range (see
    /// [`ServerConfig::validate`]); [`RpcError::NoRuntime`] outside a tokio runtime;
    /// [`RpcError::Bind`] if the address does not resolve or cannot be bound.
    pub async fn bind(self, addr: impl ToSocketAddrs + fmt::Debug) -> Result<Server, RpcError>
    where
        L: Layer<Invoker>,
        L::Service: tower::Service<ServerRequest, Response = ServerResponse, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<ServerRequest>>::Future: Send + 'static,
    {
        self.config.validate()?;
        let mut services = self.services;
        crate::reflection::install(&mut services)?;
        let runtime =
            Handle::try_current().map_err(|_| RpcError::NoRuntime("ServerBuilder::bind"))?;
        let shown = format!("{addr:?}");
        let bind_error = |e: io::Error| RpcError::Bind {
            addr: shown.clone(),
            source: Arc::new(e),
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Server {
            listener,
            local_addr,
            runtime,
            config: self.config,
            services,
            chain: self
                .layered
                .then(|| ServerChain::new(self.layers.layer(Invoker))),
            filters: (!self.inline.is_empty()).then_some(self.inline),
            connections: Arc::new(AtomicUsize::new(0)),
        })
    }
}

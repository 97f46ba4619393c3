//! The server: hosts services on one port, boss/worker I/O, graceful shutdown.
//!
//! ```no_run
//! # use rpc_core::{service, Server};
//! #[service]
//! trait Echo {
//!     async fn echo(&self, text: String) -> String;
//! }
//!
//! struct EchoImpl;
//! impl Echo for EchoImpl {
//!     async fn echo(&self, text: String) -> String {
//!         text
//!     }
//! }
//!
//! # async fn run() -> Result<(), rpc_core::RpcError> {
//! let server = Server::builder()
//!     .workers(2)
//!     .add_service(EchoServer::new(EchoImpl))
//!     .bind("127.0.0.1:7000")
//!     .await?;
//! server
//!     .serve_with_shutdown(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await
//! # }
//! ```

mod context;
mod service;

use std::collections::HashMap;
use std::future::{self, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use std::fmt;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use context::enter as enter_context;
pub use context::CallContext;
pub use service::{
    dispatched, DispatchError, Dispatched, EncodeFailure, Fallible, Handler, IntoReply, Plain,
    Reply, Service,
};

use crate::error::RpcError;
use crate::protocol::DEFAULT_MAX_FRAME_LEN;
use crate::runtime::OwnedRuntime;
use crate::transport::worker::WorkerGroup;
use crate::transport::{boss, ServerShared};

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
        }
    }
}

/// Builds a [`Server`]: settings, then services, then [`bind`](Self::bind).
#[derive(Default)]
pub struct ServerBuilder {
    /// Settings so far.
    config: ServerConfig,
    /// Services so far, by name.
    services: HashMap<String, Arc<dyn Service>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServerBuilder {
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
        self.config.workers = workers.max(1);
        self
    }

    /// Runs handlers on a business pool of `threads` threads instead of the workers.
    ///
    /// ```
    /// let builder = rpc_core::Server::builder().business_pool(8);
    /// ```
    pub fn business_pool(mut self, threads: usize) -> Self {
        self.config.execution = Execution::Pool {
            threads: threads.max(1),
        };
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
        self.config.idle_timeout = timeout.max(Duration::from_millis(10));
        self
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
    /// [`RpcError::NoRuntime`] outside a tokio runtime; [`RpcError::Bind`] if the
    /// address does not resolve or cannot be bound.
    pub async fn bind(self, addr: impl ToSocketAddrs + fmt::Debug) -> Result<Server, RpcError> {
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
            services: self.services,
            connections: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// A bound server, ready to [`serve`](Server::serve).
pub struct Server {
    /// The listening socket.
    listener: TcpListener,
    /// Its address, read once at bind.
    local_addr: SocketAddr,
    /// The runtime `bind` ran on, where [`spawn`](Server::spawn) starts the server.
    runtime: Handle,
    /// Settings.
    config: ServerConfig,
    /// Hosted services by name.
    services: HashMap<String, Arc<dyn Service>>,
    /// Open connections, shared with the running server.
    connections: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Server {
    /// A builder with default settings and no services.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on (with the port the system chose, when
    /// bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the process ends.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serve`] if the workers or business pool cannot be started.
    pub async fn serve(self) -> Result<(), RpcError> {
        self.serve_with_shutdown(future::pending()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully: tells connected
    /// clients (a GOAWAY event frame) so they send new calls elsewhere, stops
    /// accepting, lets running calls finish within the drain timeout, and closes.
    /// Returns once every connection is closed and every worker has stopped.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serve`] if the workers or business pool cannot be started.
    pub async fn serve_with_shutdown(
        self,
        signal: impl Future<Output = ()>,
    ) -> Result<(), RpcError> {
        self.run(signal, CancellationToken::new())
            .await
            .map_err(|e| RpcError::Serve(Arc::new(e)))
    }

    /// Starts serving in the background, on the runtime it was bound on, and returns
    /// a handle to stop it.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr;
        let token = CancellationToken::new();
        let connections = Arc::clone(&self.connections);
        let runtime = self.runtime.clone();
        let task = runtime.spawn(self.run(future::pending(), token.clone()));
        ServerHandle {
            addr,
            token,
            connections,
            task,
        }
    }

    async fn run(
        self,
        signal: impl Future<Output = ()>,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let pool = match self.config.execution {
            Execution::Worker => None,
            Execution::Pool { threads } => Some(OwnedRuntime::start("rpc-business", threads)?),
        };
        let mut names: Vec<&str> = self.services.keys().map(String::as_str).collect();
        names.sort_unstable();
        let service_names = names.join(", ");
        let shared = Arc::new(ServerShared {
            service_names,
            services: self.services,
            pool: pool.as_ref().map(|p| p.handle().clone()),
            shutdown,
            connections: self.connections,
            config: self.config,
        });
        let workers = WorkerGroup::start(shared.config.workers, &shared)?;
        tracing::info!(
            addr = ?self.listener.local_addr().ok(),
            workers = shared.config.workers,
            services = %shared.service_names,
            "server started"
        );
        let result = boss::run(self.listener, shared, workers, signal).await;
        drop(pool);
        result
    }
}

/// A server running in the background; see [`Server::spawn`].
#[derive(Debug)]
pub struct ServerHandle {
    /// The address it listens on.
    addr: SocketAddr,
    /// Cancelling it starts the graceful shutdown.
    token: CancellationToken,
    /// Open connections.
    connections: Arc<AtomicUsize>,
    /// The serving task.
    task: JoinHandle<io::Result<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many client connections are open now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.token.cancel();
    }

    /// Shuts down gracefully and waits until the server has stopped.
    ///
    /// # Errors
    ///
    /// [`RpcError::Serve`] if the server failed, [`RpcError::Internal`] if its task
    /// panicked or its runtime shut down first.
    pub async fn shutdown(self) -> Result<(), RpcError> {
        self.token.cancel();
        match self.task.await {
            Ok(result) => result.map_err(|e| RpcError::Serve(Arc::new(e))),
            Err(e) => Err(RpcError::Internal(format!("server task failed: {e}"))),
        }
    }
}

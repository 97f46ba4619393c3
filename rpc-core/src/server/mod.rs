//! The server: hosts services on one port, boss/worker I/O, graceful shutdown.
//!
//! A call's path through it, one file each:
//!
//! - `boss`: accepts connections and hands each to a worker, round-robin;
//! - `worker`: a fixed set of reactors, each a single-threaded runtime on its own
//!   thread, owning the connections it was given;
//! - `connection`: a connection's I/O loop (read, split into frames, write);
//! - `dispatch`: from a request frame to a running handler (service lookup, metadata,
//!   [`CallContext`], worker or business pool) and from its result to reply bytes;
//! - `in_flight`: running handlers, guarded against panics and bounded by deadlines;
//! - `service`: the [`Service`] contract the generated skeleton implements;
//! - `config`: [`ServerConfig`] and [`ServerBuilder`], checked at [`bind`](ServerBuilder::bind).
//!
//! Every server also hosts the built-in reflection service
//! ([`reflection`](crate::reflection)), added at [`bind`](ServerBuilder::bind).
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

mod boss;
mod config;
mod connection;
mod context;
mod dispatch;
mod in_flight;
mod service;
mod worker;

use std::collections::HashMap;
use std::future::{self, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Execution, ServerBuilder, ServerConfig};
pub(crate) use context::enter as enter_context;
pub use context::{AuthToken, CallContext, Cancellation, PeerIdentity};
pub(crate) use service::Reply;
pub use service::{
    dispatched, DispatchError, Dispatched, EncodeFailure, Fallible, Handler, IntoReply, Plain,
    Service,
};

use crate::error::RpcError;
use crate::runtime::OwnedRuntime;
use worker::WorkerGroup;

/// What every connection of a server shares.
pub(crate) struct ServerShared {
    /// Hosted services by name.
    pub(crate) services: HashMap<String, Arc<dyn Service>>,
    /// The filter chain every call passes through, when layers were added; each
    /// connection works on a clone of it.
    pub(crate) chain: Option<crate::filter::server::ServerChain>,
    /// The framework's own filters the connections run without a chain, if any were
    /// added (outside the chain).
    pub(crate) filters: Option<crate::filter::inline::ServerFilters>,
    /// Comma-separated service names, for "service not found" messages.
    pub(crate) service_names: String,
    /// The server's settings.
    pub(crate) config: ServerConfig,
    /// The business pool, when handlers do not run on the workers.
    pub(crate) pool: Option<Handle>,
    /// Cancelled when graceful shutdown begins.
    pub(crate) shutdown: CancellationToken,
    /// Open connections, to enforce `max_connections`.
    pub(crate) connections: Arc<AtomicUsize>,
    /// Open connections per peer IP address, to enforce `max_connections_per_peer`;
    /// touched once when a connection opens and once when it closes.
    pub(crate) per_peer: parking_lot::Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl ServerShared {
    /// Counts a new connection from `peer`, unless it is one past a cap; then says
    /// which.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Result<(), &'static str> {
        use std::sync::atomic::Ordering;
        if self.connections.load(Ordering::Acquire) >= self.config.max_connections {
            return Err("at the connection limit (max_connections)");
        }
        let mut per_peer = self.per_peer.lock();
        let count = per_peer.entry(peer.ip()).or_insert(0);
        if *count >= self.config.max_connections_per_peer {
            return Err("at the per-address connection limit (max_connections_per_peer)");
        }
        *count += 1;
        drop(per_peer);
        self.connections.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Uncounts a connection from `peer` that has ended (or never started).
    pub(crate) fn release(&self, peer: SocketAddr) {
        self.connections
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let mut per_peer = self.per_peer.lock();
        if let std::collections::hash_map::Entry::Occupied(mut entry) = per_peer.entry(peer.ip()) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
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
    /// The filter chain, when layers were added.
    chain: Option<crate::filter::server::ServerChain>,
    /// The filters run without a chain, if any.
    filters: Option<crate::filter::inline::ServerFilters>,
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
            chain: self.chain,
            filters: self.filters,
            pool: pool.as_ref().map(|p| p.handle().clone()),
            shutdown,
            connections: self.connections,
            per_peer: parking_lot::Mutex::new(HashMap::new()),
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

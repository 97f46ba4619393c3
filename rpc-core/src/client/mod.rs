//! The client: multiplexed connections to one server address, with timeouts,
//! heartbeats and reconnection.
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
mod connection;
mod pending;
mod sync;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::runtime::Handle;
use tokio::time::Instant;

pub use call::{Call, CallFuture, RemoteCall};
use rpc_lb::{LoadBalancer, PickContext, Picked, Provider, Strategy};

use crate::error::RpcError;
use crate::protocol::{Frame, DEFAULT_MAX_FRAME_LEN};
use crate::runtime::OwnedRuntime;
use connection::{ConnSettings, Connection};

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
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    /// Settings so far.
    config: ClientConfig,
    /// How calls are spread over several providers.
    strategy: Strategy,
    /// Warm-up period, hash-ring size and latency decay of the balancer.
    balancer_config: rpc_lb::Config,
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
        self.config.connections = connections.max(1);
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
        self.config.heartbeat_interval = interval.max(Duration::from_millis(1));
        self.config.idle_timeout = idle_timeout.max(self.config.heartbeat_interval);
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
        self.config.max_reconnect_backoff = max.max(initial);
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
        let cluster = Cluster {
            balancer: LoadBalancer::with_config(service, self.strategy, self.balancer_config),
            endpoints: ArcSwap::default(),
            updating: parking_lot::Mutex::new(()),
        };
        let client = Client::with_route(Route::Cluster(cluster), self.config, runtime, owned);
        client.update_providers(providers);
        Ok(client)
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
        let runtime = current_runtime("ClientBuilder::connect")?;
        let shown = format!("{addr:?}");
        let addr = resolve(shown, tokio::net::lookup_host(addr).await)?;
        let client = Client::single(addr, self.config, runtime, None);
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
        let addr = resolve(format!("{addr:?}"), addr.to_socket_addrs())?;
        let runtime = start_runtime()?;
        let handle = runtime.handle().clone();
        let client = Client::single(addr, self.config, handle, Some(runtime));
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

/// A connection to one server, multiplexing any number of concurrent calls.
#[derive(Clone)]
pub struct Client {
    /// Shared by all clones.
    inner: Arc<ClientInner>,
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

/// Where a client sends its calls.
enum Route {
    /// One server address.
    Single(Endpoint),
    /// Several providers of one service, chosen per call by a balancer.
    Cluster(Cluster),
}

/// Providers of a service and the balancer that picks among them.
struct Cluster {
    /// Picks a provider per call; holds health, weights and in-flight counts.
    balancer: LoadBalancer,
    /// Connections per provider address: a snapshot replaced whole on each update,
    /// so a call reads it with one lock-free load (provider sets change rarely).
    endpoints: ArcSwap<HashMap<SocketAddr, Arc<Endpoint>>>,
    /// Serializes updates, so that two concurrent ones cannot lose each other's
    /// endpoints.
    updating: parking_lot::Mutex<()>,
}

/// One server address and its pooled connections.
struct Endpoint {
    /// The server.
    addr: SocketAddr,
    /// The connection pool.
    slots: Box<[Slot]>,
    /// Round-robin position over `slots`.
    next_slot: AtomicUsize,
}

/// One pooled connection and its reconnect state.
#[derive(Default)]
struct Slot {
    /// The live connection, if any.
    /// Read on every call, from any thread: lock-free loads.
    conn: ArcSwapOption<Connection>,
    /// Serializes connection attempts and holds the backoff.
    connecting: tokio::sync::Mutex<Backoff>,
}

/// Reconnect backoff of a slot.
#[derive(Default)]
struct Backoff {
    /// Consecutive failed attempts.
    failures: u32,
    /// No attempt before this instant.
    not_before: Option<Instant>,
    /// The last attempt's error, returned to calls made during the backoff.
    last_error: Option<Arc<io::Error>>,
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
        }
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
    pub fn balancer(&self) -> Option<&LoadBalancer> {
        match &self.inner.route {
            Route::Single(_) => None,
            Route::Cluster(cluster) => Some(&cluster.balancer),
        }
    }

    /// Replaces the provider set of a client made with
    /// [`ClientBuilder::connect_providers`]: providers join, leave or change weight
    /// while calls run; unchanged providers keep their connections and balancer state.
    /// Does nothing on a single-server client.
    pub fn update_providers(&self, providers: impl IntoIterator<Item = Provider>) {
        let Route::Cluster(cluster) = &self.inner.route else {
            return;
        };
        let providers: Vec<Provider> = providers.into_iter().collect();
        let _updating = cluster.updating.lock();
        let current = cluster.endpoints.load();
        let endpoints: HashMap<SocketAddr, Arc<Endpoint>> = providers
            .iter()
            .map(|provider| {
                let endpoint = current
                    .get(&provider.addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(provider.addr, &self.inner.config)));
                (provider.addr, endpoint)
            })
            .collect();
        cluster.endpoints.store(Arc::new(endpoints));
        cluster.balancer.update(providers);
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The runtime this client's connections and callbacks run on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// Where a call can be queued right now with nothing to wait for: the fast path
    /// of a call. For a cluster, a provider is picked (with `hash_key` for `ip-hash`)
    /// and must have an open connection that takes calls. `None` when the call must
    /// connect first, or the provider picked cannot take it now; then the general path
    /// ([`Client::call_frame`]) decides, starting with the provider picked, returned
    /// as the error.
    pub(crate) fn ready_connection(&self, hash_key: Option<u64>) -> Result<Ready, Option<Picked>> {
        match &self.inner.route {
            Route::Single(endpoint) => Ok(Ready {
                conn: endpoint.ready().ok_or(None)?,
                picked: None,
            }),
            Route::Cluster(cluster) => {
                let mut ctx = PickContext::new();
                if let Some(key) = hash_key {
                    ctx = ctx.hash_key(key);
                }
                let picked = cluster.balancer.pick(&ctx).map_err(|_| None)?;
                let conn = cluster
                    .endpoints
                    .load()
                    .get(&picked.addr())
                    .and_then(|endpoint| endpoint.ready());
                match conn {
                    Some(conn) => Ok(Ready {
                        conn,
                        picked: Some(picked),
                    }),
                    None => Err(Some(picked)),
                }
            }
        }
    }

    /// A provider failed a call in a way that is safe to retry elsewhere (it did not
    /// run it): the balancer skips it for a while.
    pub(crate) fn skip_provider(&self, addr: SocketAddr, error: &RpcError) {
        if let Route::Cluster(cluster) = &self.inner.route {
            let pause = self.skip_pause();
            cluster.balancer.mark_unhealthy_for(addr, pause);
            tracing::debug!(%addr, %error, ?pause, "provider skipped");
        }
    }

    /// How long a provider that failed (or announced shutdown) is skipped.
    fn skip_pause(&self) -> Duration {
        self.inner
            .config
            .reconnect_backoff
            .max(Duration::from_millis(50))
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

    /// Sends a request and waits for its response frame (or, for oneway requests,
    /// until it is written). `encode` writes the request with a given request id; it
    /// runs once per attempt. Over several providers, the balancer picks one per
    /// attempt; a call that certainly did not run (the provider could not be reached or
    /// is shutting down) is retried on another provider. The first attempt goes to
    /// `picked` when the caller has already picked a provider.
    pub(crate) async fn call_frame<F>(
        &self,
        encode: F,
        oneway: bool,
        timeout: Duration,
        hash_key: Option<u64>,
        mut picked: Option<Picked>,
    ) -> Result<Option<Frame>, RpcError>
    where
        F: Fn(&mut BytesMut, u64) -> Result<(), RpcError>,
    {
        let inner = &*self.inner;
        // This task's waker, registered with the call as it is queued (polling the
        // reply updates it should the call move to another task).
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let cluster = match &inner.route {
            Route::Single(endpoint) => {
                let conn = endpoint.connection(inner).await?;
                // The connection task enforces the deadline: no timer per call here.
                return conn.submit(&encode, oneway, timeout, &waker)?.await;
            }
            Route::Cluster(cluster) => cluster,
        };
        let deadline = Instant::now() + timeout;
        let mut ctx = PickContext::new();
        if let Some(key) = hash_key {
            ctx = ctx.hash_key(key);
        }
        let pause = self.skip_pause();
        let attempts = cluster.balancer.providers().len().max(1);
        let mut last_error = None;
        for _ in 0..attempts {
            let picked = match picked.take() {
                Some(picked) => picked,
                None => match cluster.balancer.pick(&ctx) {
                    Ok(picked) => picked,
                    Err(_) => break,
                },
            };
            let addr = picked.addr();
            let endpoint = cluster.endpoints.load().get(&addr).cloned();
            let Some(endpoint) = endpoint else { continue };
            if endpoint.is_draining() {
                // It announced shutdown (GOAWAY): no new calls; try it again later.
                cluster.balancer.mark_unhealthy_for(addr, pause);
                continue;
            }
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started);
            let attempt = match endpoint.connection(inner).await {
                Ok(conn) => match conn.submit(&encode, oneway, left, &waker) {
                    Ok(reply) => reply.await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match attempt {
                Ok(frame) => {
                    picked.record_success(started.elapsed());
                    return Ok(frame);
                }
                Err(e) => {
                    picked.record_failure(started.elapsed());
                    if !e.is_safe_to_retry() {
                        return Err(e);
                    }
                    self.skip_provider(addr, &e);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| RpcError::NoProvider {
            service: cluster.balancer.service().to_owned(),
        }))
    }
}

impl Endpoint {
    fn new(addr: SocketAddr, config: &ClientConfig) -> Endpoint {
        Endpoint {
            addr,
            slots: (0..config.connections.max(1))
                .map(|_| Slot::default())
                .collect(),
            next_slot: AtomicUsize::new(0),
        }
    }

    /// A usable connection from the pool, connecting if needed.
    async fn connection(&self, client: &ClientInner) -> Result<Connection, RpcError> {
        let slot = self.next_slot();
        if let Some(conn) = slot.current() {
            return Ok(conn);
        }
        let mut backoff = slot.connecting.lock().await;
        if let Some(conn) = slot.current() {
            return Ok(conn);
        }
        if let Some(not_before) = backoff.not_before {
            if Instant::now() < not_before {
                return Err(RpcError::Connect {
                    addr: self.addr,
                    source: backoff
                        .last_error
                        .clone()
                        .unwrap_or_else(|| Arc::new(io::Error::other("reconnect backoff"))),
                });
            }
        }
        let addr = self.addr;
        let settings = ConnSettings {
            max_frame_len: client.config.max_frame_len,
            heartbeat_interval: client.config.heartbeat_interval,
            idle_timeout: client.config.idle_timeout,
        };
        let connect_timeout = client.config.connect_timeout;
        // Connect on the client's runtime so the socket registers with its reactor.
        let attempt = client.runtime.spawn(async move {
            let stream = crate::transport::connect(addr, connect_timeout).await?;
            Ok::<_, io::Error>(Connection::spawn(stream, addr, settings))
        });
        let result = match attempt.await {
            Ok(result) => result,
            // The task never ran: the runtime is shutting down or gone.
            Err(e) if e.is_cancelled() => return Err(RpcError::ClientClosed),
            Err(e) => Err(io::Error::other(format!("connect task failed: {e}"))),
        };
        match result {
            Ok(conn) => {
                *backoff = Backoff::default();
                slot.conn.store(Some(Arc::new(conn.clone())));
                tracing::debug!(%addr, "connected");
                Ok(conn)
            }
            Err(e) => {
                let e = Arc::new(e);
                let wait = client
                    .config
                    .reconnect_backoff
                    .saturating_mul(1 << backoff.failures.min(16))
                    .min(client.config.max_reconnect_backoff);
                backoff.failures += 1;
                backoff.not_before = Some(Instant::now() + wait);
                backoff.last_error = Some(Arc::clone(&e));
                tracing::debug!(%addr, error = %e, ?wait, "connect failed; backing off");
                Err(RpcError::Connect { addr, source: e })
            }
        }
    }

    /// The next pooled connection (round-robin), if it is open and takes calls.
    fn ready(&self) -> Option<Connection> {
        self.next_slot().current()
    }

    /// The next slot of the pool, round-robin.
    fn next_slot(&self) -> &Slot {
        let index = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        &self.slots[index]
    }

    /// Whether the server announced shutdown on one of our connections to it.
    fn is_draining(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.conn
                .load()
                .as_deref()
                .is_some_and(Connection::is_draining)
        })
    }
}

/// A connection ready to take a call now, from [`Client::ready_connection`].
pub(crate) struct Ready {
    /// The connection.
    pub(crate) conn: Connection,
    /// The provider picked, for a cluster: its in-flight count includes this call until
    /// this is dropped, and the call's outcome is recorded on it.
    pub(crate) picked: Option<Picked>,
}

impl Slot {
    /// The slot's connection if it can take new calls.
    fn current(&self) -> Option<Connection> {
        let guard = self.conn.load();
        guard.as_deref().filter(|c| c.is_usable()).cloned()
    }
}

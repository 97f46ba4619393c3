//! The registry server: [`RegistryConfig`], and [`RegistryServer`], which serves the
//! [`RegistryApi`](crate::api::RegistryApi) over our own `rpc_core::Server` and runs
//! the eviction sweep.

#[cfg(feature = "dashboard")]
mod admin;
mod service;
mod state;
mod status;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::ToSocketAddrs;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::RegistryApiServer;
use service::RegistryService;
use state::State;

#[cfg(feature = "dashboard")]
pub use admin::AdminConfig;
pub use status::{Health, InstanceStatus, Load, Override, ServiceStatus};

/// Registry settings, each with its default. Validated once, by
/// [`RegistryServer::bind`].
///
/// ```
/// use std::time::Duration;
/// let config = rpc_registry::RegistryConfig::default()
///     .ttl(Duration::from_secs(9))
///     .max_evict_share(0.15);
/// assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// Heartbeat interval the registry suggests to lease holders (it is the TTL of the
    /// lease divided by three for leases asking their own TTL). Default: 2 s.
    pub heartbeat_interval: Duration,
    /// TTL of a lease that asks for none: evicted when no heartbeat arrives for this
    /// long. Also the grace period after start during which nothing is evicted.
    /// Default: 6 s.
    pub ttl: Duration,
    /// Smallest TTL a lease may ask for. Default: 100 ms.
    pub min_ttl: Duration,
    /// Largest TTL a lease may ask for. Default: 5 min.
    pub max_ttl: Duration,
    /// How often expired leases are looked for. Default: 500 ms.
    pub sweep_interval: Duration,
    /// The largest share of all instances one sweep may evict (Eureka's 15 %), so a
    /// registry cut off from its providers does not delete them all at once; at least
    /// one expired lease is evicted per sweep. Default: 0.15.
    pub max_evict_share: f64,
    /// Longest a `watch` long poll waits before answering "no change". Default: 30 s.
    pub max_watch_wait: Duration,
    /// Most instances (and consumer records) one lease may hold. Default: 1 024.
    pub max_instances_per_lease: usize,
    /// Most instances in the registry. Default: 1 000 000.
    pub max_instances: usize,
    /// Most leases in the registry. Default: 100 000.
    pub max_leases: usize,
    /// Most services (with instances, consumers or watchers). Default: 100 000.
    pub max_services: usize,
    /// Most metadata entries per instance. Default: 64.
    pub max_metadata_entries: usize,
    /// Most bytes of metadata keys and values per instance. Default: 4 096.
    pub max_metadata_bytes: usize,
    /// Largest request frame the registry accepts. Default: 1 MiB (registrations are
    /// small; the cap keeps a misbehaving client from making the registry buffer
    /// megabytes).
    pub max_frame_len: usize,
    /// Worker reactors of the registry's server. Default: 2.
    pub workers: usize,
    /// TLS settings (the `tls` feature): the registry's certificate and key, and
    /// optionally the CAs whose client certificates it requires (mutual TLS). With
    /// them the registry accepts only TLS, and clients reach it at `rpcs://` URLs; a
    /// plaintext client is answered `BAD_REQUEST` ("this server requires TLS") and
    /// closed. Default: `None`, plaintext (`rpc://`).
    #[cfg(feature = "tls")]
    pub tls: Option<rpc_core::ServerTls>,
    /// The admin dashboard (the `dashboard` feature): an HTTP server on its own
    /// address with the page, the JSON API, the operator actions (behind the token)
    /// and the registry's metrics. Default: `None`, no dashboard.
    #[cfg(feature = "dashboard")]
    pub admin: Option<AdminConfig>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            heartbeat_interval: Duration::from_secs(2),
            ttl: Duration::from_secs(6),
            min_ttl: Duration::from_millis(100),
            max_ttl: Duration::from_secs(300),
            sweep_interval: Duration::from_millis(500),
            max_evict_share: 0.15,
            max_watch_wait: Duration::from_secs(30),
            max_instances_per_lease: 1024,
            max_instances: 1_000_000,
            max_leases: 100_000,
            max_services: 100_000,
            max_metadata_entries: 64,
            max_metadata_bytes: 4096,
            max_frame_len: 1 << 20,
            workers: 2,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "dashboard")]
            admin: None,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.$name = $name;
            self
        }
    };
}

impl RegistryConfig {
    setter!(
        /// Sets [`heartbeat_interval`](Self::heartbeat_interval).
        heartbeat_interval: Duration
    );
    setter!(
        /// Sets [`ttl`](Self::ttl).
        ttl: Duration
    );
    setter!(
        /// Sets [`min_ttl`](Self::min_ttl).
        min_ttl: Duration
    );
    setter!(
        /// Sets [`max_ttl`](Self::max_ttl).
        max_ttl: Duration
    );
    setter!(
        /// Sets [`sweep_interval`](Self::sweep_interval).
        sweep_interval: Duration
    );
    setter!(
        /// Sets [`max_evict_share`](Self::max_evict_share) (0 < share <= 1).
        max_evict_share: f64
    );
    setter!(
        /// Sets [`max_watch_wait`](Self::max_watch_wait).
        max_watch_wait: Duration
    );
    setter!(
        /// Sets [`max_instances_per_lease`](Self::max_instances_per_lease).
        max_instances_per_lease: usize
    );
    setter!(
        /// Sets [`max_instances`](Self::max_instances).
        max_instances: usize
    );
    setter!(
        /// Sets [`max_leases`](Self::max_leases).
        max_leases: usize
    );
    setter!(
        /// Sets [`max_services`](Self::max_services).
        max_services: usize
    );
    setter!(
        /// Sets [`max_metadata_entries`](Self::max_metadata_entries).
        max_metadata_entries: usize
    );
    setter!(
        /// Sets [`max_metadata_bytes`](Self::max_metadata_bytes).
        max_metadata_bytes: usize
    );
    setter!(
        /// Sets [`max_frame_len`](Self::max_frame_len).
        max_frame_len: usize
    );
    setter!(
        /// Sets [`workers`](Self::workers).
        workers: usize
    );

    /// Serves over TLS with these settings (the `tls` feature); see
    /// [`tls`](Self::tls).
    ///
    /// ```no_run
    /// # fn run(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), rpc_core::RpcError> {
    /// let tls = rpc_core::ServerTls::from_pem(cert_pem, key_pem)?;
    /// let config = rpc_registry::RegistryConfig::default().tls(tls);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: rpc_core::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves the admin dashboard as `admin` says (the `dashboard` feature); see
    /// [`admin`](Self::admin).
    ///
    /// ```
    /// let config = rpc_registry::RegistryConfig::default()
    ///     .admin(rpc_registry::AdminConfig::new("127.0.0.1:7080").token("s3cret"));
    /// ```
    #[cfg(feature = "dashboard")]
    pub fn admin(mut self, admin: AdminConfig) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Checks the settings make sense together.
    fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("heartbeat interval", self.heartbeat_interval),
            ("ttl", self.ttl),
            ("min ttl", self.min_ttl),
            ("sweep interval", self.sweep_interval),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be above zero"));
        }
        if self.heartbeat_interval >= self.ttl {
            return Err(format!(
                "heartbeat interval {:?} must be shorter than the ttl {:?}",
                self.heartbeat_interval, self.ttl
            ));
        }
        if !(self.min_ttl <= self.ttl && self.ttl <= self.max_ttl) {
            return Err(format!(
                "ttl {:?} must lie between min ttl {:?} and max ttl {:?}",
                self.ttl, self.min_ttl, self.max_ttl
            ));
        }
        if !(self.max_evict_share > 0.0 && self.max_evict_share <= 1.0) {
            return Err(format!(
                "max evict share {} must be above 0 and at most 1",
                self.max_evict_share
            ));
        }
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        #[cfg(feature = "dashboard")]
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        Ok(())
    }
}

/// Starts registry servers.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let registry = rpc_registry::RegistryServer::bind(
///     "127.0.0.1:0",
///     rpc_registry::RegistryConfig::default(),
/// )
/// .await?;
/// println!("registry on rpc://{}", registry.local_addr());
/// registry.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RegistryServer {
    /// The RPC server hosting the registry service.
    server: rpc_core::ServerHandle,
    /// The state, for counters.
    state: Arc<State>,
    /// Stops the sweep and ends long polls.
    cancel: CancellationToken,
    /// The sweep task.
    tasks: TaskTracker,
    /// `rpcs` when serving TLS, `rpc` otherwise.
    scheme: &'static str,
    /// Where the admin dashboard listens, when it is served.
    admin_addr: Option<SocketAddr>,
}

impl RegistryServer {
    /// Validates `config`, binds `addr` and serves the registry in the background of
    /// the current tokio runtime.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for settings that make no sense (a zero TTL, a heartbeat not
    /// shorter than the TTL, a share outside (0, 1]); the bind error otherwise.
    pub async fn bind(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        config: RegistryConfig,
    ) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let state = Arc::new(State::new(config.clone(), Instant::now()));
        let cancel = CancellationToken::new();
        let service = RegistryService::new(Arc::clone(&state), cancel.clone());
        let builder = rpc_core::Server::builder();
        #[cfg(feature = "tls")]
        let scheme = if config.tls.is_some() { "rpcs" } else { "rpc" };
        #[cfg(not(feature = "tls"))]
        let scheme = "rpc";
        #[cfg(feature = "tls")]
        let builder = match &config.tls {
            Some(tls) => builder.tls(tls.clone()),
            None => builder,
        };
        let server = builder
            .workers(config.workers)
            .max_frame_len(config.max_frame_len)
            // Long polls end at once on shutdown (they watch `cancel`), so a short
            // drain is enough.
            .drain_timeout(Duration::from_secs(2))
            .add_service(RegistryApiServer::new(service))
            .bind(addr)
            .await
            .map_err(into_io)?
            .spawn();
        let tasks = TaskTracker::new();
        tasks.spawn(sweep(
            Arc::clone(&state),
            config.sweep_interval,
            cancel.clone(),
        ));
        #[cfg(feature = "dashboard")]
        let admin_addr = match &config.admin {
            Some(admin) => {
                let bound = admin::serve(
                    Arc::clone(&state),
                    admin,
                    server.local_addr(),
                    cancel.clone(),
                    &tasks,
                )
                .await;
                match bound {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        cancel.cancel();
                        tasks.close();
                        tasks.wait().await;
                        let _ = server.shutdown().await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        #[cfg(not(feature = "dashboard"))]
        let admin_addr = None;
        tasks.close();
        Ok(RegistryServer {
            server,
            state,
            cancel,
            tasks,
            scheme,
            admin_addr,
        })
    }

    /// The URL clients reach the registry at: `rpc://{local_addr}`, or
    /// `rpcs://{local_addr}` over TLS (clients add the query their trust needs, such
    /// as `?ca=PATH`; see [`connect`](crate::connect)).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr())
    }

    /// Where the registry listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where the admin dashboard listens (`http://{addr}/`), when
    /// [`RegistryConfig::admin`] asked for one (the `dashboard` feature).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Every service with instances, consumers or overrides as operators see it (what
    /// the dashboard's `GET /api/services` answers), sorted by name.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.state.statuses(Instant::now())
    }

    /// Puts `over` in force for the instance of `service` at `addr` (what the
    /// dashboard's actions do), and pushes it to the service's watchers; an empty
    /// [`Override`] removes it. Returns `false`, changing nothing, when the name is
    /// invalid or neither an instance nor an override is at `addr`.
    ///
    /// ```no_run
    /// # async fn run(registry: rpc_registry::RegistryServer) {
    /// let mut over = rpc_registry::Override::default();
    /// over.disabled = true;
    /// assert!(registry.set_override("example.Inventory", "10.0.0.1:7001", over));
    /// # }
    /// ```
    pub fn set_override(&self, service: &str, addr: &str, over: Override) -> bool {
        self.state
            .change_override(service, addr, |o| *o = over)
            .is_ok()
    }

    /// Live instances.
    pub fn instance_count(&self) -> usize {
        self.state.instance_count()
    }

    /// Live leases.
    pub fn lease_count(&self) -> usize {
        self.state.lease_count()
    }

    /// The settings in force.
    pub fn config(&self) -> &RegistryConfig {
        self.state.config()
    }

    /// Stops the sweep, answers pending long polls, and shuts the server down
    /// gracefully.
    ///
    /// # Errors
    ///
    /// The server's shutdown error.
    pub async fn shutdown(self) -> io::Result<()> {
        self.cancel.cancel();
        self.tasks.wait().await;
        self.server.shutdown().await.map_err(into_io)
    }
}

/// The registry's own API reports I/O errors; an rpc-core error becomes one, keeping
/// its kind where it has one (a bind that failed) and its text.
fn into_io(e: rpc_core::RpcError) -> io::Error {
    match e {
        rpc_core::RpcError::Bind { source, .. } => {
            io::Error::new(source.kind(), source.to_string())
        }
        rpc_core::RpcError::InvalidConfig(message) => {
            io::Error::new(io::ErrorKind::InvalidInput, message)
        }
        other => io::Error::other(other),
    }
}

/// Evicts expired leases every `interval` until cancelled.
async fn sweep(state: Arc<State>, interval: Duration, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {
                let report = state.sweep(Instant::now());
                if report.leases > 0 {
                    tracing::debug!(?report, "sweep");
                }
            }
        }
    }
}

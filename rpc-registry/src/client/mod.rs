//! The client side: the backend traits ([`Registry`], [`Discovery`], [`Backend`]),
//! [`connect`] choosing a backend from a URL, the provider side ([`Publisher`]) and the
//! consumer side ([`Consumer`]).
//!
//! The traits are object-safe (`async-trait`), so the backend is picked at run time
//! from a URL and the provider and consumer code never changes with it. They speak in
//! the terms every soft-state registry shares:
//!
//! - a **lease** (etcd lease, ZooKeeper session, our lease) that one heartbeat keeps
//!   alive and that takes its records with it when it ends or expires;
//! - **records** under a lease: provider instances and consumers;
//! - per-service **revisions** (`Revision { epoch, index }`: etcd's cluster id and
//!   mod revision, ZooKeeper's session/zxid) and a long-poll **watch** from a revision.

mod consumer;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
mod layout;
mod publisher;
mod rpc;
mod snapshot;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "zookeeper")]
mod zookeeper;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use consumer::{Consumer, ConsumerBuilder};
pub use error::Error;
pub use publisher::{Publisher, PublisherBuilder};

use crate::api::{
    ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, LoadReport, Revision, ServiceSummary,
    ServiceView,
};

/// The writing half of a registry backend: leases and the records under them.
#[async_trait]
pub trait Registry: Send + Sync + fmt::Debug {
    /// Takes a lease held by `owner`; `ttl` `None` takes the backend's default.
    ///
    /// # Errors
    ///
    /// The registry refused (invalid TTL, too many leases) or cannot be reached.
    async fn grant(&self, owner: &str, ttl: Option<Duration>) -> Result<Lease, Error>;
    /// Renews a lease and everything under it.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] with `RegistryError::UnknownLease` when the lease is gone
    /// (the holder must take a new one and register again); unreachable otherwise.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), Error>;
    /// [`keep_alive`](Self::keep_alive), carrying the provider's load over the last
    /// interval for the registry's dashboard. Backends with nowhere to put it (etcd,
    /// ZooKeeper) ignore it: the default does.
    ///
    /// # Errors
    ///
    /// As `keep_alive`.
    async fn keep_alive_with_load(&self, lease: LeaseId, load: &LoadReport) -> Result<(), Error> {
        let _ = load;
        self.keep_alive(lease).await
    }
    /// Ends a lease; its records leave gracefully.
    ///
    /// # Errors
    ///
    /// Unknown lease, or unreachable.
    async fn revoke(&self, lease: LeaseId) -> Result<(), Error>;
    /// Registers (or updates) an instance under a lease.
    ///
    /// # Errors
    ///
    /// Validation errors, caps, unknown lease, or unreachable.
    async fn register(&self, lease: LeaseId, instance: &Instance) -> Result<(), Error>;
    /// Deregisters an instance gracefully.
    ///
    /// # Errors
    ///
    /// Unknown lease, or unreachable.
    async fn deregister(&self, lease: LeaseId, key: &InstanceKey) -> Result<(), Error>;
    /// Records a consumer under a lease.
    ///
    /// # Errors
    ///
    /// Validation errors, caps, unknown lease, or unreachable.
    async fn register_consumer(&self, lease: LeaseId, consumer: &ConsumerInfo)
        -> Result<(), Error>;
}

/// The reading half of a registry backend: lookups and watches.
#[async_trait]
pub trait Discovery: Send + Sync + fmt::Debug {
    /// The service's instances now.
    ///
    /// # Errors
    ///
    /// Invalid service name, or unreachable.
    async fn lookup(&self, service: &str) -> Result<ServiceView, Error>;
    /// Waits until the service's revision moves past `since` (answering at once if it
    /// has, or if `since` is from another epoch), or until about `wait` has passed, and
    /// returns the view.
    ///
    /// # Errors
    ///
    /// Invalid service name, or unreachable.
    async fn watch(
        &self,
        service: &str,
        since: Revision,
        wait: Duration,
    ) -> Result<ServiceView, Error>;
    /// Every service with instances or consumers.
    ///
    /// # Errors
    ///
    /// Unreachable.
    async fn services(&self) -> Result<Vec<ServiceSummary>, Error>;
    /// The consumers that announced themselves for a service.
    ///
    /// # Errors
    ///
    /// Invalid service name, or unreachable.
    async fn consumers(&self, service: &str) -> Result<Vec<ConsumerInfo>, Error>;
}

/// A complete backend: one registry (or one ensemble) that is both.
pub trait Backend: Registry + Discovery {
    /// The backend's address as a URL, for logs and errors.
    fn url(&self) -> &str;
}

/// The independent registries a URL names. Providers register with each; consumers
/// merge what they report. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registries {
    /// The URL it came from (or a description).
    url: Arc<str>,
    /// One backend per independent registry.
    members: Arc<[Arc<dyn Backend>]>,
}

impl Registries {
    /// Registries from backends of your own (a backend this crate does not ship).
    ///
    /// # Panics
    ///
    /// If `members` is empty.
    pub fn from_backends(members: Vec<Arc<dyn Backend>>) -> Registries {
        assert!(!members.is_empty(), "at least one registry backend");
        let url = members
            .iter()
            .map(|m| m.url())
            .collect::<Vec<_>>()
            .join(" + ");
        Registries {
            url: url.into(),
            members: members.into(),
        }
    }

    /// The registries, one backend each.
    pub fn members(&self) -> &[Arc<dyn Backend>] {
        &self.members
    }

    /// The URL they were made from.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Picks the backend a URL names. Nothing is contacted yet: connections are made on
/// first use and remade after failures, so a provider or consumer can start while its
/// registry is down.
///
/// - `rpc://host:port[,host2:port2...]`: our embedded registry; each address is an
///   independent registry (providers register with each, consumers merge). A bare
///   `host:port[,...]` means the same.
/// - `rpcs://host:port[,host:port...][?ca=PATH][&cert=PATH&key=PATH][&server_name=NAME]`
///   (feature `tls`): the same over TLS. The registries' certificates are checked
///   against the CA certificates in the PEM file `ca`, or without it against the
///   operating system's trust store (read when the URL is parsed: on Linux the files
///   OpenSSL reads, `SSL_CERT_FILE`/`SSL_CERT_DIR` first; a store with no usable
///   certificate fails with [`Error::Tls`]);
///   each must name its host as written in the URL, or `server_name` when given.
///   `cert` and `key` (PEM files, both or neither) are presented to registries that
///   require client certificates (mutual TLS). Values are taken as written (no
///   percent-decoding). The files are read here, so a missing one fails now. A
///   plaintext `rpc://` URL against a TLS registry fails its first call with
///   [`Error::Unreachable`] saying the registry serves TLS only; an `rpcs://` URL
///   against a plaintext registry, or one whose certificate is not trusted, fails
///   with [`Error::Unreachable`] naming the failed handshake.
/// - `etcd://h1:2379[,h2:2379...][/root]` (feature `etcd`): one etcd cluster, reached
///   through any of the endpoints; keys live under `/root` (default `/dubbo`).
/// - `etcds://h1:2379[,h2:2379...][/root][?ca=PATH][&cert=PATH&key=PATH][&server_name=NAME]`
///   (features `etcd` and `tls`): the same over TLS, with the query of `rpcs://`
///   (every member's certificate must name its host as written, or `server_name`;
///   without `ca`, etcd-client's built-in web PKI roots are trusted, not the system
///   store).
/// - `zookeeper://h1:2181[,h2:2181...][/chroot]` (feature `zookeeper`): one ZooKeeper
///   ensemble (3.6 or later), reached through any of the hosts; nodes live under
///   `{chroot}/dubbo` in Dubbo's layout (`/dubbo/{service}/providers/...`).
/// - `zookeepers://h1:2281[,h2:2281...][/chroot]?ca=PATH[&cert=PATH&key=PATH]`
///   (features `zookeeper` and `tls`): the same over TLS, to the servers'
///   `secureClientPort`. `ca` is required (the ZooKeeper client takes trust anchors
///   as PEM text only, so the system trust store cannot stand in), every
///   server's certificate must name its host as written (`server_name` is refused:
///   the client cannot check another name), and `cert` and `key` are presented to
///   servers with `ssl.clientAuth=need`. A plaintext `zookeeper://` URL against a
///   secure port, and a `zookeepers://` URL refused by the server, fail their first
///   call with [`Error::Unreachable`] within a few seconds, saying what to change.
///
/// Without its features, `rpcs://`, `etcd://`, `etcds://`, `zookeeper://` or
/// `zookeepers://` fails with [`Error::FeatureOff`] naming the features it needs.
///
/// ```
/// let registries = rpc_registry::connect("rpc://127.0.0.1:7000,127.0.0.1:7001")?;
/// assert_eq!(registries.members().len(), 2);
/// assert!(rpc_registry::connect("consul://127.0.0.1:8500").is_err());
/// # Ok::<(), rpc_registry::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a malformed URL, [`Error::UnsupportedScheme`] for a
/// scheme with no backend, [`Error::FeatureOff`] for one whose backend this build
/// leaves out, [`Error::Tls`] for TLS files that cannot be read or used.
pub fn connect(url: &str) -> Result<Registries, Error> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("rpc", url),
    };
    match scheme {
        "rpc" => {
            let members = rpc::parse_hosts(url, rest)?
                .into_iter()
                .map(|host| Arc::new(rpc::RpcBackend::new(host)) as Arc<dyn Backend>)
                .collect();
            Ok(Registries::from_backends(members))
        }
        #[cfg(feature = "tls")]
        "rpcs" => {
            let members = rpc::parse_tls(url, rest)?
                .into_iter()
                .map(|backend| Arc::new(backend) as Arc<dyn Backend>)
                .collect();
            Ok(Registries::from_backends(members))
        }
        #[cfg(feature = "etcd")]
        "etcd" => Ok(Registries::from_backends(vec![Arc::new(
            etcd::EtcdBackend::parse(url, rest)?,
        )])),
        #[cfg(all(feature = "etcd", feature = "tls"))]
        "etcds" => Ok(Registries::from_backends(vec![Arc::new(
            etcd::EtcdBackend::parse_tls(url, rest)?,
        )])),
        #[cfg(feature = "zookeeper")]
        "zookeeper" => Ok(Registries::from_backends(vec![Arc::new(
            zookeeper::ZooKeeperBackend::parse(url, rest)?,
        )])),
        #[cfg(all(feature = "zookeeper", feature = "tls"))]
        "zookeepers" => Ok(Registries::from_backends(vec![Arc::new(
            zookeeper::ZooKeeperBackend::parse_tls(url, rest)?,
        )])),
        // Ours, but left out of this build: say which features bring them in.
        #[cfg(not(feature = "tls"))]
        "rpcs" => Err(Error::FeatureOff {
            scheme: "rpcs",
            features: "`tls`",
        }),
        #[cfg(not(feature = "etcd"))]
        "etcd" => Err(Error::FeatureOff {
            scheme: "etcd",
            features: "`etcd`",
        }),
        #[cfg(not(all(feature = "etcd", feature = "tls")))]
        "etcds" => Err(Error::FeatureOff {
            scheme: "etcds",
            features: "`etcd` and `tls`",
        }),
        #[cfg(not(feature = "zookeeper"))]
        "zookeeper" => Err(Error::FeatureOff {
            scheme: "zookeeper",
            features: "`zookeeper`",
        }),
        #[cfg(not(all(feature = "zookeeper", feature = "tls")))]
        "zookeepers" => Err(Error::FeatureOff {
            scheme: "zookeepers",
            features: "`zookeeper` and `tls`",
        }),
        other => Err(Error::UnsupportedScheme {
            scheme: other.chars().take(32).collect(),
        }),
    }
}

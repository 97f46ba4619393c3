//! The registry's wire contract: the `RegistryApi` service (defined with our own
//! `#[service]` macro, so the registry is served by our own `Server`) and the types its
//! operations carry.
//!
//! Everything here is MessagePack on the wire (see `docs/REGISTRY.md` for the
//! operations). The types are plain data so another backend (ZooKeeper, etcd) can
//! produce the same values from its own storage.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One provider instance of a service, as registered and as discovered.
///
/// Its identity within a service is `(group, version, addr)`: registering the same
/// identity again (from the same lease) replaces the weight and metadata.
///
/// ```
/// let instance = rpc_registry::Instance::new("example.Inventory", "10.0.0.1:7001")
///     .weight(200)
///     .metadata("zone", "eu-1");
/// assert_eq!(instance.weight, 200);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Instance {
    /// Service (wire) name, e.g. `example.Inventory`.
    pub service: String,
    /// Group, for running several deployments of one service side by side (Dubbo's
    /// group). Default: empty.
    pub group: String,
    /// Version of the interface the instance serves. Default: empty.
    pub version: String,
    /// Where consumers call it: `ip:port`, never an unspecified (`0.0.0.0`) address.
    pub addr: String,
    /// Relative share of calls; default 100 (Dubbo's). 0 parks the instance.
    pub weight: u32,
    /// Free-form key-values (zone, build, protocol options). Capped in entries and
    /// bytes by the registry.
    pub metadata: BTreeMap<String, String>,
    /// When the instance started, in milliseconds since the Unix epoch, so consumers
    /// warm it up; 0 when unknown.
    pub started_at_ms: u64,
}

impl Instance {
    /// An instance of `service` at `addr`, default weight, no group or version, started
    /// now.
    pub fn new(service: impl Into<String>, addr: impl Into<String>) -> Instance {
        Instance {
            service: service.into(),
            group: String::new(),
            version: String::new(),
            addr: addr.into(),
            weight: 100,
            metadata: BTreeMap::new(),
            started_at_ms: unix_millis_now(),
        }
    }

    /// Sets the weight.
    ///
    /// ```
    /// let i = rpc_registry::Instance::new("s", "127.0.0.1:1").weight(0);
    /// assert_eq!(i.weight, 0);
    /// ```
    pub fn weight(mut self, weight: u32) -> Instance {
        self.weight = weight;
        self
    }

    /// Sets the group.
    ///
    /// ```
    /// let i = rpc_registry::Instance::new("s", "127.0.0.1:1").group("canary");
    /// assert_eq!(i.group, "canary");
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Instance {
        self.group = group.into();
        self
    }

    /// Sets the version.
    ///
    /// ```
    /// let i = rpc_registry::Instance::new("s", "127.0.0.1:1").version("2.0");
    /// assert_eq!(i.version, "2.0");
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Instance {
        self.version = version.into();
        self
    }

    /// Adds a metadata entry.
    ///
    /// ```
    /// let i = rpc_registry::Instance::new("s", "127.0.0.1:1").metadata("zone", "a");
    /// assert_eq!(i.metadata["zone"], "a");
    /// ```
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Instance {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Lists the methods the instance serves, so the registry and its readers
    /// (`rpcctl instances`, the consumers) know them without asking the provider: the
    /// names joined by commas under the metadata key [`METHODS_METADATA_KEY`] (the
    /// `methods` parameter of a Dubbo provider URL). They count against the
    /// registry's metadata caps (4 KiB by default).
    ///
    /// ```
    /// let i = rpc_registry::Instance::new("s", "127.0.0.1:1").methods(["get", "put"]);
    /// assert_eq!(i.metadata["methods"], "get,put");
    /// assert_eq!(i.method_names(), ["get", "put"]);
    /// ```
    pub fn methods<I, S>(mut self, methods: I) -> Instance
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = methods.into_iter().map(|m| m.as_ref().to_owned()).collect();
        self.metadata
            .insert(METHODS_METADATA_KEY.to_owned(), list.join(","));
        self
    }

    /// An instance of the service a server skeleton serves, at `addr`: its wire name,
    /// with its methods listed (see [`methods`](Self::methods)).
    ///
    /// ```
    /// #[rpc_core::service(name = "example.Hello")]
    /// trait Hello {
    ///     async fn hello(&self, name: String) -> String;
    /// }
    /// struct Greeter;
    /// impl Hello for Greeter {
    ///     async fn hello(&self, name: String) -> String { name }
    /// }
    /// let i = rpc_registry::Instance::of(&HelloServer::new(Greeter), "127.0.0.1:7001");
    /// assert_eq!(i.service, "example.Hello");
    /// assert_eq!(i.method_names(), ["hello"]);
    /// ```
    pub fn of(service: &impl rpc_core::server::Service, addr: impl Into<String>) -> Instance {
        Instance::new(service.name(), addr).methods(service.methods())
    }

    /// The methods the provider listed with [`methods`](Self::methods); empty if it
    /// listed none.
    pub fn method_names(&self) -> Vec<&str> {
        match self.metadata.get(METHODS_METADATA_KEY) {
            Some(list) if !list.is_empty() => list.split(',').collect(),
            _ => Vec::new(),
        }
    }

    /// Sets the start time (milliseconds since the Unix epoch; 0 = unknown).
    ///
    /// ```
    /// let i = rpc_registry::Instance::new("s", "127.0.0.1:1").started_at_ms(0);
    /// assert_eq!(i.started_at_ms, 0);
    /// ```
    pub fn started_at_ms(mut self, ms: u64) -> Instance {
        self.started_at_ms = ms;
        self
    }

    /// The identity of the instance within the registry.
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            service: self.service.clone(),
            group: self.group.clone(),
            version: self.version.clone(),
            addr: self.addr.clone(),
        }
    }
}

/// The metadata key under which an [`Instance`] lists its service's methods,
/// comma-separated.
pub const METHODS_METADATA_KEY: &str = "methods";

/// The identity of an [`Instance`]: what `deregister` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceKey {
    /// Service name.
    pub service: String,
    /// Group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Address.
    pub addr: String,
}

/// A consumer announcing itself, so operators can see who calls what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// The service it calls.
    pub service: String,
    /// Its address; empty asks the registry to record the caller's address.
    pub addr: String,
    /// A name for people: the program, the team.
    pub client_name: String,
}

impl ConsumerInfo {
    /// A consumer of `service` named `client_name`; the registry records its address.
    pub fn new(service: impl Into<String>, client_name: impl Into<String>) -> ConsumerInfo {
        ConsumerInfo {
            service: service.into(),
            addr: String::new(),
            client_name: client_name.into(),
        }
    }
}

/// Identifies a lease (a session, in ZooKeeper's words): the heartbeat unit. Every
/// instance lives under one lease and dies with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What a lease request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeaseRequest {
    /// Who holds the lease (program name), for operators.
    pub owner: String,
    /// Time-to-live in milliseconds: the lease (and its instances) is evicted when no
    /// heartbeat arrives for this long. 0 takes the registry's default.
    pub ttl_ms: u64,
}

impl LeaseRequest {
    /// A request by `owner` with the given TTL in milliseconds (0: registry default).
    pub fn new(owner: impl Into<String>, ttl_ms: u64) -> LeaseRequest {
        LeaseRequest {
            owner: owner.into(),
            ttl_ms,
        }
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    /// Its id, for heartbeats and registrations.
    pub id: LeaseId,
    /// The TTL granted, in milliseconds.
    pub ttl_ms: u64,
    /// The heartbeat interval the registry suggests, in milliseconds.
    pub heartbeat_ms: u64,
}

/// A point in a service's history. Revisions only compare within one `epoch`: a
/// registry that restarts starts a new epoch (its state is soft and was lost), so a
/// watcher from before the restart is answered at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Revision {
    /// Identifies one life of the registry process (one etcd cluster id, one ZooKeeper
    /// ensemble).
    pub epoch: u64,
    /// Moves forward on every change to the service's provider list.
    pub index: u64,
}

impl Revision {
    /// A revision; `Revision::default()` (epoch 0, index 0) is "before anything".
    pub fn new(epoch: u64, index: u64) -> Revision {
        Revision { epoch, index }
    }
}

/// A service's provider list at one revision: what lookups and watches return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceView {
    /// The service.
    pub service: String,
    /// The revision this view is at.
    pub revision: Revision,
    /// Every live instance of the service (all groups and versions).
    pub instances: Vec<Instance>,
    /// Addresses whose instances recently left by deregistering (graceful shutdown),
    /// most recent last, bounded. Consumers accept an update that empties a list only
    /// when every provider in it left this way.
    pub departed: Vec<String>,
}

/// One service in the registry's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceSummary {
    /// The service.
    pub service: String,
    /// Its live instances.
    pub instances: u32,
    /// Its registered consumers.
    pub consumers: u32,
    /// Its revision.
    pub revision: Revision,
}

/// What a provider process's calls looked like over its last heartbeat interval,
/// sent with the heartbeat ([`RegistryApi::heartbeat_with_load`]) so the registry's
/// dashboard shows live calls/s, error rate and latency per service and instance
/// without scraping anyone. Made by a [`Publisher`](crate::Publisher) given the
/// provider's server metrics ([`PublisherBuilder::metrics`](crate::PublisherBuilder::metrics)).
///
/// ```
/// let report = rpc_registry::LoadReport::new(2000);
/// assert!(report.methods.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// How long the window is, in milliseconds (the time since the previous report).
    pub window_ms: u64,
    /// One entry per method that ended calls in the window or has calls in flight.
    pub methods: Vec<MethodLoad>,
}

impl LoadReport {
    /// An empty report over a window of `window_ms` milliseconds.
    pub fn new(window_ms: u64) -> LoadReport {
        LoadReport {
            window_ms,
            methods: Vec::new(),
        }
    }
}

/// One method's calls in a [`LoadReport`]'s window, on the provider's side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MethodLoad {
    /// The service's wire name: the report counts for the lease's instances of it.
    pub service: String,
    /// The method's wire name.
    pub method: String,
    /// Calls that ended in the window.
    pub calls: u64,
    /// Of those, calls that ended other than `ok`.
    pub errors: u64,
    /// Mean latency in the window, microseconds.
    pub mean_us: u64,
    /// Median latency in the window, microseconds (a histogram bucket's bound).
    pub p50_us: u64,
    /// 99th percentile latency in the window, microseconds (a bucket's bound).
    pub p99_us: u64,
    /// Calls running at the end of the window.
    pub in_flight: u64,
}

impl MethodLoad {
    /// `calls` calls of `service.method`, `errors` of them failed, the rest zero.
    pub fn new(
        service: impl Into<String>,
        method: impl Into<String>,
        calls: u64,
        errors: u64,
    ) -> MethodLoad {
        MethodLoad {
            service: service.into(),
            method: method.into(),
            calls,
            errors,
            ..MethodLoad::default()
        }
    }
}

/// Why the registry refused an operation. Delivered typed to callers as
/// `RpcError::Application`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The lease is not known: it expired and was evicted, or the registry restarted.
    /// The holder must take a new lease and register again.
    #[error("lease {0} is unknown (expired, or the registry restarted)")]
    UnknownLease(LeaseId),
    /// A service name is empty, too long, or has characters outside
    /// `[A-Za-z0-9._:/-]`.
    #[error("invalid service name {name:?}: {reason}")]
    InvalidService {
        /// The name (cut to 64 characters).
        name: String,
        /// Why.
        reason: String,
    },
    /// An address is not `ip:port`, has port 0, or is unspecified (`0.0.0.0`).
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address (cut to 64 characters).
        addr: String,
        /// Why.
        reason: String,
    },
    /// The requested TTL is outside the registry's bounds.
    #[error("invalid TTL {ttl_ms} ms: must be between {min_ms} and {max_ms} ms")]
    InvalidTtl {
        /// Asked for.
        ttl_ms: u64,
        /// Smallest accepted.
        min_ms: u64,
        /// Largest accepted.
        max_ms: u64,
    },
    /// A field (group, version, owner, client name, a metadata entry) is too long or
    /// the metadata has too many entries.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A limit that keeps the registry bounded in memory was reached.
    #[error("limit reached: {what} (at most {limit})")]
    LimitReached {
        /// Which limit: `instances per lease`, `instances`, `leases`, `services`.
        what: String,
        /// Its value.
        limit: u64,
    },
}

/// The registry, served by our own `Server`. Providers take a lease, register
/// instances under it and heartbeat it; consumers look services up and long-poll
/// `watch` for changes.
#[rpc_core::service(name = "rpc.Registry")]
pub trait RegistryApi {
    /// Takes a lease. Its instances live while heartbeats arrive within its TTL.
    async fn grant(&self, request: LeaseRequest) -> Result<Lease, RegistryError>;
    /// Renews a lease and every instance under it (one call per process, however many
    /// instances it has).
    async fn heartbeat(&self, lease: LeaseId) -> Result<(), RegistryError>;
    /// [`heartbeat`](RegistryApi::heartbeat) carrying the provider's load over the
    /// last interval, for the dashboard. A registry from before this method answers
    /// `METHOD_NOT_FOUND`; publishers then fall back to `heartbeat`.
    async fn heartbeat_with_load(
        &self,
        lease: LeaseId,
        load: LoadReport,
    ) -> Result<(), RegistryError>;
    /// Ends a lease, deregistering its instances gracefully (consumers may let their
    /// lists empty).
    async fn revoke(&self, lease: LeaseId) -> Result<(), RegistryError>;
    /// Registers (or updates) an instance under a lease; returns the service's new
    /// revision.
    async fn register(&self, lease: LeaseId, instance: Instance)
        -> Result<Revision, RegistryError>;
    /// Deregisters an instance gracefully; returns the service's new revision.
    /// Deregistering an instance that is not there is not an error.
    async fn deregister(&self, lease: LeaseId, key: InstanceKey)
        -> Result<Revision, RegistryError>;
    /// Records a consumer under a lease (it leaves with the lease).
    async fn register_consumer(
        &self,
        lease: LeaseId,
        consumer: ConsumerInfo,
    ) -> Result<(), RegistryError>;
    /// The service's instances now.
    async fn lookup(&self, service: String) -> Result<ServiceView, RegistryError>;
    /// Long poll: answers as soon as the service's revision moves past `since` (at once
    /// if it already has, or `since` is from another epoch), or after `wait_ms`
    /// (capped by the registry) with the unchanged view.
    async fn watch(
        &self,
        service: String,
        since: Revision,
        wait_ms: u64,
    ) -> Result<ServiceView, RegistryError>;
    /// Every service with instances or consumers.
    async fn services(&self) -> Vec<ServiceSummary>;
    /// The consumers registered for a service.
    async fn consumers(&self, service: String) -> Result<Vec<ConsumerInfo>, RegistryError>;
}

/// Milliseconds since the Unix epoch, now; 0 if the clock is before 1970.
pub(crate) fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

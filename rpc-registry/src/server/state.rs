//! The registry's state: leases, instances by service, per-service revisions and the
//! watch channels that wake long polls. Time is passed in (`now`), so eviction and its
//! guards are tested without clocks.
//!
//! Lock order: a lease entry, then a service entry, never the reverse (both live in
//! `DashMap`s whose shard locks are held while an entry is borrowed). Registration
//! holds its lease while it touches the service so a concurrent revoke or eviction
//! cannot leave an instance without a lease.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use super::status::{Health, InstanceStatus, LoadSum, Override, ServiceStatus};
use crate::api::{
    ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, LeaseRequest, LoadReport, MethodLoad,
    RegistryError, Revision, ServiceSummary, ServiceView,
};
use crate::server::RegistryConfig;
use crate::validate;

/// Most methods one load report may carry: a provider process serving more is cut
/// here (the report is for people; a cap keeps it from costing the registry memory).
const MAX_LOAD_METHODS: usize = 256;

/// How many graceful departures a service remembers for consumers (the refuse-to-empty
/// rule); older ones fall off. Enough for a whole fleet leaving in one deploy wave.
const DEPARTED_MEMORY: usize = 256;

/// All registry state.
#[derive(Debug)]
pub(crate) struct State {
    /// Limits and timings.
    config: RegistryConfig,
    /// This life of the registry; a restart starts another, so old revisions are
    /// recognised as stale.
    epoch: u64,
    /// When this registry started: no eviction before `started + ttl`.
    started: Instant,
    /// Source of lease ids (starting at a random-ish point so ids from before a restart
    /// are not reused).
    next_lease: AtomicU64,
    /// Source of revision indexes, shared by all services so that a service entry
    /// dropped while empty and made again can never go back in time.
    next_index: AtomicU64,
    /// Leases by id.
    leases: DashMap<LeaseId, LeaseEntry>,
    /// Services by name.
    services: DashMap<String, ServiceEntry>,
    /// Live instances in all services, for the total cap and the eviction share.
    instances: AtomicUsize,
    /// What the registry has done, for its own metrics.
    counters: Counters,
}

/// Counts of the registry's operations since start, for its Prometheus metrics: one
/// relaxed atomic add per operation.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Leases granted.
    pub(crate) leases_granted: AtomicU64,
    /// Leases revoked (graceful departures).
    pub(crate) leases_revoked: AtomicU64,
    /// Leases evicted by the sweep.
    pub(crate) leases_expired: AtomicU64,
    /// Instances evicted with them.
    pub(crate) instances_evicted: AtomicU64,
    /// Instance registrations and updates.
    pub(crate) registrations: AtomicU64,
    /// Graceful deregistrations of single instances.
    pub(crate) deregistrations: AtomicU64,
    /// Consumer announcements.
    pub(crate) consumer_registrations: AtomicU64,
    /// Heartbeats, with or without a load report.
    pub(crate) heartbeats: AtomicU64,
    /// Heartbeats that carried a load report.
    pub(crate) load_reports: AtomicU64,
    /// Lookups.
    pub(crate) lookups: AtomicU64,
    /// Watches (long polls) started.
    pub(crate) watches: AtomicU64,
    /// Watches waiting now.
    pub(crate) watches_waiting: AtomicI64,
    /// Operator overrides changed.
    pub(crate) overrides_changed: AtomicU64,
    /// Scrapes of the registry's metrics.
    #[cfg(feature = "dashboard")]
    pub(crate) scrapes: AtomicU64,
}

/// Counts one operation.
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One lease.
#[derive(Debug)]
struct LeaseEntry {
    /// Who took it, for operators.
    owner: String,
    /// Its time-to-live.
    ttl: Duration,
    /// Evictable from this instant on, unless a heartbeat moves it.
    expires_at: Instant,
    /// Its instances, so eviction and revoke find them without a scan. The key is
    /// shared with the service's map, not copied.
    instances: HashSet<Arc<InstanceKey>>,
    /// Its consumer records, as (service, consumer).
    consumers: HashSet<(String, ConsumerInfo)>,
}

/// One service.
#[derive(Debug)]
struct ServiceEntry {
    /// Revision index of the last change (0: none since this entry was made).
    index: u64,
    /// Live instances by identity.
    instances: BTreeMap<Arc<InstanceKey>, Stored>,
    /// Addresses that recently deregistered gracefully, oldest first.
    departed: VecDeque<String>,
    /// Registered consumers, with their lease.
    consumers: HashMap<ConsumerInfo, LeaseId>,
    /// Operator overrides by address: kept while their instances come and go.
    overrides: BTreeMap<String, Override>,
    /// Carries `index` to long polls.
    changed: watch::Sender<u64>,
}

/// What the registry keeps of an instance besides its key: the compact form of
/// [`Instance`]. Measured with `registry-bench`: keeping the wire `Instance` (its
/// `BTreeMap` of metadata allocates a whole B-tree node) and a second copy of the key
/// in the lease took 1.4 KiB per instance; this form about half that.
#[derive(Debug)]
struct Stored {
    /// The lease that holds it.
    lease: LeaseId,
    /// Its weight.
    weight: u32,
    /// Its start time.
    started_at_ms: u64,
    /// Its metadata, sorted by key (as it came from the `BTreeMap`).
    metadata: Box<[(Box<str>, Box<str>)]>,
    /// Its provider's last load report for this service; boxed, so an instance that
    /// never reports costs a pointer.
    load: Option<Box<StoredLoad>>,
}

/// A load report as kept for one instance.
#[derive(Debug)]
struct StoredLoad {
    /// When it arrived.
    at: Instant,
    /// The window it covers, milliseconds.
    window_ms: u64,
    /// The instance's service's methods in it.
    methods: Box<[MethodLoad]>,
}

impl Stored {
    fn new(lease: LeaseId, instance: Instance) -> Stored {
        Stored {
            lease,
            weight: instance.weight,
            started_at_ms: instance.started_at_ms,
            metadata: instance
                .metadata
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
            load: None,
        }
    }

    /// The instance as consumers see it: with `weight` (the override's or the
    /// registered one).
    fn instance(&self, key: &InstanceKey, weight: u32) -> Instance {
        Instance {
            service: key.service.clone(),
            group: key.group.clone(),
            version: key.version.clone(),
            addr: key.addr.clone(),
            weight,
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| (String::from(&**k), String::from(&**v)))
                .collect(),
            started_at_ms: self.started_at_ms,
        }
    }
}

impl ServiceEntry {
    fn new() -> ServiceEntry {
        ServiceEntry {
            index: 0,
            instances: BTreeMap::new(),
            departed: VecDeque::new(),
            consumers: HashMap::new(),
            overrides: BTreeMap::new(),
            changed: watch::Sender::new(0),
        }
    }

    /// Records a change at `index` and wakes the watchers.
    fn bump(&mut self, index: u64) {
        self.index = index;
        self.changed.send_replace(index);
    }

    fn is_idle(&self) -> bool {
        self.instances.is_empty()
            && self.consumers.is_empty()
            && self.overrides.is_empty()
            && self.changed.receiver_count() == 0
    }

    /// The instances consumers see: disabled ones left out, overridden weights in.
    fn visible(&self) -> Vec<Instance> {
        self.instances
            .iter()
            .filter_map(|(key, stored)| {
                let over = self.overrides.get(&key.addr).copied().unwrap_or_default();
                (!over.disabled).then(|| stored.instance(key, over.weight.unwrap_or(stored.weight)))
            })
            .collect()
    }
}

/// A long poll's next step.
#[derive(Debug)]
pub(crate) enum Poll {
    /// The view has already moved past the revision: answer now.
    Ready(ServiceView),
    /// Wait on this receiver for the index to move.
    Wait(watch::Receiver<u64>),
}

/// What one eviction sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Leases evicted.
    pub(crate) leases: usize,
    /// Instances evicted with them.
    pub(crate) instances: usize,
    /// Expired leases left for a later sweep by the mass-eviction guard.
    pub(crate) deferred: usize,
    /// Whether the sweep was skipped because the registry is within its first TTL.
    pub(crate) in_grace: bool,
}

impl State {
    pub(crate) fn new(config: RegistryConfig, now: Instant) -> State {
        let epoch = crate::api::unix_millis_now() ^ u64::from(std::process::id()) << 40;
        State {
            config,
            epoch,
            started: now,
            next_lease: AtomicU64::new(epoch.rotate_left(17) | 1),
            next_index: AtomicU64::new(1),
            leases: DashMap::new(),
            services: DashMap::new(),
            instances: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// When this registry started.
    #[cfg(feature = "dashboard")]
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn next_index(&self) -> u64 {
        self.next_index.fetch_add(1, Ordering::Relaxed)
    }

    /// Grants a lease.
    pub(crate) fn grant(
        &self,
        request: LeaseRequest,
        now: Instant,
    ) -> Result<Lease, RegistryError> {
        validate::short_field("owner", &request.owner)?;
        let ttl = if request.ttl_ms == 0 {
            self.config.ttl
        } else {
            Duration::from_millis(request.ttl_ms)
        };
        if ttl < self.config.min_ttl || ttl > self.config.max_ttl {
            return Err(RegistryError::InvalidTtl {
                ttl_ms: request.ttl_ms,
                min_ms: self.config.min_ttl.as_millis() as u64,
                max_ms: self.config.max_ttl.as_millis() as u64,
            });
        }
        if self.leases.len() >= self.config.max_leases {
            return Err(RegistryError::LimitReached {
                what: "leases".into(),
                limit: self.config.max_leases as u64,
            });
        }
        let id = LeaseId(self.next_lease.fetch_add(1, Ordering::Relaxed));
        count(&self.counters.leases_granted);
        self.leases.insert(
            id,
            LeaseEntry {
                owner: request.owner,
                ttl,
                expires_at: now + ttl,
                instances: HashSet::new(),
                consumers: HashSet::new(),
            },
        );
        // Suggest a third of the TTL (2 s of the default 6 s), as the defaults do.
        let heartbeat = (ttl / 3).max(Duration::from_millis(1));
        Ok(Lease {
            id,
            ttl_ms: ttl.as_millis() as u64,
            heartbeat_ms: heartbeat.as_millis() as u64,
        })
    }

    /// Renews a lease.
    pub(crate) fn heartbeat(&self, id: LeaseId, now: Instant) -> Result<(), RegistryError> {
        count(&self.counters.heartbeats);
        let mut lease = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        lease.expires_at = now + lease.ttl;
        Ok(())
    }

    /// Renews a lease and keeps its provider's load report with each of the lease's
    /// instances (the methods of the instance's service). No revision moves: the
    /// report is for operators, not consumers.
    pub(crate) fn heartbeat_with_load(
        &self,
        id: LeaseId,
        mut report: LoadReport,
        now: Instant,
    ) -> Result<(), RegistryError> {
        count(&self.counters.heartbeats);
        count(&self.counters.load_reports);
        report.methods.truncate(MAX_LOAD_METHODS);
        for method in &report.methods {
            validate::short_field("load report service", &method.service)?;
            validate::short_field("load report method", &method.method)?;
        }
        let mut lease = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        lease.expires_at = now + lease.ttl;
        // A report always covers some time; 0 would divide by zero later.
        let window_ms = report.window_ms.max(1);
        for key in &lease.instances {
            let Some(mut service) = self.services.get_mut(&key.service) else {
                continue;
            };
            let Some(stored) = service.instances.get_mut(key) else {
                continue;
            };
            if stored.lease != id {
                continue;
            }
            let methods: Box<[MethodLoad]> = report
                .methods
                .iter()
                .filter(|m| m.service == key.service)
                .cloned()
                .collect();
            stored.load = Some(Box::new(StoredLoad {
                at: now,
                window_ms,
                methods,
            }));
        }
        Ok(())
    }

    /// Ends a lease; its instances leave gracefully.
    pub(crate) fn revoke(&self, id: LeaseId) -> Result<(), RegistryError> {
        count(&self.counters.leases_revoked);
        let (_, lease) = self
            .leases
            .remove(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        self.remove_lease_records(id, lease, true);
        Ok(())
    }

    /// Registers or updates an instance.
    pub(crate) fn register(
        &self,
        id: LeaseId,
        instance: Instance,
        now: Instant,
    ) -> Result<Revision, RegistryError> {
        count(&self.counters.registrations);
        validate::service_name(&instance.service)?;
        validate::provider_addr(&instance.addr)?;
        validate::short_field("group", &instance.group)?;
        validate::short_field("version", &instance.version)?;
        self.check_metadata(&instance.metadata)?;
        let mut lease = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        // Registering is a sign of life too.
        lease.expires_at = now + lease.ttl;
        let key = instance.key();
        let new_for_lease = !lease.instances.contains(&key);
        if new_for_lease
            && lease.instances.len() + lease.consumers.len() >= self.config.max_instances_per_lease
        {
            return Err(RegistryError::LimitReached {
                what: "instances per lease".into(),
                limit: self.config.max_instances_per_lease as u64,
            });
        }
        let mut service = self.service_entry(&instance.service)?;
        let (key, previous) = match service.instances.get_key_value(&key) {
            Some((shared, stored)) => (Arc::clone(shared), Some(stored.lease)),
            None => (Arc::new(key), None),
        };
        if previous.is_none() {
            let total = self.instances.fetch_add(1, Ordering::Relaxed);
            if total >= self.config.max_instances {
                self.instances.fetch_sub(1, Ordering::Relaxed);
                return Err(RegistryError::LimitReached {
                    what: "instances".into(),
                    limit: self.config.max_instances as u64,
                });
            }
        }
        if let Some(holder) = previous.filter(|holder| *holder != id) {
            // Another lease held this identity (a provider restarted before its old
            // lease expired): the newest registration wins. The old lease's record is
            // left to be ignored when that lease goes (it no longer holds the key).
            tracing::debug!(?key, old = %holder, new = %id, "instance moved to a new lease");
        }
        service.departed.retain(|addr| *addr != instance.addr);
        service
            .instances
            .insert(Arc::clone(&key), Stored::new(id, instance));
        let index = self.next_index();
        service.bump(index);
        lease.instances.insert(key);
        Ok(Revision::new(self.epoch, index))
    }

    /// Deregisters an instance gracefully.
    pub(crate) fn deregister(
        &self,
        id: LeaseId,
        key: InstanceKey,
    ) -> Result<Revision, RegistryError> {
        count(&self.counters.deregistrations);
        validate::service_name(&key.service)?;
        let mut lease = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        lease.instances.remove(&key);
        let Some(mut service) = self.services.get_mut(&key.service) else {
            return Ok(Revision::new(self.epoch, 0));
        };
        if service
            .instances
            .get(&key)
            .is_some_and(|stored| stored.lease == id)
        {
            service.instances.remove(&key);
            self.instances.fetch_sub(1, Ordering::Relaxed);
            remember_departure(&mut service, &key.addr);
            let index = self.next_index();
            service.bump(index);
        }
        Ok(Revision::new(self.epoch, service.index))
    }

    /// Records a consumer; `peer` fills an empty address.
    pub(crate) fn register_consumer(
        &self,
        id: LeaseId,
        mut consumer: ConsumerInfo,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(), RegistryError> {
        count(&self.counters.consumer_registrations);
        validate::service_name(&consumer.service)?;
        validate::short_field("client name", &consumer.client_name)?;
        validate::short_field("consumer address", &consumer.addr)?;
        if consumer.addr.is_empty() {
            if let Some(peer) = peer {
                consumer.addr = peer.ip().to_string();
            }
        }
        let mut lease = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        lease.expires_at = now + lease.ttl;
        let record = (consumer.service.clone(), consumer.clone());
        if lease.consumers.contains(&record) {
            return Ok(());
        }
        if lease.instances.len() + lease.consumers.len() >= self.config.max_instances_per_lease {
            return Err(RegistryError::LimitReached {
                what: "instances per lease".into(),
                limit: self.config.max_instances_per_lease as u64,
            });
        }
        let mut service = self.service_entry(&consumer.service)?;
        service.consumers.insert(consumer, id);
        lease.consumers.insert(record);
        Ok(())
    }

    /// The service's view now.
    pub(crate) fn lookup(&self, service: &str) -> Result<ServiceView, RegistryError> {
        count(&self.counters.lookups);
        validate::service_name(service)?;
        Ok(self.view(service))
    }

    /// The view of a (valid) service name.
    pub(crate) fn view(&self, service: &str) -> ServiceView {
        match self.services.get(service) {
            Some(entry) => ServiceView {
                service: service.to_owned(),
                revision: Revision::new(self.epoch, entry.index),
                instances: entry.visible(),
                departed: entry.departed.iter().cloned().collect(),
            },
            None => ServiceView {
                service: service.to_owned(),
                revision: Revision::new(self.epoch, 0),
                instances: Vec::new(),
                departed: Vec::new(),
            },
        }
    }

    /// Starts a long poll: ready at once when `since` is stale, otherwise a receiver to
    /// wait on.
    pub(crate) fn poll(&self, service: &str, since: Revision) -> Result<Poll, RegistryError> {
        count(&self.counters.watches);
        validate::service_name(service)?;
        let entry = self.service_entry(service)?;
        if since.epoch != self.epoch || entry.index > since.index {
            drop(entry);
            return Ok(Poll::Ready(self.view(service)));
        }
        Ok(Poll::Wait(entry.changed.subscribe()))
    }

    /// Every service with instances or consumers.
    pub(crate) fn services(&self) -> Vec<ServiceSummary> {
        let mut list: Vec<ServiceSummary> = self
            .services
            .iter()
            .filter(|e| !e.instances.is_empty() || !e.consumers.is_empty())
            .map(|e| ServiceSummary {
                service: e.key().clone(),
                instances: e.instances.len() as u32,
                consumers: e.consumers.len() as u32,
                revision: Revision::new(self.epoch, e.index),
            })
            .collect();
        list.sort_by(|a, b| a.service.cmp(&b.service));
        list
    }

    /// The consumers of a service.
    pub(crate) fn consumers(&self, service: &str) -> Result<Vec<ConsumerInfo>, RegistryError> {
        validate::service_name(service)?;
        Ok(self
            .services
            .get(service)
            .map(|e| e.consumers.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Live instances in all services.
    pub(crate) fn instance_count(&self) -> usize {
        self.instances.load(Ordering::Relaxed)
    }

    /// Live leases.
    pub(crate) fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Evicts leases whose TTL passed, within the guards: nothing during the first TTL
    /// after start, and at most `max_evict_share` of the instances per sweep (at least
    /// one lease, so a lone expired lease always goes). Oldest expiries go first.
    /// Also drops idle service entries.
    pub(crate) fn sweep(&self, now: Instant) -> Sweep {
        let mut report = Sweep::default();
        if now < self.started + self.config.ttl {
            report.in_grace = true;
            return report;
        }
        let mut expired: Vec<(Instant, LeaseId)> = self
            .leases
            .iter()
            .filter(|l| l.expires_at <= now)
            .map(|l| (l.expires_at, *l.key()))
            .collect();
        expired.sort();
        let total = self.instance_count();
        let budget = ((total as f64) * self.config.max_evict_share).ceil() as usize;
        for (position, (_, id)) in expired.iter().enumerate() {
            if report.leases > 0 && report.instances >= budget {
                report.deferred = expired.len() - position;
                break;
            }
            // `remove_if` re-checks under the lock: a heartbeat may have just arrived.
            if let Some((id, lease)) = self.leases.remove_if(id, |_, l| l.expires_at <= now) {
                tracing::info!(lease = %id, owner = %lease.owner, instances = lease.instances.len(), "lease expired, evicted");
                count(&self.counters.leases_expired);
                self.counters
                    .instances_evicted
                    .fetch_add(lease.instances.len() as u64, Ordering::Relaxed);
                report.leases += 1;
                report.instances += lease.instances.len();
                self.remove_lease_records(id, lease, false);
            }
        }
        if report.deferred > 0 {
            tracing::warn!(
                deferred = report.deferred,
                budget,
                "mass-eviction guard: expired leases left for later sweeps"
            );
        }
        self.services.retain(|_, entry| !entry.is_idle());
        report
    }

    /// Removes a gone lease's instances and consumers from their services.
    fn remove_lease_records(&self, id: LeaseId, lease: LeaseEntry, graceful: bool) {
        for key in lease.instances {
            let Some(mut service) = self.services.get_mut(&key.service) else {
                continue;
            };
            if service
                .instances
                .get(&key)
                .is_some_and(|stored| stored.lease == id)
            {
                service.instances.remove(&key);
                self.instances.fetch_sub(1, Ordering::Relaxed);
                if graceful {
                    remember_departure(&mut service, &key.addr);
                }
                let index = self.next_index();
                service.bump(index);
            }
        }
        for (service, consumer) in lease.consumers {
            if let Some(mut service) = self.services.get_mut(&service) {
                if service.consumers.get(&consumer) == Some(&id) {
                    service.consumers.remove(&consumer);
                }
            }
        }
    }

    /// Changes the operator's override of the instance of `service` at `addr` with
    /// `edit`, and moves the service's revision so watchers (consumers) see it at
    /// once. An instance must be registered at `addr`, or an override be there
    /// already (to enable an instance that is down). An override left empty is
    /// forgotten. Returns the override now in force.
    pub(crate) fn change_override(
        &self,
        service: &str,
        addr: &str,
        edit: impl FnOnce(&mut Override),
    ) -> Result<Override, OverrideError> {
        validate::service_name(service).map_err(OverrideError::Invalid)?;
        let mut entry = self
            .services
            .get_mut(service)
            .ok_or(OverrideError::NotFound)?;
        let registered = entry.instances.keys().any(|key| key.addr == addr);
        if !registered && !entry.overrides.contains_key(addr) {
            return Err(OverrideError::NotFound);
        }
        let mut over = entry.overrides.get(addr).copied().unwrap_or_default();
        let before = over;
        edit(&mut over);
        if over.is_empty() {
            entry.overrides.remove(addr);
        } else {
            entry.overrides.insert(addr.to_owned(), over);
        }
        count(&self.counters.overrides_changed);
        if over != before {
            let index = self.next_index();
            entry.bump(index);
            tracing::info!(%service, %addr, weight = ?over.weight, disabled = over.disabled, "operator override changed");
        }
        Ok(over)
    }

    /// Every service with instances, consumers or overrides, as operators see it,
    /// sorted by name.
    pub(crate) fn statuses(&self, now: Instant) -> Vec<ServiceStatus> {
        let mut names: Vec<String> = self
            .services
            .iter()
            .filter(|e| {
                !e.instances.is_empty() || !e.consumers.is_empty() || !e.overrides.is_empty()
            })
            .map(|e| e.key().clone())
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|name| self.status(name, now))
            .collect()
    }

    /// One service as operators see it; `None` when the registry has no record of it.
    pub(crate) fn status(&self, service: &str, now: Instant) -> Option<ServiceStatus> {
        // What the service entry holds, copied out so the leases are read after its
        // lock is released (the lock order is lease, then service).
        struct Row {
            key: InstanceKey,
            lease: LeaseId,
            weight: u32,
            over: Override,
            started_at_ms: u64,
            metadata: BTreeMap<String, String>,
            load: Option<(Instant, LoadSum)>,
        }
        let (revision, rows, mut consumers, overrides) = {
            let entry = self.services.get(service)?;
            let rows: Vec<Row> = entry
                .instances
                .iter()
                .map(|(key, stored)| {
                    let load = stored.load.as_ref().map(|load| {
                        let mut sum = LoadSum::default();
                        // A report older than a few windows (the provider stopped
                        // reporting) counts as no load.
                        let fresh = now.saturating_duration_since(load.at)
                            <= Duration::from_millis(load.window_ms * 3);
                        if fresh {
                            let window_s = load.window_ms as f64 / 1000.0;
                            for method in &*load.methods {
                                sum.add_method(method, window_s);
                            }
                        }
                        (load.at, sum)
                    });
                    Row {
                        key: (**key).clone(),
                        lease: stored.lease,
                        weight: stored.weight,
                        over: entry.overrides.get(&key.addr).copied().unwrap_or_default(),
                        started_at_ms: stored.started_at_ms,
                        metadata: stored
                            .metadata
                            .iter()
                            .map(|(k, v)| (String::from(&**k), String::from(&**v)))
                            .collect(),
                        load,
                    }
                })
                .collect();
            let consumers: Vec<ConsumerInfo> = entry.consumers.keys().cloned().collect();
            (entry.index, rows, consumers, entry.overrides.clone())
        };
        consumers.sort_by(|a, b| (&a.addr, &a.client_name).cmp(&(&b.addr, &b.client_name)));
        let now_ms = crate::api::unix_millis_now();
        let mut total = LoadSum::default();
        let instances = rows
            .into_iter()
            .map(|row| {
                let (heard, ttl, owner) = match self.leases.get(&row.lease) {
                    Some(lease) => (
                        lease.expires_at.checked_sub(lease.ttl).unwrap_or(now),
                        lease.ttl,
                        lease.owner.clone(),
                    ),
                    // Evicted between the two reads: about to leave.
                    None => (now, self.config.ttl, String::new()),
                };
                let since_heard = now.saturating_duration_since(heard);
                let weight = row.over.weight.unwrap_or(row.weight);
                let health = if row.over.disabled {
                    Health::Disabled
                } else if since_heard > ttl / 2 {
                    // One and a half of the suggested interval (a third of the TTL).
                    Health::Late
                } else if weight == 0 {
                    Health::Parked
                } else {
                    Health::Healthy
                };
                let (load, load_reported_ms) = match &row.load {
                    Some((at, sum)) => {
                        total.add(sum);
                        (
                            sum.load(),
                            Some(now.saturating_duration_since(*at).as_millis() as u64),
                        )
                    }
                    None => (Default::default(), None),
                };
                let methods = match row.metadata.get(crate::api::METHODS_METADATA_KEY) {
                    Some(list) if !list.is_empty() => list.split(',').map(str::to_owned).collect(),
                    _ => Vec::new(),
                };
                InstanceStatus {
                    addr: row.key.addr,
                    group: row.key.group,
                    version: row.key.version,
                    weight,
                    registered_weight: row.weight,
                    operator_override: row.over,
                    health,
                    started_at_ms: row.started_at_ms,
                    age_ms: if row.started_at_ms == 0 {
                        0
                    } else {
                        now_ms.saturating_sub(row.started_at_ms)
                    },
                    last_heartbeat_ms: since_heard.as_millis() as u64,
                    lease: row.lease.to_string(),
                    owner,
                    metadata: row.metadata,
                    methods,
                    load,
                    load_reported_ms,
                }
            })
            .collect();
        Some(ServiceStatus {
            service: service.to_owned(),
            revision,
            instances,
            consumers,
            overrides,
            load: total.load(),
        })
    }

    /// Per service, its counts, sorted by name; for the registry's metrics.
    #[cfg(feature = "dashboard")]
    pub(crate) fn service_gauges(&self) -> Vec<ServiceGauges> {
        let mut list: Vec<_> = self
            .services
            .iter()
            .map(|e| ServiceGauges {
                service: e.key().clone(),
                instances: e.instances.len(),
                consumers: e.consumers.len(),
                watchers: e.changed.receiver_count(),
            })
            .collect();
        list.sort_by(|a, b| a.service.cmp(&b.service));
        list
    }

    fn check_metadata(&self, metadata: &BTreeMap<String, String>) -> Result<(), RegistryError> {
        if metadata.len() > self.config.max_metadata_entries {
            return Err(RegistryError::InvalidField {
                field: "metadata".into(),
                reason: format!(
                    "{} entries, at most {} allowed",
                    metadata.len(),
                    self.config.max_metadata_entries
                ),
            });
        }
        let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.config.max_metadata_bytes {
            return Err(RegistryError::InvalidField {
                field: "metadata".into(),
                reason: format!(
                    "{bytes} bytes of keys and values, at most {} allowed",
                    self.config.max_metadata_bytes
                ),
            });
        }
        Ok(())
    }

    /// The entry of a (valid) service, made if missing within the service cap.
    fn service_entry(
        &self,
        service: &str,
    ) -> Result<dashmap::mapref::one::RefMut<'_, String, ServiceEntry>, RegistryError> {
        if let Some(entry) = self.services.get_mut(service) {
            return Ok(entry);
        }
        if self.services.len() >= self.config.max_services {
            return Err(RegistryError::LimitReached {
                what: "services".into(),
                limit: self.config.max_services as u64,
            });
        }
        Ok(self
            .services
            .entry(service.to_owned())
            .or_insert_with(ServiceEntry::new))
    }
}

/// One service's counts, for the registry's metrics.
#[cfg(feature = "dashboard")]
#[derive(Debug)]
pub(crate) struct ServiceGauges {
    /// The service.
    pub(crate) service: String,
    /// Its live instances.
    pub(crate) instances: usize,
    /// Its registered consumers.
    pub(crate) consumers: usize,
    /// Watches waiting on it.
    pub(crate) watchers: usize,
}

/// Why an override was not changed.
#[derive(Debug)]
pub(crate) enum OverrideError {
    /// The service name is invalid (the dashboard says why).
    Invalid(#[cfg_attr(not(feature = "dashboard"), allow(dead_code))] RegistryError),
    /// No instance is registered at that address, and no override is there.
    NotFound,
}

fn remember_departure(service: &mut ServiceEntry, addr: &str) {
    if !service.departed.iter().any(|a| a == addr) {
        if service.departed.len() == DEPARTED_MEMORY {
            service.departed.pop_front();
        }
        service.departed.push_back(addr.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RegistryConfig {
        RegistryConfig::default()
            .ttl(Duration::from_secs(6))
            .max_evict_share(0.5)
    }

    fn lease(state: &State, now: Instant) -> LeaseId {
        state.grant(LeaseRequest::new("test", 0), now).unwrap().id
    }

    fn instance(n: u16) -> Instance {
        Instance::new("svc", format!("127.0.0.1:{}", 1000 + n))
    }

    #[test]
    fn no_eviction_in_the_first_ttl() {
        let t0 = Instant::now();
        let state = State::new(config(), t0);
        let id = lease(&state, t0);
        state.register(id, instance(1), t0).unwrap();
        let report = state.sweep(t0 + Duration::from_secs(5));
        assert!(report.in_grace);
        assert_eq!(state.instance_count(), 1);
        let report = state.sweep(t0 + Duration::from_secs(7));
        assert_eq!(report.instances, 1);
        assert_eq!(state.instance_count(), 0);
    }

    #[test]
    fn heartbeats_keep_a_lease() {
        let t0 = Instant::now();
        let state = State::new(config(), t0);
        let id = lease(&state, t0);
        state.register(id, instance(1), t0).unwrap();
        for s in 1..20 {
            state.heartbeat(id, t0 + Duration::from_secs(s)).unwrap();
            assert_eq!(state.sweep(t0 + Duration::from_secs(s)).instances, 0);
        }
        assert_eq!(state.instance_count(), 1);
    }

    #[test]
    fn mass_eviction_is_spread_over_sweeps() {
        let t0 = Instant::now();
        let state = State::new(config(), t0);
        for n in 0..10 {
            let id = lease(&state, t0);
            state.register(id, instance(n), t0).unwrap();
        }
        let later = t0 + Duration::from_secs(7);
        // Share 0.5 of 10 instances: 5 go now, the rest later.
        let first = state.sweep(later);
        assert_eq!(first.instances, 5);
        assert_eq!(first.deferred, 5);
        let second = state.sweep(later);
        assert_eq!(second.instances, 3); // ceil(0.5 * 5)
        assert_eq!(state.instance_count(), 2);
    }

    #[test]
    fn revisions_move_and_departures_are_remembered() {
        let t0 = Instant::now();
        let state = State::new(config(), t0);
        let id = lease(&state, t0);
        let r1 = state.register(id, instance(1), t0).unwrap();
        let r2 = state.register(id, instance(2), t0).unwrap();
        assert!(r2.index > r1.index);
        let Poll::Wait(_) = state.poll("svc", r2).unwrap() else {
            panic!("nothing changed after r2")
        };
        let Poll::Ready(view) = state.poll("svc", r1).unwrap() else {
            panic!("r2 is past r1")
        };
        assert_eq!(view.instances.len(), 2);
        state.revoke(id).unwrap();
        let view = state.lookup("svc").unwrap();
        assert!(view.instances.is_empty());
        assert_eq!(view.departed.len(), 2);
        let Poll::Ready(_) = state
            .poll("svc", Revision::new(state.epoch + 1, 99))
            .unwrap()
        else {
            panic!("another epoch is answered at once")
        };
    }

    #[test]
    fn overrides_shape_the_views_and_outlive_the_lease() {
        let t0 = Instant::now();
        let state = State::new(config(), t0);
        let id = lease(&state, t0);
        let r1 = state.register(id, instance(1), t0).unwrap();
        state.register(id, instance(2), t0).unwrap();
        let addr = instance(1).addr;
        assert!(matches!(
            state.change_override("svc", "127.0.0.1:9", |o| o.disabled = true),
            Err(OverrideError::NotFound)
        ));
        state
            .change_override("svc", &addr, |o| o.weight = Some(7))
            .unwrap();
        let view = state.lookup("svc").unwrap();
        assert!(view.revision.index > r1.index, "watchers are woken");
        assert_eq!(view.instances[0].weight, 7);
        state
            .change_override("svc", &addr, |o| o.disabled = true)
            .unwrap();
        assert_eq!(state.lookup("svc").unwrap().instances.len(), 1);
        // The provider restarts under a new lease: still disabled.
        state.revoke(id).unwrap();
        let again = lease(&state, t0);
        state.register(again, instance(1), t0).unwrap();
        assert!(state.lookup("svc").unwrap().instances.is_empty());
        let status = state.status("svc", t0).unwrap();
        assert_eq!(status.instances[0].health, Health::Disabled);
        assert_eq!(status.instances[0].weight, 7);
        assert_eq!(status.instances[0].registered_weight, 100);
        // Cleared: as registered, and forgotten.
        state
            .change_override("svc", &addr, |o| *o = Override::default())
            .unwrap();
        assert_eq!(state.lookup("svc").unwrap().instances[0].weight, 100);
        assert!(state.status("svc", t0).unwrap().overrides.is_empty());
    }

    #[test]
    fn load_reports_become_rates() {
        let t0 = Instant::now();
        let state = State::new(config(), t0);
        let id = lease(&state, t0);
        state.register(id, instance(1), t0).unwrap();
        let mut report = LoadReport::new(2000);
        let mut get = MethodLoad::new("svc", "get", 400, 4);
        get.mean_us = 1500;
        get.p99_us = 6400;
        report.methods.push(get);
        report.methods.push(MethodLoad::new("svc", "put", 100, 0));
        report.methods.push(MethodLoad::new("other", "x", 1000, 0));
        let before = state.lookup("svc").unwrap().revision;
        state.heartbeat_with_load(id, report, t0).unwrap();
        assert_eq!(
            state.lookup("svc").unwrap().revision,
            before,
            "no revision moves"
        );
        let load = &state.status("svc", t0).unwrap().load;
        assert_eq!(load.calls_per_s, 250.0);
        assert_eq!(load.error_rate, 4.0 / 500.0);
        assert_eq!(load.p99_ms, 6.4);
        assert_eq!(load.methods["get"].calls_per_s, 200.0);
        assert_eq!(load.methods["get"].mean_ms, 1.5);
        // A report three windows old no longer counts.
        let later = state.status("svc", t0 + Duration::from_secs(7)).unwrap();
        assert_eq!(later.load.calls_per_s, 0.0);
    }

    #[test]
    fn caps_and_validation() {
        let t0 = Instant::now();
        let state = State::new(
            RegistryConfig::default()
                .max_instances_per_lease(2)
                .max_instances(3)
                .max_metadata_entries(1),
            t0,
        );
        let a = lease(&state, t0);
        state.register(a, instance(1), t0).unwrap();
        state.register(a, instance(2), t0).unwrap();
        // Re-registering a known instance is an update, not a new one.
        state.register(a, instance(2).weight(5), t0).unwrap();
        assert!(matches!(
            state.register(a, instance(3), t0),
            Err(RegistryError::LimitReached { .. })
        ));
        let b = lease(&state, t0);
        state.register(b, instance(4), t0).unwrap();
        assert!(matches!(
            state.register(b, instance(5), t0),
            Err(RegistryError::LimitReached { ref what, .. }) if what == "instances"
        ));
        assert!(matches!(
            state.register(b, instance(4).metadata("a", "1").metadata("b", "2"), t0),
            Err(RegistryError::InvalidField { .. })
        ));
        assert!(matches!(
            state.grant(LeaseRequest::new("x", 1), t0),
            Err(RegistryError::InvalidTtl { .. })
        ));
        assert!(matches!(
            state.heartbeat(LeaseId(12345), t0),
            Err(RegistryError::UnknownLease(_))
        ));
    }
}

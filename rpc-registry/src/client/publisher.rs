//! [`Publisher`]: the provider side. It keeps one lease per registry, registers its
//! records (provider instances, consumer announcements) under it, heartbeats it once per
//! interval for all of them, and takes a new lease and registers again by itself when a
//! registry restarts or answers that the lease is unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::filter::metrics::{MethodSnapshot, Metrics};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Backend, Error, Registries};
use crate::api::{ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, LoadReport, MethodLoad};
use crate::validate;

/// Builds a [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    /// Where to register.
    registries: Registries,
    /// Lease owner shown to operators.
    owner: String,
    /// Lease TTL to ask for; `None`: the registry's default.
    ttl: Option<Duration>,
    /// Heartbeat interval; `None`: what the registry suggests with the lease.
    heartbeat_interval: Option<Duration>,
    /// Wait between attempts while a registry is unreachable.
    retry_interval: Duration,
    /// Wait after deregistering, before [`Publisher::shutdown`] returns.
    deregister_delay: Duration,
    /// The provider's server metrics, reported with each heartbeat.
    metrics: Option<Metrics>,
}

impl PublisherBuilder {
    /// Names the lease owner (shown by the registry). Default: `rpc-provider`.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Publisher::builder(r).owner("inventory-provider");
    /// ```
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Asks for this lease TTL. Default: the registry's (6 s for ours).
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Publisher::builder(r).ttl(std::time::Duration::from_secs(9));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Heartbeats this often. Default: what the registry suggests (a third of the
    /// TTL: 2 s for ours).
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Publisher::builder(r)
    ///     .heartbeat_interval(std::time::Duration::from_secs(1));
    /// ```
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// Retries an unreachable registry this often. Default: 500 ms.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Publisher::builder(r)
    ///     .retry_interval(std::time::Duration::from_millis(200));
    /// ```
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How long [`Publisher::shutdown`] waits after deregistering, so subscribers see
    /// the departure before the caller drains its server. Default: 500 ms (a watch
    /// delivers a change in about a millisecond on a LAN; the rest is margin for a
    /// consumer busy reconnecting).
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Publisher::builder(r)
    ///     .deregister_delay(std::time::Duration::from_secs(1));
    /// ```
    pub fn deregister_delay(mut self, delay: Duration) -> Self {
        self.deregister_delay = delay;
        self
    }

    /// Reports the calls these server metrics count (the provider's
    /// [`Metrics::server_layer`]) with every heartbeat: per method, the calls, errors,
    /// mean and percentile latency of the interval since the last one, so the
    /// registry's dashboard shows live calls/s, error rate and latency per instance
    /// and service. Registries that take no reports (etcd, ZooKeeper, an older
    /// `rpc://` registry) get plain heartbeats. Default: no reports.
    ///
    /// ```
    /// use rpc_core::filter::metrics::Metrics;
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let metrics = Metrics::new();
    /// let server = rpc_core::Server::builder().layer(metrics.server_layer());
    /// let b = rpc_registry::Publisher::builder(r).metrics(metrics);
    /// ```
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Starts the publisher: one background task per registry takes a lease and keeps
    /// it. Nothing is registered until [`Publisher::publish`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Publisher {
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            owner: self.owner,
            ttl: self.ttl,
            heartbeat_interval: self.heartbeat_interval,
            retry_interval: self.retry_interval.max(Duration::from_millis(10)),
            records: Mutex::new(Records::default()),
            changed,
            metrics: self.metrics,
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut synced = Vec::new();
        for member in self.registries.members() {
            let status = Arc::new(MemberStatus::default());
            synced.push((member.url().to_owned(), Arc::clone(&status)));
            let keeper = Keeper {
                member: Arc::clone(member),
                shared: Arc::clone(&shared),
                lease: None,
                registered: Records::default(),
                status,
                refused: BTreeMap::new(),
                last_load: None,
            };
            tasks.spawn(keeper.run(cancel.clone()));
        }
        tasks.close();
        Publisher {
            inner: Arc::new(PublisherInner {
                shared,
                cancel,
                tasks,
                synced,
                deregister_delay: self.deregister_delay,
            }),
        }
    }
}

/// The provider side of the registry: keeps instances (and consumer announcements)
/// registered with every registry of a URL, with one heartbeat per registry for all of
/// them. Cheap to clone; clones share the leases.
///
/// A graceful shutdown deregisters first, waits [`PublisherBuilder::deregister_delay`]
/// so subscribers stop sending calls, and then the caller drains its server:
///
/// ```no_run
/// # async fn run(server: rpc_core::ServerHandle) -> Result<(), Box<dyn std::error::Error>> {
/// let registries = rpc_registry::connect("rpc://127.0.0.1:7000")?;
/// let publisher = rpc_registry::Publisher::builder(registries).owner("inventory").start();
/// publisher.publish(
///     rpc_registry::Instance::new("example.Inventory", server.local_addr().to_string())
///         .weight(200),
/// )?;
/// // ... serve ...
/// publisher.shutdown().await; // deregister, wait for subscribers to see it
/// server.shutdown().await?; // then drain
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    /// Shared by clones.
    inner: Arc<PublisherInner>,
}

#[derive(Debug)]
struct PublisherInner {
    /// What the keepers register.
    shared: Arc<Shared>,
    /// Stops the keepers (each revokes its lease on the way out).
    cancel: CancellationToken,
    /// The keepers.
    tasks: TaskTracker,
    /// Per registry (by URL): how far its registrations are.
    synced: Vec<(String, Arc<MemberStatus>)>,
    /// Wait after deregistering on shutdown.
    deregister_delay: Duration,
}

impl Drop for PublisherInner {
    fn drop(&mut self) {
        // Keepers stop with the last handle; a publisher dropped without `shutdown`
        // still revokes its leases (best effort, if the runtime lives on).
        self.cancel.cancel();
    }
}

/// What the publisher wants registered, shared with its keepers.
#[derive(Debug)]
struct Shared {
    owner: String,
    ttl: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    retry_interval: Duration,
    records: Mutex<Records>,
    /// Bumped when `records` changes, waking every keeper.
    changed: watch::Sender<u64>,
    /// The server metrics to report with heartbeats.
    metrics: Option<Metrics>,
}

/// Records under one lease.
#[derive(Debug, Default, Clone, PartialEq)]
struct Records {
    instances: BTreeMap<InstanceKey, Instance>,
    consumers: BTreeSet<ConsumerKey>,
}

/// A consumer record, ordered for the set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ConsumerKey {
    service: String,
    addr: String,
    client_name: String,
}

impl ConsumerKey {
    fn info(&self) -> ConsumerInfo {
        let mut info = ConsumerInfo::new(self.service.clone(), self.client_name.clone());
        info.addr.clone_from(&self.addr);
        info
    }
}

impl Publisher {
    /// A builder registering with `registries`.
    pub fn builder(registries: Registries) -> PublisherBuilder {
        PublisherBuilder {
            registries,
            owner: "rpc-provider".into(),
            ttl: None,
            heartbeat_interval: None,
            retry_interval: Duration::from_millis(500),
            deregister_delay: Duration::from_millis(500),
            metrics: None,
        }
    }

    /// Registers an instance (or updates it: same service, group, version and
    /// address) with every registry, now and after every registry restart.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a service name or address the registry would refuse.
    /// Registries apply their own configured caps too; a refusal there is logged.
    pub fn publish(&self, instance: Instance) -> Result<(), Error> {
        validate::service_name(&instance.service).map_err(Error::Invalid)?;
        validate::provider_addr(&instance.addr).map_err(Error::Invalid)?;
        validate::short_field("group", &instance.group).map_err(Error::Invalid)?;
        validate::short_field("version", &instance.version).map_err(Error::Invalid)?;
        self.change(|records| {
            records.instances.insert(instance.key(), instance);
        });
        Ok(())
    }

    /// Deregisters an instance gracefully from every registry.
    pub fn unpublish(&self, key: &InstanceKey) {
        self.change(|records| {
            records.instances.remove(key);
        });
    }

    /// Announces a consumer (who calls what) under this publisher's leases.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an invalid service name or an over-long client name.
    pub fn announce_consumer(&self, consumer: ConsumerInfo) -> Result<(), Error> {
        validate::service_name(&consumer.service).map_err(Error::Invalid)?;
        validate::short_field("client name", &consumer.client_name).map_err(Error::Invalid)?;
        self.change(|records| {
            records.consumers.insert(ConsumerKey {
                service: consumer.service,
                addr: consumer.addr,
                client_name: consumer.client_name,
            });
        });
        Ok(())
    }

    /// Whether every record is registered with every registry right now.
    pub fn is_registered(&self) -> bool {
        self.inner
            .synced
            .iter()
            .all(|(_, s)| s.synced.load(Ordering::Acquire))
    }

    /// The lease held with each registry now (`None` while none is), in the order of
    /// the URL: for logs and operators matching a provider with the registry's view.
    pub fn leases(&self) -> Vec<Option<LeaseId>> {
        self.inner
            .synced
            .iter()
            .map(|(_, status)| *status.lease.lock().expect("lease lock"))
            .collect()
    }

    /// Waits until every record has been sent to every registry, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] when a registry refused a record (a cap or a rule of its
    /// configuration: retrying cannot help until the record changes);
    /// [`Error::Unreachable`] naming the registries not done within `limit`.
    pub async fn wait_registered(&self, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_registered() {
                let refusal = self.inner.synced.iter().find_map(|(_, status)| {
                    status
                        .refused
                        .lock()
                        .expect("refusals lock")
                        .first()
                        .cloned()
                });
                return refusal.map_or(Ok(()), Err);
            }
            if Instant::now() >= deadline {
                let pending: Vec<&str> = self
                    .inner
                    .synced
                    .iter()
                    .filter(|(_, s)| !s.synced.load(Ordering::Acquire))
                    .map(|(url, _)| url.as_str())
                    .collect();
                return Err(Error::Unreachable {
                    registry: pending.join(", "),
                    reason: format!("not registered within {limit:?}"),
                });
            }
            // Registration is a few round trips; polling at 5 ms adds little to it.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Graceful departure: revokes every lease (deregistering everything under it, so
    /// consumers may let their lists empty), then waits the deregister delay so
    /// subscribers have seen it. Drain the server after this returns. Registries that
    /// cannot be reached are given a second each; they will evict the lease at its TTL.
    /// The publisher (and its clones) registers nothing afterwards.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.wait().await;
        tokio::time::sleep(self.inner.deregister_delay).await;
    }

    fn change(&self, edit: impl FnOnce(&mut Records)) {
        let shared = &self.inner.shared;
        edit(&mut shared.records.lock().expect("records lock"));
        for (_, status) in &self.inner.synced {
            status.synced.store(false, Ordering::Release);
        }
        shared.changed.send_modify(|generation| *generation += 1);
    }
}

/// Keeps one registry in line with the publisher's records.
#[derive(Debug)]
struct Keeper {
    /// The registry.
    member: Arc<dyn Backend>,
    /// What should be registered.
    shared: Arc<Shared>,
    /// The lease held there, if any.
    lease: Option<Lease>,
    /// What is registered there under `lease`.
    registered: Records,
    /// Shared with the publisher: whether `registered` matches the wanted records,
    /// and the refusals.
    status: Arc<MemberStatus>,
    /// Records this registry refused for good, by record, until they change.
    refused: BTreeMap<String, Error>,
    /// When the last load report was cut and the server metrics then: the next
    /// report covers the calls since.
    last_load: Option<(Instant, Vec<MethodSnapshot>)>,
}

/// How far one registry's registrations are, for [`Publisher::wait_registered`].
#[derive(Debug, Default)]
struct MemberStatus {
    /// Whether everything wanted has been sent (registered or refused).
    synced: AtomicBool,
    /// What it refused.
    refused: Mutex<Vec<Error>>,
    /// The lease held there now.
    lease: Mutex<Option<LeaseId>>,
}

/// The server side of `metrics` now.
fn server_side(metrics: &Metrics) -> Vec<MethodSnapshot> {
    metrics
        .snapshot()
        .into_iter()
        .filter(|m| m.server)
        .collect()
}

/// How one step of a keeper ended.
enum Step {
    /// All in line; wait for the next heartbeat or change.
    Done,
    /// The lease is gone: take a new one at once.
    LeaseLost,
    /// The registry could not be reached: retry after the retry interval.
    Unreachable,
}

impl Keeper {
    async fn run(mut self, cancel: CancellationToken) {
        let mut changed = self.shared.changed.subscribe();
        let mut next_beat = Instant::now();
        // The first report covers the calls from now on.
        self.last_load = self
            .shared
            .metrics
            .as_ref()
            .map(|metrics| (Instant::now(), server_side(metrics)));
        loop {
            let step = tokio::select! {
                _ = cancel.cancelled() => break,
                step = self.step(&mut next_beat) => step,
            };
            let wake = match step {
                Step::Done => next_beat,
                Step::LeaseLost => continue,
                Step::Unreachable => Instant::now() + self.shared.retry_interval,
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.depart().await;
    }

    /// Takes a lease if needed, heartbeats when due, and brings the registrations in
    /// line with the wanted records.
    async fn step(&mut self, next_beat: &mut Instant) -> Step {
        let url = self.member.url().to_owned();
        let lease = match &self.lease {
            Some(lease) => lease.clone(),
            None => match self.member.grant(&self.shared.owner, self.shared.ttl).await {
                Ok(lease) => {
                    tracing::info!(registry = %url, lease = %lease.id, "lease granted");
                    self.registered = Records::default();
                    self.lease = Some(lease.clone());
                    *self.status.lease.lock().expect("lease lock") = Some(lease.id);
                    *next_beat = Instant::now() + self.interval(&lease);
                    lease
                }
                Err(e) => return self.failed(e),
            },
        };
        if Instant::now() >= *next_beat {
            let beat = match self.load_report() {
                Some(report) => self.member.keep_alive_with_load(lease.id, &report).await,
                None => self.member.keep_alive(lease.id).await,
            };
            if let Err(e) = beat {
                return self.failed(e);
            }
            *next_beat = Instant::now() + self.interval(&lease);
        }
        let wanted = self.shared.records.lock().expect("records lock").clone();
        if wanted == self.registered {
            self.status.synced.store(true, Ordering::Release);
            return Step::Done;
        }
        // Removals first: an instance moving between groups never shows twice.
        let gone: Vec<InstanceKey> = self
            .registered
            .instances
            .keys()
            .filter(|k| !wanted.instances.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            match self.member.deregister(lease.id, &key).await {
                Ok(()) => {
                    self.registered.instances.remove(&key);
                    self.refused.remove(&format!("{key:?}"));
                }
                Err(e) => return self.failed(e),
            }
        }
        for (key, instance) in &wanted.instances {
            if self.registered.instances.get(key) == Some(instance) {
                continue;
            }
            match self.member.register(lease.id, instance).await {
                Ok(()) => {
                    self.refused.remove(&format!("{key:?}"));
                }
                Err(e @ Error::Registry { .. }) if !e.is_unknown_lease() => {
                    // Refused for good (a cap, a rule): retrying cannot help until the
                    // record changes.
                    tracing::error!(registry = %url, error = %e, "registration refused");
                    self.refused.insert(format!("{key:?}"), e);
                }
                Err(e) => return self.failed(e),
            }
            self.registered
                .instances
                .insert(key.clone(), instance.clone());
        }
        for consumer in &wanted.consumers {
            if self.registered.consumers.contains(consumer) {
                continue;
            }
            match self
                .member
                .register_consumer(lease.id, &consumer.info())
                .await
            {
                Ok(()) => {}
                Err(e @ Error::Registry { .. }) if !e.is_unknown_lease() => {
                    tracing::error!(registry = %url, error = %e, "consumer announcement refused");
                    self.refused.insert(format!("{consumer:?}"), e);
                }
                Err(e) => return self.failed(e),
            }
            self.registered.consumers.insert(consumer.clone());
        }
        *self.status.refused.lock().expect("refusals lock") =
            self.refused.values().cloned().collect();
        // Records changed while we registered? The `changed` channel wakes us again.
        let now_wanted = self.shared.records.lock().expect("records lock").clone();
        self.status
            .synced
            .store(now_wanted == self.registered, Ordering::Release);
        Step::Done
    }

    /// The calls since the last report, when the publisher has metrics to report.
    fn load_report(&mut self) -> Option<LoadReport> {
        let metrics = self.shared.metrics.as_ref()?;
        let now = Instant::now();
        let current = server_side(metrics);
        let (then, earlier) = self
            .last_load
            .replace((now, current.clone()))
            .unwrap_or((now, Vec::new()));
        let mut report = LoadReport::new(now.duration_since(then).as_millis() as u64);
        for method in &current {
            let window = match earlier
                .iter()
                .find(|e| e.service == method.service && e.method == method.method)
            {
                Some(earlier) => method.since(earlier),
                None => method.clone(),
            };
            if window.calls == 0 && window.in_flight == 0 {
                continue;
            }
            let mut load =
                MethodLoad::new(window.service, window.method, window.calls, window.errors);
            load.mean_us = window.mean.as_micros() as u64;
            load.p50_us = window.p50.as_micros() as u64;
            load.p99_us = window.p99.as_micros() as u64;
            load.in_flight = window.in_flight;
            report.methods.push(load);
        }
        Some(report)
    }

    fn failed(&mut self, e: Error) -> Step {
        self.status.synced.store(false, Ordering::Release);
        if e.is_unknown_lease() {
            tracing::warn!(registry = %self.member.url(), "lease unknown to the registry (expired or restarted): registering again");
            self.lease = None;
            *self.status.lease.lock().expect("lease lock") = None;
            self.registered = Records::default();
            Step::LeaseLost
        } else {
            tracing::debug!(registry = %self.member.url(), error = %e, "registry operation failed; retrying");
            Step::Unreachable
        }
    }

    fn interval(&self, lease: &Lease) -> Duration {
        self.shared
            .heartbeat_interval
            .unwrap_or(Duration::from_millis(lease.heartbeat_ms))
            .max(Duration::from_millis(10))
    }

    /// Revokes the lease on the way out, giving an unreachable registry a second.
    async fn depart(&mut self) {
        self.status.synced.store(false, Ordering::Release);
        *self.status.lease.lock().expect("lease lock") = None;
        if let Some(lease) = self.lease.take() {
            match tokio::time::timeout(Duration::from_secs(1), self.member.revoke(lease.id)).await {
                Ok(Ok(())) => {
                    tracing::info!(registry = %self.member.url(), lease = %lease.id, "deregistered")
                }
                Ok(Err(e)) => {
                    tracing::warn!(registry = %self.member.url(), error = %e, "deregistration failed")
                }
                Err(_) => tracing::warn!(registry = %self.member.url(), "deregistration timed out"),
            }
        }
    }
}

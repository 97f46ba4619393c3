//! [`Consumer`]: the consumer side. It looks a service up in every registry, long-polls
//! each for changes, merges what they report and feeds the client's balancer
//! (weights, warm-up start times, removals), and keeps calling the last known
//! providers whenever the registries are unreachable or report an empty list that no
//! graceful departure explains.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_core::lb::Provider;
use rpc_core::{Client, ClientBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{snapshot, Backend, Error, Publisher, Registries};
use crate::api::{unix_millis_now, ConsumerInfo, Instance, Revision, ServiceView};
use crate::validate;

/// Builds a [`Consumer`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    /// Where to look.
    registries: Registries,
    /// Settings of the client calls go through (balancer, timeouts, pool).
    client: ClientBuilder,
    /// Only providers of this group.
    group: String,
    /// Only providers of this version.
    version: String,
    /// Where to keep the snapshot, if anywhere.
    snapshot: Option<PathBuf>,
    /// Name announced to the registries.
    client_name: String,
    /// Whether to announce this consumer to the registries.
    announce: bool,
    /// Announce under this publisher's leases instead of taking our own.
    publisher: Option<Publisher>,
    /// Longest wait of one long poll.
    watch_wait: Duration,
    /// Wait between attempts while a registry is unreachable.
    retry_interval: Duration,
    /// How long the first lookup may take per registry before the snapshot is used.
    lookup_timeout: Duration,
    /// How long a restarted registry's earlier list still counts.
    restart_settle: Duration,
}

impl ConsumerBuilder {
    /// Uses these client settings (balancer, timeouts, connections per provider).
    /// Default: `Client::builder()` (round-robin, 5 s timeout).
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// use rpc_core::lb::Strategy;
    /// let b = rpc_registry::Consumer::builder(r)
    ///     .client(rpc_core::Client::builder().balancer(Strategy::LeastConnection));
    /// ```
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }

    /// Calls only providers of this group. Default: the empty group.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r).group("canary");
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Calls only providers of this version. Default: the empty version.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r).version("2.0");
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Keeps the last provider list in this JSON file, and starts from it when no
    /// registry answers at start. Default: no file.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r).snapshot_file("/var/cache/inventory.json");
    /// ```
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// The name this consumer announces to the registries. Default: `rpc-consumer`.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r).client_name("checkout");
    /// ```
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Whether to announce this consumer to the registries (so operators see who calls
    /// what). Default: `true`.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r).announce(false);
    /// ```
    pub fn announce(mut self, announce: bool) -> Self {
        self.announce = announce;
        self
    }

    /// Announces under an existing publisher's leases (a process that both provides
    /// and consumes keeps one heartbeat). Default: the consumer takes its own lease.
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let publisher = rpc_registry::Publisher::builder(r.clone()).start();
    /// let b = rpc_registry::Consumer::builder(r).publisher(publisher);
    /// # }
    /// ```
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Longest wait of one long poll (the registry caps it too). Default: 30 s.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r).watch_wait(std::time::Duration::from_secs(10));
    /// ```
    pub fn watch_wait(mut self, wait: Duration) -> Self {
        self.watch_wait = wait;
        self
    }

    /// Retries an unreachable registry this often. Default: 500 ms.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r)
    ///     .retry_interval(std::time::Duration::from_millis(200));
    /// ```
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How long the first lookup may take per registry before the consumer starts from
    /// its snapshot (or empty). Default: 2 s.
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r)
    ///     .lookup_timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// After a registry restarts (its state is soft: it comes back empty and providers
    /// register again within a heartbeat or two), keep the providers it listed before
    /// for this long, merged with those already back, so the list does not shrink to
    /// the first provider back. Default: 5 s (two default heartbeats and a margin).
    ///
    /// ```
    /// # let r = rpc_registry::connect("127.0.0.1:7000").unwrap();
    /// let b = rpc_registry::Consumer::builder(r)
    ///     .restart_settle(std::time::Duration::from_secs(3));
    /// ```
    pub fn restart_settle(mut self, settle: Duration) -> Self {
        self.restart_settle = settle;
        self
    }

    /// Looks `service` up, builds the client over its providers and subscribes to
    /// changes. When no registry answers, starts from the snapshot file (if set and
    /// readable) or with no providers (calls fail with `NoProvider` until a registry
    /// reports some); the subscriptions keep trying in the background.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an invalid service name.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(self, service: &str) -> Result<Consumer, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let members: Vec<Arc<dyn Backend>> = self.registries.members().to_vec();
        let lookups = members.iter().map(|member| async move {
            match tokio::time::timeout(self.lookup_timeout, member.lookup(service)).await {
                Ok(Ok(view)) => Some(view),
                Ok(Err(e)) => {
                    tracing::warn!(registry = %member.url(), error = %e, "lookup failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(registry = %member.url(), "lookup timed out");
                    None
                }
            }
        });
        let views: Vec<MemberView> = futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .map(|view| MemberView {
                reachable: view.is_some(),
                view,
                before_restart: None,
            })
            .collect();
        let reached = views.iter().any(|v| v.reachable);
        let saved = || match &self.snapshot {
            Some(path) => match snapshot::load(path, service) {
                Ok(list) => list,
                Err(e) => {
                    tracing::warn!(error = %e, "no usable snapshot");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        // Whether the initial list is what the registries said (and may be saved).
        let mut from_registries = reached;
        let initial = if reached {
            let (merged, departed) = merge(&views, &self.group, &self.version);
            if merged.is_empty() {
                // An empty answer (a registry that just restarted, say) does not wipe
                // out a saved list unless its providers left gracefully.
                let saved = saved();
                match decide(&saved, merged, &departed) {
                    Decision::Refuse => {
                        tracing::warn!(providers = saved.len(), "registries list no provider, none left gracefully: starting from the snapshot");
                        from_registries = false;
                        saved
                    }
                    Decision::Keep | Decision::Apply(_) => Vec::new(),
                }
            } else {
                merged
            }
        } else {
            let saved = saved();
            if !saved.is_empty() {
                tracing::warn!(
                    providers = saved.len(),
                    "no registry reachable: starting from the snapshot"
                );
            }
            saved
        };
        // The one place a registry-fed client is made.
        let client = self
            .client
            .connect_providers(service, to_providers(&initial))
            .await
            .map_err(|e| Error::Client(Arc::new(e)))?;
        let (applied, _) = watch::channel(Arc::new(initial));
        let state = Arc::new(ConsumerState {
            service: service.to_owned(),
            group: self.group,
            version: self.version,
            client: client.clone(),
            views: Mutex::new(views),
            applied,
            snapshot: self.snapshot,
            restart_settle: self.restart_settle,
        });
        if from_registries {
            state.save_snapshot(&state.applied.borrow());
        }
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        for (index, member) in members.into_iter().enumerate() {
            let watcher = Watcher {
                index,
                member,
                state: Arc::clone(&state),
                wait: self.watch_wait,
                retry_interval: self.retry_interval,
            };
            tasks.spawn(watcher.run(cancel.clone()));
        }
        tasks.close();
        let (publisher, own_publisher) = match (self.announce, self.publisher) {
            (false, _) => (None, false),
            (true, Some(publisher)) => (Some(publisher), false),
            (true, None) => (
                Some(
                    Publisher::builder(self.registries.clone())
                        .owner(self.client_name.clone())
                        .deregister_delay(Duration::ZERO)
                        .retry_interval(self.retry_interval)
                        .start(),
                ),
                true,
            ),
        };
        if let Some(publisher) = &publisher {
            publisher.announce_consumer(ConsumerInfo::new(service, self.client_name))?;
        }
        Ok(Consumer {
            client,
            state,
            cancel,
            tasks,
            publisher: publisher.filter(|_| own_publisher),
        })
    }
}

/// A client for one service whose providers come from the registries, live.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use rpc_core::lb::Strategy;
/// let registries = rpc_registry::connect("rpc://127.0.0.1:7000")?;
/// let consumer = rpc_registry::Consumer::builder(registries)
///     .client(rpc_core::Client::builder().balancer(Strategy::WeightedRoundRobin))
///     .snapshot_file("inventory.providers.json")
///     .client_name("checkout")
///     .connect("example.Inventory")
///     .await?;
/// let client = consumer.client(); // hand it to the generated stub: XxxClient::new(client)
/// # Ok(()) }
/// ```
///
/// Dropping it stops the subscriptions (the client keeps its last providers).
#[derive(Debug)]
pub struct Consumer {
    /// The balanced client the subscriptions feed.
    client: Client,
    /// Shared with the watchers.
    state: Arc<ConsumerState>,
    /// Stops the watchers.
    cancel: CancellationToken,
    /// The watchers.
    tasks: TaskTracker,
    /// The publisher announcing this consumer, when it is ours to stop.
    publisher: Option<Publisher>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Consumer {
    /// A builder looking services up in `registries`.
    pub fn builder(registries: Registries) -> ConsumerBuilder {
        ConsumerBuilder {
            registries,
            client: Client::builder(),
            group: String::new(),
            version: String::new(),
            snapshot: None,
            client_name: "rpc-consumer".into(),
            announce: true,
            publisher: None,
            watch_wait: Duration::from_secs(30),
            retry_interval: Duration::from_millis(500),
            lookup_timeout: Duration::from_secs(2),
            restart_settle: Duration::from_secs(5),
        }
    }

    /// The client over the discovered providers (cheap to clone).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.state.service
    }

    /// The providers the client is calling now.
    pub fn providers(&self) -> Arc<Vec<Instance>> {
        Arc::clone(&self.state.applied.borrow())
    }

    /// The provider-set changes as they are applied to the client: the current list
    /// now, then every new one (weights, joins, removals), so other code (a second
    /// client, a dashboard) can follow the same discovery without knowing which
    /// registry fed it.
    ///
    /// ```no_run
    /// # async fn run(consumer: rpc_registry::Consumer) {
    /// let mut changes = consumer.changes();
    /// while changes.changed().await.is_ok() {
    ///     println!("{} providers", changes.borrow_and_update().len());
    /// }
    /// # }
    /// ```
    pub fn changes(&self) -> watch::Receiver<Arc<Vec<Instance>>> {
        self.state.applied.subscribe()
    }

    /// Waits until the provider list satisfies `ready`, at most `limit`; returns
    /// whether it did.
    pub async fn wait_for(&self, limit: Duration, ready: impl Fn(&[Instance]) -> bool) -> bool {
        let mut applied = self.state.applied.subscribe();
        tokio::time::timeout(limit, applied.wait_for(|list| ready(list)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the subscriptions and withdraws the consumer's announcement. The client
    /// keeps working over its last providers.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
        if let Some(publisher) = &self.publisher {
            publisher.shutdown().await;
        }
    }
}

/// What one registry last reported.
#[derive(Debug, Clone)]
struct MemberView {
    /// Its last view of the service, if it ever answered.
    view: Option<ServiceView>,
    /// Whether its last operation succeeded.
    reachable: bool,
    /// Right after the registry restarted (a new epoch), its view from before and
    /// until when it still counts: providers register again one by one over a
    /// heartbeat, and a list cut to the first one back would overload it.
    before_restart: Option<(ServiceView, Instant)>,
}

/// Shared by a consumer's watchers.
#[derive(Debug)]
struct ConsumerState {
    service: String,
    group: String,
    version: String,
    /// The client to feed.
    client: Client,
    /// Per registry, what it reported.
    views: Mutex<Vec<MemberView>>,
    /// The list the client is calling; also wakes `wait_for`.
    applied: watch::Sender<Arc<Vec<Instance>>>,
    /// Snapshot file.
    snapshot: Option<PathBuf>,
    /// How long a restarted registry's earlier list still counts.
    restart_settle: Duration,
}

impl ConsumerState {
    /// Records what registry `index` said (or that it failed), and applies the merged
    /// list if it should be.
    ///
    /// Returns until when the registry's view from before a restart still counts, so
    /// the watcher polls again then.
    fn record(&self, index: usize, view: Option<ServiceView>) -> Option<Instant> {
        let mut views = self.views.lock().expect("views lock");
        let now = Instant::now();
        let member = &mut views[index];
        member.reachable = view.is_some();
        if let Some(view) = view {
            if let Some(old) = member.view.take() {
                if old.revision.epoch != view.revision.epoch {
                    tracing::info!(service = %self.service, "registry restarted: keeping its earlier providers while they register again");
                    member.before_restart = Some((old, now + self.restart_settle));
                }
            }
            member.view = Some(view);
        }
        if member
            .before_restart
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            member.before_restart = None;
        }
        let settle = member.before_restart.as_ref().map(|(_, until)| *until);
        let (merged, departed) = merge(&views, &self.group, &self.version);
        let current = Arc::clone(&self.applied.borrow());
        match decide(&current, merged, &departed) {
            Decision::Keep => {}
            Decision::Refuse => {
                tracing::warn!(
                    service = %self.service,
                    providers = current.len(),
                    "registries report no provider, but they did not deregister: keeping the last list"
                );
            }
            Decision::Apply(list) => {
                tracing::info!(service = %self.service, providers = list.len(), "provider list updated");
                self.client.update_providers(to_providers(&list));
                self.save_snapshot(&list);
                self.applied.send_replace(Arc::new(list));
            }
        }
        settle
    }

    fn save_snapshot(&self, list: &[Instance]) {
        if let Some(path) = &self.snapshot {
            if let Err(e) = snapshot::save(path, &self.service, list) {
                tracing::warn!(error = %e, "snapshot not saved");
            }
        }
    }
}

/// The union of the reachable registries' lists (all registries' last lists when none
/// is reachable, and a restarted registry's list from before its restart while its
/// providers register again), filtered to the group and version, one instance per
/// address; and the addresses those registries saw deregister gracefully.
fn merge(views: &[MemberView], group: &str, version: &str) -> (Vec<Instance>, HashSet<String>) {
    let any_reachable = views.iter().any(|v| v.reachable);
    let mut seen = HashSet::new();
    let mut merged = Vec::new();
    let mut departed = HashSet::new();
    for member in views.iter().filter(|v| v.reachable || !any_reachable) {
        let Some(view) = &member.view else { continue };
        departed.extend(view.departed.iter().cloned());
        let earlier = member
            .before_restart
            .iter()
            .flat_map(|(old, _)| old.instances.iter())
            // Gone gracefully since the restart: not kept.
            .filter(|i| !view.departed.contains(&i.addr));
        for instance in view.instances.iter().chain(earlier) {
            if instance.group == group
                && instance.version == version
                && seen.insert(instance.addr.clone())
            {
                merged.push(instance.clone());
            }
        }
    }
    merged.sort_by(|a, b| a.addr.cmp(&b.addr));
    (merged, departed)
}

/// What to do with a merged list.
#[derive(Debug, PartialEq)]
enum Decision {
    /// It is what the client has.
    Keep,
    /// It would empty the list without a graceful departure: keep the last list.
    Refuse,
    /// Feed it to the client.
    Apply(Vec<Instance>),
}

fn decide(current: &[Instance], merged: Vec<Instance>, departed: &HashSet<String>) -> Decision {
    if merged.as_slice() == current {
        return Decision::Keep;
    }
    if merged.is_empty() && !current.iter().all(|i| departed.contains(&i.addr)) {
        return Decision::Refuse;
    }
    Decision::Apply(merged)
}

/// The balancer's view of instances: weights and warm-up start times.
fn to_providers(instances: &[Instance]) -> Vec<Provider> {
    let now_ms = unix_millis_now();
    let now = std::time::Instant::now();
    instances
        .iter()
        .filter_map(|instance| {
            let addr: SocketAddr = match instance.addr.parse() {
                Ok(addr) => addr,
                Err(_) => {
                    tracing::warn!(addr = %instance.addr, "skipping a provider with an invalid address");
                    return None;
                }
            };
            let mut provider = Provider::new(addr).weight(instance.weight);
            if instance.started_at_ms > 0 && instance.started_at_ms <= now_ms {
                let age = Duration::from_millis(now_ms - instance.started_at_ms);
                if let Some(started) = now.checked_sub(age) {
                    provider = provider.started_at(started);
                }
            }
            Some(provider)
        })
        .collect()
}

/// Poll again this long after a restarted registry's earlier list stops counting, so
/// the list is recomputed without it.
const SETTLE_SLACK: Duration = Duration::from_millis(10);

/// Long-polls one registry for one service.
#[derive(Debug)]
struct Watcher {
    index: usize,
    member: Arc<dyn Backend>,
    state: Arc<ConsumerState>,
    wait: Duration,
    retry_interval: Duration,
}

impl Watcher {
    async fn run(self, cancel: CancellationToken) {
        let mut since = self.state.views.lock().expect("views lock")[self.index]
            .view
            .as_ref()
            .map_or(Revision::default(), |v| v.revision);
        let mut reachable = true;
        let mut settle: Option<Instant> = None;
        loop {
            let wait = match settle {
                Some(until) => self
                    .wait
                    .min(until.saturating_duration_since(Instant::now()) + SETTLE_SLACK),
                None => self.wait,
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                result = self.member.watch(&self.state.service, since, wait) => result,
            };
            match result {
                Ok(view) => {
                    if !reachable {
                        tracing::info!(registry = %self.member.url(), "registry reachable again");
                        reachable = true;
                    }
                    since = view.revision;
                    settle = self.state.record(self.index, Some(view));
                }
                Err(e) => {
                    if reachable {
                        tracing::warn!(registry = %self.member.url(), error = %e, "watch failed; keeping the last providers");
                        reachable = false;
                    }
                    settle = self.state.record(self.index, None);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.retry_interval) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(addrs: &[&str], departed: &[&str]) -> MemberView {
        MemberView {
            before_restart: None,
            reachable: true,
            view: Some(ServiceView {
                service: "s".into(),
                revision: Revision::new(1, 1),
                instances: addrs.iter().map(|a| Instance::new("s", *a)).collect(),
                departed: departed.iter().map(|a| a.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn merges_reachable_registries() {
        let mut b = view(&["127.0.0.1:3"], &[]);
        let (merged, _) = merge(
            &[
                view(&["127.0.0.1:1", "127.0.0.1:2"], &[]),
                view(&["127.0.0.1:2"], &[]),
            ],
            "",
            "",
        );
        assert_eq!(merged.len(), 2);
        b.reachable = false;
        let (merged, _) = merge(&[view(&["127.0.0.1:1"], &[]), b.clone()], "", "");
        assert_eq!(
            merged.len(),
            1,
            "an unreachable registry's stale list is ignored"
        );
        let mut a = view(&["127.0.0.1:1"], &[]);
        a.reachable = false;
        let (merged, _) = merge(&[a, b], "", "");
        assert_eq!(merged.len(), 2, "with none reachable, the last lists hold");
    }

    #[test]
    fn refuses_to_empty_unless_graceful() {
        let current = vec![Instance::new("s", "127.0.0.1:1")];
        assert_eq!(
            decide(&current, Vec::new(), &HashSet::new()),
            Decision::Refuse
        );
        let departed: HashSet<String> = ["127.0.0.1:1".to_owned()].into();
        assert_eq!(
            decide(&current, Vec::new(), &departed),
            Decision::Apply(Vec::new())
        );
        assert_eq!(decide(&current, current.clone(), &departed), Decision::Keep);
    }
}

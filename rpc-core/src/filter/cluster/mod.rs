//! Cluster fault tolerance: what a call does when its provider fails or is slow —
//! failover, failfast, failsafe, forking and hedged requests — per client, service or
//! method, with a retry budget shared by the client's calls.
//!
//! Add a [`ClusterLayer`] to a client with [`ClientBuilder::layer`](crate::ClientBuilder::layer):
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_core::filter::cluster::{ClusterLayer, Policy, RetryBudget};
//! # async fn run(providers: Vec<rpc_core::lb::Provider>) -> Result<(), rpc_core::RpcError> {
//! let cluster = ClusterLayer::builder()
//!     // Reads are safe to run twice: mark them, and retry them elsewhere.
//!     .idempotent("shop.Catalog", "get")
//!     .idempotent("shop.Catalog", "search")
//!     .service("shop.Catalog", Policy::failover(2).attempt_timeout(Duration::from_millis(300)))
//!     // Search's tail latency matters most: a backup copy after its p95.
//!     .method("shop.Catalog", "search", Policy::hedged())
//!     // Page views may be lost, never fail a page.
//!     .method("shop.Catalog", "viewed", Policy::failsafe())
//!     .budget(RetryBudget::builder().ratio(0.1))
//!     .build()?;
//! let client = rpc_core::Client::builder()
//!     .layer(cluster)
//!     .connect_providers("shop.Catalog", providers)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Settings and defaults
//!
//! - The policy of a call is its method's ([`ClusterBuilder::method`]), else its
//!   service's ([`ClusterBuilder::service`]), else the client's
//!   ([`ClusterBuilder::policy`], default [`Policy::failfast`]). See [`Policy`] for
//!   each policy and its settings.
//! - A method is idempotent only when marked ([`ClusterBuilder::idempotent`], or
//!   [`ClusterBuilder::idempotent_methods`] with a stub's `IDEMPOTENT_METHODS`: the
//!   methods its trait declares `#[idempotent]`): failover retries a method that is
//!   not only when its request certainly never reached a server, and forking and
//!   hedging send it once.
//! - The [`RetryBudget`] (default: 20 % of calls plus 10 per second, over 10 s) pays
//!   for every retry and hedged copy of the client's calls; when it is spent, a
//!   failed call fails (with a `tracing` debug line) instead of retrying.
//! - Oneway calls are sent once.
//!
//! # Where attempts go
//!
//! A retry avoids the providers the call already failed on
//! ([`ClientRequest::avoid_provider`]); forked copies and a hedged copy are pinned to
//! different providers picked by the client's balancer
//! ([`ClientRequest::pin_provider`]). Put a [`breaker`](crate::filter::breaker)
//! layer after this one (inside it) so it sees every attempt, and a
//! [`fallback`](crate::filter::fallback) layer before it (outside) so it sees what is
//! left after the retries.
//!
//! # Errors
//!
//! [`ClusterBuilder::build`] refuses, with [`RpcError::InvalidConfig`]: a failover
//! policy with retries (not limited to [`Policy::unsent_only`]), a forking or a hedged
//! policy where no method is marked idempotent; more than 16 retries; forking to 0
//! or more than 16 providers; a zero attempt timeout; a hedging quantile outside
//! `(0, 1)`, a zero hedging delay or window; a failsafe value that cannot be encoded;
//! an empty service or method name.

mod budget;
mod latency;
mod policy;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tower::ServiceExt as _;

pub use budget::{BudgetStats, RetryBudget, RetryBudgetBuilder};
use latency::LatencyHistogram;
pub use policy::Policy;
use policy::{Hedge, Mode};

use super::{
    is_provider_failure, provider_of, rpc_error_of, BoxError, ClientRequest, ClientResponse,
};
use crate::error::RpcError;
use crate::protocol::Status;

/// Builds a [`ClusterLayer`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    /// The policy of calls no service or method rule covers.
    default: Policy,
    /// Policies per service.
    services: Vec<(String, Policy)>,
    /// Policies per method: (service, method, policy).
    methods: Vec<(String, String, Policy)>,
    /// Methods marked idempotent: (service, method).
    idempotent: Vec<(String, String)>,
    /// The budget's settings, unless one is shared.
    budget: RetryBudgetBuilder,
    /// A budget shared with other layers (other clients).
    shared_budget: Option<Arc<RetryBudget>>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            default: Policy::failfast(),
            services: Vec::new(),
            methods: Vec::new(),
            idempotent: Vec::new(),
            budget: RetryBudgetBuilder::default(),
            shared_budget: None,
        }
    }
}

impl ClusterBuilder {
    /// Sets the policy of calls that no service or method rule covers. Default:
    /// [`Policy::failfast`].
    ///
    /// ```
    /// use rpc_core::filter::cluster::{ClusterLayer, Policy};
    /// let b = ClusterLayer::builder().policy(Policy::failover(1).unsent_only());
    /// ```
    pub fn policy(mut self, policy: Policy) -> Self {
        self.default = policy;
        self
    }

    /// Sets the policy of `service`'s calls (its methods' own rules win).
    ///
    /// ```
    /// use rpc_core::filter::cluster::{ClusterLayer, Policy};
    /// let b = ClusterLayer::builder().service("shop.Audit", Policy::failsafe());
    /// ```
    pub fn service(mut self, service: impl Into<String>, policy: Policy) -> Self {
        self.services.push((service.into(), policy));
        self
    }

    /// Sets the policy of `service.method`'s calls.
    ///
    /// ```
    /// use rpc_core::filter::cluster::{ClusterLayer, Policy};
    /// let b = ClusterLayer::builder()
    ///     .idempotent("shop.Catalog", "get")
    ///     .method("shop.Catalog", "get", Policy::forking(2));
    /// ```
    pub fn method(
        mut self,
        service: impl Into<String>,
        method: impl Into<String>,
        policy: Policy,
    ) -> Self {
        self.methods.push((service.into(), method.into(), policy));
        self
    }

    /// Marks `service.method` idempotent: running it twice does no harm, so failover
    /// may retry it after any provider failure, and forking and hedging may send it
    /// more than once.
    ///
    /// ```
    /// let b = rpc_core::filter::cluster::ClusterLayer::builder().idempotent("shop.Catalog", "get");
    /// ```
    pub fn idempotent(mut self, service: impl Into<String>, method: impl Into<String>) -> Self {
        self.idempotent.push((service.into(), method.into()));
        self
    }

    /// Marks each of `methods` of `service` idempotent, as
    /// [`idempotent`](Self::idempotent) does: for the methods a service declares
    /// `#[idempotent]`, which its generated stub lists.
    ///
    /// ```
    /// use rpc_core::filter::cluster::{ClusterLayer, Policy};
    ///
    /// #[rpc_core::service(name = "shop.Catalog")]
    /// trait Catalog {
    ///     #[idempotent]
    ///     async fn get(&self, id: u64) -> String;
    ///     async fn add(&self, name: String) -> u64;
    /// }
    ///
    /// assert_eq!(CatalogClient::IDEMPOTENT_METHODS, ["get"]);
    /// let cluster = ClusterLayer::builder()
    ///     .idempotent_methods(CatalogClient::SERVICE_NAME, CatalogClient::IDEMPOTENT_METHODS)
    ///     .service("shop.Catalog", Policy::failover(2))
    ///     .build()?;
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn idempotent_methods(mut self, service: &str, methods: &[&str]) -> Self {
        self.idempotent.extend(
            methods
                .iter()
                .map(|m| (service.to_owned(), (*m).to_owned())),
        );
        self
    }

    /// Sets the retry budget of this layer's calls (default: see [`RetryBudget`]).
    ///
    /// ```
    /// use rpc_core::filter::cluster::{ClusterLayer, RetryBudget};
    /// let b = ClusterLayer::builder().budget(RetryBudget::builder().ratio(0.1).min_per_second(1));
    /// ```
    pub fn budget(mut self, budget: RetryBudgetBuilder) -> Self {
        self.budget = budget;
        self.shared_budget = None;
        self
    }

    /// Uses `budget`, shared with other layers (the clients of one process, say), as
    /// the retry budget.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use rpc_core::filter::cluster::{ClusterLayer, RetryBudget};
    /// let budget = Arc::new(RetryBudget::builder().build()?);
    /// let a = ClusterLayer::builder().shared_budget(Arc::clone(&budget));
    /// let b = ClusterLayer::builder().shared_budget(budget);
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn shared_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.shared_budget = Some(budget);
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a bad setting; see the [module docs](self#errors).
    pub fn build(self) -> Result<ClusterLayer, RpcError> {
        let invalid = |m: String| Err(RpcError::InvalidConfig(m));
        let names = self
            .services
            .iter()
            .map(|(s, _)| (s.as_str(), "x"))
            .chain(
                self.methods
                    .iter()
                    .map(|(s, m, _)| (s.as_str(), m.as_str())),
            )
            .chain(
                self.idempotent
                    .iter()
                    .map(|(s, m)| (s.as_str(), m.as_str())),
            );
        for (service, method) in names {
            if service.is_empty() || method.is_empty() {
                return invalid("cluster rules need a service and a method name".to_owned());
            }
        }
        let is_idempotent = |service: &str, method: &str| {
            self.idempotent
                .iter()
                .any(|(s, m)| s == service && m == method)
        };
        let needs_idempotent = |policy: &Policy, scope: &str| {
            invalid(format!(
                "{scope}: {policy:?} runs calls more than once, but no method it applies to \
                 is marked idempotent (mark them with ClusterBuilder::idempotent, or limit \
                 failover to calls that never reached a server with Policy::unsent_only)"
            ))
        };
        self.default.validate("the cluster's default policy")?;
        if self.default.repeats_calls() && self.idempotent.is_empty() {
            return needs_idempotent(&self.default, "the cluster's default policy");
        }
        for (service, policy) in &self.services {
            let scope = format!("the policy of service {service}");
            policy.validate(&scope)?;
            if policy.repeats_calls() && !self.idempotent.iter().any(|(s, _)| s == service) {
                return needs_idempotent(policy, &scope);
            }
        }
        for (service, method, policy) in &self.methods {
            let scope = format!("the policy of {service}.{method}");
            policy.validate(&scope)?;
            if policy.repeats_calls() && !is_idempotent(service, method) {
                return needs_idempotent(policy, &scope);
            }
        }
        let budget = match self.shared_budget {
            Some(budget) => budget,
            None => Arc::new(self.budget.build()?),
        };

        let mut services: HashMap<String, ServiceRules> = HashMap::new();
        for (service, policy) in &self.services {
            services.entry(service.clone()).or_default().policy = Some(policy.clone());
        }
        // Every method with a rule or a mark gets its plan, resolved now.
        let mut listed: Vec<(&str, &str)> = self
            .methods
            .iter()
            .map(|(s, m, _)| (s.as_str(), m.as_str()))
            .chain(
                self.idempotent
                    .iter()
                    .map(|(s, m)| (s.as_str(), m.as_str())),
            )
            .collect();
        listed.sort_unstable();
        listed.dedup();
        for (service, method) in listed {
            let policy = self
                .methods
                .iter()
                .rev()
                .find(|(s, m, _)| s == service && m == method)
                .map(|(_, _, p)| p.clone())
                .or_else(|| services.get(service).and_then(|r| r.policy.clone()))
                .unwrap_or_else(|| self.default.clone());
            let idempotent = is_idempotent(service, method);
            let latency = match (&policy.mode, idempotent) {
                (Mode::Hedged(hedge), true) => Some(LatencyHistogram::new(hedge.window)),
                _ => None,
            };
            services
                .entry(service.to_owned())
                .or_default()
                .methods
                .insert(
                    method.to_owned(),
                    MethodPlan {
                        policy,
                        idempotent,
                        latency,
                    },
                );
        }
        Ok(ClusterLayer {
            shared: Arc::new(Shared {
                default: MethodPlan {
                    policy: self.default,
                    idempotent: false,
                    latency: None,
                },
                services: services
                    .into_iter()
                    .map(|(name, rules)| {
                        let fallback = rules.policy.map(|policy| MethodPlan {
                            policy,
                            idempotent: false,
                            latency: None,
                        });
                        (
                            name,
                            ServicePlans {
                                default: fallback,
                                methods: rules.methods.into_iter().collect(),
                            },
                        )
                    })
                    .collect(),
                budget,
                counters: Counters::default(),
            }),
        })
    }
}

/// A service's rules while building.
#[derive(Debug, Default)]
struct ServiceRules {
    /// The service's policy.
    policy: Option<Policy>,
    /// Its methods' plans.
    methods: HashMap<String, MethodPlan>,
}

/// What the layer does with one method's calls, resolved when it is built.
#[derive(Debug)]
struct MethodPlan {
    /// The policy.
    policy: Policy,
    /// Whether the method is marked idempotent.
    idempotent: bool,
    /// Recent latencies, for a hedged idempotent method.
    latency: Option<LatencyHistogram>,
}

/// One service's plans.
#[derive(Debug)]
struct ServicePlans {
    /// For its methods without a plan of their own (none: the client's default).
    default: Option<MethodPlan>,
    /// Per method.
    methods: ByName<MethodPlan>,
}

/// FNV-1a: the plans are looked up by service and method name on every call, and
/// these keys are short names from the configuration, where SipHash's resistance to
/// chosen keys buys nothing and costs a third of the lookup.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map by name with [`Fnv`].
type ByName<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

/// What every clone of the layer and its services shares.
#[derive(Debug)]
struct Shared {
    /// The client's plan.
    default: MethodPlan,
    /// Per service.
    services: ByName<ServicePlans>,
    /// Pays for retries and hedges.
    budget: Arc<RetryBudget>,
    /// What happened, for operators.
    counters: Counters,
}

/// Counts of what the layer did.
#[derive(Debug, Default)]
struct Counters {
    /// Calls.
    calls: AtomicU64,
    /// Failover retries sent.
    retries: AtomicU64,
    /// Hedged copies sent.
    hedges: AtomicU64,
    /// Forked copies sent beyond the first.
    forks: AtomicU64,
    /// Errors turned into failsafe defaults.
    defaults: AtomicU64,
}

/// What a [`ClusterLayer`] has done since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Calls through the layer.
    pub calls: u64,
    /// Failover retries sent.
    pub retries: u64,
    /// Hedged copies sent.
    pub hedges: u64,
    /// Forked copies sent beyond the first of each call.
    pub forks: u64,
    /// Errors a failsafe policy turned into its default.
    pub failsafe_defaults: u64,
    /// The retry budget's counts.
    pub budget: BudgetStats,
}

/// The cluster fault-tolerance layer; see the [module docs](self). Clones share their
/// budget and counters.
#[derive(Clone)]
pub struct ClusterLayer {
    /// The plans, budget and counters.
    shared: Arc<Shared>,
}

impl fmt::Debug for ClusterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLayer")
            .field("default", &self.shared.default.policy)
            .field("services", &self.shared.services.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ClusterLayer {
    /// A builder with the defaults.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// What the layer has done so far (shared by its clones and the services made
    /// from it).
    pub fn stats(&self) -> ClusterStats {
        let c = &self.shared.counters;
        ClusterStats {
            calls: c.calls.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            hedges: c.hedges.load(Ordering::Relaxed),
            forks: c.forks.load(Ordering::Relaxed),
            failsafe_defaults: c.defaults.load(Ordering::Relaxed),
            budget: self.shared.budget.stats(),
        }
    }

    /// The retry budget.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }
}

impl<S> tower::Layer<S> for ClusterLayer {
    type Service = ClusterService<S>;

    fn layer(&self, inner: S) -> ClusterService<S> {
        ClusterService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of a [`ClusterLayer`]. Always ready: it waits for its inner service's
/// readiness before each attempt, on a clone.
#[derive(Clone)]
pub struct ClusterService<S> {
    /// The rest of the chain.
    inner: S,
    /// The layer's plans, budget and counters.
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for ClusterService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterService").finish_non_exhaustive()
    }
}

impl<S> tower::Service<ClientRequest> for ClusterService<S>
where
    S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = ClientResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ClientRequest) -> Self::Future {
        let inner = self.inner.clone();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.run(inner, request).await })
    }
}

/// Sends one attempt through `inner`, once it is ready.
async fn send<S>(inner: &mut S, request: ClientRequest) -> Result<ClientResponse, BoxError>
where
    S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
{
    inner.ready().await?.call(request).await
}

/// Starts one attempt through `inner` (once it is ready), as a future of its own
/// tagged with `index` and the time it was sent, so several can run at once.
async fn start<S>(
    inner: &mut S,
    request: ClientRequest,
    index: usize,
) -> Result<Pin<Box<dyn Future<Output = Outcome> + Send>>, BoxError>
where
    S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    let future = inner.ready().await?.call(request);
    let sent = Instant::now();
    Ok(Box::pin(async move { (index, sent, future.await) }))
}

/// An attempt's index, when it was sent, and how it went.
type Outcome = (usize, Instant, Result<ClientResponse, BoxError>);

impl Shared {
    /// The plan of `service.method`.
    fn plan(&self, service: &str, method: &str) -> &MethodPlan {
        match self.services.get(service) {
            Some(plans) => plans
                .methods
                .get(method)
                .or(plans.default.as_ref())
                .unwrap_or(&self.default),
            None => &self.default,
        }
    }

    /// Runs one call by its plan.
    async fn run<S>(
        self: Arc<Self>,
        mut inner: S,
        mut request: ClientRequest,
    ) -> Result<ClientResponse, BoxError>
    where
        S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let started = self.budget.deposit_now();
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let plan = self.plan(request.service(), request.method());
        let total = request.timeout();
        let attempt_timeout =
            |left: Duration| plan.policy.attempt_timeout.map_or(left, |t| t.min(left));
        if request.is_oneway() {
            return send(&mut inner, request).await;
        }
        match &plan.policy.mode {
            Mode::Failover {
                retries,
                unsent_only,
            } => {
                let mut retried = 0;
                loop {
                    // The first attempt has all of it (and reads no clock).
                    let left = if retried == 0 {
                        total
                    } else {
                        total.saturating_sub(started.elapsed())
                    };
                    request.set_timeout(attempt_timeout(left));
                    let error = match send(&mut inner, request.clone()).await {
                        Ok(response) => return Ok(response),
                        Err(error) => error,
                    };
                    let idempotent = plan.idempotent && !unsent_only;
                    if retried >= *retries
                        || !may_retry(&error, idempotent)
                        || total.saturating_sub(started.elapsed()).is_zero()
                    {
                        return Err(error);
                    }
                    if !self.budget.try_withdraw() {
                        tracing::debug!(
                            service = request.service(),
                            method = request.method(),
                            %error,
                            "retry budget spent: not retrying"
                        );
                        return Err(error);
                    }
                    if let Some(provider) = provider_of(&error) {
                        request.avoid_provider(provider);
                    }
                    retried += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        service = request.service(),
                        method = request.method(),
                        %error,
                        retry = retried,
                        "retrying on another provider"
                    );
                }
            }
            Mode::Failsafe { default } => {
                request.set_timeout(attempt_timeout(total));
                match send(&mut inner, request.clone()).await {
                    Ok(response) => Ok(response),
                    Err(error) => {
                        self.counters.defaults.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            service = request.service(),
                            method = request.method(),
                            %error,
                            "failsafe: the call failed; answering the default"
                        );
                        let body = default.clone().unwrap_or_default();
                        Ok(ClientResponse::new(Status::Ok, body))
                    }
                }
            }
            Mode::Forking { k } if plan.idempotent => {
                request.set_timeout(attempt_timeout(total));
                // Boxed: the rare paths stay out of every call's future.
                Box::pin(self.fork(inner, request, *k)).await
            }
            Mode::Hedged(hedge) if plan.idempotent => {
                request.set_timeout(attempt_timeout(total));
                let latency = plan.latency.as_ref();
                Box::pin(self.hedge(inner, request, *hedge, latency, started)).await
            }
            Mode::Failfast | Mode::Forking { .. } | Mode::Hedged(_) => {
                request.set_timeout(attempt_timeout(total));
                send(&mut inner, request).await
            }
        }
    }

    /// Sends `k` copies of `request` to different providers; the first answer wins.
    async fn fork<S>(
        &self,
        mut inner: S,
        request: ClientRequest,
        k: usize,
    ) -> Result<ClientResponse, BoxError>
    where
        S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
        S::Future: Send + 'static,
    {
        let targets = distinct_providers(&request, k);
        if targets.len() <= 1 {
            return send(&mut inner, request).await;
        }
        let mut running = FuturesUnordered::new();
        for (i, &target) in targets.iter().enumerate() {
            let mut copy = request.clone();
            copy.pin_provider(Some(target));
            let attempt = start(&mut inner, copy, i).await?;
            running.push(attempt);
        }
        self.counters
            .forks
            .fetch_add(targets.len() as u64 - 1, Ordering::Relaxed);
        let mut last_error = None;
        while let Some((_, _, outcome)) = running.next().await {
            match outcome {
                Ok(response) => return Ok(response),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            BoxError::from(RpcError::<crate::NoError>::Internal("no fork ran".into()))
        }))
    }

    /// Sends `request`, and a copy to another provider if it is slower than the
    /// method's recent latencies say (or fails first); the first answer wins.
    async fn hedge<S>(
        &self,
        mut inner: S,
        request: ClientRequest,
        hedge: Hedge,
        latency: Option<&LatencyHistogram>,
        started: Instant,
    ) -> Result<ClientResponse, BoxError>
    where
        S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
        S::Future: Send + 'static,
    {
        let record = |d: Duration| {
            if let Some(latency) = latency {
                latency.record(d);
            }
        };
        let delay = latency
            .and_then(|l| l.quantile(hedge.quantile, hedge.min_samples))
            .map(|q| q.max(hedge.min_delay));
        let targets = distinct_providers(&request, 1);
        let mut first = request.clone();
        first.pin_provider(targets.first().copied());
        let Some(delay) = delay else {
            // Too few samples to know what slow is: no copy.
            let response = send(&mut inner, first).await?;
            record(started.elapsed());
            return Ok(response);
        };
        let attempt = start(&mut inner, first, 0).await?;
        let mut running = FuturesUnordered::new();
        running.push(attempt);
        let timer = tokio::time::sleep(delay.min(request.timeout()));
        tokio::pin!(timer);
        let mut copy_sent = false;
        let mut last_error = None;
        loop {
            let send_copy = tokio::select! {
                outcome = running.next() => match outcome {
                    Some((index, sent, Ok(response))) => {
                        record(sent.elapsed());
                        if index == 1 && running.len() == 1 {
                            // The first is still out, slower than this: at least this
                            // slow (so a p95 is not lowered by the copies it causes).
                            record(started.elapsed());
                        }
                        return Ok(response);
                    }
                    Some((_, _, Err(error))) => {
                        let retry = !copy_sent && may_retry(&error, true);
                        last_error = Some(error);
                        if !retry && running.is_empty() {
                            break;
                        }
                        retry
                    }
                    None => break,
                },
                () = &mut timer, if !copy_sent => true,
            };
            if send_copy && !copy_sent {
                copy_sent = true;
                if !self.budget.try_withdraw() {
                    tracing::debug!(
                        service = request.service(),
                        method = request.method(),
                        "retry budget spent: no hedged copy"
                    );
                    if running.is_empty() {
                        break;
                    }
                    continue;
                }
                let mut copy = request.clone();
                let left = request.timeout().saturating_sub(started.elapsed());
                copy.set_timeout(left.max(Duration::from_millis(1)));
                if let Some(&first) = targets.first() {
                    match distinct_providers_avoiding(&request, &[first]) {
                        Some(other) => copy.pin_provider(Some(other)),
                        // One provider: the copy goes there too.
                        None => copy.avoid_provider(first),
                    }
                }
                self.counters.hedges.fetch_add(1, Ordering::Relaxed);
                let attempt = start(&mut inner, copy, 1).await?;
                running.push(attempt);
            }
        }
        Err(last_error.unwrap_or_else(|| {
            BoxError::from(RpcError::<crate::NoError>::Internal(
                "no attempt ran".into(),
            ))
        }))
    }
}

/// Whether a failed attempt may be retried: a call that certainly did not run (but
/// not for want of any provider), or, for an `idempotent` method, any provider
/// failure.
fn may_retry(error: &BoxError, idempotent: bool) -> bool {
    let Some(error) = rpc_error_of(error) else {
        return false;
    };
    if matches!(error, RpcError::NoProvider { .. }) {
        return false;
    }
    error.is_safe_to_retry() || (idempotent && is_provider_failure(error))
}

/// Up to `k` different providers for copies of `request`, picked by its client's
/// balancer; empty for a single-server client or when none is available.
fn distinct_providers(request: &ClientRequest, k: usize) -> Vec<SocketAddr> {
    let mut chosen = Vec::with_capacity(k);
    while chosen.len() < k {
        match distinct_providers_avoiding(request, &chosen) {
            Some(addr) => chosen.push(addr),
            None => break,
        }
    }
    chosen
}

/// A provider for `request` outside `avoid` (and the request's own avoided ones).
fn distinct_providers_avoiding(
    request: &ClientRequest,
    avoid: &[SocketAddr],
) -> Option<SocketAddr> {
    let balancer = request.balancer()?;
    let mut ctx = rpc_lb::PickContext::new();
    if let Some(key) = request.hash_key() {
        ctx = ctx.hash_key(key);
    }
    let mut excluded: Vec<SocketAddr> = request.avoided().to_vec();
    excluded.extend_from_slice(avoid);
    balancer
        .pick_excluding(&ctx, &excluded)
        .ok()
        .map(|p| p.addr())
}

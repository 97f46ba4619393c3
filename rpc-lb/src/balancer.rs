//! [`LoadBalancer`]: one service's live provider set and its strategy.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::algorithm::{Adaptive, IpHash, LeastConnection, Random, RoundRobin, SmoothWeighted};
use crate::config::Config;
use crate::context::PickContext;
use crate::error::LbError;
use crate::picked::Picked;
use crate::provider::Provider;
use crate::set::Live;
use crate::stats::ProviderStats;
use crate::strategy::Strategy;

/// Picks a provider of one service for each call, over a provider set that
/// changes while it runs.
///
/// It is `Send + Sync`; share it between tasks and threads behind an `Arc`.
/// Picks take no global lock (only smooth weighted round-robin takes a short
/// one) and run concurrently with [`update`](Self::update) and the marking
/// methods.
///
/// A provider takes a call only if discovery lists it healthy, not draining
/// and with a non-zero weight ([`Provider`]), **and** the client has not
/// marked it down or draining here. The two sources are kept apart: an update
/// from discovery does not clear the client's marks, and a client mark does
/// not outlive the provider's presence in the set.
///
/// ```
/// use rpc_lb::{LbError, LoadBalancer, PickContext, Provider, Strategy};
/// use std::time::Duration;
///
/// let lb = LoadBalancer::new("demo.Echo", Strategy::RoundRobin);
/// assert!(matches!(lb.pick(&PickContext::new()), Err(LbError::NoProvider { .. })));
///
/// let a = "10.0.0.1:20880".parse().unwrap();
/// let b = "10.0.0.2:20880".parse().unwrap();
/// lb.update([Provider::new(a), Provider::new(b)]);
///
/// // The client failed to connect to `a`: skip it for a while.
/// lb.mark_unhealthy_for(a, Duration::from_secs(5));
/// for _ in 0..4 {
///     assert_eq!(lb.pick(&PickContext::new())?.addr(), b);
/// }
/// # Ok::<(), LbError>(())
/// ```
///
/// Each provider can carry a value of the owner's, `T` (a client's connections to
/// it, say), handed over with the pick from the same snapshot, so a call finds its
/// provider's connection without a lookup of its own: see
/// [`carrying`](Self::carrying), [`update_carrying`](Self::update_carrying) and
/// [`pick_with`](Self::pick_with). A plain `LoadBalancer` carries `()`.
pub struct LoadBalancer<T = ()> {
    /// Named in [`LbError::NoProvider`] so an operator knows which service
    /// ran dry.
    service: Arc<str>,
    /// Kept to report it; the behaviour lives in `set`.
    strategy: Strategy,
    /// The set, balanced by the strategy's algorithm (behind a vtable only for
    /// the algorithm's own choice among several providers).
    set: Live<T>,
}

impl LoadBalancer {
    /// A balancer for `service` using `strategy` and the default [`Config`],
    /// with no providers yet.
    pub fn new(service: impl Into<String>, strategy: Strategy) -> Self {
        Self::with_config(service, strategy, Config::default())
    }

    /// A balancer for `service` using `strategy` and `config`, with no
    /// providers yet.
    ///
    /// ```
    /// use rpc_lb::{Config, LoadBalancer, Strategy};
    /// use std::time::Duration;
    ///
    /// let config = Config::default().warm_up(Duration::from_secs(30));
    /// let lb = LoadBalancer::with_config("demo.Echo", Strategy::WeightedRandom, config);
    /// assert_eq!(lb.config().warm_up, Duration::from_secs(30));
    /// ```
    pub fn with_config(service: impl Into<String>, strategy: Strategy, config: Config) -> Self {
        Self::carrying(service, strategy, config)
    }

    /// Replaces the provider set: providers join, leave, or change weight,
    /// health or draining as discovery now says.
    ///
    /// A provider whose address was already in the set keeps its run-time
    /// state: calls in flight and latency ([`ProviderStats`]), its
    /// position in the smooth weighted round-robin sequence, and the client's
    /// marks. A provider that leaves loses them, and comes back fresh. If an
    /// address is listed twice, the later entry wins.
    ///
    /// Picks running concurrently finish on the previous set; picks that
    /// start after `update` returns see the new one.
    pub fn update(&self, providers: impl IntoIterator<Item = Provider>) {
        self.update_carrying(providers.into_iter().map(|provider| (provider, ())));
    }
}

impl<T: Send + Sync + 'static> LoadBalancer<T> {
    /// A balancer for `service` using `strategy` and `config`, with no providers
    /// yet, whose providers each carry a `T` (given with
    /// [`update_carrying`](Self::update_carrying), handed out by
    /// [`pick_with`](Self::pick_with)).
    ///
    /// ```
    /// use rpc_lb::{Config, LoadBalancer, PickContext, Provider, Strategy};
    ///
    /// let lb = LoadBalancer::carrying("demo.Echo", Strategy::RoundRobin, Config::default());
    /// let a = "10.0.0.1:20880".parse().unwrap();
    /// lb.update_carrying([(Provider::new(a), "pool of a")]);
    /// let (picked, pool) = lb.pick_with(&PickContext::new(), |pool| *pool)?;
    /// assert_eq!((picked.addr(), pool), (a, "pool of a"));
    /// # Ok::<(), rpc_lb::LbError>(())
    /// ```
    pub fn carrying(service: impl Into<String>, strategy: Strategy, config: Config) -> Self {
        let set = match strategy {
            Strategy::RoundRobin => Live::new(RoundRobin::default(), config),
            Strategy::WeightedRoundRobin => Live::new(SmoothWeighted, config),
            Strategy::LeastConnection => Live::new(LeastConnection::new(false), config),
            Strategy::WeightedLeastConnection => Live::new(LeastConnection::new(true), config),
            Strategy::IpHash => Live::new(IpHash, config),
            Strategy::Random => Live::new(Random::new(false), config),
            Strategy::WeightedRandom => Live::new(Random::new(true), config),
            Strategy::Adaptive => Live::new(Adaptive, config),
        };
        Self {
            service: service.into().into(),
            strategy,
            set,
        }
    }

    /// Picks a provider for one call.
    ///
    /// Keep the returned [`Picked`] until the call ends: it counts the call
    /// as in flight.
    ///
    /// # Errors
    ///
    /// [`LbError::NoProvider`] naming the service when no provider is
    /// available: the set is empty, or every provider has weight 0, is
    /// unhealthy or draining.
    pub fn pick(&self, ctx: &PickContext) -> Result<Picked, LbError> {
        self.set.pick(ctx, &[]).ok_or_else(|| self.no_provider())
    }

    /// Picks a provider for one call, as [`pick`](Self::pick) does, and returns what
    /// `with` makes of the value the provider carries, read from the same provider
    /// set as the pick (a provider that has just left cannot be paired with the
    /// value of another).
    ///
    /// # Errors
    ///
    /// As [`pick`](Self::pick).
    pub fn pick_with<R>(
        &self,
        ctx: &PickContext,
        with: impl FnOnce(&T) -> R,
    ) -> Result<(Picked, R), LbError> {
        self.set
            .pick_with(ctx, with)
            .ok_or_else(|| self.no_provider())
    }

    /// A clone of the value the provider at `addr` carries, if it is in the set.
    pub fn carried(&self, addr: SocketAddr) -> Option<T>
    where
        T: Clone,
    {
        self.set.with_attached(addr, T::clone)
    }

    /// Every provider's address and a clone of the value it carries, in the set's
    /// order.
    pub fn carried_all(&self) -> Vec<(SocketAddr, T)>
    where
        T: Clone,
    {
        let mut all = Vec::new();
        self.set
            .each_attached(|addr, value| all.push((addr, value.clone())));
        all
    }

    /// Replaces the provider set, as [`update`](LoadBalancer::update) does, each
    /// provider with the value it carries from now on (a provider listed twice
    /// carries its later value).
    pub fn update_carrying(&self, providers: impl IntoIterator<Item = (Provider, T)>) {
        self.set.update(providers);
    }

    /// The error for a pick that found no provider.
    #[cold]
    fn no_provider(&self) -> LbError {
        LbError::NoProvider {
            service: self.service.to_string(),
        }
    }

    /// Picks a provider for one call, as [`pick`](Self::pick) does, but never one
    /// whose address is in `exclude`: a retry, a hedged or a forked copy of a call
    /// goes to a provider the call has not tried yet.
    ///
    /// ```
    /// use rpc_lb::{LoadBalancer, PickContext, Provider, Strategy};
    ///
    /// let lb = LoadBalancer::new("demo.Echo", Strategy::RoundRobin);
    /// let a = "10.0.0.1:20880".parse().unwrap();
    /// let b = "10.0.0.2:20880".parse().unwrap();
    /// lb.update([Provider::new(a), Provider::new(b)]);
    /// for _ in 0..4 {
    ///     assert_eq!(lb.pick_excluding(&PickContext::new(), &[a])?.addr(), b);
    /// }
    /// assert!(lb.pick_excluding(&PickContext::new(), &[a, b]).is_err());
    /// # Ok::<(), rpc_lb::LbError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`LbError::NoProvider`] when no provider outside `exclude` is available.
    pub fn pick_excluding(
        &self,
        ctx: &PickContext,
        exclude: &[SocketAddr],
    ) -> Result<Picked, LbError> {
        self.set
            .pick(ctx, exclude)
            .ok_or_else(|| self.no_provider())
    }

    /// The provider at `addr`, counted in flight for one call, whatever its health
    /// marks say: a circuit breaker's probe of a provider it took out. `None` if
    /// `addr` is not in the set.
    pub fn pick_addr(&self, addr: SocketAddr) -> Option<Picked> {
        self.set.pick_addr(addr)
    }

    /// Marks the provider at `addr` healthy or unhealthy in the client's view
    /// (until changed again or the provider leaves the set). Marking healthy
    /// also ends a [`mark_unhealthy_for`](Self::mark_unhealthy_for) backoff,
    /// but cannot override discovery's
    /// [`Provider::healthy`](crate::Provider::healthy).
    ///
    /// Returns `false` if `addr` is not in the set.
    pub fn set_healthy(&self, addr: SocketAddr, healthy: bool) -> bool {
        self.with_stats(addr, |stats| {
            if healthy {
                stats.mark_up();
            } else {
                stats.mark_down(None);
            }
        })
    }

    /// Marks the provider at `addr` unhealthy for `period`, after which it is
    /// picked again without further action: the client's backoff after
    /// failing to reach it.
    ///
    /// Returns `false` if `addr` is not in the set.
    pub fn mark_unhealthy_for(&self, addr: SocketAddr, period: Duration) -> bool {
        self.mark_unhealthy_until(addr, Instant::now() + period)
    }

    /// Marks the provider at `addr` unhealthy until `until` (see
    /// [`mark_unhealthy_for`](Self::mark_unhealthy_for)).
    ///
    /// Returns `false` if `addr` is not in the set.
    pub fn mark_unhealthy_until(&self, addr: SocketAddr, until: Instant) -> bool {
        self.with_stats(addr, |stats| stats.mark_down(Some(until)))
    }

    /// Marks the provider at `addr` draining (it announced a graceful
    /// shutdown, e.g. in a reply): it gets no new calls, while calls in
    /// flight finish. `false` lifts the client's mark.
    ///
    /// Returns `false` if `addr` is not in the set.
    pub fn set_draining(&self, addr: SocketAddr, draining: bool) -> bool {
        self.with_stats(addr, |stats| stats.set_draining(draining))
    }

    /// The live statistics of the provider at `addr`, if it is in the set.
    pub fn stats(&self, addr: SocketAddr) -> Option<Arc<ProviderStats>> {
        self.set.stats(addr)
    }

    /// The current provider set, as last given to [`update`](Self::update).
    pub fn providers(&self) -> Vec<Provider> {
        self.set.providers()
    }

    /// The service this balancer is for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The strategy this balancer uses.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The configuration this balancer was built with.
    pub fn config(&self) -> &Config {
        self.set.config()
    }

    fn with_stats(&self, addr: SocketAddr, mark: impl FnOnce(&ProviderStats)) -> bool {
        match self.set.stats(addr) {
            Some(stats) => {
                mark(&stats);
                true
            }
            None => false,
        }
    }
}

impl<T> fmt::Debug for LoadBalancer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancer")
            .field("service", &self.service)
            .field("strategy", &self.strategy)
            .field("set", &self.set)
            .finish()
    }
}

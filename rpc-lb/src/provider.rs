//! [`Provider`]: one instance of a service, as discovery describes it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One provider instance of a service, as discovery (the registry, or a
/// static list) describes it.
///
/// This is the *spec* handed to [`LoadBalancer::update`]: it is replaced
/// wholesale on every update. What the balancer learns at run time (calls in
/// flight, latency, the smooth weighted round-robin position, marks made by
/// the client with [`LoadBalancer::set_healthy`] and friends) is kept per
/// address and survives updates.
///
/// Build one with [`Provider::new`] and the by-value setters:
///
/// ```
/// use rpc_lb::Provider;
///
/// let p = Provider::new("10.0.0.1:20880".parse().unwrap()).weight(200);
/// assert_eq!(p.weight, 200);
/// assert!(p.healthy && !p.draining);
/// ```
///
/// [`LoadBalancer::update`]: crate::LoadBalancer::update
/// [`LoadBalancer::set_healthy`]: crate::LoadBalancer::set_healthy
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Provider {
    /// Where the provider listens; also its identity in the set: an update
    /// that lists the same address again keeps that provider's state.
    pub addr: SocketAddr,
    /// Relative share of calls for the weighted strategies; default
    /// [`Provider::DEFAULT_WEIGHT`] (100, as in Dubbo). Weight 0 takes no
    /// calls under any strategy, so an operator can park an instance.
    pub weight: u32,
    /// Whether discovery considers the provider healthy; default `true`. An
    /// unhealthy provider takes no calls. This is ANDed with the client's own
    /// mark ([`LoadBalancer::set_healthy`](crate::LoadBalancer::set_healthy)).
    pub healthy: bool,
    /// Whether the provider announced a graceful shutdown; default `false`.
    /// A draining provider takes no *new* calls; calls already in flight
    /// finish normally.
    pub draining: bool,
    /// When the provider started, for warm-up; default `None` (no warm-up).
    /// While `now - started_at` is below [`Config::warm_up`], weighted
    /// strategies use a weight that ramps linearly from 1 to
    /// [`weight`](Self::weight), so a cold JVM-style instance (empty caches,
    /// unprimed pools) is not flooded the moment it joins.
    ///
    /// [`Config::warm_up`]: crate::Config::warm_up
    pub started_at: Option<Instant>,
}

impl Provider {
    /// The weight of a provider that does not say otherwise (Dubbo's default).
    pub const DEFAULT_WEIGHT: u32 = 100;

    /// A healthy, non-draining provider at `addr` with the default weight and
    /// no warm-up.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: Self::DEFAULT_WEIGHT,
            healthy: true,
            draining: false,
            started_at: None,
        }
    }

    /// Sets the weight.
    ///
    /// ```
    /// # use rpc_lb::Provider;
    /// let p = Provider::new("127.0.0.1:1".parse().unwrap()).weight(0);
    /// assert_eq!(p.weight, 0); // parked: never picked
    /// ```
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets whether discovery reports the provider healthy.
    ///
    /// ```
    /// # use rpc_lb::Provider;
    /// let p = Provider::new("127.0.0.1:1".parse().unwrap()).healthy(false);
    /// assert!(!p.healthy);
    /// ```
    pub fn healthy(mut self, healthy: bool) -> Self {
        self.healthy = healthy;
        self
    }

    /// Sets whether the provider is draining (shutting down gracefully).
    ///
    /// ```
    /// # use rpc_lb::Provider;
    /// let p = Provider::new("127.0.0.1:1".parse().unwrap()).draining(true);
    /// assert!(p.draining);
    /// ```
    pub fn draining(mut self, draining: bool) -> Self {
        self.draining = draining;
        self
    }

    /// Sets when the provider started, so weighted strategies warm it up.
    ///
    /// ```
    /// # use rpc_lb::Provider;
    /// use std::time::Instant;
    /// let p = Provider::new("127.0.0.1:1".parse().unwrap()).started_at(Instant::now());
    /// assert!(p.started_at.is_some());
    /// ```
    pub fn started_at(mut self, started_at: Instant) -> Self {
        self.started_at = Some(started_at);
        self
    }

    /// The weight to use at `now`, given a warm-up period of `warm_up`.
    ///
    /// Follows Dubbo: `weight * uptime / warm_up`, at least 1 and at most
    /// `weight`; full weight once `uptime >= warm_up`, when the provider has
    /// no start time, or when `warm_up` is zero. A weight of 0 stays 0.
    ///
    /// ```
    /// # use rpc_lb::Provider;
    /// use std::time::{Duration, Instant};
    /// let start = Instant::now();
    /// let p = Provider::new("127.0.0.1:1".parse().unwrap()).weight(100).started_at(start);
    /// let warm_up = Duration::from_secs(60);
    /// assert_eq!(p.effective_weight(start, warm_up), 1);
    /// assert_eq!(p.effective_weight(start + Duration::from_secs(15), warm_up), 25);
    /// assert_eq!(p.effective_weight(start + Duration::from_secs(60), warm_up), 100);
    /// ```
    pub fn effective_weight(&self, now: Instant, warm_up: Duration) -> u32 {
        match self.started_at {
            Some(started_at) => warmed_weight(self.weight, started_at, now, warm_up),
            None => self.weight,
        }
    }
}

impl From<SocketAddr> for Provider {
    fn from(addr: SocketAddr) -> Self {
        Provider::new(addr)
    }
}

/// Dubbo's warm-up ramp; the one place that owns the formula.
pub(crate) fn warmed_weight(
    weight: u32,
    started_at: Instant,
    now: Instant,
    warm_up: Duration,
) -> u32 {
    if weight == 0 {
        return 0;
    }
    let uptime = now.saturating_duration_since(started_at);
    if uptime >= warm_up {
        return weight;
    }
    // uptime < warm_up here, so warm_up > 0 and the quotient is < weight.
    let ramped = u128::from(weight) * uptime.as_nanos() / warm_up.as_nanos();
    // Lossless: ramped < weight <= u32::MAX.
    (ramped as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_ramps_linearly_with_floor_of_one() {
        let start = Instant::now();
        let warm_up = Duration::from_secs(100);
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(warmed_weight(100, start, start, warm_up), 1);
        assert_eq!(warmed_weight(100, start, at(1), warm_up), 1);
        assert_eq!(warmed_weight(100, start, at(50), warm_up), 50);
        assert_eq!(warmed_weight(100, start, at(99), warm_up), 99);
        assert_eq!(warmed_weight(100, start, at(100), warm_up), 100);
        assert_eq!(warmed_weight(100, start, at(1000), warm_up), 100);
        assert_eq!(warmed_weight(0, start, at(50), warm_up), 0);
        assert_eq!(
            warmed_weight(u32::MAX, start, at(50), warm_up),
            u32::MAX / 2
        );
    }

    #[test]
    fn no_warm_up_when_period_is_zero_or_start_unknown() {
        let start = Instant::now();
        assert_eq!(warmed_weight(7, start, start, Duration::ZERO), 7);
        let p = Provider::new("127.0.0.1:1".parse().unwrap()).weight(7);
        assert_eq!(p.effective_weight(start, Duration::from_secs(60)), 7);
    }

    #[test]
    fn start_in_the_future_counts_as_just_started() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert_eq!(warmed_weight(100, later, now, Duration::from_secs(60)), 1);
    }
}

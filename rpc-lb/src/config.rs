//! [`Config`]: tunables shared by all strategies.

use std::time::Duration;

/// Tunables of a [`LoadBalancer`](crate::LoadBalancer). The defaults suit
/// most services; change them with the by-value setters:
///
/// ```
/// use rpc_lb::Config;
/// use std::time::Duration;
///
/// let config = Config::default().warm_up(Duration::from_secs(60)).ring_replicas(320);
/// assert_eq!(config.warm_up, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// How long a provider with a [`started_at`](crate::Provider::started_at)
    /// takes to reach its full weight under the weighted strategies. Default
    /// 10 minutes, as in Dubbo; zero disables warm-up.
    pub warm_up: Duration,
    /// Virtual nodes on the `ip-hash` ring per 100 units of weight (so a
    /// provider of default weight gets this many); default 160, as in Dubbo
    /// and ketama. More nodes spread keys more evenly at the cost of memory
    /// (16 bytes each) and a slightly deeper binary search. A provider with a
    /// non-zero weight always gets at least one node and at most 100 times
    /// this many.
    pub ring_replicas: u32,
    /// The time constant of the adaptive strategy's latency EWMA: how fast
    /// old samples fade and a shunned provider's estimate decays so it is
    /// probed again. Default 10 s, as in Finagle.
    pub latency_decay: Duration,
    /// Keep every figure of each provider's
    /// [`ProviderStats`](crate::ProviderStats) (calls in flight, the latency
    /// estimate, success and failure counts) whatever the strategy, to read
    /// them. Default `false`: each strategy keeps what it balances on
    /// (least-connection the in-flight counts, adaptive those and the latency,
    /// the others nothing), so its calls touch no shared counter and read no
    /// clock they do not need.
    pub track_stats: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            warm_up: Duration::from_secs(10 * 60),
            ring_replicas: 160,
            latency_decay: Duration::from_secs(10),
            track_stats: false,
        }
    }
}

impl Config {
    /// Sets [`warm_up`](Self::warm_up).
    ///
    /// ```
    /// # use rpc_lb::Config;
    /// # use std::time::Duration;
    /// let no_warm_up = Config::default().warm_up(Duration::ZERO);
    /// # let _ = no_warm_up;
    /// ```
    pub fn warm_up(mut self, warm_up: Duration) -> Self {
        self.warm_up = warm_up;
        self
    }

    /// Sets [`ring_replicas`](Self::ring_replicas).
    ///
    /// ```
    /// # use rpc_lb::Config;
    /// let finer = Config::default().ring_replicas(320);
    /// # let _ = finer;
    /// ```
    pub fn ring_replicas(mut self, ring_replicas: u32) -> Self {
        self.ring_replicas = ring_replicas;
        self
    }

    /// Sets [`latency_decay`](Self::latency_decay).
    ///
    /// ```
    /// # use rpc_lb::Config;
    /// # use std::time::Duration;
    /// let twitchy = Config::default().latency_decay(Duration::from_secs(2));
    /// # let _ = twitchy;
    /// ```
    pub fn latency_decay(mut self, latency_decay: Duration) -> Self {
        self.latency_decay = latency_decay;
        self
    }

    /// Sets [`track_stats`](Self::track_stats).
    pub fn track_stats(mut self, track_stats: bool) -> Self {
        self.track_stats = track_stats;
        self
    }
}

//! [`Picked`]: the provider chosen for one call, and its in-flight guard.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Timestamp;
use crate::stats::ProviderStats;

/// The provider chosen for one call.
///
/// Holding it counts the call as in flight to that provider (least-connection
/// and adaptive balance on that count); dropping it ends the call. Keep it
/// alive until the reply arrives (or the call fails), then report how it went
/// with [`record_success`](Self::record_success) or
/// [`record_failure`](Self::record_failure) so the adaptive strategy can steer
/// around slow providers.
///
/// ```
/// use rpc_lb::{LoadBalancer, PickContext, Provider, Strategy};
/// use std::time::{Duration, Instant};
///
/// let lb = LoadBalancer::new("demo.Echo", Strategy::LeastConnection);
/// lb.update([Provider::new("127.0.0.1:20880".parse().unwrap())]);
///
/// let picked = lb.pick(&PickContext::new())?;
/// // Least-connection keeps the in-flight counts it balances on.
/// let stats = picked.stats().expect("least-connection keeps stats").clone();
/// assert_eq!(stats.in_flight(), 1);
/// let started = Instant::now();
/// // ... send the request to picked.addr() and await the reply ...
/// picked.record_success(started.elapsed());
/// drop(picked);
/// assert_eq!(stats.in_flight(), 0);
/// # Ok::<(), rpc_lb::LbError>(())
/// ```
#[must_use = "dropping a Picked ends the call at once; keep it until the reply arrives"]
pub struct Picked {
    /// Copied out of the set so the caller needs no lock to read it.
    addr: SocketAddr,
    /// Shared with the balancer: the guard decrements its in-flight count on
    /// drop, and recordings land where the next picks read them. `None` when the
    /// strategy keeps no statistics (see [`ProviderStats`]): then a pick, its
    /// recordings and its drop touch nothing shared at all.
    stats: Option<Arc<ProviderStats>>,
}

impl Picked {
    /// Counts a new call in flight to the provider at `addr`, whose `stats` are
    /// held (and kept) only when its set `keeps` statistics.
    pub(crate) fn new(addr: SocketAddr, stats: &Arc<ProviderStats>, keeps: bool) -> Self {
        Self {
            addr,
            stats: keeps.then(|| {
                stats.acquire();
                Arc::clone(stats)
            }),
        }
    }

    /// The chosen provider's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The chosen provider's live statistics, when the strategy keeps any
    /// (least-connection, adaptive, or with
    /// [`Config::track_stats`](crate::Config::track_stats)); `None` otherwise.
    /// [`LoadBalancer::stats`](crate::LoadBalancer::stats) reads them by address
    /// in any case.
    pub fn stats(&self) -> Option<&Arc<ProviderStats>> {
        self.stats.as_ref()
    }

    /// Records that the call succeeded after `latency`.
    pub fn record_success(&self, latency: Duration) {
        if let Some(stats) = &self.stats {
            stats.record_success(latency);
        }
    }

    /// Records that the call failed after `latency` (see
    /// [`ProviderStats::record_failure`]).
    pub fn record_failure(&self, latency: Duration) {
        if let Some(stats) = &self.stats {
            stats.record_failure(latency);
        }
    }

    /// Records that the call, sent at `started`, succeeded just now; returns its
    /// latency when the provider's latency is tracked (see [`ProviderStats`]), and
    /// `None`, having read no clock, when it is not. One clock reading serves both
    /// the latency and the sample's time.
    pub fn record_success_since(&self, started: Instant) -> Option<Duration> {
        self.stats.as_ref()?.record_success_since(started)
    }

    /// Records that the call succeeded: it was sent at `sent` and its reply came at
    /// `at`, as the caller's transport saw them (a connection reads its clock once per
    /// batch of calls, not once per call, and converts it once), so no clock is read
    /// here. The latency, `at - sent`, is worked out only when the provider's latency
    /// is tracked.
    ///
    /// ```
    /// use rpc_lb::{LoadBalancer, PickContext, Provider, Strategy, Timestamp};
    /// use std::time::{Duration, Instant};
    ///
    /// let lb = LoadBalancer::new("demo.Echo", Strategy::Adaptive);
    /// lb.update([Provider::new("127.0.0.1:20880".parse().unwrap())]);
    /// let picked = lb.pick(&PickContext::new())?;
    /// let sent = Instant::now();
    /// let answered = sent + Duration::from_millis(2);
    /// picked.record_success_between(Timestamp::of(sent), Timestamp::of(answered));
    /// let stats = picked.stats().expect("adaptive keeps stats");
    /// assert_eq!(stats.successes(), 1);
    /// assert!(stats.latency().unwrap() <= Duration::from_millis(2));
    /// # Ok::<(), rpc_lb::LbError>(())
    /// ```
    #[inline]
    pub fn record_success_between(&self, sent: Timestamp, at: Timestamp) {
        if let Some(stats) = &self.stats {
            stats.record_success_between(sent, at);
        }
    }

    /// Records that the call, sent at `started`, failed just now; returns its latency.
    pub fn record_failure_since(&self, started: Instant) -> Duration {
        let now = Instant::now();
        let latency = now.saturating_duration_since(started);
        if let Some(stats) = &self.stats {
            stats.record_failure_at(now, latency);
        }
        latency
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.release();
        }
    }
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("addr", &self.addr)
            .field("in_flight", &self.stats.as_ref().map(|s| s.in_flight()))
            .finish()
    }
}

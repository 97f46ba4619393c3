//! [`ProviderStats`]: what the client observed about one provider.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::clock::Timestamp;

/// Live statistics about one provider: calls in flight and a peak-EWMA of
/// latency.
///
/// The balancer keeps one per provider address for as long as the address is
/// in the set (updates keep it) and hands out `Arc<ProviderStats>` through
/// [`Picked::stats`](crate::Picked::stats) and
/// [`LoadBalancer::stats`](crate::LoadBalancer::stats). The in-flight count
/// is maintained by [`Picked`](crate::Picked)'s guard; latency is fed by the
/// client through [`Picked::record_success`](crate::Picked::record_success) /
/// [`record_failure`](crate::Picked::record_failure) (or the methods here).
/// Everything is lock-free atomics, so recording never blocks a pick.
///
/// The same allocation also holds the client's health marks for the provider
/// (set through [`LoadBalancer`](crate::LoadBalancer)), so checking whether a
/// provider may be picked and reading its load touch one cache line.
///
/// Each figure is kept only when something reads it, so a strategy's calls
/// touch no shared counter it does not need (on a multi-threaded runtime every
/// such counter is a cache line bouncing between cores on every call): the
/// in-flight count for least-connection (both kinds) and adaptive, the latency
/// estimate for adaptive, the success and failure counts whenever either is
/// kept; all of them with [`Config::track_stats`](crate::Config::track_stats).
/// A figure not kept reads as zero ([`latency`](Self::latency) as `None`).
///
/// The latency estimate is Finagle's *peak EWMA*: a sample above the current
/// estimate replaces it at once (a provider that slows down is noticed on the
/// first slow reply), a lower one is blended in with weight
/// `1 - exp(-elapsed / decay)`, and the estimate decays toward zero while no
/// samples arrive, so a provider that was shunned gets probed again.
#[derive(Debug)]
// Fields in order of how hot they are on the pick path, so the ones every
// pick reads share a cache line.
#[repr(C)]
pub struct ProviderStats {
    /// The client's marks, in one word so that checking a provider on the
    /// pick path is one load and one compare: the [`DRAINING`] bit, and below
    /// it the unhealthy mark: 0 for none, [`DOWN_INDEFINITELY`] until cleared,
    /// otherwise the end of a backoff, a [`Timestamp`] in nanoseconds.
    marks: AtomicU64,
    /// Calls picked for this provider whose [`Picked`](crate::Picked) guard
    /// is still alive. Least-connection and adaptive read it on every pick.
    in_flight: AtomicUsize,
    /// The peak-EWMA latency estimate in nanoseconds, as `f64` bits; 0 until
    /// the first sample.
    cost: AtomicU64,
    /// When `cost` was last updated, a [`Timestamp`] in nanoseconds (an
    /// `Instant` does not fit in an atomic), so the decay can be computed
    /// without a lock around two fields.
    stamp: AtomicU64,
    /// The EWMA time constant in nanoseconds ([`Config::latency_decay`](crate::Config::latency_decay)).
    decay_nanos: f64,
    /// Whether recorded calls feed the latency estimate.
    tracks_latency: bool,
    /// Whether picks count calls in flight.
    tracks_load: bool,
    /// Calls recorded as successful, for observability.
    successes: AtomicU64,
    /// Calls recorded as failed, for observability.
    failures: AtomicU64,
}

impl ProviderStats {
    /// Stats with calls in flight counted when `tracks_load` and latency estimated
    /// with time constant `decay` when `tracks_latency`.
    pub(crate) fn new(decay: Duration, tracks_load: bool, tracks_latency: bool) -> Self {
        Self {
            tracks_latency,
            tracks_load,
            in_flight: AtomicUsize::new(0),
            cost: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            marks: AtomicU64::new(0),
            // At least 1 ns so the decay exponent is never a division by zero.
            decay_nanos: (decay.as_nanos() as f64).max(1.0),
        }
    }

    /// Calls currently in flight to this provider (0 when not [tracked](Self::tracks_load)).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current peak-EWMA latency estimate, or `None` before the first
    /// recorded call (and always when latency is not tracked; see the type's docs).
    pub fn latency(&self) -> Option<Duration> {
        let cost = self.cost_at(Instant::now());
        (cost > 0.0).then(|| Duration::from_nanos(cost as u64))
    }

    /// Calls recorded as successful so far (0 when neither load nor latency is
    /// tracked).
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Calls recorded as failed so far (0 when neither load nor latency is
    /// tracked).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records a successful call that took `latency`.
    pub fn record_success(&self, latency: Duration) {
        self.record_success_at(Instant::now(), latency);
    }

    /// Records a successful call that took `latency` and ended at `now` (saves a
    /// clock reading when the caller has one).
    pub fn record_success_at(&self, now: Instant, latency: Duration) {
        if self.counts_outcomes() {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
        if self.tracks_latency {
            self.observe(now, nanos_f64(latency), false);
        }
    }

    /// Records a failed call that took `latency`.
    ///
    /// A failure counts as a sample at least twice the current estimate, so a
    /// provider that fails fast is not mistaken for a fast one, and repeated
    /// failures push its estimate up exponentially.
    pub fn record_failure(&self, latency: Duration) {
        self.record_failure_at(Instant::now(), latency);
    }

    /// Records a failed call that took `latency` and ended at `now` (see
    /// [`record_failure`](ProviderStats::record_failure)).
    pub fn record_failure_at(&self, now: Instant, latency: Duration) {
        if self.counts_outcomes() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if self.tracks_latency {
            self.observe(now, nanos_f64(latency), true);
        }
    }

    /// Whether recorded calls feed the latency estimate (the adaptive strategy, or
    /// [`Config::track_stats`](crate::Config::track_stats)); when not, a caller
    /// need not time its calls for this provider.
    pub fn tracks_latency(&self) -> bool {
        self.tracks_latency
    }

    /// Whether calls in flight are counted (least-connection, adaptive, or
    /// [`Config::track_stats`](crate::Config::track_stats)).
    pub fn tracks_load(&self) -> bool {
        self.tracks_load
    }

    /// Whether successes and failures are counted: whenever load or latency is.
    fn counts_outcomes(&self) -> bool {
        self.tracks_load || self.tracks_latency
    }

    /// Records a successful call that started at `started`: timed (and its latency
    /// returned) only when latency is tracked, so untracked providers cost no clock
    /// reading.
    pub(crate) fn record_success_since(&self, started: Instant) -> Option<Duration> {
        if !self.tracks_latency {
            if self.tracks_load {
                self.successes.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        let now = Instant::now();
        let latency = now.saturating_duration_since(started);
        self.record_success_at(now, latency);
        Some(latency)
    }

    /// Records a successful call sent at `sent` whose reply came at `at`: the latency is
    /// worked out (and the estimate updated) only when latency is tracked, with no
    /// clock reading and no conversion of an `Instant`.
    pub fn record_success_between(&self, sent: Timestamp, at: Timestamp) {
        if self.counts_outcomes() {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
        if self.tracks_latency {
            let rtt = at.as_nanos().saturating_sub(sent.as_nanos());
            self.observe_at(at.as_nanos(), rtt as f64, false);
        }
    }

    /// Marks the provider down until `until`, or indefinitely for `None`.
    pub(crate) fn mark_down(&self, until: Option<Instant>) {
        let down = match until {
            // An instant at or before the epoch has already passed: no mark.
            Some(until) => self.nanos(until).min(DOWN_INDEFINITELY - 1),
            None => DOWN_INDEFINITELY,
        };
        let _ = self
            .marks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |marks| {
                Some(marks & DRAINING | down)
            });
    }

    /// Clears the unhealthy mark.
    pub(crate) fn mark_up(&self) {
        self.marks.fetch_and(DRAINING, Ordering::Relaxed);
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        if draining {
            self.marks.fetch_or(DRAINING, Ordering::Relaxed);
        } else {
            self.marks.fetch_and(!DRAINING, Ordering::Relaxed);
        }
    }

    /// Whether the client's marks let the provider take a call at the time
    /// `now` returns; `now` is only called for a backoff, so the common case
    /// reads no clock.
    #[inline]
    pub(crate) fn accepts_calls(&self, now: impl FnOnce() -> Instant) -> bool {
        match self.marks.load(Ordering::Relaxed) {
            0 => true,
            marks if marks >= DOWN_INDEFINITELY => false,
            until => self.nanos(now()) >= until,
        }
    }

    pub(crate) fn acquire(&self) {
        if self.tracks_load {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn release(&self) {
        if self.tracks_load {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The latency estimate at `now` in nanoseconds, decayed for the time
    /// since the last sample; 0 before the first sample.
    pub(crate) fn cost_at(&self, now: Instant) -> f64 {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        if cost == 0.0 {
            return 0.0;
        }
        let elapsed = self
            .nanos(now)
            .saturating_sub(self.stamp.load(Ordering::Relaxed));
        cost * (-(elapsed as f64) / self.decay_nanos).exp()
    }

    /// Folds a sample of `rtt` nanoseconds taken at `now` into the estimate.
    pub(crate) fn observe(&self, now: Instant, rtt: f64, failed: bool) {
        self.observe_at(Timestamp::of(now).as_nanos(), rtt, failed);
    }

    /// [`observe`](Self::observe) at `now`, a [`Timestamp`] in nanoseconds.
    fn observe_at(&self, now: u64, rtt: f64, failed: bool) {
        let elapsed = now.saturating_sub(self.stamp.swap(now, Ordering::Relaxed));
        let x = elapsed as f64 / self.decay_nanos;
        // Under load samples are microseconds apart against a decay of seconds:
        // there e^-x is 1 - x to within x²/2 (below 5e-9 here), without the call
        // to `exp` (about 50 instructions per recorded call).
        let keep = if x < 1e-4 { 1.0 - x } else { (-x).exp() };
        // Racing recorders may interleave between the swap above and this
        // update; the estimate is a heuristic and either order is fine, but
        // the update itself must not be lost, hence the CAS loop.
        let _ = self
            .cost
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let cost = f64::from_bits(bits);
                let sample = if failed { rtt.max(cost * 2.0) } else { rtt };
                let next = if sample > cost {
                    sample
                } else {
                    cost * keep + sample * (1.0 - keep)
                };
                Some(next.to_bits())
            });
    }

    fn nanos(&self, at: Instant) -> u64 {
        Timestamp::of(at).as_nanos()
    }
}

/// `duration` in nanoseconds, as an `f64` (without the u128 of `as_nanos`, whose
/// conversion to `f64` is a software routine).
fn nanos_f64(duration: Duration) -> f64 {
    duration.as_secs() as f64 * 1e9 + f64::from(duration.subsec_nanos())
}

/// The draining bit of `ProviderStats::marks`.
const DRAINING: u64 = 1 << 63;

/// The unhealthy mark with no end; with [`DRAINING`] set, `marks` is above
/// it, so one comparison rejects both.
const DOWN_INDEFINITELY: u64 = DRAINING - 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ProviderStats {
        ProviderStats::new(Duration::from_secs(10), true, true)
    }

    #[test]
    fn peak_replaces_immediately_and_lower_samples_blend() {
        let s = stats();
        assert_eq!(s.latency(), None);
        let t0 = Instant::now();
        s.observe(t0, 1_000_000.0, false);
        assert_eq!(s.cost_at(t0), 1_000_000.0);
        s.observe(t0, 50_000_000.0, false);
        assert_eq!(
            s.cost_at(t0),
            50_000_000.0,
            "a slower sample is taken at once"
        );
        // A faster sample 10 s (one time constant) later blends in by 1 - 1/e.
        let t1 = t0 + Duration::from_secs(10);
        s.observe(t1, 1_000_000.0, false);
        let expected = 50e6 / std::f64::consts::E + 1e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((s.cost_at(t1) - expected).abs() < 1.0);
    }

    #[test]
    fn estimate_decays_without_samples() {
        let s = stats();
        let t0 = Instant::now();
        s.observe(t0, 1_000_000.0, false);
        let later = s.cost_at(t0 + Duration::from_secs(20));
        assert!(later < 1_000_000.0 * 0.14 && later > 0.0, "{later}");
    }

    #[test]
    fn failures_double_the_estimate() {
        let s = stats();
        let t0 = Instant::now();
        s.observe(t0, 1_000_000.0, false);
        s.observe(t0, 10.0, true);
        assert_eq!(s.cost_at(t0), 2_000_000.0);
        s.record_failure(Duration::from_micros(1));
        assert_eq!(s.failures(), 1);
        assert!(s.latency().unwrap() > Duration::from_millis(3));
    }

    #[test]
    fn timed_mark_expires() {
        let s = stats();
        let t0 = Instant::now();
        assert!(s.accepts_calls(|| unreachable!("no mark, no clock")));
        s.mark_down(Some(t0 + Duration::from_secs(5)));
        assert!(!s.accepts_calls(|| t0 + Duration::from_secs(4)));
        assert!(s.accepts_calls(|| t0 + Duration::from_secs(5)));
        s.mark_down(None);
        assert!(!s.accepts_calls(|| unreachable!("indefinite mark, no clock")));
        s.mark_up();
        assert!(s.accepts_calls(|| unreachable!()));
        // A deadline already in the past is no mark at all.
        s.mark_down(Some(crate::clock::epoch()));
        assert!(s.accepts_calls(|| unreachable!()));
    }

    #[test]
    fn draining_and_unhealthy_marks_are_independent() {
        let s = stats();
        let t0 = Instant::now();
        s.set_draining(true);
        assert!(!s.accepts_calls(|| unreachable!("draining, no clock")));
        s.mark_down(Some(t0 + Duration::from_secs(5)));
        s.mark_up();
        assert!(!s.accepts_calls(|| unreachable!()), "still draining");
        s.mark_down(Some(t0 + Duration::from_secs(5)));
        s.set_draining(false);
        assert!(!s.accepts_calls(|| t0), "still in backoff");
        assert!(s.accepts_calls(|| t0 + Duration::from_secs(5)));
    }

    #[test]
    fn in_flight_counts() {
        let s = stats();
        s.acquire();
        s.acquire();
        s.release();
        assert_eq!(s.in_flight(), 1);
    }
}

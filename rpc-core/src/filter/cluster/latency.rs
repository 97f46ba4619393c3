//! [`LatencyHistogram`]: a method's recent latencies, for the hedging delay.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Buckets per doubling of latency: bucket edges are 2^(1/4) ≈ 19 % apart, the
/// precision of a percentile read from the histogram.
const PER_OCTAVE: u32 = 4;

/// Buckets from 1 µs to 2^26 µs (67 s); longer latencies land in the last.
const BUCKETS: usize = 26 * PER_OCTAVE as usize;

/// Recent latencies of one method: log-scale buckets over two generations, the
/// current one and the previous one, each `window` long, so a percentile reflects
/// between one and two windows of calls and forgets older ones.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    /// How long a generation lasts.
    window: Duration,
    /// The generations and when the current one started.
    state: Mutex<Generations>,
}

#[derive(Debug)]
struct Generations {
    /// When the current generation started.
    started: Instant,
    /// Samples of the current generation, per bucket.
    current: [u32; BUCKETS],
    /// Samples of the previous generation, per bucket.
    previous: [u32; BUCKETS],
    /// Samples in `current`.
    current_count: u64,
    /// Samples in `previous`.
    previous_count: u64,
}

impl Generations {
    /// Moves on to a new generation when the current one is over at `now`.
    fn rotate(&mut self, window: Duration, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < window {
            return;
        }
        if age >= window * 2 {
            // Nothing recent at all: both generations are stale.
            self.previous = [0; BUCKETS];
            self.previous_count = 0;
        } else {
            self.previous = self.current;
            self.previous_count = self.current_count;
        }
        self.current = [0; BUCKETS];
        self.current_count = 0;
        self.started = now;
    }
}

/// The bucket of `latency`.
fn bucket(latency: Duration) -> usize {
    let micros = latency.as_micros().max(1) as f64;
    let index = (micros.log2() * f64::from(PER_OCTAVE)) as usize;
    index.min(BUCKETS - 1)
}

/// The upper edge of bucket `index`: a percentile is reported as the edge of its
/// bucket, at most 19 % above the true value, never below it.
fn upper_edge(index: usize) -> Duration {
    let micros = 2f64.powf((index as f64 + 1.0) / f64::from(PER_OCTAVE));
    Duration::from_nanos((micros * 1000.0) as u64)
}

impl LatencyHistogram {
    /// An empty histogram whose generations last `window`.
    pub(crate) fn new(window: Duration) -> LatencyHistogram {
        LatencyHistogram {
            window,
            state: Mutex::new(Generations {
                started: Instant::now(),
                current: [0; BUCKETS],
                previous: [0; BUCKETS],
                current_count: 0,
                previous_count: 0,
            }),
        }
    }

    /// Records one call's latency.
    pub(crate) fn record(&self, latency: Duration) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.rotate(self.window, now);
        let b = bucket(latency);
        state.current[b] = state.current[b].saturating_add(1);
        state.current_count += 1;
    }

    /// The `quantile` (in `(0, 1)`) of the recent latencies, or `None` with fewer
    /// than `min_samples` of them.
    pub(crate) fn quantile(&self, quantile: f64, min_samples: u64) -> Option<Duration> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.rotate(self.window, now);
        let count = state.current_count + state.previous_count;
        if count == 0 || count < min_samples {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest bucket with at least this
        // many samples at or below it.
        let rank = ((quantile * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0u64;
        for i in 0..BUCKETS {
            seen += u64::from(state.current[i]) + u64::from(state.previous[i]);
            if seen >= rank {
                return Some(upper_edge(i));
            }
        }
        Some(upper_edge(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_lands_in_the_right_bucket() {
        let h = LatencyHistogram::new(Duration::from_secs(10));
        assert_eq!(h.quantile(0.95, 1), None);
        for _ in 0..95 {
            h.record(Duration::from_millis(1));
        }
        for _ in 0..5 {
            h.record(Duration::from_millis(200));
        }
        let p95 = h.quantile(0.95, 20).unwrap();
        assert!(
            p95 >= Duration::from_millis(1) && p95 < Duration::from_micros(1200),
            "{p95:?}"
        );
        let p99 = h.quantile(0.99, 20).unwrap();
        assert!(
            p99 >= Duration::from_millis(200) && p99 < Duration::from_millis(240),
            "{p99:?}"
        );
        assert_eq!(h.quantile(0.5, 101), None, "too few samples");
    }

    #[test]
    fn edges_bound_their_bucket_from_above() {
        for micros in [1u64, 3, 10, 999, 1000, 123_456, 10_000_000] {
            let d = Duration::from_micros(micros);
            assert!(upper_edge(bucket(d)) >= d, "{d:?}");
        }
    }
}

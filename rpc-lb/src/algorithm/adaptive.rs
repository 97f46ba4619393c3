//! `adaptive`: power of two random choices over peak-EWMA load.

use rand::Rng;

use super::{with_rng, Algorithm};
use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

/// How many times to draw a pair before falling back to an exact scan.
const DRAWS: usize = 4;

/// Load of a provider with calls in flight but no latency sample yet
/// (nanoseconds, ~17 minutes): it is tried when idle, but not piled onto
/// before its first reply says how fast it is. Finagle does the same.
const UNKNOWN_COST: f64 = 1e12;

/// Power of two random choices (Mitzenmacher), scored as in Finagle's
/// peak-EWMA balancer and in the spirit of brpc's locality-aware and Dubbo's
/// adaptive balancers.
///
/// Two distinct available providers are drawn at random and the one with the
/// lower `latency_estimate * (in_flight + 1) / weight` wins. The latency
/// estimate is a peak EWMA ([`ProviderStats`](crate::ProviderStats)): one
/// slow reply raises it at once, so a provider that slows down stops winning
/// comparisons on the very next picks; with no samples it decays, so a
/// shunned provider is probed again after a few decay periods. Comparing two
/// random candidates instead of scanning all keeps a pick O(1) and avoids the
/// herd effect of every client sending to the single least-loaded provider.
#[derive(Debug, Default)]
pub(crate) struct Adaptive;

impl Algorithm for Adaptive {
    type State = ();

    const READS_LATENCY: bool = true;

    const READS_LOAD: bool = true;

    fn prepare(&self, _: &[Entry], _: Option<&Snapshot>, _: &Config) {}

    fn pick(&self, view: &View<'_, ()>, _: &PickContext) -> Option<usize> {
        let n = view.len();
        match n {
            0 => return None,
            1 => return view.is_available(0).then_some(0),
            _ => {}
        }
        let pair = with_rng(|rng| {
            (0..DRAWS).find_map(|_| {
                let (a, b) = distinct_pair(rng, n);
                (view.is_available(a) && view.is_available(b)).then_some((a, b))
            })
        });
        let (a, b) = match pair {
            Some(pair) => pair,
            None => {
                let available = view.count_available();
                match available {
                    0 => return None,
                    1 => return view.nth_available(0),
                    _ => {
                        let (a, b) = with_rng(|rng| distinct_pair(rng, available));
                        (view.nth_available(a)?, view.nth_available(b)?)
                    }
                }
            }
        };
        Some(if load(view, b) < load(view, a) { b } else { a })
    }
}

/// Two distinct indices below `n` (`n >= 2`), uniformly.
fn distinct_pair(rng: &mut impl Rng, n: usize) -> (usize, usize) {
    let a = rng.gen_range(0..n);
    let mut b = rng.gen_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// `latency_estimate * (in_flight + 1) / weight`.
fn load(view: &View<'_, ()>, i: usize) -> f64 {
    let stats = &view.entry(i).stats;
    let in_flight = stats.in_flight();
    let cost = match stats.cost_at(view.now()) {
        cost if cost == 0.0 && in_flight > 0 => UNKNOWN_COST,
        cost => cost,
    };
    cost * (in_flight as f64 + 1.0) / f64::from(view.weight(i))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{LoadBalancer, PickContext, Provider, Strategy};

    fn two() -> (LoadBalancer, [std::net::SocketAddr; 2]) {
        let addrs = ["10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap()];
        let lb = LoadBalancer::new("test.Service", Strategy::Adaptive);
        lb.update(addrs.map(Provider::new));
        (lb, addrs)
    }

    #[test]
    fn a_shunned_provider_is_probed_again_once_its_estimate_decays() {
        let (lb, [fast, slow]) = two();
        let t0 = Instant::now();
        lb.stats(fast).unwrap().observe(t0, 1e6, false);
        lb.stats(slow).unwrap().observe(t0, 100e6, false);
        // The fast one keeps replying in 1 ms; the slow one gets no calls, so
        // no samples, and its estimate decays (time constant 10 s).
        let pick_at = |secs: u64| {
            let at = t0 + Duration::from_secs(secs);
            lb.stats(fast).unwrap().observe(at, 1e6, false);
            lb.pick(&PickContext::new().at(at)).unwrap().addr()
        };
        assert_eq!(pick_at(1), fast, "shed at once");
        assert_eq!(pick_at(30), fast, "100 ms * e^-3 = 5 ms is still slower");
        assert_eq!(pick_at(60), slow, "100 ms * e^-6 = 0.25 ms: probe it again");
    }

    #[test]
    fn weight_scales_the_load() {
        let (lb, [a, b]) = two();
        lb.update([Provider::new(a).weight(100), Provider::new(b).weight(300)]);
        let t0 = Instant::now();
        // b is twice as slow but has three times the weight.
        lb.stats(a).unwrap().observe(t0, 1e6, false);
        lb.stats(b).unwrap().observe(t0, 2e6, false);
        assert_eq!(lb.pick(&PickContext::new().at(t0)).unwrap().addr(), b);
    }

    #[test]
    fn failures_push_a_provider_away() {
        let (lb, [a, b]) = two();
        let t0 = Instant::now();
        lb.stats(a).unwrap().observe(t0, 1e6, false);
        lb.stats(b).unwrap().observe(t0, 1e6, false);
        // b fails fast: the failure counts as twice its estimate.
        lb.stats(b).unwrap().observe(t0, 1e3, true);
        for _ in 0..10 {
            assert_eq!(lb.pick(&PickContext::new().at(t0)).unwrap().addr(), a);
        }
    }
}

//! `least-connection` and `weighted-least-connection`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Algorithm;
use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

/// Picks the available provider with the fewest calls in flight or, when
/// weighted, the lowest `in_flight / weight` (warm-up included).
///
/// The scan starts at a rotating offset and keeps the first strict minimum,
/// so ties (an idle cluster, say) go round-robin rather than all to the first
/// provider. A provider with nothing in flight cannot be beaten, so the scan
/// stops there: on a lightly loaded cluster a pick is O(1).
#[derive(Debug)]
pub(crate) struct LeastConnection {
    /// Divide the in-flight count by the weight.
    weighted: bool,
    /// Where the next scan starts.
    next: AtomicUsize,
    /// Starts of unavailable entries handed on so far (see [`View::turn`]): without
    /// it, idle survivors would not get equal shares.
    spill: AtomicUsize,
}

impl LeastConnection {
    pub(crate) fn new(weighted: bool) -> Self {
        Self {
            weighted,
            next: AtomicUsize::new(0),
            spill: AtomicUsize::new(0),
        }
    }
}

impl Algorithm for LeastConnection {
    type State = ();

    const READS_LOAD: bool = true;

    fn prepare(&self, _: &[Entry], _: Option<&Snapshot>, _: &Config) {}

    fn pick(&self, view: &View<'_, ()>, _: &PickContext) -> Option<usize> {
        let entries = view.entries();
        let n = entries.len();
        if n == 0 {
            return None;
        }
        let start = view.turn(self.next.fetch_add(1, Ordering::Relaxed), &self.spill)?;
        let mut best = Best::default();
        // From the rotating start to the end, then from the beginning.
        for (i, entry) in entries.iter().enumerate().skip(start) {
            if self.consider(view, &mut best, i, entry) {
                return Some(i);
            }
        }
        for (i, entry) in entries[..start].iter().enumerate() {
            if self.consider(view, &mut best, i, entry) {
                return Some(i);
            }
        }
        best.index
    }
}

/// The least-loaded entry seen so far in a scan.
#[derive(Debug)]
struct Best {
    index: Option<usize>,
    in_flight: u64,
    weight: u64,
}

impl Default for Best {
    fn default() -> Self {
        // Loses to any real entry: u64::MAX calls per unit of weight.
        Self {
            index: None,
            in_flight: u64::MAX,
            weight: 1,
        }
    }
}

impl LeastConnection {
    /// Folds entry `i` into `best`; `true` if it is idle, so unbeatable.
    #[inline]
    fn consider(&self, view: &View<'_, ()>, best: &mut Best, i: usize, entry: &Entry) -> bool {
        if !view.accepts(entry) {
            return false;
        }
        // Capped so the cross products below fit in u64 (weights are u32).
        let in_flight = entry.stats.in_flight().min(u32::MAX as usize) as u64;
        if in_flight == 0 {
            return true;
        }
        let weight = if self.weighted {
            u64::from(view.weight_of(entry))
        } else {
            1
        };
        // in_flight / weight < best.in_flight / best.weight, without division.
        // Both factors on the left are below 2^32; on the right, only the
        // initial sentinel can overflow, and saturating keeps it the loser.
        if in_flight * best.weight < best.in_flight.saturating_mul(weight) {
            *best = Best {
                index: Some(i),
                in_flight,
                weight,
            };
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::{LoadBalancer, PickContext, Provider, Strategy};

    #[test]
    fn idle_survivors_share_a_down_providers_turns_equally() {
        let addrs: Vec<std::net::SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        for strategy in [Strategy::LeastConnection, Strategy::WeightedLeastConnection] {
            for down in 0..3 {
                let lb = LoadBalancer::new("test.Service", strategy);
                lb.update(addrs.iter().copied().map(Provider::new));
                lb.set_healthy(addrs[down], false);
                let mut counts = std::collections::HashMap::new();
                // One call at a time: every provider is idle at every pick.
                for _ in 0..30 {
                    *counts
                        .entry(lb.pick(&PickContext::new()).unwrap().addr())
                        .or_insert(0) += 1;
                }
                assert!(
                    counts.len() == 2 && counts.values().all(|&c| c == 15),
                    "{strategy:?}, down {down}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn weighted_compares_in_flight_per_weight() {
        let a = "10.0.0.1:1".parse().unwrap();
        let b = "10.0.0.2:1".parse().unwrap();
        let lb = LoadBalancer::new("test.Service", Strategy::WeightedLeastConnection);
        lb.update([Provider::new(a).weight(200), Provider::new(b).weight(100)]);
        let ctx = PickContext::new();
        // Whichever idle one goes first, the other (idle) goes second, and
        // the third goes to a: 1 call per 200 beats 1 per 100.
        let held: Vec<_> = (0..3).map(|_| lb.pick(&ctx).unwrap()).collect();
        let on_a = held.iter().filter(|p| p.addr() == a).count();
        assert_eq!(on_a, 2, "3 calls split 2:1 by weight");
        let unweighted = LoadBalancer::new("test.Service", Strategy::LeastConnection);
        unweighted.update([Provider::new(a).weight(200), Provider::new(b).weight(100)]);
        let held: Vec<_> = (0..4).map(|_| unweighted.pick(&ctx).unwrap()).collect();
        assert_eq!(
            held.iter().filter(|p| p.addr() == a).count(),
            2,
            "weights ignored"
        );
    }
}

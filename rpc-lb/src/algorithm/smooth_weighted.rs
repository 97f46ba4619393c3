//! `weighted-round-robin`: nginx's smooth weighted round-robin.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Algorithm;
use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

/// Smooth weighted round-robin, as in nginx's `ngx_http_upstream_rr`.
///
/// Every pick adds each available provider's weight to its *current* weight,
/// picks the provider with the highest current weight (the first on a tie)
/// and subtracts the total weight from the winner. Over any `sum(weights)`
/// consecutive picks of an unchanged set each provider is picked exactly
/// `weight` times, and heavy providers' turns are spread out rather than
/// bunched: {5, 1, 1} gives `a a b a c a a`.
///
/// The whole step reads and writes every current weight, so it runs under a
/// small per-snapshot lock; it is held for one pass over the entries.
#[derive(Debug, Default)]
pub(crate) struct SmoothWeighted;

/// Current weights, by entry index.
#[derive(Debug)]
pub(crate) struct Current(parking_lot::Mutex<Vec<i64>>);

impl Algorithm for SmoothWeighted {
    type State = Current;

    /// Carries each staying provider's current weight over by address, so a
    /// discovery update does not restart the sequence.
    fn prepare(&self, entries: &[Entry], previous: Option<&Snapshot>, _: &Config) -> Current {
        let mut current = vec![0; entries.len()];
        let carried = previous.and_then(|p| Some((&p.entries, p.state::<Current>()?)));
        if let Some((old_entries, old_state)) = carried {
            let old = old_state.0.lock();
            let old: HashMap<SocketAddr, i64> = old_entries
                .iter()
                .zip(old.iter())
                .map(|(e, &c)| (e.spec.addr, c))
                .collect();
            for (slot, entry) in current.iter_mut().zip(entries) {
                *slot = old.get(&entry.spec.addr).copied().unwrap_or(0);
            }
        }
        Current(parking_lot::Mutex::new(current))
    }

    fn pick(&self, view: &View<'_, Current>, _: &PickContext) -> Option<usize> {
        let mut current = view.state().0.lock();
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        let mut best_current = i64::MIN;
        for (i, (entry, slot)) in view.entries().iter().zip(current.iter_mut()).enumerate() {
            if !view.accepts(entry) {
                continue;
            }
            let weight = i64::from(view.weight_of(entry));
            *slot += weight;
            total += weight;
            if *slot > best_current {
                best = Some(i);
                best_current = *slot;
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use crate::{LoadBalancer, PickContext, Provider, Strategy};

    #[test]
    fn an_unavailable_provider_is_left_out_of_the_rotation() {
        let addrs: Vec<std::net::SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        let lb = LoadBalancer::new("test.Service", Strategy::WeightedRoundRobin);
        lb.update(
            addrs
                .iter()
                .zip([5, 1, 1])
                .map(|(&a, w)| Provider::new(a).weight(w)),
        );
        lb.set_draining(addrs[0], true);
        let pick = || lb.pick(&PickContext::new()).unwrap().addr();
        let picks: Vec<_> = (0..4).map(|_| pick()).collect();
        assert_eq!(picks, [addrs[1], addrs[2], addrs[1], addrs[2]]);
        // Back in, it resumes from where it was and gets its share again.
        lb.set_draining(addrs[0], false);
        let picks: Vec<_> = (0..7).map(|_| pick()).collect();
        assert_eq!(picks.iter().filter(|&&a| a == addrs[0]).count(), 5);
    }
}

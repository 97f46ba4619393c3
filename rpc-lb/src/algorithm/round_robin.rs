//! `round-robin`: each available provider in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Algorithm;
use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

/// Plain round-robin over the entries. An unavailable entry's turns are spread in
/// turn over the available ones, so every available provider gets an equal share.
/// Weights are ignored except that weight 0 is never picked.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    /// The turn counter, shared by all threads; one atomic add per pick.
    next: AtomicUsize,
    /// Turns of unavailable entries handed on so far (see [`View::turn`]).
    spill: AtomicUsize,
}

impl Algorithm for RoundRobin {
    type State = ();

    fn prepare(&self, _: &[Entry], _: Option<&Snapshot>, _: &Config) {}

    fn pick(&self, view: &View<'_, ()>, _: &PickContext) -> Option<usize> {
        view.turn(self.next.fetch_add(1, Ordering::Relaxed), &self.spill)
    }
}

#[cfg(test)]
mod tests {
    use crate::{LoadBalancer, PickContext, Provider, Strategy};

    #[test]
    fn survivors_share_a_down_providers_turns_equally() {
        let addrs: Vec<std::net::SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        for down in 0..3 {
            let lb = LoadBalancer::new("test.Service", Strategy::RoundRobin);
            lb.update(addrs.iter().copied().map(Provider::new));
            lb.set_healthy(addrs[down], false);
            // Two windows of 30 calls, as a user would count them.
            for _ in 0..2 {
                let mut counts = std::collections::HashMap::new();
                for _ in 0..30 {
                    *counts
                        .entry(lb.pick(&PickContext::new()).unwrap().addr())
                        .or_insert(0) += 1;
                }
                assert_eq!(counts.len(), 2, "{counts:?}");
                assert!(counts.values().all(|&c| c == 15), "down {down}: {counts:?}");
            }
        }
    }

    #[test]
    fn skipped_provider_turn_goes_to_a_survivor() {
        let addrs: Vec<std::net::SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        let lb = LoadBalancer::new("test.Service", Strategy::RoundRobin);
        lb.update(addrs.iter().copied().map(Provider::new));
        lb.set_healthy(addrs[1], false);
        let picks: Vec<_> = (0..6)
            .map(|_| lb.pick(&PickContext::new()).unwrap().addr())
            .collect();
        let expected = [addrs[0], addrs[0], addrs[2], addrs[0], addrs[2], addrs[2]];
        assert_eq!(picks, expected);
    }
}

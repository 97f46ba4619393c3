//! `round-robin`: each available provider in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Algorithm;
use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

/// Plain round-robin over the entries, skipping unavailable ones (the next
/// available entry takes a skipped one's turn). Weights are ignored except
/// that weight 0 is never picked.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    /// The turn counter, shared by all threads; one atomic add per pick.
    next: AtomicUsize,
}

impl Algorithm for RoundRobin {
    type State = ();

    fn prepare(&self, _: &[Entry], _: Option<&Snapshot<()>>, _: &Config) {}

    fn pick(&self, view: &View<'_, ()>, _: &PickContext) -> Option<usize> {
        let n = view.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (start..n).chain(0..start).find(|&i| view.is_available(i))
    }
}

#[cfg(test)]
mod tests {
    use crate::{LoadBalancer, PickContext, Provider, Strategy};

    #[test]
    fn skipped_provider_turn_goes_to_the_next() {
        let addrs: Vec<std::net::SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        let lb = LoadBalancer::new("test.Service", Strategy::RoundRobin);
        lb.update(addrs.iter().copied().map(Provider::new));
        lb.set_healthy(addrs[1], false);
        let picks: Vec<_> = (0..6)
            .map(|_| lb.pick(&PickContext::new()).unwrap().addr())
            .collect();
        let expected = [addrs[0], addrs[2], addrs[2], addrs[0], addrs[2], addrs[2]];
        assert_eq!(picks, expected);
    }
}

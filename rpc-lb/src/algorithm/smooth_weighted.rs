//! `weighted-round-robin`: nginx's smooth weighted round-robin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

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
pub(crate) struct Current(Mutex<Vec<i64>>);

impl Algorithm for SmoothWeighted {
    type State = Current;

    /// Carries each staying provider's current weight over by address, so a
    /// discovery update does not restart the sequence.
    fn prepare(&self, entries: &[Entry], previous: Option<&Snapshot<Current>>, _: &Config) -> Current {
        let mut current = vec![0; entries.len()];
        if let Some(previous) = previous {
            let old = previous.state.0.lock().unwrap_or_else(PoisonError::into_inner);
            let old: HashMap<SocketAddr, i64> = previous
                .entries
                .iter()
                .zip(old.iter())
                .map(|(e, &c)| (e.spec.addr, c))
                .collect();
            for (slot, entry) in current.iter_mut().zip(entries) {
                *slot = old.get(&entry.spec.addr).copied().unwrap_or(0);
            }
        }
        Current(Mutex::new(current))
    }

    fn pick(&self, view: &View<'_, Current>, _: &PickContext) -> Option<usize> {
        let mut current = view.state().0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        let mut best_current = i64::MIN;
        for (i, slot) in current.iter_mut().enumerate() {
            if !view.is_available(i) {
                continue;
            }
            let weight = i64::from(view.weight(i));
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

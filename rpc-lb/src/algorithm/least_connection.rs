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
}

impl LeastConnection {
    pub(crate) fn new(weighted: bool) -> Self {
        Self {
            weighted,
            next: AtomicUsize::new(0),
        }
    }
}

impl Algorithm for LeastConnection {
    type State = ();

    fn prepare(&self, _: &[Entry], _: Option<&Snapshot<()>>, _: &Config) {}

    fn pick(&self, view: &View<'_, ()>, _: &PickContext) -> Option<usize> {
        let n = view.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // (index, in flight, weight); compared as fractions by cross
        // multiplication, which is exact in u64 for u32 weights.
        let mut best: Option<(usize, u64, u64)> = None;
        for i in (start..n).chain(0..start) {
            if !view.is_available(i) {
                continue;
            }
            let in_flight = view.entry(i).stats.in_flight() as u64;
            if in_flight == 0 {
                return Some(i);
            }
            let weight = if self.weighted {
                u64::from(view.weight(i))
            } else {
                1
            };
            let better = match best {
                None => true,
                Some((_, best_in_flight, best_weight)) => {
                    u128::from(in_flight) * u128::from(best_weight)
                        < u128::from(best_in_flight) * u128::from(weight)
                }
            };
            if better {
                best = Some((i, in_flight, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

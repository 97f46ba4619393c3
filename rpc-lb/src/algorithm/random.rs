//! `random` and `weighted-random`.

use rand::Rng;

use super::{with_rng, Algorithm};
use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

/// How many rejection-sampling draws to try before an exact linear scan.
/// With half the providers unavailable, 8 draws all miss once in 256 picks.
const DRAWS: usize = 8;

/// Random choice among available providers: uniform, or proportional to
/// weight (warm-up included).
///
/// Both use rejection sampling over a distribution fixed at update time: draw
/// an entry (uniformly, or by binary search in the cumulative listed
/// weights), and accept it if it is available and, when it is warming up, with
/// probability `effective / full` weight. Accepted draws are distributed
/// exactly as the current weights say, and a pick is O(1) (uniform) or
/// O(log n) (weighted) while most providers are available. If every draw is
/// rejected, an exact O(n) scan decides.
#[derive(Debug)]
pub(crate) struct Random {
    /// Proportional to weight rather than uniform.
    weighted: bool,
}

impl Random {
    pub(crate) fn new(weighted: bool) -> Self {
        Self { weighted }
    }
}

/// Running sums of the listed entries' full weights (0 for entries discovery
/// does not list), so a draw is one binary search.
#[derive(Debug)]
pub(crate) struct Cumulative(Box<[u64]>);

impl Cumulative {
    fn total(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }
}

impl Algorithm for Random {
    type State = Cumulative;

    fn prepare(&self, entries: &[Entry], _: Option<&Snapshot>, _: &Config) -> Cumulative {
        let mut sum = 0;
        let sums = entries
            .iter()
            .map(|e| {
                if e.spec.healthy && !e.spec.draining {
                    sum += u64::from(e.spec.weight);
                }
                sum
            })
            .collect();
        Cumulative(sums)
    }

    fn pick(&self, view: &View<'_, Cumulative>, _: &PickContext) -> Option<usize> {
        if self.weighted {
            pick_weighted(view)
        } else {
            pick_uniform(view)
        }
    }
}

/// A uniformly random available entry; also `ip-hash`'s pick without a key.
pub(super) fn pick_uniform<S>(view: &View<'_, S>) -> Option<usize> {
    let n = view.len();
    if n == 0 {
        return None;
    }
    let drawn = with_rng(|rng| {
        (0..DRAWS)
            .map(|_| rng.gen_range(0..n))
            .find(|&i| view.is_available(i))
    });
    if drawn.is_some() {
        return drawn;
    }
    let available = view.count_available();
    if available == 0 {
        return None;
    }
    let nth = with_rng(|rng| rng.gen_range(0..available));
    view.nth_available(nth)
}

fn pick_weighted(view: &View<'_, Cumulative>) -> Option<usize> {
    let sums = &view.state().0;
    let total = view.state().total();
    if total == 0 {
        return None;
    }
    let drawn = with_rng(|rng| {
        (0..DRAWS).find_map(|_| {
            let target = rng.gen_range(0..total);
            let i = sums.partition_point(|&sum| sum <= target);
            if !view.is_available(i) {
                return None;
            }
            let full = view.entry(i).spec.weight;
            let effective = view.weight(i);
            (effective >= full || rng.gen_range(0..full) < effective).then_some(i)
        })
    });
    if drawn.is_some() {
        return drawn;
    }
    // Exact fallback: sum the current weights of the available entries.
    let total: u64 = (0..view.len())
        .filter(|&i| view.is_available(i))
        .map(|i| u64::from(view.weight(i)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut target = with_rng(|rng| rng.gen_range(0..total));
    (0..view.len())
        .filter(|&i| view.is_available(i))
        .find(|&i| {
            let weight = u64::from(view.weight(i));
            if target < weight {
                true
            } else {
                target -= weight;
                false
            }
        })
}

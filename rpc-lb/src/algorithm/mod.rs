//! The balancing algorithms, one file each, behind the crate-private
//! [`Algorithm`] trait that [`Live`](crate::set::Live) drives (through
//! [`Balance`](crate::set::Balance), which erases the state's type).
//!
//! An algorithm sees the provider set through a [`View`], which answers
//! "may entry `i` take a call now?" and "what is its weight now?" (warm-up
//! included), and returns an entry index. What it can precompute from a
//! provider list it builds in [`Algorithm::prepare`], once per update.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::config::Config;
use crate::context::PickContext;
use crate::set::{Entry, Snapshot, View};

mod adaptive;
mod ip_hash;
mod least_connection;
mod random;
mod round_robin;
mod smooth_weighted;

pub(crate) use adaptive::Adaptive;
pub(crate) use ip_hash::IpHash;
pub(crate) use least_connection::LeastConnection;
pub(crate) use random::Random;
pub(crate) use round_robin::RoundRobin;
pub(crate) use smooth_weighted::SmoothWeighted;

/// A balancing algorithm.
pub(crate) trait Algorithm: Send + Sync + fmt::Debug + 'static {
    /// What the algorithm derives from one provider list.
    type State: Send + Sync + fmt::Debug + 'static;

    /// Whether picks read the providers' latency estimates, which then must be kept
    /// up to date on every call.
    const READS_LATENCY: bool = false;

    /// Whether picks read the providers' in-flight counts, which then must be kept
    /// up to date on every call.
    const READS_LOAD: bool = false;

    /// Builds the state for `entries`; `previous` is the snapshot being
    /// replaced (`None` for the initial empty set), whose state (this
    /// algorithm's, see [`Snapshot::state`]) may be carried over for providers
    /// that stay.
    fn prepare(
        &self,
        entries: &[Entry],
        previous: Option<&Snapshot>,
        config: &Config,
    ) -> Self::State;

    /// Picks the index of an available entry, or `None` when none is
    /// available.
    fn pick(&self, view: &View<'_, Self::State>, ctx: &PickContext) -> Option<usize>;
}

thread_local! {
    /// A fast, non-cryptographic generator per thread: picks need speed and
    /// independence between threads, not unpredictability.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
}

/// Runs `f` with this thread's random number generator.
fn with_rng<R>(f: impl FnOnce(&mut SmallRng) -> R) -> R {
    RNG.with(|rng| f(&mut rng.borrow_mut()))
}

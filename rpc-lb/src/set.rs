//! The live provider set: an immutable snapshot per update, swapped
//! atomically, and the per-pick [`View`] through which algorithms see it.
//!
//! Picks never take a lock here: they load the current snapshot through
//! `arc-swap` and read per-provider atomics. Updates build a whole new
//! snapshot (carrying over the state of providers that stay) and swap it in;
//! picks already running finish on the old one. Health and draining marks are
//! atomics in each provider's shared [`ProviderStats`], so marking a provider
//! needs no rebuild and is seen by the very next pick.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::algorithm::Algorithm;
use crate::config::Config;
use crate::context::PickContext;
use crate::picked::Picked;
use crate::provider::{warmed_weight, Provider};
use crate::stats::ProviderStats;

/// One provider in a snapshot.
#[derive(Debug)]
pub(crate) struct Entry {
    /// What discovery said in the update that built this snapshot.
    pub(crate) spec: Provider,
    /// Run-time state, shared by every snapshot the address is part of.
    pub(crate) stats: Arc<ProviderStats>,
    /// `weight > 0 && healthy && !draining` per the spec, computed once per
    /// update so a pick checks one bool before any atomic.
    listed: bool,
}

/// An immutable provider list plus the algorithm's state derived from it.
pub(crate) struct Snapshot {
    pub(crate) entries: Box<[Entry]>,
    /// What the algorithm precomputed for exactly these entries (the hash
    /// ring, cumulative weights, smooth round-robin positions), of a type only
    /// the algorithm knows (see [`Snapshot::state`]).
    state: Box<dyn Any + Send + Sync>,
    /// The latest instant at which some entry is still warming up, if any.
    warm_until: Option<Instant>,
    /// Cleared by the first pick that reads the clock past `warm_until`, so
    /// that afterwards weighted picks read no clock at all.
    warming: AtomicBool,
}

impl Snapshot {
    /// The index of the provider at `addr`, if it is in this snapshot.
    fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.addr == addr)
    }

    /// The algorithm's state for these entries, if it is an `S` (it always is
    /// for the algorithm that prepared it).
    pub(crate) fn state<S: 'static>(&self) -> Option<&S> {
        self.state.downcast_ref()
    }

    fn new(entries: Box<[Entry]>, state: Box<dyn Any + Send + Sync>, warm_up: Duration) -> Self {
        let warm_until = entries
            .iter()
            .filter_map(|e| e.spec.started_at)
            .max()
            .and_then(|start| start.checked_add(warm_up));
        Self {
            entries,
            state,
            warm_until,
            warming: AtomicBool::new(warm_until.is_some()),
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("entries", &self.entries)
            .field("warm_until", &self.warm_until)
            .finish_non_exhaustive()
    }
}

/// A snapshot as seen by one pick: availability and effective weights at one
/// instant, read from the clock at most once.
pub(crate) struct View<'a, S> {
    snapshot: &'a Snapshot,
    /// The algorithm's state, out of the snapshot.
    state: &'a S,
    warm_up: Duration,
    /// The pick's time: from the context, or read lazily on first need.
    now: Cell<Option<Instant>>,
    /// Whether `now` came from the context; an injected time must not clear
    /// the snapshot's `warming` flag, which is about real time.
    injected: bool,
    /// Providers this pick must not return (a retry or a hedge avoiding the
    /// providers already tried); empty for an ordinary pick.
    exclude: &'a [SocketAddr],
}

impl<'a, S> View<'a, S> {
    pub(crate) fn new(
        snapshot: &'a Snapshot,
        state: &'a S,
        ctx: &PickContext,
        warm_up: Duration,
        exclude: &'a [SocketAddr],
    ) -> Self {
        Self {
            snapshot,
            state,
            warm_up,
            now: Cell::new(ctx.now),
            injected: ctx.now.is_some(),
            exclude,
        }
    }

    /// The number of entries (available or not).
    pub(crate) fn len(&self) -> usize {
        self.snapshot.entries.len()
    }

    pub(crate) fn entry(&self, i: usize) -> &'a Entry {
        &self.snapshot.entries[i]
    }

    /// The algorithm's state for this snapshot.
    pub(crate) fn state(&self) -> &'a S {
        self.state
    }

    /// The pick's time.
    pub(crate) fn now(&self) -> Instant {
        match self.now.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.now.set(Some(now));
                now
            }
        }
    }

    /// All entries, available or not, for algorithms that scan.
    pub(crate) fn entries(&self) -> &'a [Entry] {
        &self.snapshot.entries
    }

    /// Whether `entry` may take a new call: listed by discovery (weight > 0,
    /// healthy, not draining), not marked down or draining by the client, and
    /// not excluded from this pick.
    #[inline]
    pub(crate) fn accepts(&self, entry: &Entry) -> bool {
        entry.listed
            && entry.stats.accepts_calls(|| self.now())
            && (self.exclude.is_empty() || !self.exclude.contains(&entry.spec.addr))
    }

    /// Whether entry `i` may take a new call (see [`accepts`](Self::accepts)).
    #[inline]
    pub(crate) fn is_available(&self, i: usize) -> bool {
        self.accepts(&self.snapshot.entries[i])
    }

    /// `entry`'s weight after warm-up (at least 1 when the spec weight is not
    /// 0).
    #[inline]
    pub(crate) fn weight_of(&self, entry: &Entry) -> u32 {
        match entry.spec.started_at {
            Some(started_at) if self.is_warming() => {
                warmed_weight(entry.spec.weight, started_at, self.now(), self.warm_up)
            }
            _ => entry.spec.weight,
        }
    }

    /// Entry `i`'s weight after warm-up (see [`weight_of`](Self::weight_of)).
    pub(crate) fn weight(&self, i: usize) -> u32 {
        self.weight_of(&self.snapshot.entries[i])
    }

    fn is_warming(&self) -> bool {
        let snapshot = self.snapshot;
        if !snapshot.warming.load(Ordering::Relaxed) {
            return false;
        }
        match snapshot.warm_until {
            Some(until) if self.now() < until => true,
            _ => {
                if !self.injected {
                    snapshot.warming.store(false, Ordering::Relaxed);
                }
                false
            }
        }
    }

    /// How many entries are available.
    pub(crate) fn count_available(&self) -> usize {
        self.entries().iter().filter(|e| self.accepts(e)).count()
    }

    /// Where a rotation's turn `turn` lands: entry `turn % len` when it is available,
    /// else an available entry chosen in turn by `spill`, a counter of such lost turns.
    ///
    /// Handing an unavailable entry's turn to its neighbour instead would give that
    /// neighbour two turns per round (three providers, one down: 20 / 10 calls, not
    /// 15 / 15); spreading the lost turns round-robin over the survivors keeps their
    /// shares equal, and the common case (the turn's entry is up) stays O(1).
    pub(crate) fn turn(&self, turn: usize, spill: &AtomicUsize) -> Option<usize> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let own = turn % n;
        if self.is_available(own) {
            return Some(own);
        }
        let available = self.count_available();
        if available == 0 {
            return None;
        }
        self.nth_available(spill.fetch_add(1, Ordering::Relaxed) % available)
    }

    /// The index of the `n`th available entry (0-based), in entry order.
    pub(crate) fn nth_available(&self, n: usize) -> Option<usize> {
        let mut available = self
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| self.accepts(e));
        available.nth(n).map(|(i, _)| i)
    }
}

/// A snapshot and what the balancer's owner attached to each of its providers
/// (`attached[i]` belongs to `snapshot.entries[i]`), swapped in together so that a
/// pick finds its provider's value with no second lookup.
struct Current<T> {
    snapshot: Snapshot,
    attached: Box<[T]>,
}

/// An [`Algorithm`] with its state's type erased, so that a [`Live`] set (and
/// [`LoadBalancer`](crate::LoadBalancer)) is one concrete type whatever the
/// strategy, and everything but the algorithm's own pick is inlined into the
/// caller.
pub(crate) trait Balance: Send + Sync + fmt::Debug {
    /// [`Algorithm::prepare`], boxed.
    fn prepare(
        &self,
        entries: &[Entry],
        previous: Option<&Snapshot>,
        config: &Config,
    ) -> Box<dyn Any + Send + Sync>;

    /// [`Algorithm::pick`] over `snapshot`, which this algorithm prepared.
    fn pick(
        &self,
        snapshot: &Snapshot,
        ctx: &PickContext,
        warm_up: Duration,
        exclude: &[SocketAddr],
    ) -> Option<usize>;
}

impl<A: Algorithm> Balance for A {
    fn prepare(
        &self,
        entries: &[Entry],
        previous: Option<&Snapshot>,
        config: &Config,
    ) -> Box<dyn Any + Send + Sync> {
        Box::new(Algorithm::prepare(self, entries, previous, config))
    }

    fn pick(
        &self,
        snapshot: &Snapshot,
        ctx: &PickContext,
        warm_up: Duration,
        exclude: &[SocketAddr],
    ) -> Option<usize> {
        let state = snapshot
            .state::<A::State>()
            .expect("a snapshot's state is prepared by the set's own algorithm");
        let view = View::new(snapshot, state, ctx, warm_up, exclude);
        Algorithm::pick(self, &view, ctx)
    }
}

/// A live provider set balanced by one algorithm, each provider carrying a `T`.
pub(crate) struct Live<T> {
    algorithm: Box<dyn Balance>,
    current: ArcSwap<Current<T>>,
    config: Config,
    /// Whether the algorithm reads the providers' in-flight counts (or the
    /// config asks for statistics): then every provider counts them.
    tracks_load: bool,
    /// Whether the algorithm reads the providers' latency (or the config asks
    /// for statistics): then every provider estimates it.
    tracks_latency: bool,
    /// Serialises updates, so two racing updates cannot both carry over from
    /// the same old snapshot and lose one another's providers.
    writer: Mutex<()>,
}

impl<T> Live<T> {
    pub(crate) fn new<A: Algorithm>(algorithm: A, config: Config) -> Self {
        // Fix the epoch of the providers' timestamps now, before any call is timed.
        crate::clock::epoch();
        let state = Balance::prepare(&algorithm, &[], None, &config);
        Self {
            current: ArcSwap::from_pointee(Current {
                snapshot: Snapshot::new(Box::new([]), state, config.warm_up),
                attached: Box::new([]),
            }),
            algorithm: Box::new(algorithm),
            tracks_load: A::READS_LOAD || config.track_stats,
            tracks_latency: A::READS_LATENCY || config.track_stats,
            config,
            writer: Mutex::new(()),
        }
    }

    /// Whether this set's providers keep any statistics (known without reading
    /// them, so a pick of a strategy that keeps none touches no shared line).
    #[inline]
    fn keeps_stats(&self) -> bool {
        self.tracks_load || self.tracks_latency
    }

    /// The index of the provider picked in `snapshot`.
    #[inline]
    fn pick_in(
        &self,
        snapshot: &Snapshot,
        ctx: &PickContext,
        exclude: &[SocketAddr],
    ) -> Option<usize> {
        // One provider: every strategy picks it if it may take the call, so no
        // algorithm (no call through its vtable, no random draw or shared
        // counter) is needed.
        if snapshot.entries.len() == 1 {
            View::new(snapshot, &(), ctx, self.config.warm_up, exclude)
                .is_available(0)
                .then_some(0)
        } else {
            self.algorithm
                .pick(snapshot, ctx, self.config.warm_up, exclude)
        }
    }

    /// Entry `i` of `snapshot`, counted in flight for one call.
    #[inline]
    fn picked(&self, snapshot: &Snapshot, i: usize) -> Picked {
        let entry = &snapshot.entries[i];
        Picked::new(entry.spec.addr, &entry.stats, self.keeps_stats())
    }

    /// Picks a provider outside `exclude`.
    pub(crate) fn pick(&self, ctx: &PickContext, exclude: &[SocketAddr]) -> Option<Picked> {
        let current = self.current.load();
        let i = self.pick_in(&current.snapshot, ctx, exclude)?;
        Some(self.picked(&current.snapshot, i))
    }

    /// A pick that also hands the picked provider's attached value to `with`,
    /// read from the same snapshot.
    #[inline]
    pub(crate) fn pick_with<R>(
        &self,
        ctx: &PickContext,
        with: impl FnOnce(&T) -> R,
    ) -> Option<(Picked, R)> {
        let current = self.current.load();
        let i = self.pick_in(&current.snapshot, ctx, &[])?;
        let made = with(&current.attached[i]);
        Some((self.picked(&current.snapshot, i), made))
    }

    /// The provider at `addr`, whatever its marks; `None` if it is not in the set.
    pub(crate) fn pick_addr(&self, addr: SocketAddr) -> Option<Picked> {
        let current = self.current.load();
        let i = current.snapshot.position(addr)?;
        Some(self.picked(&current.snapshot, i))
    }

    /// What `with` makes of the value attached to the provider at `addr`; `None`
    /// if `addr` is not in the set.
    pub(crate) fn with_attached<R>(
        &self,
        addr: SocketAddr,
        with: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let current = self.current.load();
        let i = current.snapshot.position(addr)?;
        Some(with(&current.attached[i]))
    }

    /// Hands every provider's address and attached value to `with`.
    pub(crate) fn each_attached(&self, mut with: impl FnMut(SocketAddr, &T)) {
        let current = self.current.load();
        for (entry, attached) in current.snapshot.entries.iter().zip(&*current.attached) {
            with(entry.spec.addr, attached);
        }
    }

    /// Replaces the provider set (see
    /// [`LoadBalancer::update_carrying`](crate::LoadBalancer::update_carrying)).
    pub(crate) fn update(&self, providers: impl IntoIterator<Item = (Provider, T)>) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old_current = self.current.load_full();
        let old = &old_current.snapshot;
        let old_stats: HashMap<SocketAddr, &Arc<ProviderStats>> = old
            .entries
            .iter()
            .map(|e| (e.spec.addr, &e.stats))
            .collect();

        // The same address listed twice: the later spec wins, at the place of
        // the first, so the set never holds one provider twice.
        let providers = providers.into_iter();
        let (capacity, _) = providers.size_hint();
        let mut position: HashMap<SocketAddr, usize> = HashMap::with_capacity(capacity);
        let mut entries: Vec<Entry> = Vec::with_capacity(capacity);
        let mut attached: Vec<T> = Vec::with_capacity(capacity);
        for (spec, value) in providers {
            let listed = spec.weight > 0 && spec.healthy && !spec.draining;
            if let Some(&at) = position.get(&spec.addr) {
                entries[at].spec = spec;
                entries[at].listed = listed;
                attached[at] = value;
                continue;
            }
            let stats = match old_stats.get(&spec.addr) {
                Some(stats) => Arc::clone(stats),
                None => Arc::new(ProviderStats::new(
                    self.config.latency_decay,
                    self.tracks_load,
                    self.tracks_latency,
                )),
            };
            position.insert(spec.addr, entries.len());
            entries.push(Entry {
                spec,
                stats,
                listed,
            });
            attached.push(value);
        }

        let state = self.algorithm.prepare(&entries, Some(old), &self.config);
        let snapshot = Snapshot::new(entries.into_boxed_slice(), state, self.config.warm_up);
        self.current.store(Arc::new(Current {
            snapshot,
            attached: attached.into_boxed_slice(),
        }));
    }

    /// The statistics of the provider at `addr`, if it is in the set.
    pub(crate) fn stats(&self, addr: SocketAddr) -> Option<Arc<ProviderStats>> {
        let current = self.current.load();
        let i = current.snapshot.position(addr)?;
        Some(Arc::clone(&current.snapshot.entries[i].stats))
    }

    /// The providers, as discovery last listed them.
    pub(crate) fn providers(&self) -> Vec<Provider> {
        let current = self.current.load();
        current
            .snapshot
            .entries
            .iter()
            .map(|e| e.spec.clone())
            .collect()
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

impl<T> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("Live")
            .field("algorithm", &self.algorithm)
            .field("providers", &current.snapshot.entries.len())
            .finish_non_exhaustive()
    }
}

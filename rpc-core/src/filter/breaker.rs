//! Circuit breaking per provider: a provider that fails too many calls is taken out of
//! the balancer's set for a cool-down, then probed back with a few calls.
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_core::filter::breaker::BreakerLayer;
//! # async fn run(providers: Vec<rpc_core::lb::Provider>) -> Result<(), rpc_core::RpcError> {
//! let breaker = BreakerLayer::builder()
//!     .failure_rate(0.5)
//!     .min_calls(20)
//!     .window(Duration::from_secs(10))
//!     .cool_down(Duration::from_secs(5))
//!     .build()?;
//! let client = rpc_core::Client::builder()
//!     .layer(breaker.clone())
//!     .connect_providers("shop.Catalog", providers)
//!     .await?;
//! for circuit in breaker.circuits() {
//!     println!("{} is {:?}", circuit.provider, circuit.state);
//! }
//! # Ok(()) }
//! ```
//!
//! # Semantics
//!
//! Each provider (each server address the client's calls reach) has a circuit:
//!
//! - **Closed** (the start): calls flow. Over a sliding window (default 10 s) it counts
//!   the calls that reached the provider and those that failed. Once the window holds
//!   at least `min_calls` calls (default 20) and at least `failure_rate` of them
//!   (default 0.5) failed, the circuit **opens**.
//! - **Open**: the provider is out of the balancer's set
//!   ([`LoadBalancer::mark_unhealthy_for`](rpc_lb::LoadBalancer::mark_unhealthy_for))
//!   for the cool-down (default 5 s): no call is sent to it. When every provider's
//!   circuit is open, calls fail with [`RpcError::NoProvider`] (a
//!   [fallback](crate::filter::fallback) answers those). On a single-server client,
//!   which has no balancer, the breaker itself fails calls with `NoProvider` while the
//!   circuit is open.
//! - **Half-open**, once the cool-down has passed: the next calls through the breaker
//!   are sent to the provider as probes (pinned to it, whatever the balancer picked),
//!   at most `probes` at a time (default 3), while the balancer keeps it out for
//!   every other call. When `probes` probes have succeeded, the circuit **closes**
//!   (its window starts empty and the provider is back in the set). A probe that
//!   fails **reopens** it with twice the previous cool-down, up to `max_cool_down`
//!   (default 60 s); a circuit that closes starts again from the first cool-down.
//!
//! # What counts
//!
//! A call counts as failed when the provider (or the way to it) is failing:
//! [`is_provider_failure`] — a timeout, a
//! connection that could not be made or broke, a request not sent, OVERLOADED,
//! INTERNAL, a protocol violation, a server shutting down. A call answered, even with
//! the method's own application error, counts as a success. Errors that say nothing
//! about the provider's health — a bad request, an unknown service or method, a
//! refused token, a serialization error, no provider at all, a filter's own refusal —
//! are not counted either way.
//!
//! Failures the transport routes around by itself (a provider that cannot be reached
//! is skipped for the reconnect backoff and the call tried on another) reach the
//! breaker only when they are a call's outcome. Put the breaker after (inside) a
//! [cluster](crate::filter::cluster) layer so it sees every attempt.
//!
//! # Errors
//!
//! [`BreakerBuilder::build`] refuses, with [`RpcError::InvalidConfig`]: a failure rate
//! outside `(0, 1]`, zero minimum calls or probes, a window under 10 ms, a zero
//! cool-down, a maximum cool-down below the cool-down.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::window::SlidingWindow;
use super::{
    is_provider_failure, provider_of, rpc_error_of, BoxError, ClientRequest, ClientResponse,
};
use crate::client::Balancer;
use crate::error::RpcError;
use crate::Client;

/// Builds a [`BreakerLayer`]; see the [module docs](self) for the semantics.
#[derive(Debug, Clone)]
pub struct BreakerBuilder {
    /// See [`failure_rate`](Self::failure_rate).
    failure_rate: f64,
    /// See [`min_calls`](Self::min_calls).
    min_calls: u64,
    /// See [`window`](Self::window).
    window: Duration,
    /// See [`cool_down`](Self::cool_down).
    cool_down: Duration,
    /// See [`max_cool_down`](Self::max_cool_down).
    max_cool_down: Duration,
    /// See [`probes`](Self::probes).
    probes: usize,
}

impl Default for BreakerBuilder {
    fn default() -> Self {
        BreakerBuilder {
            failure_rate: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            max_cool_down: Duration::from_secs(60),
            probes: 3,
        }
    }
}

impl BreakerBuilder {
    /// The share of failed calls in the window that opens the circuit, in `(0, 1]`.
    /// Default 0.5.
    ///
    /// ```
    /// let b = rpc_core::filter::breaker::BreakerLayer::builder().failure_rate(0.3);
    /// ```
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = rate;
        self
    }

    /// The fewest calls in the window for the circuit to open (so that two failures
    /// out of three calls do not). Default 20.
    ///
    /// ```
    /// let b = rpc_core::filter::breaker::BreakerLayer::builder().min_calls(50);
    /// ```
    pub fn min_calls(mut self, calls: u64) -> Self {
        self.min_calls = calls;
        self
    }

    /// How far back calls count (a sliding window of ten slots). Default 10 s.
    ///
    /// ```
    /// let b = rpc_core::filter::breaker::BreakerLayer::builder()
    ///     .window(std::time::Duration::from_secs(30));
    /// ```
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long an open circuit keeps its provider out, the first time. Default 5 s.
    ///
    /// ```
    /// let b = rpc_core::filter::breaker::BreakerLayer::builder()
    ///     .cool_down(std::time::Duration::from_secs(2));
    /// ```
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// The longest cool-down, however often a provider fails its probes. Default 60 s.
    ///
    /// ```
    /// let b = rpc_core::filter::breaker::BreakerLayer::builder()
    ///     .max_cool_down(std::time::Duration::from_secs(30));
    /// ```
    pub fn max_cool_down(mut self, max: Duration) -> Self {
        self.max_cool_down = max;
        self
    }

    /// How many probes a half-open circuit sends at a time, and how many must succeed
    /// for it to close. Default 3.
    ///
    /// ```
    /// let b = rpc_core::filter::breaker::BreakerLayer::builder().probes(1);
    /// ```
    pub fn probes(mut self, probes: usize) -> Self {
        self.probes = probes;
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a bad setting; see the [module docs](self#errors).
    pub fn build(self) -> Result<BreakerLayer, RpcError> {
        let invalid = |m: String| Err(RpcError::InvalidConfig(format!("circuit breaker: {m}")));
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return invalid(format!(
                "the failure rate must be in (0, 1], not {}",
                self.failure_rate
            ));
        }
        if self.min_calls == 0 {
            return invalid("the minimum number of calls must be at least 1".to_owned());
        }
        if self.probes == 0 {
            return invalid("at least one probe is needed to close a circuit".to_owned());
        }
        if self.window < Duration::from_millis(10) {
            return invalid(format!(
                "the window must be at least 10 ms, not {:?}",
                self.window
            ));
        }
        if self.cool_down.is_zero() {
            return invalid("the cool-down must be more than zero".to_owned());
        }
        if self.max_cool_down < self.cool_down {
            return invalid(format!(
                "the maximum cool-down ({:?}) is below the cool-down ({:?})",
                self.max_cool_down, self.cool_down
            ));
        }
        Ok(BreakerLayer {
            shared: Arc::new(Breakers {
                settings: self,
                circuits: RwLock::new(HashMap::new()),
                not_closed: AtomicUsize::new(0),
            }),
        })
    }
}

/// Where a circuit is; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls flow; failures are counted.
    Closed,
    /// The provider is out until the cool-down ends.
    Open {
        /// What is left of the cool-down.
        remaining: Duration,
    },
    /// Probes are being sent.
    HalfOpen {
        /// Probes sent and not answered yet.
        probes_in_flight: usize,
        /// Probes that succeeded so far.
        successes: usize,
    },
}

/// One circuit as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitSnapshot {
    /// The provider.
    pub provider: SocketAddr,
    /// Its state.
    pub state: CircuitState,
    /// Calls counted in the current window (closed circuits).
    pub calls: u64,
    /// Failures counted in the current window (closed circuits).
    pub failures: u64,
    /// How often the circuit has opened.
    pub trips: u64,
    /// The cool-down of the next (or current) opening.
    pub cool_down: Duration,
}

/// The circuit breaker layer; see the [module docs](self). Clones share the circuits,
/// so keep one to read their state.
#[derive(Clone)]
pub struct BreakerLayer {
    /// The settings and circuits.
    shared: Arc<Breakers>,
}

impl fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("settings", &self.shared.settings)
            .field("circuits", &self.circuits())
            .finish()
    }
}

impl BreakerLayer {
    /// A builder with the defaults.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }

    /// Every provider's circuit (providers the breaker has seen), by address.
    pub fn circuits(&self) -> Vec<CircuitSnapshot> {
        let now = Instant::now();
        let circuits = self.shared.circuits.read();
        let mut all: Vec<CircuitSnapshot> = circuits
            .iter()
            .map(|(addr, circuit)| circuit.snapshot(*addr, now))
            .collect();
        all.sort_by_key(|c| c.provider);
        all
    }

    /// The state of `provider`'s circuit (closed for a provider not seen yet).
    pub fn state(&self, provider: SocketAddr) -> CircuitState {
        let circuits = self.shared.circuits.read();
        circuits.get(&provider).map_or(CircuitState::Closed, |c| {
            c.snapshot(provider, Instant::now()).state
        })
    }
}

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The settings and the circuits, shared by the layer and its services.
#[derive(Debug)]
struct Breakers {
    /// The settings.
    settings: BreakerBuilder,
    /// One circuit per provider seen.
    circuits: RwLock<HashMap<SocketAddr, Arc<Circuit>>>,
    /// Circuits not closed: while none is, a call checks no circuit before it goes.
    not_closed: AtomicUsize,
}

/// One provider's circuit.
#[derive(Debug)]
struct Circuit {
    /// Its state, behind a lock held for a few instructions.
    state: Mutex<Phase>,
}

/// A circuit's state and counts.
#[derive(Debug)]
struct Phase {
    /// Where it is.
    stage: Stage,
    /// Calls and failures while closed.
    window: SlidingWindow,
    /// The next cool-down.
    cool_down: Duration,
    /// Times opened.
    trips: u64,
}

/// The stages of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Counting.
    Closed,
    /// Out until then.
    Open {
        /// When the cool-down ends.
        until: Instant,
    },
    /// Probing.
    HalfOpen {
        /// Probes out.
        in_flight: usize,
        /// Probes that succeeded.
        successes: usize,
    },
}

/// How a call went, for its provider's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Answered.
    Success,
    /// A provider failure.
    Failure,
    /// Says nothing about the provider.
    Neutral,
}

/// What the breaker decided for a call before sending it.
#[derive(Debug)]
enum Admission {
    /// Send it; its outcome is counted as an ordinary call.
    Call,
    /// Send it to this provider as a probe.
    Probe(SocketAddr),
    /// Fail it: the only server's circuit is open.
    Reject,
}

impl Circuit {
    fn snapshot(&self, provider: SocketAddr, now: Instant) -> CircuitSnapshot {
        let phase = self.state.lock();
        let (calls, failures) = phase.window.totals(now);
        let state = match phase.stage {
            Stage::Closed => CircuitState::Closed,
            Stage::Open { until } => CircuitState::Open {
                remaining: until.saturating_duration_since(now),
            },
            Stage::HalfOpen {
                in_flight,
                successes,
            } => CircuitState::HalfOpen {
                probes_in_flight: in_flight,
                successes,
            },
        };
        CircuitSnapshot {
            provider,
            state,
            calls,
            failures,
            trips: phase.trips,
            cool_down: phase.cool_down,
        }
    }
}

impl Breakers {
    /// `provider`'s circuit, made on first use.
    fn circuit(&self, provider: SocketAddr) -> Arc<Circuit> {
        if let Some(circuit) = self.circuits.read().get(&provider) {
            return Arc::clone(circuit);
        }
        let mut circuits = self.circuits.write();
        let circuit = circuits.entry(provider).or_insert_with(|| {
            Arc::new(Circuit {
                state: Mutex::new(Phase {
                    stage: Stage::Closed,
                    window: SlidingWindow::new(self.settings.window, Instant::now()),
                    cool_down: self.settings.cool_down,
                    trips: 0,
                }),
            })
        });
        Arc::clone(circuit)
    }

    /// Decides what to do with `request` before it is sent: probe a provider whose
    /// cool-down is over, or, on a single-server client, refuse while its circuit is
    /// open.
    fn admit(&self, request: &ClientRequest) -> Admission {
        if self.not_closed.load(Ordering::Acquire) == 0 || request.pinned_provider().is_some() {
            return Admission::Call;
        }
        let now = Instant::now();
        if let Some(server) = request.server_addr() {
            let circuit = self.circuit(server);
            let mut phase = circuit.state.lock();
            return match self.try_probe(&mut phase, now) {
                Some(true) => Admission::Probe(server),
                Some(false) => Admission::Reject,
                None => Admission::Call,
            };
        }
        let Some(balancer) = request.balancer() else {
            return Admission::Call;
        };
        // Under the map's read lock: only a first call to a new provider takes the
        // write lock, and it takes no circuit's lock.
        let circuits = self.circuits.read();
        for (&addr, circuit) in circuits.iter() {
            if request.avoided().contains(&addr) {
                continue;
            }
            let mut phase = circuit.state.lock();
            let was_open = matches!(phase.stage, Stage::Open { .. });
            if self.try_probe(&mut phase, now) == Some(true) {
                if was_open {
                    // Half-open: the balancer keeps it out for all but the probes.
                    balancer.set_healthy(addr, false);
                }
                return Admission::Probe(addr);
            }
        }
        Admission::Call
    }

    /// For a circuit not closed: `Some(true)` when a probe may go now (taking its
    /// slot, and moving an open circuit whose cool-down is over to half-open),
    /// `Some(false)` when nothing may; `None` for a closed circuit.
    fn try_probe(&self, phase: &mut Phase, now: Instant) -> Option<bool> {
        match phase.stage {
            Stage::Closed => None,
            Stage::Open { until } if now < until => Some(false),
            Stage::Open { .. } => {
                phase.stage = Stage::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                };
                Some(true)
            }
            Stage::HalfOpen {
                in_flight,
                successes,
            } => {
                if in_flight + successes >= self.settings.probes {
                    return Some(false);
                }
                phase.stage = Stage::HalfOpen {
                    in_flight: in_flight + 1,
                    successes,
                };
                Some(true)
            }
        }
    }

    /// Counts a call's outcome on `provider`'s circuit; `probe` says whether the
    /// breaker sent it as one.
    fn record(
        &self,
        provider: SocketAddr,
        verdict: Verdict,
        probe: bool,
        balancer: Option<&Balancer>,
    ) {
        let now = Instant::now();
        let circuit = self.circuit(provider);
        let mut phase = circuit.state.lock();
        match (phase.stage, probe) {
            (Stage::Closed, _) => {
                let failed = match verdict {
                    Verdict::Success => 0,
                    Verdict::Failure => 1,
                    Verdict::Neutral => return,
                };
                phase.window.add(now, 1, failed);
                let (calls, failures) = phase.window.totals(now);
                let s = &self.settings;
                if failed == 1
                    && calls >= s.min_calls
                    && failures as f64 >= s.failure_rate * calls as f64
                {
                    self.open(&mut phase, provider, now, balancer);
                    tracing::warn!(
                        %provider,
                        calls,
                        failures,
                        cool_down = ?phase.cool_down,
                        "circuit opened: the provider is out for its cool-down"
                    );
                }
            }
            (
                Stage::HalfOpen {
                    in_flight,
                    successes,
                },
                true,
            ) => {
                let in_flight = in_flight.saturating_sub(1);
                match verdict {
                    Verdict::Neutral => {
                        phase.stage = Stage::HalfOpen {
                            in_flight,
                            successes,
                        };
                    }
                    Verdict::Success if successes + 1 >= self.settings.probes => {
                        phase.stage = Stage::Closed;
                        phase.window.clear();
                        phase.cool_down = self.settings.cool_down;
                        self.not_closed.fetch_sub(1, Ordering::AcqRel);
                        if let Some(balancer) = balancer {
                            balancer.set_healthy(provider, true);
                        }
                        tracing::info!(%provider, "circuit closed: the provider is back");
                    }
                    Verdict::Success => {
                        phase.stage = Stage::HalfOpen {
                            in_flight,
                            successes: successes + 1,
                        };
                    }
                    Verdict::Failure => {
                        // The circuit was not closed: `open` must not count it again.
                        self.not_closed.fetch_sub(1, Ordering::AcqRel);
                        phase.cool_down = (phase.cool_down * 2).min(self.settings.max_cool_down);
                        self.open(&mut phase, provider, now, balancer);
                        tracing::warn!(
                            %provider,
                            cool_down = ?phase.cool_down,
                            "circuit reopened: a probe failed"
                        );
                    }
                }
            }
            // Calls that were out when the circuit opened, or went out around it:
            // the circuit has decided already.
            (Stage::Open { .. } | Stage::HalfOpen { .. }, _) => {}
        }
    }

    /// A probe the breaker sent ended without an outcome (its caller gave up on it):
    /// its slot is free again.
    fn release_probe(&self, provider: SocketAddr) {
        let circuit = self.circuit(provider);
        let mut phase = circuit.state.lock();
        if let Stage::HalfOpen {
            in_flight,
            successes,
        } = phase.stage
        {
            phase.stage = Stage::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                successes,
            };
        }
    }

    /// Opens `phase`'s circuit for its cool-down from `now`.
    fn open(
        &self,
        phase: &mut Phase,
        provider: SocketAddr,
        now: Instant,
        balancer: Option<&Balancer>,
    ) {
        phase.stage = Stage::Open {
            until: now + phase.cool_down,
        };
        phase.trips += 1;
        self.not_closed.fetch_add(1, Ordering::AcqRel);
        if let Some(balancer) = balancer {
            balancer.mark_unhealthy_for(provider, phase.cool_down);
        }
    }
}

/// Frees a probe's slot if its call is dropped before it ends.
struct ProbeGuard {
    /// The breakers.
    shared: Arc<Breakers>,
    /// The provider probed, until the outcome is recorded.
    provider: Option<SocketAddr>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            self.shared.release_probe(provider);
        }
    }
}

/// The service of a [`BreakerLayer`]. Always ready when its inner service is.
#[derive(Clone)]
pub struct BreakerService<S> {
    /// The rest of the chain.
    inner: S,
    /// The circuits.
    shared: Arc<Breakers>,
}

impl<S> fmt::Debug for BreakerService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerService").finish_non_exhaustive()
    }
}

impl<S> tower::Service<ClientRequest> for BreakerService<S>
where
    S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ClientResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ClientRequest) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let mut guard = ProbeGuard {
            shared: Arc::clone(&shared),
            provider: None,
        };
        match shared.admit(&request) {
            Admission::Call => {}
            Admission::Probe(provider) => {
                request.pin_provider(Some(provider));
                guard.provider = Some(provider);
            }
            Admission::Reject => {
                let error: RpcError = RpcError::NoProvider {
                    service: request.service().to_owned(),
                };
                return Box::pin(std::future::ready(Err(BoxError::from(error))));
            }
        }
        // Afterwards, only the client's balancer is needed.
        let client = request.client().cloned();
        let future = self.inner.call(request);
        Box::pin(async move {
            let outcome = future.await;
            let (provider, verdict) = match &outcome {
                Ok(response) => (response.provider(), Verdict::Success),
                Err(error) => (
                    provider_of(error),
                    match rpc_error_of(error) {
                        Some(e) if is_provider_failure(e) => Verdict::Failure,
                        _ => Verdict::Neutral,
                    },
                ),
            };
            let probe = guard.provider.take();
            if let Some(provider) = provider.or(probe) {
                let balancer = client.as_ref().and_then(Client::balancer);
                shared.record(provider, verdict, probe == Some(provider), balancer);
            }
            outcome
        })
    }
}

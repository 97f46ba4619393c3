//! The closed-loop load generator and what it measures.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What one measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Calls kept in flight at every moment (closed loop).
    pub in_flight: usize,
    /// Payload size in bytes, sent and echoed back.
    pub payload: usize,
    /// How long calls run before measuring starts, so buffers, allocator and caches
    /// settle.
    pub warmup: Duration,
    /// How long calls are measured.
    pub duration: Duration,
    /// Worker threads of the client's runtime (1: a current-thread runtime).
    pub client_threads: usize,
    /// The filter chain our client calls through (other systems ignore it).
    pub chain: ClientChain,
}

/// The client filter chain `ours` is measured with, to report a chain's cost as a
/// ratio against no chain in one run (`rpc-bench --client-chains none,failover,...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, clap::ValueEnum)]
pub enum ClientChain {
    /// No layer: the hand-tuned fast path.
    #[default]
    None,
    /// A cluster layer with failover (2 retries, `echo` idempotent).
    Failover,
    /// A circuit breaker.
    Breaker,
    /// Fallback, failover and breaker, outermost first.
    Full,
    /// No layer, calls through a balancer over the one server (`connect_providers`).
    Lb,
    /// `full` through a balancer over the one server.
    LbFull,
    /// No layer, through the adaptive balancer (which times every call) over the
    /// one server.
    LbAdaptive,
}

impl ClientChain {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            ClientChain::None => "none",
            ClientChain::Failover => "failover",
            ClientChain::Breaker => "breaker",
            ClientChain::Full => "full",
            ClientChain::Lb => "lb",
            ClientChain::LbFull => "lb-full",
            ClientChain::LbAdaptive => "lb-adaptive",
        }
    }
}

/// The measured stretch of one run: calls completing inside it count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Completions before this are warm-up.
    start: Instant,
    /// No call is started after this; completions from here on do not count.
    end: Instant,
}

impl Window {
    /// The window of `load`, starting its warm-up now.
    pub(crate) fn starting_now(load: &Load) -> Window {
        let start = Instant::now() + load.warmup;
        Window {
            start,
            end: start + load.duration,
        }
    }

    /// Whether the run is over at `now`.
    pub(crate) fn is_over(&self, now: Instant) -> bool {
        now >= self.end
    }
}

/// Counts and latencies of the calls of one run.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Latencies of the counted calls, in nanoseconds.
    histogram: Histogram<u64>,
    /// Calls completed inside the window.
    calls: u64,
    /// Calls that failed or returned a wrong echo, at any time.
    errors: u64,
    /// The first failure, for the report.
    first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            // 1 ns to 60 s at 3 significant digits.
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            calls: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// Records a successful call sent at `started` that completed at `ended`, and says
    /// whether the caller should go on making calls.
    pub(crate) fn record(&mut self, window: &Window, started: Instant, ended: Instant) -> bool {
        if window.is_over(ended) {
            return false;
        }
        if ended >= window.start {
            let nanos = u64::try_from((ended - started).as_nanos()).unwrap_or(u64::MAX);
            self.histogram.saturating_record(nanos.max(1));
            self.calls += 1;
        }
        true
    }

    /// Records a failed call.
    pub(crate) fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    /// The result of the run.
    pub(crate) fn finish(self, load: &Load) -> Measurement {
        let quantile = |q| Duration::from_nanos(self.histogram.value_at_quantile(q));
        Measurement {
            calls: self.calls,
            seconds: load.duration.as_secs_f64(),
            p50: quantile(0.50),
            p99: quantile(0.99),
            p999: quantile(0.999),
            errors: self.errors,
            first_error: self.first_error,
        }
    }
}

/// The result of one measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Calls completed inside the measured window.
    pub calls: u64,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Calls that failed or came back with a wrong echo; any makes the run invalid.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
}

impl Measurement {
    /// Completed calls per second.
    pub fn calls_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.calls as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One way of making an echo call; cloned once per load task.
pub(crate) trait EchoCaller: Clone + Send + Sync + 'static {
    /// Sends `payload` and returns the length of what came back.
    fn echo(&self, payload: &Bytes) -> impl Future<Output = Result<usize, String>> + Send;
}

/// Runs `load` through `caller` as `load.in_flight` tasks, each making calls one after
/// another until the window ends, and returns what was measured. A task stops at its
/// first failure.
pub(crate) async fn closed_loop<C: EchoCaller>(caller: C, load: &Load) -> Measurement {
    let window = Window::starting_now(load);
    let tally = Arc::new(Mutex::new(Tally::new()));
    let payload = Bytes::from(vec![0xA5; load.payload]);
    let mut tasks = JoinSet::new();
    for _ in 0..load.in_flight.max(1) {
        let caller = caller.clone();
        let tally = Arc::clone(&tally);
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut started = Instant::now();
            loop {
                let result = caller.echo(&payload).await;
                let ended = Instant::now();
                let mut tally = tally.lock().expect("tally lock");
                let go_on = match result {
                    Ok(len) if len == payload.len() => tally.record(&window, started, ended),
                    Ok(len) => {
                        tally.error(|| {
                            format!("echo of {} bytes came back with {len}", payload.len())
                        });
                        false
                    }
                    Err(e) => {
                        tally.error(|| e);
                        false
                    }
                };
                if !go_on {
                    break;
                }
                started = ended;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tally
                .lock()
                .expect("tally lock")
                .error(|| format!("load task failed: {e}"));
        }
    }
    let tally = Arc::into_inner(tally)
        .expect("every load task has ended")
        .into_inner()
        .expect("tally lock");
    tally.finish(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Load {
        Load {
            in_flight: 1,
            payload: 16,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(2),
            client_threads: 1,
            chain: ClientChain::None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn counts_only_completions_inside_the_window() {
        let load = load();
        let window = Window::starting_now(&load);
        let t0 = Instant::now();
        let mut tally = Tally::new();
        // Warm-up: not counted, but go on.
        assert!(tally.record(&window, t0, t0 + Duration::from_millis(500)));
        // Inside.
        assert!(tally.record(&window, t0, t0 + Duration::from_millis(1500)));
        // After the end: stop.
        assert!(!tally.record(&window, t0, t0 + Duration::from_secs(3)));
        let m = tally.finish(&load);
        assert_eq!(m.calls, 1);
        assert_eq!(m.calls_per_sec(), 0.5);
        assert!(m.p50 >= Duration::from_millis(1499) && m.p50 <= Duration::from_millis(1501));
    }
}

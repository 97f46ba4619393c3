//! Metrics per service and method, on either side: calls, outcomes (errors by
//! status), calls in flight and a latency histogram; exposed in Prometheus' text
//! format and readable in code as a [`snapshot`](Metrics::snapshot).
//!
//! Each [`Metrics`] has a registry of its own (`prometheus-client`), so several
//! servers and clients in one process keep their numbers apart. Add its layer to a
//! server ([`Metrics::server_layer`]) or a client ([`Metrics::client_layer`]); one
//! `Metrics` may serve both, the series are named apart:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `rpc_server_calls_total`, `rpc_client_calls_total` | counter | `service`, `method`, `outcome` |
//! | `rpc_server_in_flight`, `rpc_client_in_flight` | gauge | `service`, `method` |
//! | `rpc_server_latency_seconds`, `rpc_client_latency_seconds` | histogram | `service`, `method` |
//!
//! `outcome` is one of the fixed labels of [`outcome_label`](super::outcome_label)
//! (`ok`, `application_error`, `timeout`, `overloaded`, `connection_lost`, ...). The
//! histogram's buckets run from 50 µs to about 13 s, doubling. A server's latency is
//! the time through the chain from this filter inward (put it first to count the
//! others); a client's, from the stub's call to its result.
//!
//! Serve the text format over HTTP with [`Metrics::serve`] (the `metrics-http`
//! feature), or encode it yourself with [`Metrics::encode`].
//!
//! ```
//! use rpc_core::filter::metrics::Metrics;
//! let metrics = Metrics::new();
//! let server = rpc_core::Server::builder().layer(metrics.server_layer());
//! // ... later, on a scrape:
//! let text = metrics.encode();
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use super::{outcome_label, BoxError, CallInfo, ReplyStatus};
use crate::protocol::Status;

/// Every label `outcome` can take, in a fixed order (an outcome is counted by its
/// index here).
const OUTCOMES: &[&str] = &[
    "ok",
    "application_error",
    "service_not_found",
    "method_not_found",
    "bad_request",
    "overloaded",
    "timeout",
    "internal_error",
    "unauthenticated",
    "shutting_down",
    "unknown_status",
    "no_provider",
    "connect_failed",
    "not_sent",
    "request_too_large",
    "connection_lost",
    "serialization",
    "protocol",
    "client_closed",
    "error",
];

/// Upper bounds of the latency buckets, in microseconds: 50 µs doubling to ~13 s.
const BUCKETS_MICROS: [u64; 19] = {
    let mut bounds = [0u64; 19];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 50 << i;
        i += 1;
    }
    bounds
};

/// Which side of a call a set of series describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Server => "rpc_server",
            Side::Client => "rpc_client",
        }
    }
}

/// The live numbers of one method on one side.
#[derive(Debug)]
pub(crate) struct MethodStats {
    /// Calls by outcome (indexes into [`OUTCOMES`]).
    outcomes: Vec<AtomicU64>,
    /// Calls running now.
    in_flight: AtomicI64,
    /// Calls per latency bucket (the last one is everything above the bounds).
    buckets: Vec<AtomicU64>,
    /// Sum of latencies, microseconds.
    sum_micros: AtomicU64,
}

impl MethodStats {
    fn new() -> MethodStats {
        MethodStats {
            outcomes: OUTCOMES.iter().map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicI64::new(0),
            buckets: (0..=BUCKETS_MICROS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts a call that ended as `outcome` (one of [`OUTCOMES`]) after `elapsed`.
    pub(crate) fn record_label(&self, outcome: &'static str, elapsed: Duration) {
        let index = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.record_index(index, elapsed);
    }

    /// Counts a call that ended with the reply status `status` after `elapsed`, as
    /// [`record`](Self::record) does with its label: the server's fast path, which
    /// knows the status and not a chain's result.
    pub(crate) fn record_status(&self, status: Status, elapsed: Duration) {
        self.record_index(status_index(status), elapsed);
    }

    /// Counts calls that ended after `elapsed`: `counts[i]` of them with the reply
    /// status whose [`status_index`] is `i`. One atomic addition per series touched,
    /// whatever the number of calls.
    pub(crate) fn record_statuses(&self, counts: &[u32; STATUSES], elapsed: Duration) {
        let calls: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if calls == 0 {
            return;
        }
        for (outcome, &count) in self.outcomes.iter().zip(counts) {
            if count > 0 {
                outcome.fetch_add(u64::from(count), Ordering::Relaxed);
            }
        }
        self.record_latency(elapsed, calls);
    }

    /// One call counted in `in_flight` started.
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// One call counted in `in_flight` ended (its outcome recorded or not).
    pub(crate) fn stopped(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn record_index(&self, index: usize, elapsed: Duration) {
        self.outcomes[index].fetch_add(1, Ordering::Relaxed);
        self.record_latency(elapsed, 1);
    }

    /// Adds `calls` calls that each took `elapsed` to the latency histogram.
    fn record_latency(&self, elapsed: Duration, calls: u64) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS.partition_point(|bound| *bound < micros);
        self.buckets[bucket].fetch_add(calls, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(micros.saturating_mul(calls), Ordering::Relaxed);
    }
}

/// How many outcomes are reply statuses: the first entries of [`OUTCOMES`].
pub(crate) const STATUSES: usize = 11;

/// The index in [`OUTCOMES`] of a reply status. The first entries of OUTCOMES are the
/// statuses, in code order (checked by a test below); an unknown status is
/// `unknown_status`.
pub(crate) fn status_index(status: Status) -> usize {
    match status {
        Status::Unknown(_) => STATUSES - 1,
        known => usize::from(known.code()).min(STATUSES - 2),
    }
}

/// Series of one side by service, then method: looked up by `&str` with no
/// allocation.
type SideTable = parking_lot::RwLock<HashMap<String, HashMap<String, Arc<MethodStats>>>>;

/// Series of both sides.
#[derive(Debug, Default)]
struct Table {
    server: SideTable,
    client: SideTable,
}

impl Table {
    fn side(&self, side: Side) -> &SideTable {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }

    /// Every series, sorted: (side, service, method, stats).
    fn rows(&self) -> Vec<(Side, String, String, Arc<MethodStats>)> {
        let mut rows = Vec::new();
        for side in [Side::Server, Side::Client] {
            for (service, methods) in self.side(side).read().iter() {
                for (method, stats) in methods {
                    rows.push((side, service.clone(), method.clone(), Arc::clone(stats)));
                }
            }
        }
        rows.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        rows
    }
}

/// Per-method metrics of a server or client (or both); see the [module docs](self).
/// Cheap to clone; clones share the numbers.
#[derive(Clone)]
pub struct Metrics {
    /// The series.
    table: Arc<Table>,
    /// The registry they are encoded from (with anything else a user registers).
    registry: Arc<parking_lot::Mutex<Registry>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("series", &self.table.rows().len())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The collector that encodes the table at each scrape.
#[derive(Debug)]
struct Collector(Arc<Table>);

impl Metrics {
    /// Empty metrics with a registry of their own.
    pub fn new() -> Metrics {
        let table = Arc::new(Table::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collector(Arc::clone(&table))));
        Metrics {
            table,
            registry: Arc::new(parking_lot::Mutex::new(registry)),
        }
    }

    /// The layer that counts a server's calls.
    pub fn server_layer(&self) -> MetricsLayer {
        MetricsLayer {
            table: Arc::clone(&self.table),
            side: Side::Server,
        }
    }

    /// The layer that counts a client's calls.
    pub fn client_layer(&self) -> MetricsLayer {
        MetricsLayer {
            table: Arc::clone(&self.table),
            side: Side::Client,
        }
    }

    /// Runs `f` with the registry, to register metrics of your own beside these (they
    /// are then scraped with them).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock())
    }

    /// Everything in the registry, in Prometheus' (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// The numbers now, one entry per side and method seen, sorted.
    pub fn snapshot(&self) -> Vec<MethodSnapshot> {
        self.table
            .rows()
            .into_iter()
            .map(|(side, service, method, stats)| {
                let outcomes: Vec<(&'static str, u64)> = OUTCOMES
                    .iter()
                    .zip(&stats.outcomes)
                    .map(|(label, n)| (*label, n.load(Ordering::Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let buckets: Vec<u64> = stats
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let calls: u64 = buckets.iter().sum();
                let sum = stats.sum_micros.load(Ordering::Relaxed);
                MethodSnapshot {
                    server: side == Side::Server,
                    service,
                    method,
                    calls,
                    errors: outcomes
                        .iter()
                        .filter(|(label, _)| *label != "ok")
                        .map(|(_, n)| n)
                        .sum(),
                    outcomes,
                    in_flight: stats
                        .in_flight
                        .load(Ordering::Relaxed)
                        .max(0)
                        .unsigned_abs(),
                    mean: Duration::from_micros(sum.checked_div(calls).unwrap_or(0)),
                    p50: quantile(&buckets, 0.50),
                    p90: quantile(&buckets, 0.90),
                    p99: quantile(&buckets, 0.99),
                    latency_buckets: buckets,
                    sum_micros: sum,
                }
            })
            .collect()
    }

    /// Serves the metrics over HTTP at `GET /metrics` on `addr` (the `metrics-http`
    /// feature), on the current tokio runtime, until the returned endpoint is dropped
    /// or shut down.
    ///
    /// # Errors
    ///
    /// [`RpcError::Bind`](crate::RpcError::Bind) if `addr` cannot be bound,
    /// [`RpcError::NoRuntime`](crate::RpcError::NoRuntime) outside a tokio runtime.
    #[cfg(feature = "metrics-http")]
    pub async fn serve(
        &self,
        addr: impl tokio::net::ToSocketAddrs + fmt::Debug,
    ) -> Result<MetricsEndpoint, crate::RpcError> {
        endpoint::serve(self.clone(), addr).await
    }
}

#[cfg(feature = "metrics-http")]
pub use endpoint::MetricsEndpoint;

#[cfg(feature = "metrics-http")]
mod endpoint {
    //! The HTTP endpoint (axum).

    use std::fmt;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    use tokio_util::sync::CancellationToken;

    use super::Metrics;
    use crate::RpcError;

    /// The content type of the OpenMetrics text format.
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// A running metrics endpoint; stops when dropped.
    #[derive(Debug)]
    pub struct MetricsEndpoint {
        /// Where it listens.
        addr: SocketAddr,
        /// Stops it.
        stop: CancellationToken,
    }

    impl MetricsEndpoint {
        /// The address it listens on.
        pub fn local_addr(&self) -> SocketAddr {
            self.addr
        }

        /// The URL to scrape.
        pub fn url(&self) -> String {
            format!("http://{}/metrics", self.addr)
        }
    }

    impl Drop for MetricsEndpoint {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    pub(super) async fn serve(
        metrics: Metrics,
        addr: impl tokio::net::ToSocketAddrs + fmt::Debug,
    ) -> Result<MetricsEndpoint, RpcError> {
        let shown = format!("{addr:?}");
        let bind_error = |e: std::io::Error| RpcError::Bind {
            addr: shown.clone(),
            source: Arc::new(e),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(CONTENT_TYPE, OPENMETRICS)], metrics.encode()) }
            }),
        );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the metrics endpoint stopped");
            }
        });
        Ok(MetricsEndpoint { addr: local, stop })
    }
}

/// The numbers of one method on one side, from [`Metrics::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodSnapshot {
    /// Server-side numbers (else client-side).
    pub server: bool,
    /// The service's wire name.
    pub service: String,
    /// The method's wire name.
    pub method: String,
    /// Calls that ended.
    pub calls: u64,
    /// Calls that ended other than `ok`.
    pub errors: u64,
    /// Calls by outcome label, the non-zero ones.
    pub outcomes: Vec<(&'static str, u64)>,
    /// Calls running now.
    pub in_flight: u64,
    /// Mean latency.
    pub mean: Duration,
    /// Median latency (the upper bound of its histogram bucket).
    pub p50: Duration,
    /// 90th percentile latency (bucket upper bound).
    pub p90: Duration,
    /// 99th percentile latency (bucket upper bound).
    pub p99: Duration,
    /// Calls per latency bucket, so [`since`](Self::since) can take the quantiles of
    /// a window rather than of the whole life.
    latency_buckets: Vec<u64>,
    /// Sum of latencies in microseconds, for the window's mean.
    sum_micros: u64,
}

impl MethodSnapshot {
    /// The calls that ended between `earlier` (a snapshot of the same method) and
    /// this one: counts, outcomes, mean and quantiles of that window alone;
    /// `in_flight` is this snapshot's. A registry's dashboard gets live latency from
    /// this, where the whole-life quantiles would barely move after an hour.
    ///
    /// ```
    /// use rpc_core::filter::metrics::Metrics;
    /// let metrics = Metrics::new();
    /// let before = metrics.snapshot();
    /// // ... calls ...
    /// for now in metrics.snapshot() {
    ///     let window = match before.iter().find(|b| b.server == now.server
    ///         && b.service == now.service && b.method == now.method)
    ///     {
    ///         Some(earlier) => now.since(earlier),
    ///         None => now.clone(),
    ///     };
    ///     println!("{}.{}: {} calls", window.service, window.method, window.calls);
    /// }
    /// ```
    ///
    /// Counters that went backwards (`earlier` is not of the same [`Metrics`]) count
    /// as zero.
    pub fn since(&self, earlier: &MethodSnapshot) -> MethodSnapshot {
        let buckets: Vec<u64> = self
            .latency_buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(earlier.latency_buckets.get(i).copied().unwrap_or(0)))
            .collect();
        let outcomes: Vec<(&'static str, u64)> = self
            .outcomes
            .iter()
            .map(|(label, n)| {
                let before = earlier
                    .outcomes
                    .iter()
                    .find(|(l, _)| l == label)
                    .map_or(0, |(_, n)| *n);
                (*label, n.saturating_sub(before))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let calls: u64 = buckets.iter().sum();
        let sum = self.sum_micros.saturating_sub(earlier.sum_micros);
        MethodSnapshot {
            server: self.server,
            service: self.service.clone(),
            method: self.method.clone(),
            calls,
            errors: outcomes
                .iter()
                .filter(|(label, _)| *label != "ok")
                .map(|(_, n)| n)
                .sum(),
            outcomes,
            in_flight: self.in_flight,
            mean: Duration::from_micros(sum.checked_div(calls).unwrap_or(0)),
            p50: quantile(&buckets, 0.50),
            p90: quantile(&buckets, 0.90),
            p99: quantile(&buckets, 0.99),
            latency_buckets: buckets,
            sum_micros: sum,
        }
    }
}

/// The upper bound of the bucket holding quantile `q` of `buckets`.
fn quantile(buckets: &[u64], q: f64) -> Duration {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return Duration::ZERO;
    }
    // The rank of the quantile, 1-based.
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let micros = BUCKETS_MICROS
                .get(i)
                .copied()
                .unwrap_or(BUCKETS_MICROS[BUCKETS_MICROS.len() - 1] * 2);
            return Duration::from_micros(micros);
        }
    }
    Duration::from_micros(BUCKETS_MICROS[BUCKETS_MICROS.len() - 1] * 2)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let all = self.0.rows();
        for side in [Side::Server, Side::Client] {
            let rows: Vec<_> = all
                .iter()
                .filter(|row| row.0 == side)
                .map(|(_, service, method, stats)| ((service, method), stats))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let prefix = side.prefix();
            let name = format!("{prefix}_calls");
            let mut family = encoder.encode_descriptor(
                &name,
                "Calls that ended, by outcome",
                None,
                MetricType::Counter,
            )?;
            for ((service, method), stats) in &rows {
                for (label, n) in OUTCOMES.iter().zip(&stats.outcomes) {
                    let n = n.load(Ordering::Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let labels = [
                        ("service", service.as_str()),
                        ("method", method.as_str()),
                        ("outcome", *label),
                    ];
                    let counter = prometheus_client::metrics::counter::ConstCounter::new(n);
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
            let name = format!("{prefix}_in_flight");
            let mut family =
                encoder.encode_descriptor(&name, "Calls running now", None, MetricType::Gauge)?;
            for ((service, method), stats) in &rows {
                let labels = [("service", service.as_str()), ("method", method.as_str())];
                let gauge = prometheus_client::metrics::gauge::ConstGauge::new(
                    stats.in_flight.load(Ordering::Relaxed),
                );
                gauge.encode(family.encode_family(&labels)?)?;
            }
            let name = format!("{prefix}_latency_seconds");
            let mut family =
                encoder.encode_descriptor(&name, "Call latency", None, MetricType::Histogram)?;
            for ((service, method), stats) in &rows {
                let labels = [("service", service.as_str()), ("method", method.as_str())];
                let counts: Vec<u64> = stats
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let buckets: Vec<(f64, u64)> = counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let bound = BUCKETS_MICROS
                            .get(i)
                            .map_or(f64::MAX, |micros| *micros as f64 / 1e6);
                        (bound, *n)
                    })
                    .collect();
                let count = counts.iter().sum();
                let sum = stats.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        Ok(())
    }
}

/// Counts calls into a [`Metrics`]; made by [`Metrics::server_layer`] and
/// [`Metrics::client_layer`].
#[derive(Clone)]
pub struct MetricsLayer {
    /// Where the numbers go.
    table: Arc<Table>,
    /// Which side's series.
    side: Side,
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("side", &self.side)
            .finish()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            table: Arc::clone(&self.table),
            side: self.side,
            last: None,
        }
    }
}

/// A method's name and its series, remembered by a copy of the chain.
type LastMethod = (Box<str>, Box<str>, Arc<MethodStats>);

/// The service [`MetricsLayer`] makes.
#[derive(Clone)]
pub struct Measured<S> {
    /// The rest of the chain.
    inner: S,
    /// Where the numbers go.
    table: Arc<Table>,
    /// Which side's series.
    side: Side,
    /// The method counted last by this copy of the chain (a server's connection
    /// usually calls one method over and over), to skip the table lookup; shared,
    /// so that cloning the chain (a client does per call) costs no allocation.
    last: Option<Arc<LastMethod>>,
}

impl<S: fmt::Debug> fmt::Debug for Measured<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Measured")
            .field("inner", &self.inner)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

impl MetricsLayer {
    /// Whether this is a server's layer ([`Metrics::server_layer`]).
    pub(crate) fn is_server(&self) -> bool {
        self.side == Side::Server
    }

    /// Whether `other` counts into the same [`Metrics`] as this layer, on the same
    /// side.
    pub(crate) fn same_as(&self, other: &MetricsLayer) -> bool {
        Arc::ptr_eq(&self.table, &other.table) && self.side == other.side
    }

    /// The series of `service.method` on this layer's side, made on first use.
    pub(crate) fn stats(&self, service: &str, method: &str) -> Arc<MethodStats> {
        self.table.stats(self.side, service, method)
    }
}

impl Table {
    /// The series of `service.method` on `side`, made on first use.
    fn stats(&self, side: Side, service: &str, method: &str) -> Arc<MethodStats> {
        let table = self.side(side);
        let found = table
            .read()
            .get(service)
            .and_then(|methods| methods.get(method))
            .cloned();
        match found {
            Some(stats) => stats,
            None => Arc::clone(
                table
                    .write()
                    .entry(service.to_owned())
                    .or_default()
                    .entry(method.to_owned())
                    .or_insert_with(|| Arc::new(MethodStats::new())),
            ),
        }
    }
}

impl<S> Measured<S> {
    /// The series of `service.method`, made on first use.
    fn stats(&mut self, service: &str, method: &str) -> Arc<MethodStats> {
        if let Some(last) = &self.last {
            if &*last.0 == service && &*last.1 == method {
                return Arc::clone(&last.2);
            }
        }
        let stats = self.table.stats(self.side, service, method);
        self.last = Some(Arc::new((
            service.into(),
            method.into(),
            Arc::clone(&stats),
        )));
        stats
    }
}

impl<S, R> Service<R> for Measured<S>
where
    S: Service<R, Error = BoxError>,
    S::Response: ReplyStatus,
    R: CallInfo,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let stats = self.stats(request.service(), request.method());
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        MeasuredFuture {
            inner: self.inner.call(request),
            call: Some(InFlight {
                stats,
                started: Instant::now(),
            }),
        }
    }
}

/// A call being measured; counted out of `in_flight` when it ends or is dropped.
struct InFlight {
    stats: Arc<MethodStats>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A call's future that records how it ended.
    pub struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        call: Option<InFlight>,
    }
}

impl<F> fmt::Debug for MeasuredFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeasuredFuture").finish_non_exhaustive()
    }
}

impl<F, T> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
    T: ReplyStatus,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(call) = this.call.take() {
            call.stats
                .record_label(outcome_label(&output), call.started.elapsed());
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut buckets = vec![0u64; BUCKETS_MICROS.len() + 1];
        buckets[0] = 90; // <= 50 us
        buckets[5] = 9; // <= 1.6 ms
        buckets[10] = 1; // <= 51.2 ms
        assert_eq!(quantile(&buckets, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&buckets, 0.95), Duration::from_micros(1600));
        assert_eq!(quantile(&buckets, 1.0), Duration::from_micros(51_200));
        assert_eq!(quantile(&[0; 3], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_window_has_its_own_counts_and_quantiles() {
        let table = Table::default();
        let stats = Arc::new(MethodStats::new());
        table
            .server
            .write()
            .entry("s".into())
            .or_default()
            .insert("m".into(), Arc::clone(&stats));
        let metrics = Metrics {
            table: Arc::new(table),
            registry: Arc::new(parking_lot::Mutex::new(Registry::default())),
        };
        for _ in 0..100 {
            stats.record_label("ok", Duration::from_micros(40));
        }
        let before = metrics.snapshot().remove(0);
        for _ in 0..9 {
            stats.record_label("ok", Duration::from_millis(3));
        }
        stats.record_label("timeout", Duration::from_millis(3));
        let now = metrics.snapshot().remove(0);
        assert_eq!(now.calls, 110);
        assert_eq!(now.p50, Duration::from_micros(50));
        let window = now.since(&before);
        assert_eq!(window.calls, 10);
        assert_eq!(window.errors, 1);
        assert_eq!(window.outcomes, vec![("ok", 9), ("timeout", 1)]);
        assert_eq!(window.p50, Duration::from_micros(3200));
        assert_eq!(window.mean, Duration::from_millis(3));
        assert_eq!(now.since(&now).calls, 0);
    }

    #[test]
    fn every_outcome_label_has_a_slot() {
        for code in 0..=10u8 {
            let label = super::super::status_label(Status::from_code(code));
            assert!(OUTCOMES.contains(&label), "{label}");
        }
    }

    #[test]
    fn a_status_is_counted_under_its_own_label() {
        for code in 0..=255u8 {
            let status = Status::from_code(code);
            let stats = MethodStats::new();
            stats.record_status(status, Duration::from_micros(1));
            let counted: Vec<&str> = OUTCOMES
                .iter()
                .zip(&stats.outcomes)
                .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
                .map(|(label, _)| *label)
                .collect();
            assert_eq!(counted, [super::super::status_label(status)], "{status:?}");
        }
    }

    #[test]
    fn statuses_counted_together_are_counted_as_one_by_one() {
        let elapsed = Duration::from_micros(300);
        let (together, apart) = (MethodStats::new(), MethodStats::new());
        let mut counts = [0u32; STATUSES];
        for status in [Status::Ok, Status::Ok, Status::Overloaded, Status::Ok] {
            counts[status_index(status)] += 1;
            apart.record_status(status, elapsed);
        }
        together.record_statuses(&counts, elapsed);
        let read = |stats: &MethodStats| {
            let all = |v: &[AtomicU64]| v.iter().map(|n| n.load(Ordering::Relaxed)).collect();
            let (outcomes, buckets): (Vec<u64>, Vec<u64>) =
                (all(&stats.outcomes), all(&stats.buckets));
            (outcomes, buckets, stats.sum_micros.load(Ordering::Relaxed))
        };
        assert_eq!(read(&together), read(&apart));
        assert_eq!(read(&together).2, 1200);
    }
}

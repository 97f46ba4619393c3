//! The framework's own server filters, run in a call's fast path instead of a chain.
//!
//! A server's metrics ([`Metrics::server_layer`](super::metrics::Metrics::server_layer)),
//! tracing ([`TraceLayer::server`](super::trace::TraceLayer::server)), static-token
//! authentication ([`TokenAuthLayer::tokens`](super::auth::TokenAuthLayer::tokens)) and
//! limits ([`LimitLayer`]) added before any other layer are not built into a tower
//! chain: the connection runs them itself, in the order they were added, around the
//! call it dispatches as it would without filters (no request object, no boxed chain
//! future, the reply encoded straight into the write buffer). What they do is the
//! same as their tower services do: the same series, spans, refusals and limits.
//! Layers added after the first other layer, or a second filter of a kind already
//! here, run in the chain as usual.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;

use super::auth::TokenAuthLayer;
use super::limit::{LimitLayer, MethodLimit, Running};
use super::metrics::{status_index, MethodStats, MetricsLayer, STATUSES};
use super::trace::{start_span, Side, TraceLayer};
use crate::protocol::Status;
use crate::server::{CallContext, Dispatched, EncodeFailure, Handler, Service};

/// One of the filters a server runs without a chain.
pub(crate) enum Builtin {
    /// Counts calls ([`MetricsLayer`], server side).
    Metrics(MetricsLayer),
    /// Gives each call a span ([`TraceLayer::server`]).
    Trace,
    /// Checks the call's token against a static set ([`TokenAuthLayer::tokens`]).
    Auth(TokenAuthLayer),
    /// Per-method concurrency and rate limits ([`LimitLayer`]).
    Limit(LimitLayer),
}

impl fmt::Debug for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Builtin::Metrics(_) => "Metrics",
            Builtin::Trace => "Trace",
            Builtin::Auth(_) => "TokenAuth",
            Builtin::Limit(_) => "Limit",
        })
    }
}

impl Builtin {
    /// Which kind of built-in filter the layer in `slot` is, if it is one the server
    /// can run without a chain.
    fn kind_of<N: 'static>(slot: &Option<N>) -> Option<u8> {
        let any: &dyn Any = slot;
        if let Some(Some(metrics)) = any.downcast_ref::<Option<MetricsLayer>>() {
            return metrics.is_server().then_some(0);
        }
        if let Some(Some(trace)) = any.downcast_ref::<Option<TraceLayer>>() {
            return trace.is_server().then_some(1);
        }
        if let Some(Some(auth)) = any.downcast_ref::<Option<TokenAuthLayer>>() {
            return auth.check_token(None).is_some().then_some(2);
        }
        if let Some(Some(_)) = any.downcast_ref::<Option<LimitLayer>>() {
            return Some(3);
        }
        None
    }

    /// Its kind (as [`kind_of`](Self::kind_of)).
    fn kind(&self) -> u8 {
        match self {
            Builtin::Metrics(_) => 0,
            Builtin::Trace => 1,
            Builtin::Auth(_) => 2,
            Builtin::Limit(_) => 3,
        }
    }

    /// Takes the layer out of `slot` if the server can run it without a chain.
    fn take<N: 'static>(slot: &mut Option<N>) -> Option<Builtin> {
        Builtin::kind_of(slot)?;
        let any: &mut dyn Any = slot;
        if let Some(metrics) = any.downcast_mut::<Option<MetricsLayer>>() {
            return metrics.take().map(Builtin::Metrics);
        }
        if let Some(trace) = any.downcast_mut::<Option<TraceLayer>>() {
            return trace.take().map(|_| Builtin::Trace);
        }
        if let Some(auth) = any.downcast_mut::<Option<TokenAuthLayer>>() {
            return auth.take().map(Builtin::Auth);
        }
        any.downcast_mut::<Option<LimitLayer>>()?
            .take()
            .map(Builtin::Limit)
    }
}

/// The filters a server runs without a chain, outermost first (at most one of each
/// kind).
#[derive(Debug, Default)]
pub(crate) struct ServerFilters {
    /// The filters, in the order they were added.
    filters: Vec<Builtin>,
}

impl ServerFilters {
    /// Takes the layer in `slot` into these filters if the server can run it without
    /// a chain and none of its kind is here yet; else leaves it in `slot`.
    pub(crate) fn take<N: 'static>(&mut self, slot: &mut Option<N>) {
        let Some(kind) = Builtin::kind_of(slot) else {
            return;
        };
        if self.filters.iter().any(|f| f.kind() == kind) {
            return;
        }
        if let Some(builtin) = Builtin::take(slot) {
            self.filters.push(builtin);
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// One connection's view of its server's [`ServerFilters`]: the method it called last
/// and that method's series and limits, so that a connection calling one method over
/// and over resolves them once.
pub(crate) struct ConnectionFilters<'a> {
    /// The server's filters.
    filters: &'a ServerFilters,
    /// The method last admitted (the server's own `&str`s, compared by address for
    /// the service, by value for the method) and its state.
    last: Option<LastMethod<'a>>,
    /// Calls that ended while the connection handled them, not yet counted in their
    /// series.
    ended: Option<Ended>,
}

/// Calls of one method dispatched at one clock reading that ended while their
/// connection handled them (on their first poll): counted in their series together,
/// once [published](ConnectionFilters::publish) before their replies are written,
/// with one clock reading and one atomic addition per series for all of them.
struct Ended {
    /// Their method's series.
    stats: Arc<MethodStats>,
    /// The clock reading they were dispatched at.
    started: Instant,
    /// How many ended with each reply status (by [`status_index`]).
    counts: [u32; STATUSES],
}

impl Ended {
    /// Counts them, their latency taken to now.
    #[inline(never)]
    fn publish(self) {
        let elapsed = Instant::now().saturating_duration_since(self.started);
        self.stats.record_statuses(&self.counts, elapsed);
    }
}

/// [`ConnectionFilters::last`].
struct LastMethod<'a> {
    /// The service's name, as the server holds it.
    service: &'a str,
    /// The method's name, as the service holds it.
    method: &'static str,
    /// Its series, if a filter counts calls.
    stats: Option<Arc<MethodStats>>,
    /// Its limits, if it is limited.
    limit: Option<Arc<MethodLimit>>,
}

/// What the filters keep of a call they let through, until it ends: counted in
/// flight and against its limit until dropped.
pub(crate) struct Admitted {
    /// The method's series and when the call started, if a filter counts calls.
    measured: Option<(Arc<MethodStats>, Instant)>,
    /// The call's place under its method's concurrency limit.
    _running: Option<Running>,
    /// The call's `tracing` span, when a subscriber listens to it.
    span: Option<tracing::Span>,
}

/// A call the filters refused: what to answer, and the call's [`Admitted`] (so that
/// the filters outside the one that refused it count the refusal).
pub(crate) type Refused = (Admitted, Status, String);

impl<'a> ConnectionFilters<'a> {
    /// A connection's view of `filters`.
    pub(crate) fn new(filters: &'a ServerFilters) -> Self {
        ConnectionFilters {
            filters,
            last: None,
            ended: None,
        }
    }

    /// The call `admitted` ended with a reply of `status` while the connection
    /// handled it: counted when [published](Self::publish), which the connection does
    /// before it writes the reply.
    pub(crate) fn ended(&mut self, mut admitted: Admitted, status: Status) {
        let Some((stats, started)) = admitted.measured.take() else {
            return;
        };
        stats.stopped();
        if let Some(ended) = &mut self.ended {
            if ended.started == started && Arc::ptr_eq(&ended.stats, &stats) {
                ended.counts[status_index(status)] += 1;
                return;
            }
            self.publish();
        }
        let mut counts = [0; STATUSES];
        counts[status_index(status)] = 1;
        self.ended = Some(Ended {
            stats,
            started,
            counts,
        });
    }

    /// Counts the calls that [`ended`](Self::ended) in their series, their latency
    /// taken to now (one clock reading, if there are any).
    #[inline]
    pub(crate) fn publish(&mut self) {
        if let Some(ended) = self.ended.take() {
            ended.publish();
        }
    }

    /// Runs the filters over a call of `method` of `service` (named `name` by the
    /// server) with `context`, at `now` (the connection's last clock reading). `None`
    /// for a method the service does not have (answered as without filters).
    ///
    /// # Errors
    ///
    /// The refusal, when a filter refuses the call.
    pub(crate) fn admit(
        &mut self,
        name: &'a str,
        service: &Arc<dyn Service>,
        method: &str,
        context: &mut CallContext,
        now: Instant,
    ) -> Option<Result<Admitted, Refused>> {
        let hit = self
            .last
            .as_ref()
            .is_some_and(|last| std::ptr::eq(last.service, name) && last.method == method);
        if !hit {
            let method = *service.methods().iter().find(|m| **m == method)?;
            let mut stats = None;
            let mut limit = None;
            for filter in &self.filters.filters {
                match filter {
                    Builtin::Metrics(metrics) => stats = Some(metrics.stats(name, method)),
                    Builtin::Limit(limits) => limit = limits.limit_of(name, method),
                    Builtin::Trace | Builtin::Auth(_) => {}
                }
            }
            self.last = Some(LastMethod {
                service: name,
                method,
                stats,
                limit,
            });
        }
        let last = self.last.as_ref()?;
        let mut admitted = Admitted {
            measured: None,
            _running: None,
            span: None,
        };
        for filter in &self.filters.filters {
            let refusal = match filter {
                Builtin::Metrics(_) => {
                    if let Some(stats) = &last.stats {
                        stats.started();
                        admitted.measured = Some((Arc::clone(stats), now));
                    }
                    continue;
                }
                Builtin::Trace => {
                    let parent = context.trace;
                    let (traced, span) =
                        start_span(Side::Server, name, last.method, parent.as_ref());
                    context.span = Some(span);
                    if !traced.is_disabled() {
                        admitted.span = Some(traced);
                    }
                    continue;
                }
                Builtin::Auth(auth) => match auth.check_token(context.auth_token.as_deref()) {
                    Some(Err(message)) => {
                        tracing::debug!(
                            peer = %context.peer,
                            service = name,
                            method = last.method,
                            "call refused: {message}"
                        );
                        (Status::Unauthenticated, message.to_owned())
                    }
                    _ => continue,
                },
                Builtin::Limit(_) => {
                    let Some(limit) = &last.limit else {
                        continue;
                    };
                    match limit.admit_at(now) {
                        Ok(running) => {
                            admitted._running = running;
                            continue;
                        }
                        Err(reason) => {
                            tracing::debug!(
                                service = name,
                                method = last.method,
                                "call shed: {reason}"
                            );
                            (
                                Status::Overloaded,
                                format!("{name}.{}: {reason}", last.method),
                            )
                        }
                    }
                }
            };
            return Some(Err((admitted, refusal.0, refusal.1)));
        }
        Some(Ok(admitted))
    }
}

impl Admitted {
    /// The call's `tracing` span, to enter while its handler runs.
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.span.as_ref()
    }

    /// Whether anything is to be done when the call ends (else the call needs no
    /// [`watch`](Self::watch)).
    pub(crate) fn is_idle(&self) -> bool {
        self.measured.is_none() && self._running.is_none() && self.span.is_none()
    }

    /// The call ended with a reply of `status` at `now`.
    pub(crate) fn finish(self, status: Status, now: Instant) {
        if let Some((stats, started)) = &self.measured {
            stats.record_status(status, now.saturating_duration_since(*started));
        }
    }

    /// `call`, carrying this until it ends: for a call that does not finish on its
    /// first poll (or runs on the business pool). Its span is entered while it is
    /// polled; its outcome is counted when its result is encoded.
    pub(crate) fn watch(self, call: Dispatched) -> Dispatched {
        Box::pin(Watched {
            call,
            admitted: Some(self),
        })
    }
}

impl Drop for ConnectionFilters<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((stats, _)) = &self.measured {
            stats.stopped();
        }
    }
}

/// A call and what its filters keep of it ([`Admitted::watch`]).
struct Watched {
    /// The call.
    call: Dispatched,
    /// Its filters' state, until its result is encoded.
    admitted: Option<Admitted>,
}

impl Handler for Watched {
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let _entered = this
            .admitted
            .as_ref()
            .and_then(Admitted::span)
            .map(tracing::Span::enter);
        this.call.as_mut().poll_done(cx)
    }

    fn encode_result(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<Status, EncodeFailure> {
        let this = self.get_mut();
        let encoded = this.call.as_mut().encode_result(out);
        if let Some(admitted) = this.admitted.take() {
            let status = encoded.as_ref().map_or(Status::InternalError, |s| *s);
            admitted.finish(status, Instant::now());
        }
        encoded
    }

    fn result_status(self: Pin<&mut Self>) -> Option<Status> {
        self.get_mut().call.as_mut().result_status()
    }
}

/// The filters a client runs without a chain: its metrics
/// ([`Metrics::client_layer`](super::metrics::Metrics::client_layer)) and tracing
/// ([`TraceLayer::client`]), when added before any other layer (one of each). The
/// call's future runs them around the call it makes as it would without filters.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientFilters {
    /// Counts calls, if added.
    metrics: Option<MetricsLayer>,
    /// Gives each call a span, if added.
    trace: bool,
}

impl ClientFilters {
    /// Takes the layer in `slot` into these filters if the client can run it without
    /// a chain and none of its kind is here yet; else leaves it in `slot`.
    pub(crate) fn take<N: 'static>(&mut self, slot: &mut Option<N>) {
        let any: &mut dyn Any = slot;
        if let Some(metrics) = any.downcast_mut::<Option<MetricsLayer>>() {
            if self.metrics.is_none() && metrics.as_ref().is_some_and(|m| !m.is_server()) {
                self.metrics = metrics.take();
            }
        } else if let Some(trace) = any.downcast_mut::<Option<TraceLayer>>() {
            if !self.trace && trace.is_some_and(|t| !t.is_server()) {
                self.trace = trace.take().is_some();
            }
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.metrics.is_none() && !self.trace
    }

    /// Starts a call of `service.method`: counts it in flight and, if tracing, gives
    /// it its span (returned, for the request's metadata).
    pub(crate) fn start(
        &self,
        service: &'static str,
        method: &'static str,
    ) -> (ClientWatch, Option<crate::protocol::metadata::TraceContext>) {
        let stats = self.metrics.as_ref().map(|metrics| {
            let stats = client_stats(metrics, service, method);
            stats.started();
            stats
        });
        let mut watch = ClientWatch {
            stats,
            span: None,
            timing: None,
            started: None,
        };
        if !self.trace {
            return (watch, None);
        }
        let parent = super::trace::current_parent();
        let (traced, span) = start_span(Side::Client, service, method, parent.as_ref());
        if !traced.is_disabled() {
            watch.span = Some(traced);
        }
        (watch, Some(span))
    }
}

/// [`LAST_CLIENT_STATS`]: the layer (which keeps its metrics alive, so the key
/// cannot be reused), the service and method names by address, and their series.
type LastClientStats = (MetricsLayer, usize, usize, Arc<MethodStats>);

thread_local! {
    /// The series a client on this thread counted last, so a thread making one kind
    /// of call over and over skips the table's lock and lookups.
    static LAST_CLIENT_STATS: std::cell::RefCell<Option<LastClientStats>> =
        const { std::cell::RefCell::new(None) };
}

/// The client-side series of `service.method` in `metrics`.
fn client_stats(
    metrics: &MetricsLayer,
    service: &'static str,
    method: &'static str,
) -> Arc<MethodStats> {
    let key = (service.as_ptr() as usize, method.as_ptr() as usize);
    LAST_CLIENT_STATS.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((layer, s, m, stats)) = &*last {
            if (*s, *m) == key && layer.same_as(metrics) {
                return Arc::clone(stats);
            }
        }
        let stats = metrics.stats(service, method);
        *last = Some((metrics.clone(), key.0, key.1, Arc::clone(&stats)));
        stats
    })
}

/// What a client's filters keep of a call until it ends; counted in flight until
/// dropped.
pub(crate) struct ClientWatch {
    /// The method's series, if the client counts calls.
    stats: Option<Arc<MethodStats>>,
    /// The call's `tracing` span, when a subscriber listens to it.
    span: Option<tracing::Span>,
    /// When the call's connection sent it and its outcome came (the connection's
    /// clock), for a call that took the fast path.
    timing: Option<crate::client::pending::Timing>,
    /// When the call started, for one that left the fast path (its latency is
    /// counted from here to its end).
    started: Option<Instant>,
}

impl ClientWatch {
    /// The call's `tracing` span, to enter while the call's future is polled.
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.span.as_ref()
    }

    /// The call's connection timed it.
    pub(crate) fn timed(&mut self, timing: Option<crate::client::pending::Timing>) {
        self.timing = timing;
    }

    /// The call left the fast path, `spent` into its time.
    pub(crate) fn left_fast_path(&mut self, spent: std::time::Duration) {
        if self.stats.is_some() && self.started.is_none() {
            let now = Instant::now();
            self.started = Some(now.checked_sub(spent).unwrap_or(now));
        }
    }

    /// The call ended as `outcome` (an outcome label, see
    /// [`outcome_label`](super::outcome_label)).
    pub(crate) fn finish(self, outcome: &'static str) {
        let Some(stats) = &self.stats else {
            return;
        };
        let elapsed = match (self.started, self.timing) {
            (Some(started), _) => started.elapsed(),
            (
                None,
                Some(crate::client::pending::Timing {
                    sent: Some(sent),
                    at,
                }),
            ) => at.since(sent),
            (None, _) => std::time::Duration::ZERO,
        };
        stats.record_label(outcome, elapsed);
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.stopped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::metrics::Metrics;

    #[test]
    fn a_server_takes_its_own_filters_once_each_and_leaves_the_others() {
        let metrics = Metrics::new();
        let mut filters = ServerFilters::default();
        let mut take = |taken: bool, f: &mut dyn FnMut(&mut ServerFilters) -> bool| {
            assert_eq!(f(&mut filters), taken);
        };
        fn offer<N: 'static>(filters: &mut ServerFilters, layer: N) -> bool {
            let mut slot = Some(layer);
            filters.take(&mut slot);
            slot.is_none()
        }
        take(true, &mut |f| offer(f, metrics.server_layer()));
        // A second of a kind, a client's layer, a closure validator, any other layer:
        // left for the chain.
        take(false, &mut |f| offer(f, metrics.server_layer()));
        take(false, &mut |f| offer(f, metrics.client_layer()));
        take(false, &mut |f| offer(f, TraceLayer::client()));
        take(false, &mut |f| offer(f, TokenAuthLayer::with(|_, _| true)));
        take(false, &mut |f| {
            offer(f, tower::layer::util::Identity::new())
        });
        take(true, &mut |f| offer(f, TraceLayer::server()));
        take(true, &mut |f| offer(f, TokenAuthLayer::tokens(["t"])));
        let limits = LimitLayer::builder()
            .concurrency("s", "m", 1)
            .build()
            .unwrap();
        take(true, &mut |f| offer(f, limits.clone()));
        let kinds: Vec<u8> = filters.filters.iter().map(Builtin::kind).collect();
        assert_eq!(kinds, [0, 1, 2, 3], "in the order added");
    }

    #[test]
    fn a_client_takes_its_metrics_and_trace_once_each() {
        let metrics = Metrics::new();
        let mut filters = ClientFilters::default();
        fn offer<N: 'static>(filters: &mut ClientFilters, layer: N) -> bool {
            let mut slot = Some(layer);
            filters.take(&mut slot);
            slot.is_none()
        }
        assert!(!offer(&mut filters, metrics.server_layer()));
        assert!(!offer(&mut filters, TraceLayer::server()));
        assert!(filters.is_empty());
        assert!(offer(&mut filters, metrics.client_layer()));
        assert!(offer(&mut filters, TraceLayer::client()));
        assert!(!offer(&mut filters, metrics.client_layer()));
        assert!(!offer(&mut filters, TraceLayer::client()));
    }

    #[test]
    fn builders_run_their_own_filters_without_a_chain_until_another_layer() {
        let metrics = Metrics::new();
        let inline = crate::Server::builder()
            .layer(metrics.server_layer())
            .layer(TraceLayer::server());
        let shown = format!("{inline:?}");
        assert!(shown.contains("layered: false"), "{shown}");
        let chained = crate::Server::builder()
            .layer(tower::layer::util::Identity::new())
            .layer(metrics.server_layer());
        let shown = format!("{chained:?}");
        assert!(shown.contains("layered: true"), "{shown}");
        assert!(shown.contains("filters: []"), "{shown}");
    }
}

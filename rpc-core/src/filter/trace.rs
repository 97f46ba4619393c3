//! Distributed tracing in the Dapper model: one trace id for a whole request tree,
//! a span per hop, carried in each request's metadata as the fields of a W3C
//! `traceparent` (trace id, the caller's span id, flags; see `docs/PROTOCOL.md`),
//! and bridged to `tracing` spans.
//!
//! - On a **client**, [`TraceLayer::client`] gives every call a span of its own: a
//!   child of the span of the call being served when the call is made from inside a
//!   handler ([`CallContext::span`](crate::server::CallContext::span)), else of a
//!   trace set with [`with_trace`], else the root of a new trace. The call carries
//!   that span's ids; the call's future runs inside a `tracing` span `rpc.client`.
//! - On a **server**, [`TraceLayer::server`] gives every call a span whose parent is
//!   the caller's (a call that carried no trace starts a new one), makes it the
//!   handler's [`CallContext::span`](crate::server::CallContext::span), and runs the
//!   chain inside a `tracing` span `rpc.server`.
//!
//! Both `tracing` spans have the fields `rpc.service`, `rpc.method`, `trace_id`,
//! `span_id` and `parent_id` (hex; not recorded for a root), at `INFO`, so any subscriber
//! sees the tree with our ids.
//!
//! With the `otel` feature, and a `tracing-opentelemetry` layer in the subscriber,
//! each call's OpenTelemetry span is made the child of the remote parent and its ids
//! become the ones sent on the wire: an OpenTelemetry exporter (OTLP, Jaeger, ...)
//! receives one joined trace across services.
//!
//! ```
//! use rpc_core::filter::trace::TraceLayer;
//! let server = rpc_core::Server::builder().layer(TraceLayer::server());
//! let client = rpc_core::Client::builder().layer(TraceLayer::client());
//! ```

use std::fmt;
use std::future::IntoFuture;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument as _;

use super::{BoxError, ClientRequest, ServerRequest};
use crate::protocol::metadata::TraceContext;
use crate::server::CallContext;

tokio::task_local! {
    /// The trace set by [`with_trace`] for calls made outside a handler.
    static TRACE: TraceContext;
}

/// Runs `future` with `trace` as the parent of the calls it makes through a tracing
/// client (outside a handler; inside one, the call being served is the parent).
/// For a consumer that received a `traceparent` from elsewhere (an HTTP request, say):
/// parse it with [`TraceContext::from_traceparent`].
pub async fn with_trace<F: IntoFuture>(trace: TraceContext, future: F) -> F::Output {
    TRACE.scope(trace, future.into_future()).await
}

/// The span a call made now should be a child of, if any.
pub(crate) fn current_parent() -> Option<TraceContext> {
    CallContext::with_current(|ctx| ctx.and_then(|c| c.span.or(c.trace)))
        .or_else(|| TRACE.try_with(|t| *t).ok())
}

/// Which side a [`TraceLayer`] traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

/// Traces calls; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    /// The side it is for.
    side: Side,
}

impl TraceLayer {
    /// The layer for a server's chain.
    pub fn server() -> TraceLayer {
        TraceLayer { side: Side::Server }
    }

    /// The layer for a client's chain.
    pub fn client() -> TraceLayer {
        TraceLayer { side: Side::Client }
    }

    /// Whether this is a server's layer ([`TraceLayer::server`]).
    pub(crate) fn is_server(self) -> bool {
        self.side == Side::Server
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            side: self.side,
        }
    }
}

/// The service [`TraceLayer`] makes.
#[derive(Clone)]
pub struct Traced<S> {
    /// The rest of the chain.
    inner: S,
    /// The side it traces.
    side: Side,
}

impl<S: fmt::Debug> fmt::Debug for Traced<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traced")
            .field("inner", &self.inner)
            .field("side", &self.side)
            .finish()
    }
}

/// A `tracing` span for a call whose parent is `parent`, and the call's own trace
/// context: a child of `parent` (or a new root). With the `otel` feature and an
/// OpenTelemetry layer installed, the OpenTelemetry span is made a child of `parent`
/// and its ids become the call's, so exported spans and the ids on the wire agree.
pub(crate) fn start_span(
    side: Side,
    service: &str,
    method: &str,
    parent: Option<&TraceContext>,
) -> (tracing::Span, TraceContext) {
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
    let mut span = parent.map_or_else(TraceContext::new_root, TraceContext::child);
    if !tracing::dispatcher::has_been_set() {
        // No subscriber anywhere in the process: nobody can listen to the span. (With
        // `tracing`'s `log` feature, which a dependency may turn on, a disabled span
        // would otherwise format its fields for `log` on every call.)
        return (tracing::Span::none(), span);
    }
    let empty = tracing::field::Empty;
    let traced = match side {
        Side::Server => tracing::info_span!(
            "rpc.server",
            rpc.service = %service,
            rpc.method = %method,
            trace_id = empty,
            span_id = empty,
            parent_id = empty,
        ),
        Side::Client => tracing::info_span!(
            "rpc.client",
            rpc.service = %service,
            rpc.method = %method,
            trace_id = empty,
            span_id = empty,
            parent_id = empty,
        ),
    };
    if !traced.is_disabled() {
        #[cfg(feature = "otel")]
        otel::adopt(&traced, parent, &mut span);
        traced.record("trace_id", tracing::field::display(span.trace_id_hex()));
        traced.record("span_id", tracing::field::display(span.span_id_hex()));
        // Formatted only for a span someone listens to: a disabled span costs no
        // string per call.
        if let Some(parent) = parent {
            traced.record("parent_id", tracing::field::display(parent.span_id_hex()));
        }
    }
    (traced, span)
}

/// Starts the call `start` makes inside `traced` and runs its future in it; a span no
/// subscriber listens to is left out (the ids still travel with the call), so that
/// tracing without a subscriber costs no span enter and exit per poll.
fn in_span<F: std::future::Future>(
    traced: tracing::Span,
    start: impl FnOnce() -> F,
) -> Either<Instrumented<F>, F> {
    if traced.is_disabled() {
        return Either::Right(start());
    }
    let future = traced.in_scope(start);
    Either::Left(future.instrument(traced))
}

#[cfg(feature = "otel")]
mod otel {
    //! The bridge to OpenTelemetry.

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use crate::protocol::metadata::TraceContext;

    /// Makes `traced`'s OpenTelemetry span a child of `parent` (a remote span) and
    /// takes its ids into `span`. Without an OpenTelemetry layer, does nothing.
    pub(super) fn adopt(
        traced: &tracing::Span,
        parent: Option<&TraceContext>,
        span: &mut TraceContext,
    ) {
        let cx = match parent {
            Some(p) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.span_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            None => opentelemetry::Context::new(),
        };
        if traced.set_parent(cx).is_err() {
            return;
        }
        let cx = traced.context();
        let otel = cx.span().span_context().clone();
        if otel.is_valid() {
            span.trace_id = otel.trace_id().to_bytes();
            span.span_id = otel.span_id().to_bytes();
            span.flags = otel.trace_flags().to_u8();
        }
    }
}

impl<S> Service<ServerRequest> for Traced<S>
where
    S: Service<ServerRequest, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Instrumented<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ServerRequest) -> Self::Future {
        let parent = request.context().trace;
        let (traced, span) = start_span(
            self.side,
            request.service(),
            request.method(),
            parent.as_ref(),
        );
        request.context_mut().span = Some(span);
        in_span(traced, || self.inner.call(request))
    }
}

impl<S> Service<ClientRequest> for Traced<S>
where
    S: Service<ClientRequest, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Instrumented<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ClientRequest) -> Self::Future {
        let parent = request.trace().copied().or_else(current_parent);
        let (traced, span) = start_span(
            self.side,
            request.service(),
            request.method(),
            parent.as_ref(),
        );
        request.set_trace(Some(span));
        in_span(traced, || self.inner.call(request))
    }
}

//! An access log through `tracing`: one line per call with the method, the peer (on a
//! server), how the call ended and how long it took. Off unless this layer is added.
//!
//! Lines are emitted at `INFO` on the target `rpc::access`, so they can be routed or
//! filtered on their own (`RUST_LOG=rpc::access=info`). The fields are `side`
//! (`server` or `client`), `service`, `method`, `peer` (servers only), `outcome` (see
//! [`outcome_label`](super::outcome_label)) and `micros`.
//!
//! ```
//! use rpc_core::filter::access_log::AccessLogLayer;
//! let server = rpc_core::Server::builder().layer(AccessLogLayer::new());
//! let client = rpc_core::Client::builder().layer(AccessLogLayer::new());
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use super::{outcome_label, BoxError, CallInfo, ReplyStatus};

/// Logs every call; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl AccessLogLayer {
    /// The access log layer.
    pub fn new() -> AccessLogLayer {
        AccessLogLayer
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// The service [`AccessLogLayer`] makes.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    /// The rest of the chain.
    inner: S,
}

impl<S, R> Service<R> for AccessLog<S>
where
    S: Service<R, Error = BoxError>,
    S::Response: ReplyStatus,
    R: CallInfo,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let line = Line {
            service: request.service().to_owned(),
            method: request.method().to_owned(),
            peer: request.peer(),
            started: Instant::now(),
        };
        Logged {
            inner: self.inner.call(request),
            line: Some(line),
        }
    }
}

/// What a log line says besides the outcome.
struct Line {
    service: String,
    method: String,
    peer: Option<std::net::SocketAddr>,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// A call's future that logs its end.
    pub struct Logged<F> {
        #[pin]
        inner: F,
        line: Option<Line>,
    }
}

impl<F> fmt::Debug for Logged<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logged").finish_non_exhaustive()
    }
}

impl<F, T> Future for Logged<F>
where
    F: Future<Output = Result<T, BoxError>>,
    T: ReplyStatus,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(line) = this.line.take() {
            let micros = u64::try_from(line.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let outcome = outcome_label(&output);
            match line.peer {
                Some(peer) => tracing::info!(
                    target: "rpc::access",
                    side = "server",
                    service = %line.service,
                    method = %line.method,
                    %peer,
                    outcome,
                    micros,
                    "call"
                ),
                None => tracing::info!(
                    target: "rpc::access",
                    side = "client",
                    service = %line.service,
                    method = %line.method,
                    outcome,
                    micros,
                    "call"
                ),
            }
        }
        Poll::Ready(output)
    }
}

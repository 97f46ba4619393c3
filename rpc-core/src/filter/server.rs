//! The server side of the chain: the request and response every server filter sees,
//! the [`Invoker`] at the end of the chain (decodes the arguments and runs the handler),
//! and how the server drives a chain for one call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::{status_of, BoxError, Rejection};
use crate::protocol::Status;
use crate::server::{CallContext, Dispatched, EncodeFailure, Handler, Service};

/// A call as a server filter sees it: which method, the still-encoded arguments, and
/// the call's [`CallContext`] (peer, deadline, token, trace, attachments). The
/// arguments are decoded only at the end of the chain, so a filter that rejects the
/// call (authentication, a limit) never pays for decoding.
pub struct ServerRequest {
    /// The service called.
    service: Arc<dyn Service>,
    /// The method called, one of the service's [`Service::methods`].
    method: &'static str,
    /// The MessagePack argument tuple.
    body: Bytes,
    /// What the server knows about the call.
    context: CallContext,
    /// Sent with the oneway flag: no reply goes out.
    oneway: bool,
}

impl fmt::Debug for ServerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerRequest")
            .field("service", &self.service.name())
            .field("method", &self.method)
            .field("body_len", &self.body.len())
            .field("oneway", &self.oneway)
            .field("context", &self.context)
            .finish()
    }
}

impl ServerRequest {
    /// A request for `method` of `service`; the server builds these, and tests of a
    /// filter can too.
    pub fn new(
        service: Arc<dyn Service>,
        method: &'static str,
        body: Bytes,
        context: CallContext,
        oneway: bool,
    ) -> ServerRequest {
        ServerRequest {
            service,
            method,
            body,
            context,
            oneway,
        }
    }

    /// The service's wire name.
    pub fn service(&self) -> &str {
        self.service.name()
    }

    /// The method's wire name (one of the service's own, so it can label metrics
    /// without a caller inventing new labels).
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The encoded argument tuple (MessagePack), as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The call's context.
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// The call's context, to change what the handler will see (a filter that
    /// authenticates may replace the attachments, a tracing filter the trace).
    pub fn context_mut(&mut self) -> &mut CallContext {
        &mut self.context
    }

    /// Whether the call was sent oneway (nothing is sent back, whatever the chain
    /// returns).
    pub fn is_oneway(&self) -> bool {
        self.oneway
    }
}

/// What a server chain returns for a call: the status and the body of the reply.
/// Filters usually pass it through; one that answers by itself (a fallback, a cache)
/// builds its own with [`ServerResponse::new`].
///
/// A handler's result travels through the chain still unencoded and is encoded once,
/// straight into the connection's write buffer, after the last filter has seen it (as
/// a call without a chain does); [`ServerResponse::body`] encodes it on demand for a
/// filter that wants the bytes.
pub struct ServerResponse {
    /// The reply's status.
    status: Status,
    /// The reply body, encoded or still the finished handler's result.
    body: Body,
}

/// A [`ServerResponse`]'s body.
enum Body {
    /// Encoded (MessagePack).
    Encoded(Bytes),
    /// A finished handler whose result is not encoded yet (its status is known).
    Finished(Dispatched),
}

impl fmt::Debug for ServerResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ServerResponse");
        debug.field("status", &self.status);
        match &self.body {
            Body::Encoded(body) => debug.field("body_len", &body.len()),
            Body::Finished(_) => debug.field("body", &"(not encoded yet)"),
        };
        debug.finish()
    }
}

impl ServerResponse {
    /// A reply with `status` and an already encoded `body`.
    pub fn new(status: Status, body: Bytes) -> ServerResponse {
        ServerResponse {
            status,
            body: Body::Encoded(body),
        }
    }

    /// A successful reply carrying `value`, encoded as the method's result would be.
    ///
    /// # Errors
    ///
    /// If `value` cannot be encoded.
    pub fn ok<T: serde::Serialize + ?Sized>(value: &T) -> Result<ServerResponse, BoxError> {
        let mut body = BytesMut::new();
        rmp_serde::encode::write_named(&mut (&mut body).writer(), value)?;
        Ok(ServerResponse::new(Status::Ok, body.freeze()))
    }

    /// The reply's status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The encoded reply body. A handler's result is encoded by the first call (so a
    /// chain whose filters never ask encodes it once, into the write buffer); if that
    /// fails, the reply becomes an [`Status::InternalError`] carrying the reason.
    pub fn body(&mut self) -> &Bytes {
        if let Body::Finished(call) = &mut self.body {
            let reply = crate::server::Reply::finished_in_place(call);
            self.status = reply.status;
            self.body = Body::Encoded(reply.body.freeze());
        }
        match &self.body {
            Body::Encoded(body) => body,
            Body::Finished(_) => unreachable!("encoded just above"),
        }
    }

    /// Encodes the body into `out` and returns the status to send with it.
    fn encode_into(self, out: &mut BytesMut) -> Result<Status, EncodeFailure> {
        match self.body {
            Body::Encoded(body) => {
                out.extend_from_slice(&body);
                Ok(self.status)
            }
            Body::Finished(mut call) => call.as_mut().encode_result(out),
        }
    }
}

/// The end of every server chain: checks the call's deadline, decodes the arguments
/// and runs the handler (with the call's [`CallContext`] current), then encodes the
/// result. Layers wrap it; it is always ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct Invoker;

impl tower::Service<ServerRequest> for Invoker {
    type Response = ServerResponse;
    type Error = BoxError;
    type Future = Invocation;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ServerRequest) -> Invocation {
        let ServerRequest {
            service,
            method,
            body,
            context,
            ..
        } = request;
        // A call that waited (behind a limit that queues, say) past its deadline is
        // never started.
        if context.deadline.is_some_and(|d| Instant::now() >= d) {
            return Invocation::Failed(Some(Rejection::new(
                Status::Timeout,
                "the caller's deadline passed before the handler started",
            )));
        }
        let (dispatched, _) = crate::blob::decode_from(body, |args| service.call(method, args));
        match dispatched {
            Ok(call) => Invocation::Running {
                call,
                context: Some(context),
            },
            Err(e) => Invocation::Failed(Some(Rejection::new(e.status(), e.to_string()))),
        }
    }
}

/// The future of [`Invoker`]: the running handler.
pub enum Invocation {
    /// The handler runs; the context is made current while it is polled.
    Running {
        /// The handler.
        call: Dispatched,
        /// The call's context.
        context: Option<CallContext>,
    },
    /// It could not start.
    Failed(Option<Rejection>),
}

impl fmt::Debug for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invocation::Running { .. } => f.write_str("Invocation::Running"),
            Invocation::Failed(r) => f.debug_tuple("Invocation::Failed").field(r).finish(),
        }
    }
}

impl Future for Invocation {
    type Output = Result<ServerResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this {
            Invocation::Running { call, context } => {
                let done = crate::server::enter_context(context, || call.as_mut().poll_done(cx));
                if done.is_pending() {
                    return Poll::Pending;
                }
                let Some(status) = call.as_mut().result_status() else {
                    let reply = crate::server::Reply::finished_in_place(call);
                    return Poll::Ready(Ok(ServerResponse::new(reply.status, reply.body.freeze())));
                };
                let Invocation::Running { call, .. } =
                    std::mem::replace(this, Invocation::Failed(None))
                else {
                    unreachable!("matched just above")
                };
                Poll::Ready(Ok(ServerResponse {
                    status,
                    body: Body::Finished(call),
                }))
            }
            Invocation::Failed(rejection) => Poll::Ready(Err(rejection
                .take()
                .map_or_else(|| "polled after completion".into(), Into::into))),
        }
    }
}

/// A whole server chain, boxed once when the server is bound and cloned per
/// connection. Starting a call through it makes one allocation, the call itself (the
/// chain's future inside the server's handler): no separate box for the future.
pub(crate) struct ServerChain(Box<dyn ErasedChain>);

impl ServerChain {
    /// Erases `chain`.
    pub(crate) fn new<S>(chain: S) -> ServerChain
    where
        S: tower::Service<ServerRequest, Response = ServerResponse, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        ServerChain(Box::new(chain))
    }
}

impl Clone for ServerChain {
    fn clone(&self) -> Self {
        ServerChain(self.0.clone_box())
    }
}

impl fmt::Debug for ServerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerChain")
    }
}

/// A chain with its types erased.
trait ErasedChain: Send + Sync {
    /// [`start`] on this chain.
    fn start(&mut self, request: ServerRequest) -> Result<Dispatched, (Status, String)>;

    /// A copy for another connection.
    fn clone_box(&self) -> Box<dyn ErasedChain>;
}

impl<S> ErasedChain for S
where
    S: tower::Service<ServerRequest, Response = ServerResponse, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn start(&mut self, request: ServerRequest) -> Result<Dispatched, (Status, String)> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(status_of(&*e)),
            Poll::Pending => {
                return Err((
                    Status::Overloaded,
                    "the server's filter chain cannot take more calls now".to_owned(),
                ))
            }
        }
        Ok(Box::pin(ChainCall {
            future: self.call(request),
            outcome: None,
        }))
    }

    fn clone_box(&self) -> Box<dyn ErasedChain> {
        Box::new(self.clone())
    }
}

/// Starts `request` through `chain`, as a [`Dispatched`] call the server runs like any
/// handler (on the worker or the business pool, bounded by the deadline, cancellable).
/// A chain that is not ready at once sheds the call: the server never queues calls in
/// front of a chain (a limit that is full answers at once).
///
/// # Errors
///
/// The reply to send when the chain refused the call before it started.
pub(crate) fn start(
    chain: &mut ServerChain,
    request: ServerRequest,
) -> Result<Dispatched, (Status, String)> {
    chain.0.start(request)
}

pin_project_lite::pin_project! {
    /// A call running through a chain, as the server's [`Handler`].
    struct ChainCall<F> {
        // The chain's future.
        #[pin]
        future: F,
        // Its output, once ready.
        outcome: Option<Result<ServerResponse, BoxError>>,
    }
}

impl<F> Handler for ChainCall<F>
where
    F: Future<Output = Result<ServerResponse, BoxError>> + Send,
{
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.outcome.is_none() {
            let outcome = std::task::ready!(this.future.poll(cx));
            *this.outcome = Some(outcome);
        }
        Poll::Ready(())
    }

    fn encode_result(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<Status, EncodeFailure> {
        match self.project().outcome.take() {
            Some(Ok(response)) => response.encode_into(out),
            Some(Err(error)) => {
                let (status, message) = status_of(&*error);
                rmp_serde::encode::write(&mut out.writer(), &message)
                    .map_err(|e| EncodeFailure::new(e.to_string()))?;
                Ok(status)
            }
            None => Err(EncodeFailure::new("the chain has not finished".to_owned())),
        }
    }
}

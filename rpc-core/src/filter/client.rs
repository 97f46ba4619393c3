//! The client side of the chain: the request and response every client filter sees,
//! the [`Transport`] at the end of the chain (sends the request over the client's
//! connections), and how a call runs through a chain.
//!
//! A filter steers where a call goes through its request: a provider to avoid (a
//! retry, a hedged or forked copy goes elsewhere, [`ClientRequest::avoid_provider`])
//! or one provider pinned ([`ClientRequest::pin_provider`], a breaker's probe). The
//! transport says which provider answered ([`ClientResponse::provider`]) or failed
//! ([`ProviderError`], whose source is the [`RpcError`]); read a chain's error with
//! [`rpc_error_of`] to see through it.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tower::util::BoxCloneSyncService;

use super::{status_of, BoxError};
use crate::client::{PendingReply, Placement, Timing};
use crate::error::RpcError;
use crate::protocol::metadata::TraceContext;
use crate::protocol::{encode_raw_request, Frame, RequestTarget, Status};
use crate::Client;
use rpc_lb::Picked;

/// A call as a client filter sees it. The arguments are already encoded (a cheap
/// [`Bytes`] to clone), so a filter can send the same call again, to another provider
/// or several at once, without serializing it again: clone the request.
#[derive(Clone)]
pub struct ClientRequest {
    /// The service's wire name.
    service: Cow<'static, str>,
    /// The method's wire name.
    method: Cow<'static, str>,
    /// The encoded argument tuple (MessagePack).
    body: Bytes,
    /// How long the caller waits; sent to the server as the deadline.
    timeout: Duration,
    /// Sent with the oneway flag: no response is expected.
    oneway: bool,
    /// Affinity key for the `ip-hash` balancer.
    hash_key: Option<u64>,
    /// What most calls do without: attachments, trace, token, placement. Boxed, so
    /// that the request every filter moves and clones stays small.
    extras: Option<Box<Extras>>,
    /// The client making the call, without its chain: where filters find its
    /// balancer. `None` for a request built outside a client.
    client: Option<Client>,
}

/// The parts of a [`ClientRequest`] most calls leave empty.
#[derive(Clone, Default)]
struct Extras {
    /// User attachments sent in the metadata.
    attachments: Vec<(String, Vec<u8>)>,
    /// Trace context sent in the metadata.
    trace: Option<TraceContext>,
    /// Token sent in the metadata, overriding the client's.
    auth_token: Option<Bytes>,
    /// Providers this call should not go to (already tried by this call).
    avoid: Vec<SocketAddr>,
    /// The one provider this call must go to.
    pinned: Option<SocketAddr>,
}

impl fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRequest")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .field("oneway", &self.oneway)
            .field("trace", &self.trace())
            .field("avoid", &self.avoided())
            .field("pinned", &self.pinned_provider())
            .finish_non_exhaustive()
    }
}

impl ClientRequest {
    /// A request for `service.method` with an encoded argument tuple (see
    /// [`encode_args`](crate::protocol::encode_args)) and the caller's timeout.
    pub fn new(
        service: impl Into<Cow<'static, str>>,
        method: impl Into<Cow<'static, str>>,
        body: Bytes,
        timeout: Duration,
    ) -> ClientRequest {
        ClientRequest {
            service: service.into(),
            method: method.into(),
            body,
            timeout,
            oneway: false,
            hash_key: None,
            extras: None,
            client: None,
        }
    }

    /// The service's wire name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method's wire name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The encoded argument tuple.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// How long the caller waits for the reply (also the deadline the server is
    /// told).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the timeout (a retry sends what is left of the caller's).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the call is sent oneway.
    pub fn is_oneway(&self) -> bool {
        self.oneway
    }

    /// Sets the oneway flag.
    pub fn set_oneway(&mut self, oneway: bool) {
        self.oneway = oneway;
    }

    /// User attachments.
    pub fn attachments(&self) -> &[(String, Vec<u8>)] {
        self.extras.as_deref().map_or(&[], |e| &e.attachments)
    }

    /// User attachments, to add or change.
    pub fn attachments_mut(&mut self) -> &mut Vec<(String, Vec<u8>)> {
        &mut self.extras_mut().attachments
    }

    /// The extras, made on first use.
    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Sets the attachments (empty: none, and nothing allocated).
    pub(crate) fn set_attachments(&mut self, attachments: Vec<(String, Vec<u8>)>) {
        if !attachments.is_empty() || self.extras.is_some() {
            self.extras_mut().attachments = attachments;
        }
    }

    /// The affinity key for the `ip-hash` balancer.
    pub fn hash_key(&self) -> Option<u64> {
        self.hash_key
    }

    /// Sets the affinity key.
    pub fn set_hash_key(&mut self, key: Option<u64>) {
        self.hash_key = key;
    }

    /// The trace context the call carries.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.extras.as_deref().and_then(|e| e.trace.as_ref())
    }

    /// Sets the trace context the call carries.
    pub fn set_trace(&mut self, trace: Option<TraceContext>) {
        if trace.is_some() || self.extras.is_some() {
            self.extras_mut().trace = trace;
        }
    }

    /// The token sent with the call, when a filter set one (else the client's own,
    /// [`ClientConfig::auth_token`](crate::ClientConfig::auth_token), is sent).
    pub fn auth_token(&self) -> Option<&[u8]> {
        self.extras.as_deref().and_then(|e| e.auth_token.as_deref())
    }

    /// Sets the token sent with the call.
    pub fn set_auth_token(&mut self, token: Option<Bytes>) {
        if token.is_some() || self.extras.is_some() {
            self.extras_mut().auth_token = token;
        }
    }

    /// The providers this call should not go to.
    pub fn avoided(&self) -> &[SocketAddr] {
        self.extras.as_deref().map_or(&[], |e| &e.avoid)
    }

    /// Asks the transport not to send this call to `addr` (a provider it already
    /// tried) while another provider can take it; when every available provider is
    /// avoided, the balancer picks among all again. No effect on a single-server
    /// client.
    pub fn avoid_provider(&mut self, addr: SocketAddr) {
        let avoid = &mut self.extras_mut().avoid;
        if !avoid.contains(&addr) {
            avoid.push(addr);
        }
    }

    /// The provider this call is pinned to, if any.
    pub fn pinned_provider(&self) -> Option<SocketAddr> {
        self.extras.as_deref().and_then(|e| e.pinned)
    }

    /// Pins the call to the provider at `addr`: the transport sends it there alone,
    /// whatever the balancer's health marks say, and does not fail it over; an address
    /// outside the provider set fails with [`RpcError::NoProvider`]. `None` lets the
    /// balancer pick. No effect on a single-server client.
    pub fn pin_provider(&mut self, addr: Option<SocketAddr>) {
        if addr.is_some() || self.extras.is_some() {
            self.extras_mut().pinned = addr;
        }
    }

    /// The balancer of the client making the call, for a client over several
    /// providers (`None` for a single-server client, or a request built by hand).
    pub fn balancer(&self) -> Option<&crate::client::Balancer> {
        self.client.as_ref().and_then(Client::balancer)
    }

    /// The client making the call (without its chain), for a filter that needs its
    /// balancer after the request has moved on.
    pub(crate) fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The server's address, for a call made by a single-server client.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        self.client.as_ref().and_then(Client::addr)
    }
}

/// What a client chain returns for a call that the server ran: the status (OK, or
/// APPLICATION_ERROR for the method's own error) and the encoded body. Every other
/// outcome (a timeout, a lost connection, a server that refused the call) is an error
/// of the chain, an [`RpcError`] boxed.
#[derive(Clone)]
pub struct ClientResponse {
    /// OK or APPLICATION_ERROR.
    status: Status,
    /// The encoded result, or the method's error.
    body: Bytes,
    /// The provider that answered; `None` for a response a filter made.
    provider: Option<SocketAddr>,
}

impl fmt::Debug for ClientResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("provider", &self.provider)
            .finish()
    }
}

impl ClientResponse {
    /// A response with `status` and an encoded `body`; a filter that answers by
    /// itself (a fallback) builds one.
    pub fn new(status: Status, body: Bytes) -> ClientResponse {
        ClientResponse {
            status,
            body,
            provider: None,
        }
    }

    /// A response with the result nil: what `()` and `Option<T>` (as `None`) decode
    /// from.
    pub fn nil() -> ClientResponse {
        ClientResponse::new(Status::Ok, Bytes::from_static(&[0xc0]))
    }

    /// A successful response carrying `value`, encoded as a method's result.
    ///
    /// # Errors
    ///
    /// If `value` cannot be encoded.
    pub fn ok<T: serde::Serialize + ?Sized>(value: &T) -> Result<ClientResponse, BoxError> {
        let mut body = BytesMut::new();
        rmp_serde::encode::write_named(&mut bytes::BufMut::writer(&mut body), value)?;
        Ok(ClientResponse::new(Status::Ok, body.freeze()))
    }

    /// OK, or APPLICATION_ERROR.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The encoded body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The status and the body, taken out.
    pub(crate) fn into_parts(self) -> (Status, Bytes) {
        (self.status, self.body)
    }

    /// The provider (or single server) that answered; `None` for a response a filter
    /// made itself (a fallback, a failsafe default).
    pub fn provider(&self) -> Option<SocketAddr> {
        self.provider
    }
}

/// A chain error from the [`Transport`] when a provider was picked: the call's
/// [`RpcError`] (its [`source`](std::error::Error::source)) and the provider that
/// failed it, for filters that keep per-provider state (a circuit breaker). Errors
/// with no provider (none was available) are plain [`RpcError`]s. Read either with
/// [`rpc_error_of`]; [`into_rpc_error`] unwraps it.
#[derive(Debug)]
pub struct ProviderError {
    /// The provider (or single server) that failed the call.
    provider: SocketAddr,
    /// Why.
    error: RpcError,
}

impl ProviderError {
    /// `error`, from the provider at `provider`.
    pub fn new(provider: SocketAddr, error: RpcError) -> ProviderError {
        ProviderError { provider, error }
    }

    /// The provider that failed the call.
    pub fn provider(&self) -> SocketAddr {
        self.provider
    }

    /// Why.
    pub fn error(&self) -> &RpcError {
        &self.error
    }

    /// Why, taken out.
    pub fn into_error(self) -> RpcError {
        self.error
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (provider {})", self.error, self.provider)
    }
}

impl std::error::Error for ProviderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The [`RpcError`] in a chain's error: the error itself, or the one a
/// [`ProviderError`] carries. `None` for other errors (a tower middleware's own).
pub fn rpc_error_of(error: &BoxError) -> Option<&RpcError> {
    match error.downcast_ref::<ProviderError>() {
        Some(e) => Some(&e.error),
        None => error.downcast_ref::<RpcError>(),
    }
}

/// The provider a chain's error names (a [`ProviderError`]'s), if any.
pub fn provider_of(error: &BoxError) -> Option<SocketAddr> {
    error.downcast_ref::<ProviderError>().map(|e| e.provider)
}

/// Whether `error` says the provider (or the path to it) is failing, rather than the
/// call being wrong or answered: a timeout, a connection that failed or broke, a
/// request not sent, a server overloaded, an internal server error, a protocol
/// violation, a server shutting down. Not: application errors (those are answers),
/// bad requests, unknown services or methods, authentication, serialization, a request
/// too large, no provider available, a client misconfigured or closed.
///
/// The circuit breaker counts exactly these against a provider; failover retries
/// them (for idempotent methods); a fallback answers for them.
pub fn is_provider_failure(error: &RpcError) -> bool {
    matches!(
        error,
        RpcError::Timeout(_)
            | RpcError::Connect { .. }
            | RpcError::NotSent { .. }
            | RpcError::ConnectionLost { .. }
            | RpcError::Overloaded(_)
            | RpcError::Internal(_)
            | RpcError::Protocol(_)
            | RpcError::ShuttingDown
    )
}

/// The end of every client chain: sends the request over the client's connections
/// (to its server, or to the provider its balancer picks, failing over calls that
/// certainly did not run) and waits for the reply. Always ready.
#[derive(Clone)]
pub struct Transport {
    /// The client, without its chain.
    client: Client,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("client", &self.client)
            .finish()
    }
}

impl Transport {
    /// The transport of `client` (whose own chain, if any, it bypasses).
    pub fn new(client: &Client) -> Transport {
        Transport {
            client: client.without_chain(),
        }
    }
}

impl tower::Service<ClientRequest> for Transport {
    type Response = ClientResponse;
    type Error = BoxError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ClientRequest) -> TransportFuture {
        TransportFuture {
            client: self.client.clone(),
            request,
            stage: Stage::Start,
        }
    }
}

/// The future of a [`Transport`] call. Like a call without a chain, it queues the
/// request in its first poll on a connection that is ready, with no allocation; only a
/// call that must connect first, fail over, or go where a filter steered it runs the
/// general path.
#[must_use = "a transport call does nothing until polled"]
pub struct TransportFuture {
    /// The client that sends the call.
    client: Client,
    /// The call (kept for a failover).
    request: ClientRequest,
    /// Where the call is.
    stage: Stage,
}

/// The stages of a [`TransportFuture`].
enum Stage {
    /// Not polled yet.
    Start,
    /// Queued on a ready connection (the fast path).
    Reply {
        /// The call's slot on its connection.
        reply: PendingReply,
        /// The provider picked (a cluster's), to record the outcome on; counts the call
        /// in flight until dropped.
        picked: Option<Picked>,
        /// The provider or server the call went to.
        addr: Option<SocketAddr>,
    },
    /// Everything else: the general path of [`Client::call_frame_at`].
    Run(Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>),
    /// Completed.
    Done,
}

impl fmt::Debug for TransportFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match &self.stage {
            Stage::Start => "not started",
            Stage::Reply { .. } => "queued",
            Stage::Run(_) => "running",
            Stage::Done => "done",
        };
        f.debug_struct("TransportFuture")
            .field("request", &self.request)
            .field("stage", &stage)
            .finish()
    }
}

impl Future for TransportFuture {
    type Output = Result<ClientResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Start => {
                    this.stage = queue(&this.client, &this.request, cx);
                    if matches!(this.stage, Stage::Reply { .. }) {
                        // Just queued: the response cannot be in yet.
                        return Poll::Pending;
                    }
                }
                Stage::Reply {
                    reply,
                    picked,
                    addr,
                } => {
                    // The latency and the time spent come from the connection's clock
                    // (see `CallState::Balanced` in `client::call`): none is read here.
                    let (outcome, timing) = std::task::ready!(reply.poll_timed(cx));
                    let addr = *addr;
                    let error = match (outcome, picked.take()) {
                        (Ok(frame), picked) => {
                            if let Some(picked) = &picked {
                                Timing::record_success(timing, picked);
                            }
                            this.stage = Stage::Done;
                            return Poll::Ready(response(frame, addr, this.request.timeout));
                        }
                        (Err(e), Some(picked)) => {
                            match this.client.fail_over(&picked, Timing::spent(timing), e) {
                                Err(e) => e,
                                Ok((spent, _)) => {
                                    // The provider certainly did not run it: the general
                                    // path tries the others, in the time left.
                                    drop(picked);
                                    let mut request = this.request.clone();
                                    request.timeout = request.timeout.saturating_sub(spent);
                                    this.stage = general(&this.client, request, None);
                                    continue;
                                }
                            }
                        }
                        (Err(e), None) => e,
                    };
                    this.stage = Stage::Done;
                    return Poll::Ready(Err(failed(error, addr)));
                }
                Stage::Run(run) => {
                    let outcome = std::task::ready!(run.as_mut().poll(cx));
                    this.stage = Stage::Done;
                    return Poll::Ready(outcome);
                }
                Stage::Done => panic!("a transport future was polled after it completed"),
            }
        }
    }
}

/// The general path for `request` (the first attempt to `picked`, if given).
fn general(client: &Client, request: ClientRequest, picked: Option<Picked>) -> Stage {
    let client = client.clone();
    Stage::Run(Box::pin(
        async move { send(&client, &request, picked).await },
    ))
}

/// The first poll of a transport call: queued on a ready connection when the call
/// goes where the balancer picks and one is ready, else the general path (starting
/// with the provider picked, so that one not connected yet gets its turn).
fn queue(client: &Client, request: &ClientRequest, cx: &Context<'_>) -> Stage {
    let steered = request.pinned_provider().is_some() || !request.avoided().is_empty();
    let picked = if steered {
        None
    } else {
        match client.ready_connection(request.hash_key) {
            Ok(ready) => {
                let encode = |buf: &mut BytesMut, id: u64| encode(client, request, buf, id);
                match ready
                    .conn
                    .submit(&encode, request.oneway, request.timeout, cx.waker())
                {
                    Ok(reply) => {
                        let addr = match &ready.picked {
                            Some(picked) => Some(picked.addr()),
                            None => client.addr(),
                        };
                        return Stage::Reply {
                            reply,
                            picked: ready.picked,
                            addr,
                        };
                    }
                    // The connection just closed, or the request cannot be encoded:
                    // the general path decides and reports.
                    Err(_) => ready.picked,
                }
            }
            Err(picked) => picked,
        }
    };
    general(client, request.clone(), picked)
}

/// Appends `request`'s frame, with request id `id`, to `buf`.
fn encode(
    client: &Client,
    request: &ClientRequest,
    buf: &mut BytesMut,
    id: u64,
) -> Result<(), RpcError> {
    let config = client.config();
    let auth_token = request.auth_token().or(config.auth_token.as_deref());
    let target = RequestTarget {
        service: &request.service,
        method: &request.method,
        timeout: Some(request.timeout),
        trace: request.trace(),
        auth_token,
        attachments: request.attachments(),
    };
    encode_raw_request(
        buf,
        id,
        request.oneway,
        &target,
        &request.body,
        config.max_frame_len,
    )
    .map_err(|e| RpcError::from_encode(e, "cannot encode a request"))
}

/// A chain error for `error` from `provider` (a [`ProviderError`] when one is known).
fn failed(error: RpcError, provider: Option<SocketAddr>) -> BoxError {
    match provider {
        Some(provider) => Box::new(ProviderError { provider, error }),
        None => Box::new(error),
    }
}

/// The response (or error) for a reply `frame` from `provider` (`None`: a oneway
/// request, written).
fn response(
    frame: Option<Frame>,
    provider: Option<SocketAddr>,
    timeout: Duration,
) -> Result<ClientResponse, BoxError> {
    let Some(frame) = frame else {
        return Ok(ClientResponse {
            status: Status::Ok,
            body: Bytes::new(),
            provider,
        });
    };
    match Status::from_code(frame.header.status) {
        status @ (Status::Ok | Status::ApplicationError) => Ok(ClientResponse {
            status,
            body: frame.body,
            provider,
        }),
        status => {
            let message: String = rmp_serde::from_slice(&frame.body)
                .unwrap_or_else(|_| "(no readable message)".to_owned());
            Err(failed(
                RpcError::from_status(status, message, timeout),
                provider,
            ))
        }
    }
}

/// Sends `request` over `client`'s connections by the general path (the first attempt
/// to `picked`, if given); see [`Transport`].
async fn send(
    client: &Client,
    request: &ClientRequest,
    picked: Option<Picked>,
) -> Result<ClientResponse, BoxError> {
    let placement = Placement {
        hash_key: request.hash_key,
        pinned: request.pinned_provider(),
        avoid: request.avoided(),
    };
    let encode = |buf: &mut BytesMut, id: u64| encode(client, request, buf, id);
    let (frame, provider) = client
        .call_frame_at(encode, request.oneway, request.timeout, &placement, picked)
        .await
        .map_err(|f| failed(f.error, f.provider))?;
    response(frame, provider, request.timeout)
}

/// A whole client chain, boxed.
pub(crate) type ClientChain = BoxCloneSyncService<ClientRequest, ClientResponse, BoxError>;

/// A layer of a client chain, type-erased so that a [`ClientBuilder`](crate::ClientBuilder)
/// stays one type whatever layers it has.
pub(crate) type ErasedLayer = Arc<dyn Fn(ClientChain) -> ClientChain + Send + Sync>;

/// The most spare copies of a chain a [`ChainPool`] keeps: as many as calls start at
/// the same moment, which is the number of threads calling.
const SPARE_CHAINS: usize = 64;

/// A client's chain, and spare copies of it that calls borrow to start: a call takes a
/// copy, starts its request on it and gives it back at once (a tower service's future
/// does not borrow the service), so copies are made only for calls that start at the
/// same moment, not one per call, and a layer's per-copy state (a cache of the last
/// method's statistics, say) lives across calls.
pub(crate) struct ChainPool {
    /// The chain as built.
    prototype: ClientChain,
    /// Copies ready to start a call on.
    spare: std::sync::Mutex<Vec<ClientChain>>,
}

impl ChainPool {
    /// A pool of copies of `chain`.
    pub(crate) fn new(chain: ClientChain) -> ChainPool {
        ChainPool {
            prototype: chain,
            spare: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A copy to start a call on.
    fn take(&self) -> ClientChain {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        spare.unwrap_or_else(|| self.prototype.clone())
    }

    /// Gives back a copy that is ready for its next call.
    fn give_back(&self, chain: ClientChain) {
        let mut spare = self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if spare.len() < SPARE_CHAINS {
            spare.push(chain);
        }
    }
}

/// A call running through a client's chain.
pub(crate) enum ChainCall {
    /// Started at once: the chain was ready.
    Started(Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>),
    /// Waiting for the chain to become ready (a layer that limits, say), then started.
    Waiting(Pin<Box<tower::util::Oneshot<ClientChain, ClientRequest>>>),
}

impl Future for ChainCall {
    type Output = Result<ClientResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ChainCall::Started(future) => future.as_mut().poll(cx),
            ChainCall::Waiting(oneshot) => oneshot.as_mut().poll(cx),
        }
    }
}

/// Starts `request`, made by `client`, through `client`'s chain; `None` when it has
/// none.
pub(crate) fn start(client: &Client, mut request: ClientRequest) -> Option<ChainCall> {
    use tower::{Service as _, ServiceExt as _};
    let pool = client.chain()?;
    request.client = Some(client.without_chain());
    let mut chain = pool.take();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match chain.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {
            let future = chain.call(request);
            pool.give_back(chain);
            Some(ChainCall::Started(future))
        }
        // Not ready, or failed: the oneshot polls it again with the caller's waker and
        // reports what it says.
        _ => Some(ChainCall::Waiting(Box::pin(chain.oneshot(request)))),
    }
}

/// The call's error for a chain's failure: an [`RpcError`] as it is (or the one a
/// [`ProviderError`] carries), anything else by the status it maps to (see the
/// [module docs](super)).
pub fn into_rpc_error(error: BoxError, timeout: Duration) -> RpcError {
    let error = match error.downcast::<ProviderError>() {
        Ok(e) => return e.error,
        Err(other) => other,
    };
    match error.downcast::<RpcError>() {
        Ok(e) => *e,
        Err(other) => {
            let (status, message) = status_of(&*other);
            RpcError::from_status(status, message, timeout)
        }
    }
}

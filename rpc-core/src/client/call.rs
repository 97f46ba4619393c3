//! [`Call`]: one remote call, made in any of the four call modes.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;

use serde::de::DeserializeOwned;
use serde::Serialize;

use rpc_lb::Picked;

use super::connection::PendingReply;
use super::pending::Timing;
use super::Client;
use crate::error::RpcError;
use crate::filter::client::ChainCall;
use crate::filter::inline::ClientWatch;
use crate::filter::{into_rpc_error, ClientRequest};
use crate::protocol::metadata::TraceContext;
use crate::protocol::{
    encode_args, encode_request, EncodeError, Frame, ProtocolError, RequestTarget, Status,
    SERIALIZATION_MSGPACK,
};

/// One remote call, built by a generated client stub and made in one of four modes:
///
/// | mode | how | returns |
/// |---|---|---|
/// | future | `call.await` | the result, asynchronously |
/// | sync | [`call.blocking()`](Call::blocking) | the result, blocking this (non-async) thread |
/// | callback | [`call.callback(f)`](Call::callback) | at once; `f` runs later with the result |
/// | oneway | [`call.oneway()`](Call::oneway), then any of the above | `()` once the request is written |
///
/// `A` is the argument tuple (`()` for a method without arguments, `(String,)` for
/// one argument), `T` the result type, `E` the service's error type
/// ([`NoError`](crate::NoError) for methods that cannot fail). Code generic over calls
/// names one bound, [`RemoteCall`], rather than the three these need. Nothing is sent until the call is
/// awaited, blocked on, or given a callback.
///
/// ```no_run
/// # use rpc_core::{service, Client};
/// # #[service] trait Greeter { async fn greet(&self, name: String) -> String; }
/// # async fn run(client: Client) -> Result<(), rpc_core::RpcError> {
/// let greeter = GreeterClient::new(client);
/// let text = greeter.greet("Ada".into()).timeout(std::time::Duration::from_secs(1)).await?;
/// greeter.greet("Bob".into()).callback(|result| println!("{result:?}"));
/// # Ok(()) }
/// ```
#[must_use = "a call does nothing until it is awaited, blocked on, or given a callback"]
pub struct Call<A, T, E = crate::error::NoError> {
    /// Carries the call.
    client: Client,
    /// Target service.
    service: &'static str,
    /// Target method.
    method: &'static str,
    /// The argument tuple, encoded when the call is made.
    args: A,
    /// Overrides the client's default timeout.
    timeout: Option<Duration>,
    /// Send with the oneway flag; no response is expected.
    oneway: bool,
    /// User attachments sent in the metadata.
    attachments: Vec<(String, Vec<u8>)>,
    /// Affinity key for the `ip-hash` balancer.
    hash_key: Option<u64>,
    /// The call's span, sent in its metadata, when the client traces its calls
    /// without a chain.
    trace: Option<TraceContext>,
    /// The result and error types.
    _result: PhantomData<fn() -> (T, E)>,
}

impl<A, T, E> fmt::Debug for Call<A, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("oneway", &self.oneway)
            .finish_non_exhaustive()
    }
}

impl<A, T, E> Call<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    /// A call of `service.method` with the argument tuple `args`. Used by generated
    /// stubs.
    pub fn new(client: Client, service: &'static str, method: &'static str, args: A) -> Self {
        Call {
            client,
            service,
            method,
            args,
            timeout: None,
            oneway: false,
            attachments: Vec::new(),
            hash_key: None,
            trace: None,
            _result: PhantomData,
        }
    }

    /// Sets this call's timeout, overriding the client's default. The server is told
    /// too and abandons the call once it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a user attachment (sent in the request metadata).
    pub fn attachment(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.attachments.push((key.into(), value.into()));
        self
    }

    /// Sets the affinity key of a client over several providers: with the `ip-hash`
    /// balancer, calls with the same key go to the same provider while the provider set
    /// is unchanged (for example, a user id for session affinity).
    pub fn hash_key(mut self, key: u64) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// Makes this a oneway call: the request is sent with the oneway flag, the server
    /// sends no response, and the call completes with `()` as soon as the request is
    /// written to the socket. Then await it, block on it, or give it a callback.
    ///
    /// If the request cannot be written within the call's timeout (the peer stopped
    /// reading), the call fails with [`RpcError::Timeout`]; the request stays queued
    /// and is still sent if the connection recovers.
    pub fn oneway(self) -> Call<A, (), crate::error::NoError> {
        Call {
            client: self.client,
            service: self.service,
            method: self.method,
            args: self.args,
            timeout: self.timeout,
            oneway: true,
            attachments: self.attachments,
            hash_key: self.hash_key,
            trace: self.trace,
            _result: PhantomData,
        }
    }

    /// Sync mode: makes the call and blocks the current thread until it completes,
    /// or its timeout passes.
    ///
    /// Call it from plain threads (`fn main`, `std::thread::spawn`). A client built with
    /// [`Client::connect_blocking`] runs its connections on a runtime of its own, so it
    /// may also block any thread that is not one of that runtime's, `spawn_blocking`
    /// threads of your runtime included.
    ///
    /// # Errors
    ///
    /// Any [`RpcError`]; [`RpcError::BlockingInAsyncContext`] where blocking could
    /// deadlock (`.await` there instead): for a client created in async code
    /// ([`Client::connect`]), anywhere inside a tokio runtime; for a client that owns
    /// its runtime, on that runtime's threads (inside a callback, say).
    pub fn blocking(self) -> Result<T, RpcError<E>> {
        let client = self.client.clone();
        let timeout = self.effective_timeout();
        client.block_on(self.into_future(), timeout)
    }

    /// Callback mode: starts the call and returns at once. `callback` runs exactly once,
    /// on the client's runtime, with the result; if the runtime shuts down first it
    /// runs with [`RpcError::ClientClosed`].
    pub fn callback<F>(self, callback: F)
    where
        F: FnOnce(Result<T, RpcError<E>>) + Send + 'static,
    {
        let runtime = self.client.runtime().clone();
        let mut guard = CallbackGuard {
            callback: Some(callback),
            _result: PhantomData,
        };
        runtime.spawn(async move {
            let result = self.await;
            if let Some(callback) = guard.callback.take() {
                callback(result);
            }
        });
    }

    /// Which method this is, for error messages.
    fn target(&self) -> Target {
        Target {
            service: self.service,
            method: self.method,
        }
    }

    /// This call's timeout: its own, or the client's default.
    fn effective_timeout(&self) -> Duration {
        self.timeout.unwrap_or(self.client.config().timeout)
    }

    /// Appends this call's request frame, with request id `id`, to `buf`.
    fn encode(&self, buf: &mut BytesMut, id: u64, timeout: Duration) -> Result<(), RpcError> {
        let config = self.client.config();
        let target = RequestTarget {
            service: self.service,
            method: self.method,
            timeout: Some(timeout),
            trace: self.trace.as_ref(),
            auth_token: config.auth_token.as_deref(),
            attachments: &self.attachments,
        };
        encode_request(
            buf,
            id,
            self.oneway,
            &target,
            &self.args,
            config.max_frame_len,
        )
        .map_err(|e| {
            RpcError::from_encode(
                e,
                format_args!(
                    "cannot encode the arguments of {} as {}",
                    self.target(),
                    std::any::type_name::<A>()
                ),
            )
        })
    }

    /// The fast start of a call, in the first poll of its future: a call (or oneway
    /// request) to a server (or, for a cluster, a provider just picked) with an open
    /// connection is queued on it right here, with no allocation. An error when the
    /// call needs more (connecting, reconnecting, a provider that cannot take it): then
    /// [`Call::run`] makes it, starting with the provider already picked, if any (so that a provider not
    /// connected yet gets its turn). Returns the queued call, its timeout and the
    /// provider picked.
    fn try_queue(
        &self,
        cx: &Context<'_>,
    ) -> Result<(PendingReply, Duration, Option<Picked>), Option<Picked>> {
        let ready = self.client.ready_connection(self.hash_key)?;
        let timeout = self.effective_timeout();
        let encode = |buf: &mut BytesMut, id: u64| self.encode(buf, id, timeout);
        // On any failure (the connection just closed, or the request cannot be
        // encoded), the general path decides what to do and reports it.
        match ready.conn.submit(&encode, self.oneway, timeout, cx.waker()) {
            Ok(reply) => Ok((reply, timeout, ready.picked)),
            Err(_) => Err(ready.picked),
        }
    }

    /// Makes the call, whatever it takes: connecting, picking a provider (the first
    /// attempt goes to `picked`, if given) and failing over, oneway.
    async fn run(self, picked: Option<Picked>) -> Result<T, RpcError<E>> {
        let timeout = self.effective_timeout();
        let target = self.target();
        let (oneway, hash_key) = (self.oneway, self.hash_key);
        let client = self.client.clone();
        // The closure owns the call, so the future needs only `A: Send`.
        let encode = move |buf: &mut BytesMut, id: u64| self.encode(buf, id, timeout);
        let frame = client
            .call_frame(encode, oneway, timeout, hash_key, picked)
            .await
            .map_err(RpcError::widen)?;
        decode_outcome(frame, timeout, target)
    }
}

impl<A, T, E> Call<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    /// Starts the call through the client's filter chain: the arguments are encoded
    /// once, into the request every filter sees. Returns the chain's call, the call's
    /// timeout, which method it is and whether it is oneway.
    fn start_chain(self) -> Result<(ChainCall, Duration, Target, bool), RpcError<E>> {
        let timeout = self.effective_timeout();
        let target = self.target();
        let body = encode_args(&self.args).map_err(|e| match e {
            EncodeError::Serialize(e) => RpcError::serialization(
                format_args!(
                    "cannot encode the arguments of {target} as {}",
                    std::any::type_name::<A>()
                ),
                e,
            ),
            EncodeError::Protocol(p) => RpcError::Protocol(p),
        })?;
        let mut request = ClientRequest::new(self.service, self.method, body, timeout);
        request.set_oneway(self.oneway);
        request.set_hash_key(self.hash_key);
        request.set_attachments(self.attachments);
        request.set_trace(self.trace);
        let call = crate::filter::client::start(&self.client, request)
            .ok_or_else(|| RpcError::Internal("the client has no filter chain".to_owned()))?;
        Ok((call, timeout, target, self.oneway))
    }
}

/// Any call a generated stub returns, for code generic over calls: one bound to name
/// instead of the three a [`Call`]'s types need.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::{RemoteCall, RpcError};
///
/// /// Makes any call with a one-second timeout, logging failures.
/// async fn quick<C: RemoteCall>(call: C) -> Result<C::Ok, RpcError<C::Err>> {
///     let result = call.timeout(Duration::from_secs(1)).await;
///     if let Err(e) = &result {
///         eprintln!("call failed: {e}");
///     }
///     result
/// }
/// ```
pub trait RemoteCall:
    IntoFuture<Output = Result<Self::Ok, RpcError<Self::Err>>, IntoFuture: Send>
    + Send
    + Sized
    + 'static
{
    /// What the call returns on success.
    type Ok: Send + 'static;
    /// The service's own error type ([`NoError`](crate::NoError) if it has none);
    /// `Debug`, so that the call's [`RpcError`] can be shown.
    type Err: fmt::Debug + Send + 'static;
    /// The same call sent oneway.
    type Oneway: RemoteCall<Ok = (), Err = crate::error::NoError>;

    /// See [`Call::timeout`].
    fn timeout(self, timeout: Duration) -> Self;
    /// See [`Call::attachment`].
    fn attachment(self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self;
    /// See [`Call::hash_key`].
    fn hash_key(self, key: u64) -> Self;
    /// See [`Call::oneway`].
    fn oneway(self) -> Self::Oneway;
    /// See [`Call::blocking`].
    ///
    /// # Errors
    ///
    /// As [`Call::blocking`].
    fn blocking(self) -> Result<Self::Ok, RpcError<Self::Err>>;
    /// See [`Call::callback`].
    fn callback<F>(self, callback: F)
    where
        F: FnOnce(Result<Self::Ok, RpcError<Self::Err>>) + Send + 'static;
}

impl<A, T, E> RemoteCall for Call<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + fmt::Debug + Send + 'static,
{
    type Ok = T;
    type Err = E;
    type Oneway = Call<A, (), crate::error::NoError>;

    fn timeout(self, timeout: Duration) -> Self {
        Call::timeout(self, timeout)
    }

    fn attachment(self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Call::attachment(self, key, value)
    }

    fn hash_key(self, key: u64) -> Self {
        Call::hash_key(self, key)
    }

    fn oneway(self) -> Self::Oneway {
        Call::oneway(self)
    }

    fn blocking(self) -> Result<T, RpcError<E>> {
        Call::blocking(self)
    }

    fn callback<F>(self, callback: F)
    where
        F: FnOnce(Result<T, RpcError<E>>) + Send + 'static,
    {
        Call::callback(self, callback);
    }
}

/// Which method a call is, for error messages.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// The service's wire name.
    service: &'static str,
    /// The method's wire name.
    method: &'static str,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.method)
    }
}

/// Turns a call's outcome into its result: the response frame decoded, or, for a
/// oneway request (`None`, written), `()` (`T` is `()` then, decoded from nil).
fn decode_outcome<T: DeserializeOwned, E: DeserializeOwned>(
    frame: Option<Frame>,
    timeout: Duration,
    target: Target,
) -> Result<T, RpcError<E>> {
    match frame {
        Some(frame) => decode_reply(frame, timeout, target),
        None => rmp_serde::from_slice(&[0xc0]).map_err(|e| {
            RpcError::serialization(
                format_args!(
                    "oneway call of {target}: cannot produce {}",
                    std::any::type_name::<T>()
                ),
                e,
            )
        }),
    }
}

/// Turns a response frame into the call's result. [`Blob`](crate::Blob)s in the result
/// share the frame's buffer.
fn decode_reply<T: DeserializeOwned, E: DeserializeOwned>(
    frame: Frame,
    timeout: Duration,
    target: Target,
) -> Result<T, RpcError<E>> {
    if frame.header.serialization != SERIALIZATION_MSGPACK {
        return Err(RpcError::Protocol(ProtocolError::Unexpected(
            "response body uses an unsupported serialization id",
        )));
    }
    decode_body(frame.header.status, frame.body, timeout, target)
}

/// Turns a reply's status and body into the call's result.
fn decode_body<T: DeserializeOwned, E: DeserializeOwned>(
    status: u8,
    body: bytes::Bytes,
    timeout: Duration,
    target: Target,
) -> Result<T, RpcError<E>> {
    match Status::from_code(status) {
        Status::Ok => crate::blob::decode_from(body, |body| rmp_serde::from_slice(body))
            .0
            .map_err(|e| {
                RpcError::serialization(
                    format_args!(
                        "cannot decode the result of {target} as {}",
                        std::any::type_name::<T>()
                    ),
                    e,
                )
            }),
        Status::ApplicationError => {
            match crate::blob::decode_from(body, |body| rmp_serde::from_slice(body)).0 {
                Ok(e) => Err(RpcError::Application(e)),
                Err(e) => Err(RpcError::serialization(
                    format_args!(
                        "cannot decode the error of {target} as {}",
                        std::any::type_name::<E>()
                    ),
                    e,
                )),
            }
        }
        status => {
            let message: String =
                rmp_serde::from_slice(&body).unwrap_or_else(|_| "(no readable message)".to_owned());
            Err(RpcError::from_status(status, message, timeout).widen())
        }
    }
}

impl<A, T, E> IntoFuture for Call<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    type Output = Result<T, RpcError<E>>;
    type IntoFuture = CallFuture<A, T, E>;

    /// Future mode: the call is made when the future is first polled; dropping the
    /// future abandons the call.
    fn into_future(self) -> Self::IntoFuture {
        CallFuture {
            call: Some(self),
            state: CallState::Start,
            watch: None,
        }
    }
}

/// The future of a [`Call`] (what `call.await` awaits): the call is made when it is
/// first polled, and dropping it abandons the call (a response that arrives later is
/// discarded).
#[must_use = "a call does nothing until its future is polled"]
pub struct CallFuture<A, T, E = crate::error::NoError> {
    /// The call, until it is made; on a cluster's fast path it stays here, where it
    /// was built, while the response is awaited, in case it must fail over. It is
    /// kept apart from the stage so that no stage change moves it: on the fast path
    /// the call is encoded, queued and dropped (or kept) in place.
    call: Option<Call<A, T, E>>,
    /// Where the call is.
    state: CallState<T, E>,
    /// What the client's filters that run without a chain keep of the call, if it
    /// has any.
    /// (Boxed: a call without such filters carries one word for it.)
    watch: Option<Box<ClientWatch>>,
}

/// The stages of a [`CallFuture`].
enum CallState<T, E> {
    /// Not polled yet.
    Start,
    /// Queued on a connection, waiting for the response (the fast path).
    Reply {
        /// The call's slot on its connection.
        reply: PendingReply,
        /// The call's timeout, for errors.
        timeout: Duration,
        /// The method called, for errors.
        target: Target,
    },
    /// Queued on a provider a balancer picked, waiting for the response: the fast
    /// path of a cluster's call. The call itself stays in [`CallFuture::call`] in
    /// case it must fail over (no allocation per call).
    Balanced {
        /// The call's slot on its connection.
        reply: PendingReply,
        /// The call's timeout, for errors.
        timeout: Duration,
        /// The provider; counts the call in flight until dropped. The call's latency
        /// and the time a failover has left come from the connection's clock
        /// ([`PendingReply::poll_timed`]): the fast path reads none.
        picked: Picked,
    },
    /// Through the client's filter chain.
    Chain {
        /// The chain's call.
        call: ChainCall,
        /// The call's timeout, for errors.
        timeout: Duration,
        /// The method called, for errors.
        target: Target,
        /// Sent oneway: the result is `()`.
        oneway: bool,
    },
    /// Everything else, run by [`Call::run`].
    Run(Pin<Box<dyn Future<Output = Result<T, RpcError<E>>> + Send>>),
    /// Completed.
    Done,
}

// No field is ever pinned in place: the call is moved out when it takes the general
// path, which is a future of its own, pinned in its box.
impl<A, T, E> Unpin for CallFuture<A, T, E> {}

impl<A, T, E> fmt::Debug for CallFuture<A, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match &self.state {
            CallState::Start => "not started",
            CallState::Reply { .. } | CallState::Balanced { .. } => {
                "queued (waiting for the response, or for the write if oneway)"
            }
            CallState::Chain { .. } | CallState::Run(_) => "running",
            CallState::Done => "done",
        };
        f.debug_struct("CallFuture").field("stage", &stage).finish()
    }
}

impl<A, T, E> CallFuture<A, T, E> {
    /// Takes the call out, for a path that needs it by value.
    fn take_call(&mut self) -> Call<A, T, E> {
        self.call
            .take()
            .expect("the call is taken once, when it leaves the fast path")
    }
}

impl<A, T, E> Future for CallFuture<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    type Output = Result<T, RpcError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.watch.is_some() {
            return this.poll_watched(cx);
        }
        let outcome = ready!(this.poll_call(cx));
        // A call that failed in its first poll, its filters just started.
        if let Some(watch) = this.watch.take() {
            watch.finish(outcome_label(&outcome));
        }
        Poll::Ready(outcome)
    }
}

/// The outcome label of a call's result, for its filters.
fn outcome_label<T, E>(outcome: &Result<T, RpcError<E>>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => crate::filter::error_label(e),
    }
}

impl<A, T, E> Call<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    /// Runs the client's filters that need no chain over this call, as it starts.
    #[cold]
    fn start_filters(&mut self) -> Box<ClientWatch> {
        let Some(filters) = self.client.filters() else {
            unreachable!("called for a client with filters")
        };
        let (watch, trace) = filters.start(self.service, self.method);
        if trace.is_some() {
            self.trace = trace;
        }
        Box::new(watch)
    }
}

impl<A, T, E> CallFuture<A, T, E>
where
    A: Serialize + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    /// [`poll`](Future::poll) for a call the client's filters watch: inside the
    /// call's span, if it has one; its outcome counted when it ends.
    #[inline(never)]
    fn poll_watched(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RpcError<E>>> {
        let span = self.watch.as_ref().and_then(|w| w.span()).cloned();
        let _entered = span.as_ref().map(tracing::Span::enter);
        let outcome = ready!(self.poll_call(cx));
        if let Some(watch) = self.watch.take() {
            watch.finish(outcome_label(&outcome));
        }
        Poll::Ready(outcome)
    }

    /// Drives the call (what [`poll`](Future::poll) does, less the filters).
    #[inline(always)]
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RpcError<E>>> {
        let this = self;
        loop {
            match &mut this.state {
                CallState::Start => {
                    let Some(call) = &mut this.call else {
                        unreachable!("a call not started is in its future")
                    };
                    if call.client.filters().is_some() && this.watch.is_none() {
                        this.watch = Some(call.start_filters());
                    }
                    if call.client.chain().is_some() {
                        if let Some(watch) = &mut this.watch {
                            watch.left_fast_path(Duration::ZERO);
                        }
                        let (call, timeout, target, oneway) = this.take_call().start_chain()?;
                        this.state = CallState::Chain {
                            call,
                            timeout,
                            target,
                            oneway,
                        };
                        continue;
                    }
                    // Encoded where it lies: the call is not moved for this.
                    let (reply, timeout, picked) = match call.try_queue(cx) {
                        Ok(queued) => queued,
                        Err(picked) => {
                            if let Some(watch) = &mut this.watch {
                                watch.left_fast_path(Duration::ZERO);
                            }
                            let call = this.take_call();
                            this.state = CallState::Run(Box::pin(call.run(picked)));
                            continue;
                        }
                    };
                    this.state = match picked {
                        // A single server's call is done with: its arguments are
                        // dropped where they lie.
                        None => {
                            let target = call.target();
                            this.call = None;
                            CallState::Reply {
                                reply,
                                timeout,
                                target,
                            }
                        }
                        // A cluster's is kept in case it must fail over.
                        Some(picked) => CallState::Balanced {
                            reply,
                            timeout,
                            picked,
                        },
                    };
                    // Just queued: the response cannot be in yet.
                    return Poll::Pending;
                }
                CallState::Reply {
                    reply,
                    timeout,
                    target,
                } => {
                    let outcome = match &mut this.watch {
                        None => ready!(Pin::new(reply).poll(cx)),
                        Some(watch) => {
                            let (outcome, timing) = ready!(reply.poll_timed(cx));
                            watch.timed(timing);
                            outcome
                        }
                    };
                    let (timeout, target) = (*timeout, *target);
                    this.state = CallState::Done;
                    return Poll::Ready(match outcome {
                        Ok(frame) => decode_outcome(frame, timeout, target),
                        Err(e) => Err(e.widen()),
                    });
                }
                CallState::Balanced {
                    reply,
                    timeout,
                    picked,
                } => {
                    let (outcome, timing) = ready!(reply.poll_timed(cx));
                    if let Some(watch) = &mut this.watch {
                        watch.timed(timing);
                    }
                    let timeout = *timeout;
                    let Some(call) = &this.call else {
                        unreachable!("a balanced call is kept in its future until it ends")
                    };
                    let e = match outcome {
                        Ok(frame) => {
                            Timing::record_success(timing, picked);
                            let target = call.target();
                            this.state = CallState::Done;
                            this.call = None;
                            return Poll::Ready(decode_outcome(frame, timeout, target));
                        }
                        Err(e) => e,
                    };
                    match call.client.fail_over(picked, Timing::spent(timing), e) {
                        Err(e) => {
                            this.state = CallState::Done;
                            this.call = None;
                            return Poll::Ready(Err(e.widen()));
                        }
                        Ok((spent, _)) => {
                            // The provider certainly did not run it: the general path
                            // tries the others, in the time left. The provider picked
                            // is let go first (its in-flight count drops).
                            this.state = CallState::Done;
                            if let Some(watch) = &mut this.watch {
                                watch.left_fast_path(spent);
                            }
                            let mut call = this.take_call();
                            call.timeout = Some(timeout.saturating_sub(spent));
                            this.state = CallState::Run(Box::pin(call.run(None)));
                        }
                    }
                }
                CallState::Chain {
                    call,
                    timeout,
                    target,
                    oneway,
                } => {
                    let outcome = ready!(Pin::new(call).poll(cx));
                    let (timeout, target, oneway) = (*timeout, *target, *oneway);
                    this.state = CallState::Done;
                    let response = match outcome {
                        Ok(response) => response,
                        Err(e) => return Poll::Ready(Err(into_rpc_error(e, timeout).widen())),
                    };
                    if oneway {
                        return Poll::Ready(decode_outcome(None, timeout, target));
                    }
                    let (status, body) = response.into_parts();
                    return Poll::Ready(decode_body(status.code(), body, timeout, target));
                }
                CallState::Run(run) => {
                    let outcome = ready!(run.as_mut().poll(cx));
                    this.state = CallState::Done;
                    return Poll::Ready(outcome);
                }
                CallState::Done => panic!("a call's future was polled after it completed"),
            }
        }
    }
}

/// Runs the callback with `ClientClosed` if the task is dropped before it ran.
struct CallbackGuard<T, E, F: FnOnce(Result<T, RpcError<E>>)> {
    /// The callback, until it has run.
    callback: Option<F>,
    /// The result types.
    _result: PhantomData<fn(T, E)>,
}

impl<T, E, F: FnOnce(Result<T, RpcError<E>>)> Drop for CallbackGuard<T, E, F> {
    fn drop(&mut self) {
        if let Some(callback) = self.callback.take() {
            callback(Err(RpcError::ClientClosed));
        }
    }
}

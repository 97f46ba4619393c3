//! From a request frame to a running handler, and from a finished handler to its
//! response bytes: service lookup, metadata, argument decoding (by the generated
//! skeleton), the call context, and where the handler runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::context::CancelSignal;
use super::in_flight::{
    not_started, panicked, poll_guarded, run_on_pool, InFlight, Outcome, PoolCall,
};
use super::{CallContext, DispatchError, Reply, ServerShared, Service};
use crate::filter::inline::{Admitted, ConnectionFilters};
use crate::filter::{self, server::ServerChain, ServerRequest};
use crate::protocol::metadata::RequestMeta;
use crate::protocol::{
    encode_heartbeat, encode_raw_response, encode_response, encode_response_with, Event, Flags,
    RawFrame, ResponseError, Status, SERIALIZATION_MSGPACK,
};

/// Within a batch, the clock is read again after this many requests to check their
/// deadlines: a clock reading costs ~30 ns here, a tenth of a small call's whole
/// server-side cost, and cheap handlers get through this many in microseconds.
const CLOCK_EVERY: u32 = 8;

/// What a handler on the business pool sends back: the request id and the reply,
/// `None` for a oneway call (nothing to write).
pub(super) type PoolReply = (u64, Option<Reply>);

/// The calls of one connection: dispatching its requests and encoding its replies.
pub(super) struct Dispatch<'a> {
    /// Server-wide services and settings.
    pub(super) shared: &'a ServerShared,
    /// The peer, for the call context and log messages.
    pub(super) peer: SocketAddr,
    /// The peer's verified certificate identity (mutual TLS), for the call context.
    pub(super) peer_identity: Option<std::sync::Arc<super::PeerIdentity>>,
    /// Encoded frames waiting to be written.
    pub(super) wbuf: BytesMut,
    /// Handlers running on this worker.
    pub(super) inflight: FuturesUnordered<InFlight>,
    /// Handlers running on the business pool report here.
    pool_tx: mpsc::UnboundedSender<PoolReply>,
    /// How many handlers are running on the business pool.
    pub(super) pool_pending: usize,
    /// The service last called on this connection, to skip the map lookup: a
    /// connection usually calls one service over and over. Borrowed from `shared`, so
    /// a call costs no reference-count traffic on the service all workers share.
    last_service: Option<(&'a str, &'a Arc<dyn Service>)>,
    /// When the current batch of requests was read; their deadlines count from here.
    pub(super) received: Instant,
    /// The time as last read, for deadline checks (see [`CLOCK_EVERY`]).
    now: Instant,
    /// Requests checked against `now` since it was read.
    since_clock: u32,
    /// Calls still running (on this worker or the pool) that the caller may cancel, by
    /// request id. A call that finishes on its first poll never enters it.
    running: HashMap<u64, Arc<CancelSignal>>,
    /// This connection's copy of the server's filter chain, if it has one.
    chain: Option<ServerChain>,
    /// The server's filters run without a chain, if it has any.
    filters: Option<ConnectionFilters<'a>>,
}

impl<'a> Dispatch<'a> {
    /// No calls yet; pool replies go to `pool_tx`.
    pub(super) fn new(
        shared: &'a ServerShared,
        peer: SocketAddr,
        pool_tx: mpsc::UnboundedSender<PoolReply>,
    ) -> Self {
        Dispatch {
            shared,
            peer,
            peer_identity: None,
            wbuf: BytesMut::new(),
            inflight: FuturesUnordered::new(),
            pool_tx,
            pool_pending: 0,
            last_service: None,
            received: Instant::now(),
            now: Instant::now(),
            since_clock: 0,
            running: HashMap::new(),
            chain: shared.chain.clone(),
            filters: shared.filters.as_ref().map(ConnectionFilters::new),
        }
    }

    /// A new batch of requests was read at `at`.
    pub(super) fn batch_read(&mut self, at: Instant) {
        self.received = at;
        self.now = at;
        self.since_clock = 0;
    }

    /// Whether a request of this batch with `timeout` has already missed its deadline.
    fn expired(&mut self, timeout: Option<Duration>) -> bool {
        let Some(timeout) = timeout else {
            return false;
        };
        self.since_clock += 1;
        if self.since_clock >= CLOCK_EVERY {
            self.since_clock = 0;
            self.now = Instant::now();
        }
        self.now >= self.received + timeout
    }

    /// The call `id` ended (or was cancelled): it can no longer be cancelled.
    pub(super) fn ended(&mut self, id: u64) {
        if !self.running.is_empty() {
            self.running.remove(&id);
        }
    }

    /// Calls running, on this worker or on the pool.
    pub(super) fn in_flight(&self) -> usize {
        self.inflight.len() + self.pool_pending
    }

    /// Handles one frame.
    ///
    /// # Errors
    ///
    /// A frame a server must never receive (a response other than a heartbeat); the
    /// connection is closed.
    pub(super) fn on_frame(&mut self, frame: RawFrame<'_>) -> Result<(), &'static str> {
        let RawFrame {
            header,
            metadata,
            body,
        } = frame;
        let flags = header.flags;
        if flags.contains(Flags::HEARTBEAT) {
            if !flags.contains(Flags::RESPONSE) {
                encode_heartbeat(&mut self.wbuf, header.request_id, true);
            }
            return Ok(());
        }
        if flags.contains(Flags::EVENT) {
            match Event::from_code(header.status) {
                Event::Cancel => {
                    if let Some(signal) = self.running.remove(&header.request_id) {
                        tracing::debug!(peer = %self.peer, id = header.request_id, "call cancelled by the caller");
                        signal.cancel();
                    }
                }
                event => {
                    tracing::debug!(peer = %self.peer, ?event, "ignoring event from client");
                }
            }
            return Ok(());
        }
        if flags.contains(Flags::RESPONSE) {
            return Err("a client sent a response frame");
        }
        let id = header.request_id;
        let oneway = flags.contains(Flags::ONEWAY);
        if !oneway && !self.running.is_empty() && self.running.contains_key(&id) {
            // Its reply could not be told apart from the running call's.
            return Err("a request reused the id of a call still in flight");
        }
        if header.serialization != SERIALIZATION_MSGPACK {
            let message = format!("unsupported serialization id {}", header.serialization);
            self.write_reply(id, oneway, &Reply::error(Status::BadRequest, &message));
            return Ok(());
        }
        let meta = match RequestMeta::parse(metadata) {
            Ok(meta) => meta,
            Err(e) => {
                let reply = Reply::error(Status::BadRequest, &e.to_string());
                self.write_reply(id, oneway, &reply);
                return Ok(());
            }
        };
        let Some((name, service)) = self.service(meta.service) else {
            let message = format!(
                "no service `{}` here; this server hosts: {}",
                meta.service, self.shared.service_names
            );
            self.write_reply(id, oneway, &Reply::error(Status::ServiceNotFound, &message));
            return Ok(());
        };
        if self.expired(meta.timeout) {
            // It waited in this batch behind calls that took its time: never started.
            self.write_reply(id, oneway, &not_started(meta.timeout));
            return Ok(());
        }
        let timeout = meta.timeout;
        let mut context =
            CallContext::from_request((self.peer, &self.peer_identity), self.received, &meta);
        let admitted = match &mut self.filters {
            None => None,
            Some(filters) => {
                match filters.admit(name, service, meta.method, &mut context, self.now) {
                    None => None,
                    Some(Ok(admitted)) => Some(admitted),
                    Some(Err((admitted, status, message))) => {
                        self.write_reply(id, oneway, &Reply::error(status, &message));
                        self.finish(admitted, status);
                        return Ok(());
                    }
                }
            }
        };
        let (mut call, context, cancel) = match &mut self.chain {
            None => match service.call(meta.method, body) {
                Ok(call) => (call, Some(context), None),
                Err(e) => {
                    self.write_reply(id, oneway, &Reply::error(e.status(), &e.to_string()));
                    self.finish_opt(admitted, e.status());
                    return Ok(());
                }
            },
            Some(chain) => {
                let Some(method) = service.methods().iter().find(|m| **m == meta.method) else {
                    let e = DispatchError::MethodNotFound {
                        service: meta.service.to_owned(),
                        method: meta.method.to_owned(),
                    };
                    self.write_reply(id, oneway, &Reply::error(e.status(), &e.to_string()));
                    self.finish_opt(admitted, e.status());
                    return Ok(());
                };
                // The context moves into the request: the cancel signal is made now,
                // for the server to keep.
                let cancel = Arc::clone(context.signal());
                let args = crate::blob::share_or_copy(body);
                let request =
                    ServerRequest::new(Arc::clone(service), method, args, context, oneway);
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    filter::server::start(chain, request)
                })) {
                    Ok(Ok(call)) => (call, None, Some(cancel)),
                    Ok(Err((status, message))) => {
                        self.write_reply(id, oneway, &Reply::error(status, &message));
                        self.finish_opt(admitted, status);
                        return Ok(());
                    }
                    Err(panic) => {
                        self.write_reply(id, oneway, &panicked(&*panic));
                        self.finish_opt(admitted, Status::InternalError);
                        return Ok(());
                    }
                }
            }
        };
        match &self.shared.pool {
            None => {
                // Most handlers finish on their first poll: encode the result right
                // away, straight into the write buffer.
                let mut context = context;
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let polled = {
                    let _entered = admitted
                        .as_ref()
                        .and_then(Admitted::span)
                        .map(tracing::Span::enter);
                    poll_guarded(&mut call, &mut context, &mut cx)
                };
                match polled {
                    Ok(Poll::Ready(())) => {
                        let status = self.write_outcome(id, oneway, Outcome::Finished(call));
                        self.finish_opt(admitted, status.unwrap_or(Status::Ok));
                    }
                    Ok(Poll::Pending) => {
                        if let Some(admitted) = admitted.filter(|a| !a.is_idle()) {
                            call = admitted.watch(call);
                        }
                        let cancel = cancel.unwrap_or_else(|| {
                            context
                                .as_ref()
                                .map_or_else(Arc::default, |c| Arc::clone(c.signal()))
                        });
                        if !oneway {
                            self.running.insert(id, Arc::clone(&cancel));
                        }
                        let received = self.received;
                        self.inflight.push(InFlight {
                            id,
                            oneway,
                            call: Some(call),
                            context,
                            deadline: timeout
                                .map(|t| Box::pin(tokio::time::sleep_until((received + t).into()))),
                            timeout,
                            cancel,
                        });
                    }
                    Err(reply) => {
                        self.write_reply(id, oneway, &reply);
                        self.finish_opt(admitted, reply.status);
                    }
                }
            }
            Some(pool) => {
                if let Some(admitted) = admitted.filter(|a| !a.is_idle()) {
                    call = admitted.watch(call);
                }
                let cancel = (!oneway).then(|| {
                    cancel.unwrap_or_else(|| {
                        context
                            .as_ref()
                            .map_or_else(Arc::default, |c| Arc::clone(c.signal()))
                    })
                });
                if let Some(cancel) = &cancel {
                    self.running.insert(id, Arc::clone(cancel));
                }
                self.pool_pending += 1;
                let tx = self.pool_tx.clone();
                let job = PoolCall {
                    call,
                    context,
                    timeout,
                    received: self.received,
                    oneway,
                    cancel,
                };
                pool.spawn(async move {
                    let reply = run_on_pool(job).await;
                    let _ = tx.send((id, reply));
                });
            }
        }
        Ok(())
    }

    /// A handler on the business pool ended with `reply`.
    pub(super) fn on_pool_reply(&mut self, (id, reply): PoolReply) {
        self.pool_pending -= 1;
        self.ended(id);
        if let Some(reply) = reply {
            self.write_reply(id, false, &reply);
        }
    }

    /// The filters' call `admitted` ended with a reply of `status` while the
    /// connection handled it: counted with the others of its batch when they are
    /// [published](Self::publish), with no clock reading of its own.
    fn finish(&mut self, admitted: Admitted, status: Status) {
        if let Some(filters) = &mut self.filters {
            filters.ended(admitted, status);
        }
    }

    /// Counts the calls that ended since the last time in the filters' series: before
    /// their replies are written.
    #[inline]
    pub(super) fn publish(&mut self) {
        if let Some(filters) = &mut self.filters {
            filters.publish();
        }
    }

    /// [`finish`](Self::finish), for a call the filters may not have seen.
    fn finish_opt(&mut self, admitted: Option<Admitted>, status: Status) {
        if let Some(admitted) = admitted {
            self.finish(admitted, status);
        }
    }

    /// Writes the response for a call that ended, encoding a finished handler's result
    /// straight into the write buffer. Returns the status sent (`None` for a cancelled
    /// call, which gets no reply; `Ok` for a oneway call that finished).
    pub(super) fn write_outcome(
        &mut self,
        id: u64,
        oneway: bool,
        outcome: Outcome,
    ) -> Option<Status> {
        let mut call = match outcome {
            Outcome::Failed(reply) => {
                self.write_reply(id, oneway, &reply);
                return Some(reply.status);
            }
            Outcome::Cancelled => return None,
            Outcome::Finished(call) => call,
        };
        if oneway {
            return Some(Status::Ok);
        }
        let max = self.shared.config.max_frame_len;
        let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            encode_response_with(&mut self.wbuf, id, max, |out| {
                call.as_mut().encode_result(out)
            })
        }));
        let failure = match encoded {
            Ok(Ok(status)) => return Some(status),
            Ok(Err(ResponseError::Body(e))) => e.to_string(),
            Ok(Err(ResponseError::Frame(e))) => format!("the response could not be sent: {e}"),
            Err(panic) => {
                self.write_reply(id, oneway, &panicked(&*panic));
                return Some(Status::InternalError);
            }
        };
        tracing::error!(peer = %self.peer, %failure, "cannot send response");
        self.write_reply(id, oneway, &Reply::error(Status::InternalError, &failure));
        Some(Status::InternalError)
    }

    /// The service named `name`, with its name as the server holds it.
    fn service(&mut self, name: &str) -> Option<(&'a str, &'a Arc<dyn Service>)> {
        if let Some((last, service)) = self.last_service {
            if last == name {
                return Some((last, service));
            }
        }
        let (name, service) = self.shared.services.get_key_value(name)?;
        self.last_service = Some((name.as_str(), service));
        Some((name.as_str(), service))
    }

    /// Encodes the response to call `id` into the write buffer.
    pub(super) fn write_reply(&mut self, id: u64, oneway: bool, reply: &Reply) {
        if oneway {
            return;
        }
        let max = self.shared.config.max_frame_len;
        let Err(e) = encode_raw_response(&mut self.wbuf, id, reply.status.code(), &reply.body, max)
        else {
            return;
        };
        tracing::error!(peer = %self.peer, error = %e, "cannot send response");
        // The frame cap is at least MIN_FRAME_LEN (checked at bind), which this short
        // message fits with room to spare.
        let message = format!("the response could not be sent: {e}");
        if let Err(e) = encode_response(
            &mut self.wbuf,
            id,
            Status::InternalError.code(),
            &message,
            max,
        ) {
            tracing::error!(peer = %self.peer, error = %e, id, "cannot send even an error response");
        }
    }
}

//! One server-side connection: reading, decoding, dispatching, encoding and writing,
//! all on the worker reactor that owns it.
//!
//! The loop reads into its worker's spare read buffer (keeping a buffer of its own only
//! while a partial frame waits for the rest) and keeps one write buffer. Every frame
//! that a read brings in is decoded and dispatched at once; a handler that finishes on its first poll has
//! its response encoded straight into the write buffer, and the rest run concurrently
//! in a `FuturesUnordered` (or on the business pool) and are encoded as they finish,
//! in any order. The write buffer is flushed whenever the socket can take it, so
//! responses that finish together leave in one syscall.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::protocol::metadata::RequestMeta;
use crate::protocol::{
    encode_event, encode_heartbeat, encode_raw_response, encode_response, encode_response_with,
    Event, Flags, FrameCodec, Header, ResponseError, Status, HEADER_LEN, SERIALIZATION_MSGPACK,
};
use crate::server::{enter_context, CallContext, Dispatched, Reply, Service};

use super::ServerShared;

/// Reads are made into at least this much free buffer space.
const READ_CHUNK: usize = 64 * 1024;
/// While working through a batch of requests, write the replies so far after this many
/// requests, or once this many bytes of replies are ready: the client then works on
/// them while this worker does the rest (measured: 1.6x calls/s at 256 in flight).
const EARLY_FLUSH_FRAMES: usize = 64;
/// See [`EARLY_FLUSH_FRAMES`].
const EARLY_FLUSH_BYTES: usize = 32 * 1024;
/// A connection quiet this long gives its buffers back.
const RELEASE_AFTER: Duration = Duration::from_secs(5);
/// Stop reading new requests while this many response bytes wait to be written.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;

/// A call whose handler is running on this worker.
struct InFlight {
    /// Request id to answer.
    id: u64,
    /// No response is written for oneway calls.
    oneway: bool,
    /// The running call; taken out when it finishes.
    call: Option<Dispatched>,
    /// Made current while the handler is polled (see [`CallContext`]).
    context: Option<CallContext>,
    /// The caller's deadline, armed once the handler did not finish at once.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The caller's timeout, reported when the deadline passes.
    timeout: Option<Duration>,
}

/// How a call ended.
enum Outcome {
    /// The handler finished; its result is still to be encoded.
    Finished(Dispatched),
    /// It failed (panic, deadline); this is the reply.
    Failed(Reply),
}

impl Future for InFlight {
    type Output = (u64, bool, Outcome);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(call) = this.call.as_mut() else {
            return Poll::Pending;
        };
        let outcome = match poll_guarded(call, &mut this.context, cx) {
            Ok(Poll::Ready(())) => Outcome::Finished(this.call.take().expect("present")),
            Ok(Poll::Pending) => {
                let passed = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !passed {
                    return Poll::Pending;
                }
                this.call = None;
                Outcome::Failed(deadline_passed(this.timeout))
            }
            Err(reply) => {
                this.call = None;
                Outcome::Failed(reply)
            }
        };
        Poll::Ready((this.id, this.oneway, outcome))
    }
}

/// Polls a handler, turning a panic into an internal-error reply.
fn poll_guarded(
    call: &mut Dispatched,
    context: &mut Option<CallContext>,
    cx: &mut Context<'_>,
) -> Result<Poll<()>, Reply> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        enter_context(context, || call.as_mut().poll_done(cx))
    }))
    .map_err(|panic| panicked(&*panic))
}

fn deadline_passed(timeout: Option<Duration>) -> Reply {
    let ms = timeout.map_or(0, |t| t.as_millis());
    Reply::error(
        Status::Timeout,
        &format!("the caller's deadline of {ms} ms passed before the handler finished"),
    )
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> Reply {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(%message, "handler panicked");
    Reply::error(
        Status::InternalError,
        &format!("handler panicked: {message}"),
    )
}

/// Per-connection state that frame handling touches.
struct Conn<'a> {
    /// Server-wide services and settings.
    shared: &'a ServerShared,
    /// The peer, for log messages.
    peer: SocketAddr,
    /// Encoded frames waiting to be written.
    wbuf: BytesMut,
    /// Handlers running on this worker.
    inflight: FuturesUnordered<InFlight>,
    /// Handlers running on the business pool report here: the request id and the
    /// reply, `None` for oneway calls (nothing to write).
    pool_tx: mpsc::UnboundedSender<(u64, Option<Reply>)>,
    /// How many handlers are running on the business pool.
    pool_pending: usize,
    /// The service last called on this connection, to skip the map lookup.
    last_service: Option<(Box<str>, Arc<dyn Service>)>,
    /// When the current batch of requests was read; their deadlines count from here.
    received: std::time::Instant,
}

/// Serves one connection until the peer closes it, it breaks the protocol, it goes
/// silent past the idle timeout, or the server shuts down and the drain ends.
pub(crate) async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<ServerShared>) {
    let _guard = ConnectionCount::new(&shared);
    let max_frame_len = shared.config.max_frame_len;
    let idle_timeout = shared.config.idle_timeout.max(Duration::from_millis(10));
    let max_in_flight = shared.config.max_in_flight_per_connection;
    let (rd, mut wr) = stream.split();
    let mut codec = FrameCodec::new(max_frame_len);
    // Reads go into the worker's spare buffer, handed back after each read unless a
    // partial frame is left in it (then this connection keeps it until the frame is
    // whole): an idle connection holds no read buffer. The write buffer starts empty
    // and is released after a quiet spell.
    let mut rbuf = BytesMut::new();
    let (pool_tx, mut pool_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        shared: &shared,
        peer,
        wbuf: BytesMut::new(),
        inflight: FuturesUnordered::new(),
        pool_tx,
        pool_pending: 0,
        last_service: None,
        received: std::time::Instant::now(),
    };
    let mut draining = false;
    let mut read_closed = false;
    let drain_deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drain_deadline);
    let mut idle_check = tokio::time::interval((idle_timeout / 2).min(RELEASE_AFTER));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    tracing::debug!(%peer, "connection accepted");

    loop {
        let in_flight = conn.inflight.len() + conn.pool_pending;
        let can_read =
            !read_closed && conn.wbuf.len() < WRITE_HIGH_WATER && in_flight < max_in_flight;
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                encode_event(&mut conn.wbuf, Event::GoAway);
                drain_deadline.as_mut().reset(Instant::now() + shared.config.drain_timeout);
                tracing::debug!(%peer, in_flight, "draining connection");
            }
            () = &mut drain_deadline, if draining => {
                tracing::warn!(%peer, in_flight, "drain timeout passed; closing connection with calls still running");
                break;
            }
            Some((id, oneway, outcome)) = conn.inflight.next(), if !conn.inflight.is_empty() => {
                conn.write_outcome(id, oneway, outcome);
            }
            Some((id, reply)) = pool_rx.recv(), if conn.pool_pending > 0 => {
                conn.pool_pending -= 1;
                if let Some(reply) = reply {
                    conn.write_reply(id, false, &reply);
                }
            }
            res = wr.write_buf(&mut conn.wbuf), if !conn.wbuf.is_empty() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "write failed; closing connection");
                    break;
                }
            }
            res = rd.readable(), if can_read => match res.and_then(|()| {
                if rbuf.is_empty() {
                    rbuf = take_spare_read_buffer();
                }
                codec.reserve_for_read(&mut rbuf, READ_CHUNK);
                rd.try_read_buf(&mut rbuf)
            }) {
                Ok(0) => {
                    read_closed = true;
                    if !rbuf.is_empty() {
                        tracing::warn!(%peer, buffered = rbuf.len(), "peer closed the connection in the middle of a frame");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Readiness was stale; the next wait re-arms it.
                    give_back_read_buffer(&mut rbuf);
                }
                Ok(_) => {
                    last_read = Instant::now();
                    conn.received = last_read.into_std();
                    // The whole frames read so far, as one buffer that `Blob` arguments
                    // can point into instead of copying.
                    let (batch, malformed) = codec.split_frames(&mut rbuf);
                    if let Some(batch) = batch {
                        let (handled, _) = crate::blob::decode_from(batch, |frames| conn.on_batch(frames, &wr));
                        match handled {
                            Ok(()) => {}
                            Err(BatchEnd::Unexpected(reason)) => {
                                tracing::warn!(%peer, %reason, "closing connection: unexpected frame");
                                close_after_flush(&mut wr, &conn.wbuf).await;
                                return;
                            }
                            Err(BatchEnd::WriteFailed(e)) => {
                                tracing::debug!(%peer, error = %e, "write failed; closing connection");
                                return;
                            }
                        }
                    }
                    if let Some(e) = malformed {
                        tracing::warn!(%peer, error = %e, "closing connection: malformed input");
                        close_after_flush(&mut wr, &conn.wbuf).await;
                        return;
                    }
                    give_back_read_buffer(&mut rbuf);
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed; closing connection");
                    break;
                }
            },
            _ = idle_check.tick() => {
                let quiet = last_read.elapsed() >= RELEASE_AFTER;
                if quiet && conn.wbuf.is_empty() && in_flight == 0 && conn.wbuf.capacity() > 0 {
                    conn.wbuf = BytesMut::new();
                }
                if !read_closed && last_read.elapsed() >= idle_timeout && in_flight == 0 {
                    tracing::info!(%peer, ?idle_timeout, "closing idle connection");
                    break;
                }
            }
        }
        if read_closed && conn.inflight.is_empty() && conn.pool_pending == 0 && conn.wbuf.is_empty()
        {
            break;
        }
    }
    let _ = wr.shutdown().await;
    tracing::debug!(%peer, "connection closed");
}

thread_local! {
    /// This worker's spare read buffer, shared by its connections in turn.
    static SPARE_READ_BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The worker's spare read buffer (empty, possibly with no capacity yet).
fn take_spare_read_buffer() -> BytesMut {
    SPARE_READ_BUFFER.with(|spare| std::mem::take(&mut *spare.borrow_mut()))
}

/// Hands `buf` back to the worker if it holds no partial frame (else the connection
/// keeps it). Keeps the roomier of it and the worker's current spare.
fn give_back_read_buffer(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return;
    }
    let buf = std::mem::take(buf);
    SPARE_READ_BUFFER.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.capacity() < buf.capacity() {
            *spare = buf;
        }
    });
}

/// Sends the responses already encoded (answers to the well-formed frames that came
/// before the bad one), briefly, then closes the write side.
async fn close_after_flush(wr: &mut tokio::net::tcp::WriteHalf<'_>, pending: &[u8]) {
    let flush = async {
        wr.write_all(pending).await?;
        wr.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
}

/// Why handling a batch of frames ended the connection.
enum BatchEnd {
    /// A frame a server must never receive.
    Unexpected(&'static str),
    /// Sending the replies ready so far failed.
    WriteFailed(std::io::Error),
}

impl Conn<'_> {
    /// Handles a batch of whole frames lying back to back (from
    /// [`FrameCodec::split_frames`]). Every [`EARLY_FLUSH_FRAMES`] frames or
    /// [`EARLY_FLUSH_BYTES`] of replies, sends the replies ready so far, so that the
    /// client works on them while the rest are handled.
    fn on_batch(&mut self, frames: &[u8], wr: &WriteHalf<'_>) -> Result<(), BatchEnd> {
        let mut at = 0;
        let mut since_flush = 0usize;
        while let Ok(Some(header)) = Header::parse(&frames[at..], self.shared.config.max_frame_len)
        {
            let frame = &frames[at..at + header.frame_len() as usize];
            at += frame.len();
            let meta_end = HEADER_LEN + header.metadata_len as usize;
            self.on_frame(header, &frame[HEADER_LEN..meta_end], &frame[meta_end..])
                .map_err(BatchEnd::Unexpected)?;
            since_flush += 1;
            if since_flush >= EARLY_FLUSH_FRAMES || self.wbuf.len() >= EARLY_FLUSH_BYTES {
                since_flush = 0;
                match wr.try_write(&self.wbuf) {
                    Ok(n) => self.wbuf.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(BatchEnd::WriteFailed(e)),
                }
            }
        }
        Ok(())
    }

    /// Handles one decoded frame.
    ///
    /// # Errors
    ///
    /// A frame a server must never receive (a response other than a heartbeat); the
    /// connection is closed.
    fn on_frame(
        &mut self,
        header: Header,
        metadata: &[u8],
        body: &[u8],
    ) -> Result<(), &'static str> {
        let flags = header.flags;
        if flags.contains(Flags::HEARTBEAT) {
            if !flags.contains(Flags::RESPONSE) {
                encode_heartbeat(&mut self.wbuf, header.request_id, true);
            }
            return Ok(());
        }
        if flags.contains(Flags::EVENT) {
            tracing::debug!(peer = %self.peer, event = header.status, "ignoring event from client");
            return Ok(());
        }
        if flags.contains(Flags::RESPONSE) {
            return Err("a client sent a response frame");
        }
        let id = header.request_id;
        let oneway = flags.contains(Flags::ONEWAY);
        if header.serialization != SERIALIZATION_MSGPACK {
            let message = format!("unsupported serialization id {}", header.serialization);
            self.write_reply(id, oneway, &Reply::error(Status::BadRequest, &message));
            return Ok(());
        }
        let meta = match RequestMeta::parse(metadata) {
            Ok(meta) => meta,
            Err(e) => {
                self.write_reply(
                    id,
                    oneway,
                    &Reply::error(Status::BadRequest, &e.to_string()),
                );
                return Ok(());
            }
        };
        let Some(service) = self.service(meta.service) else {
            let message = format!(
                "no service `{}` here; this server hosts: {}",
                meta.service, self.shared.service_names
            );
            self.write_reply(id, oneway, &Reply::error(Status::ServiceNotFound, &message));
            return Ok(());
        };
        let mut call = match service.call(meta.method, body) {
            Ok(call) => call,
            Err(e) => {
                self.write_reply(id, oneway, &Reply::error(e.status(), &e.to_string()));
                return Ok(());
            }
        };
        let timeout = meta.timeout;
        let mut context = Some(CallContext::from_request(self.peer, self.received, &meta));
        match &self.shared.pool {
            None => {
                // Most handlers finish on their first poll: encode the result right
                // away, straight into the write buffer.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match poll_guarded(&mut call, &mut context, &mut cx) {
                    Ok(Poll::Ready(())) => self.write_outcome(id, oneway, Outcome::Finished(call)),
                    Ok(Poll::Pending) => self.inflight.push(InFlight {
                        id,
                        oneway,
                        call: Some(call),
                        context,
                        deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
                        timeout,
                    }),
                    Err(reply) => self.write_reply(id, oneway, &reply),
                }
            }
            Some(pool) => {
                self.pool_pending += 1;
                let tx = self.pool_tx.clone();
                pool.spawn(async move {
                    let run = std::future::poll_fn(|cx| {
                        match poll_guarded(&mut call, &mut context, cx) {
                            Ok(Poll::Pending) => Poll::Pending,
                            Ok(Poll::Ready(())) => Poll::Ready(None),
                            Err(reply) => Poll::Ready(Some(reply)),
                        }
                    });
                    let failed = match timeout {
                        Some(t) => tokio::time::timeout(t, run)
                            .await
                            .unwrap_or_else(|_| Some(deadline_passed(timeout))),
                        None => run.await,
                    };
                    let reply = match failed {
                        _ if oneway => None,
                        Some(reply) => Some(reply),
                        None => Some(
                            std::panic::catch_unwind(AssertUnwindSafe(|| Reply::finished(call)))
                                .unwrap_or_else(|panic| panicked(&*panic)),
                        ),
                    };
                    let _ = tx.send((id, reply));
                });
            }
        }
        Ok(())
    }

    /// Writes the response for a call that ended, encoding a finished handler's result
    /// straight into the write buffer.
    fn write_outcome(&mut self, id: u64, oneway: bool, outcome: Outcome) {
        let mut call = match outcome {
            Outcome::Failed(reply) => return self.write_reply(id, oneway, &reply),
            Outcome::Finished(call) => call,
        };
        if oneway {
            return;
        }
        let max = self.shared.config.max_frame_len;
        let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            encode_response_with(&mut self.wbuf, id, max, |out| {
                call.as_mut().encode_result(out)
            })
        }));
        let failure = match encoded {
            Ok(Ok(_)) => return,
            Ok(Err(ResponseError::Body(e))) => e.to_string(),
            Ok(Err(ResponseError::Frame(e))) => format!("the response could not be sent: {e}"),
            Err(panic) => return self.write_reply(id, oneway, &panicked(&*panic)),
        };
        tracing::error!(peer = %self.peer, %failure, "cannot send response");
        self.write_reply(id, oneway, &Reply::error(Status::InternalError, &failure));
    }

    /// The service named `name`, remembering the last one looked up: a connection
    /// usually calls one service over and over.
    fn service(&mut self, name: &str) -> Option<Arc<dyn Service>> {
        if let Some((last, service)) = &self.last_service {
            if **last == *name {
                return Some(Arc::clone(service));
            }
        }
        let service = Arc::clone(self.shared.services.get(name)?);
        self.last_service = Some((name.into(), Arc::clone(&service)));
        Some(service)
    }

    /// Encodes the response to call `id` into the write buffer.
    fn write_reply(&mut self, id: u64, oneway: bool, reply: &Reply) {
        if oneway {
            return;
        }
        let max = self.shared.config.max_frame_len;
        if let Err(e) =
            encode_raw_response(&mut self.wbuf, id, reply.status.code(), &reply.body, max)
        {
            tracing::error!(peer = %self.peer, error = %e, "cannot send response");
            let message = format!("the response could not be sent: {e}");
            encode_response(
                &mut self.wbuf,
                id,
                Status::InternalError.code(),
                &message,
                max,
            )
            .expect("a short error message always fits in a frame");
        }
    }
}

/// Keeps the server's count of open connections.
struct ConnectionCount<'a>(&'a ServerShared);

impl<'a> ConnectionCount<'a> {
    fn new(shared: &'a ServerShared) -> Self {
        ConnectionCount(shared)
    }
}

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

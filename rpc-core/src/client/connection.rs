//! One client connection: a task that owns the socket, and callers that multiplex
//! their calls over it.
//!
//! Callers encode their request straight into the connection's shared output buffer,
//! under a short lock, registering the call (and getting its request id) in the same
//! step; the first caller to find the buffer empty wakes the connection task. The task
//! takes the whole buffer at once (many requests, one syscall, no per-request copy or
//! channel), puts responses into their calls' slots by request id as they arrive in any
//! order and wakes the callers, fails calls whose deadline passes, sends heartbeats when
//! the peer has been quiet, closes the connection when the peer stays silent past the
//! idle timeout, and on any ending fails every call still waiting with
//! [`RpcError::ConnectionLost`].
//!
//! A call's deadline counts from when the connection task first sees the request (one
//! clock reading per batch of requests, not one per call); the task is woken for every
//! batch, including while a write is stalled.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::{Mutex, MutexGuard};
use rpc_lb::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, Sleep};
use tokio_util::codec::Decoder;

use crate::error::RpcError;
use crate::protocol::{encode_cancel, encode_heartbeat, Event, Flags, Frame, FrameCodec};
use crate::transport::ClientStream;

use super::pending::{Calls, Outcome, Timing};

/// Reads are made into at least a quarter of this much free buffer space. Responses
/// stay in the buffer until their callers take them, so a fresh chunk is allocated
/// about once per chunk read; bigger chunks mean fewer, larger reads. 120 KiB (rather
/// than 64) gave 1 KiB × 256-in-flight echoes ~12 % more calls/s; 256 KiB gained
/// nothing more, and 120 KiB stays under glibc's initial mmap threshold (128 KiB).
const READ_CHUNK: usize = 120 * 1024;

/// After this long with no call outstanding and nothing to write, the output buffers
/// are given back to the allocator: a burst of large requests grows them (to 32 MiB
/// for 256 requests of 64 KiB), and a connection should not hold that afterwards. The
/// server does the same with its write buffer.
const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Encodes a request frame with the given request id at the end of the buffer; leaves
/// the buffer as it was on error.
pub(crate) type Encode<'a> = &'a dyn Fn(&mut BytesMut, u64) -> Result<(), RpcError>;

/// Settings a connection task needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    /// Largest frame accepted.
    pub(crate) max_frame_len: usize,
    /// Send a heartbeat after this long without hearing from the peer.
    pub(crate) heartbeat_interval: Duration,
    /// Close the connection after this long without hearing from the peer.
    pub(crate) idle_timeout: Duration,
}

/// What callers and the connection task share, under one lock.
#[derive(Debug, Default)]
struct Shared {
    /// Requests encoded by callers and not yet taken by the connection task.
    out: BytesMut,
    /// Calls waiting for their responses.
    calls: Calls,
    /// Ids of the calls whose requests are still in `out`: never sent, so safe to
    /// send elsewhere if the connection ends now.
    unsent: Vec<u64>,
    /// How many of `unsent` (from the front) have their deadline scheduled.
    scheduled: usize,
    /// Wake the connection task on the next submission even though `out` is not empty:
    /// the task is waiting on a stalled write and must schedule new calls' deadlines.
    wake_on_submit: bool,
    /// Calls (slab ids) of the oneway requests in `out`: done once written.
    written: Vec<u64>,
    /// Request ids for oneway frames (no response ever refers to them).
    oneway_id: u64,
    /// The server announced shutdown (GOAWAY): no new calls.
    draining: bool,
    /// Why the connection ended, once it has.
    closed: Option<Closed>,
}

impl Shared {
    /// Why a new call cannot be sent here, if it cannot.
    fn refusal(&self) -> Option<RpcError> {
        if let Some(closed) = &self.closed {
            return Some(closed.error());
        }
        // Never written, so safe to send elsewhere.
        self.draining.then_some(RpcError::ShuttingDown)
    }
}

/// The connection as callers see it.
#[derive(Debug)]
struct ConnHandle {
    /// Output buffer, pending calls and state.
    shared: Mutex<Shared>,
    /// Wakes the connection task when output is queued.
    wake: Notify,
    /// Lock-free copy of "closed", for picking connections.
    closed: AtomicBool,
    /// Lock-free copy of "draining", for picking connections.
    draining: AtomicBool,
    /// Why the connection ended, for callers that arrive late.
    reason: OnceLock<Closed>,
}

impl ConnHandle {
    /// Locks the shared state. A parking_lot mutex: callers on several threads contend
    /// for it, and its adaptive spinning gave a multi-threaded client 14 % more calls/s
    /// than `std`'s. It has no poisoning, which is fine here: a panic while holding it
    /// leaves nothing half-done that matters (every step is a single push or pop).
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock()
    }
}

/// A handle to a live connection; cloning it is one reference-count increment.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    /// Shared with the connection task.
    inner: Arc<ConnHandle>,
}

impl Connection {
    /// Starts the connection task for `stream` on the current runtime.
    pub(crate) fn spawn(
        stream: ClientStream,
        peer: SocketAddr,
        settings: ConnSettings,
    ) -> Connection {
        let inner = Arc::new(ConnHandle {
            shared: Mutex::new(Shared::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reason: OnceLock::new(),
        });
        tokio::spawn(run(stream, peer, Arc::clone(&inner), settings));
        Connection { inner }
    }

    /// Whether new calls may be sent on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire) && !self.inner.draining.load(Ordering::Acquire)
    }

    /// Whether the server announced shutdown (GOAWAY) and the connection is still
    /// finishing its calls. Once it has closed this is false again, so the next call
    /// dials afresh (the server may be back).
    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire) && !self.inner.closed.load(Ordering::Acquire)
    }

    /// Queues a request: encodes it into the output buffer and registers it, with
    /// `waker` to be woken when its outcome arrives. For a call that is the response
    /// frame; for a oneway request (`oneway`), `None` once the request has been
    /// written. The connection task fails it with [`RpcError::Timeout`] when `timeout`
    /// passes first, so the caller needs no timer.
    ///
    /// # Errors
    ///
    /// The connection has ended or is draining, or the request cannot be encoded.
    pub(crate) fn submit(
        &self,
        encode: Encode<'_>,
        oneway: bool,
        timeout: Duration,
        waker: &Waker,
    ) -> Result<PendingReply, RpcError> {
        let mut shared = self.inner.lock();
        if let Some(refusal) = shared.refusal() {
            return Err(refusal);
        }
        let notify = shared.out.is_empty() || std::mem::take(&mut shared.wake_on_submit);
        let id = shared.calls.insert(timeout, Some(waker.clone()));
        // A call's request id is its slot; a oneway request's comes from a counter of
        // its own, since no response refers to it.
        let wire_id = if oneway {
            shared.oneway_id = shared.oneway_id.wrapping_add(1);
            shared.oneway_id
        } else {
            id
        };
        let Shared { out, calls, .. } = &mut *shared;
        if let Err(e) = encode(out, wire_id) {
            calls.cancel(id);
            return Err(e);
        }
        if oneway {
            shared.written.push(id);
        }
        shared.unsent.push(id);
        drop(shared);
        if notify {
            self.inner.wake.notify_one();
        }
        Ok(PendingReply {
            conn: self.clone(),
            id,
            oneway,
            taken: false,
        })
    }

    /// Why the connection ended, if it ended because the server went silent past the
    /// idle timeout.
    pub(crate) fn went_silent(&self) -> Option<String> {
        self.inner
            .reason
            .get()
            .filter(|closed| closed.silent)
            .map(|closed| closed.reason.clone())
    }

    /// The error for calls on a connection that has ended.
    pub(crate) fn lost(&self) -> RpcError {
        match self.inner.reason.get() {
            Some(closed) => closed.error(),
            None => RpcError::ConnectionLost {
                reason: "connection closed".to_owned(),
                source: None,
            },
        }
    }
}

/// A call queued on a connection, until its outcome is taken. Polling it (it is a
/// future) gives the response frame or why there is none; dropping it first gives the
/// call up and frees its slot at once.
#[derive(Debug)]
pub(crate) struct PendingReply {
    /// The connection the call is on.
    conn: Connection,
    /// The call's request id.
    id: u64,
    /// A oneway request: nothing to cancel on the server.
    oneway: bool,
    /// The outcome has been taken.
    taken: bool,
}

impl PendingReply {
    /// Polls for the outcome, as the future does, and also says when it came and since
    /// when the call had waited for it ([`Timing`], read by the connection task: no
    /// clock is read here). The timing is `None` when the connection no longer knows
    /// the call.
    #[inline]
    pub(crate) fn poll_timed(&mut self, cx: &Context<'_>) -> Poll<(Outcome, Option<Timing>)> {
        if self.taken {
            return Poll::Ready((
                Err(RpcError::Internal(
                    "a call's outcome was asked for after it was taken".to_owned(),
                )),
                None,
            ));
        }
        let polled = self.conn.inner.lock().calls.poll(self.id, cx.waker());
        let outcome = match polled {
            Poll::Ready(Some((outcome, timing))) => (outcome, Some(timing)),
            // Not a call of this connection (any more): it has been failed and taken.
            Poll::Ready(None) => (Err(self.conn.lost()), None),
            Poll::Pending => return Poll::Pending,
        };
        self.taken = true;
        Poll::Ready(outcome)
    }
}

impl Future for PendingReply {
    /// The response frame; `None` for a oneway request, once written.
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_timed(cx).map(|(outcome, _)| outcome)
    }
}

impl Drop for PendingReply {
    /// The caller gave up on the call: its slot is freed at once and, if the server may
    /// still be running it, the server is told (a cancel frame) so it stops the handler.
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut shared = self.conn.inner.lock();
        let was_waiting = shared.calls.cancel(self.id);
        if !was_waiting || self.oneway || shared.closed.is_some() {
            return;
        }
        let notify = shared.out.is_empty() || std::mem::take(&mut shared.wake_on_submit);
        encode_cancel(&mut shared.out, self.id);
        drop(shared);
        if notify {
            self.conn.inner.wake.notify_one();
        }
    }
}

/// The connection task: waits for the next event and handles it, until the
/// connection ends; then fails the calls left.
async fn run(
    stream: ClientStream,
    peer: SocketAddr,
    handle: Arc<ConnHandle>,
    settings: ConnSettings,
) {
    match stream {
        ClientStream::Plain(mut stream) => {
            let (rd, wr) = stream.split();
            run_halves(rd, wr, false, peer, handle, settings).await;
        }
        #[cfg(feature = "tls")]
        ClientStream::Tls(stream) => {
            let (rd, wr) = tokio::io::split(*stream);
            run_halves(rd, wr, true, peer, handle, settings).await;
        }
    }
}

/// [`run`] over a stream's read and write halves; `flush_after_write` for a stream
/// that can hold written bytes back (TLS records).
async fn run_halves<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: R,
    wr: W,
    flush_after_write: bool,
    peer: SocketAddr,
    handle: Arc<ConnHandle>,
    settings: ConnSettings,
) {
    // Fails the calls left whichever way this task ends: normally (below), or by
    // being dropped unpolled when the runtime it runs on shuts down. Without it, a
    // client kept past its runtime (say, in a `static` shared by `#[tokio::test]`s)
    // would queue calls that no task ever answers or times out.
    let mut ending = Ending {
        handle,
        peer,
        ended: false,
    };
    let tick_every = (settings.heartbeat_interval / 2)
        .min(settings.idle_timeout / 4)
        .max(Duration::from_millis(5));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut task = Task {
        handle: &ending.handle,
        peer,
        settings,
        rd,
        wr,
        codec: FrameCodec::new(settings.max_frame_len),
        rbuf: BytesMut::new(),
        writing: BytesMut::new(),
        flush_after_write,
        unflushed: false,
        writing_oneway: Vec::new(),
        last_read: Instant::now(),
        last_heartbeat: Instant::now(),
        heartbeat_id: 0,
        last_busy: Instant::now(),
        tick,
        timer,
        armed: None,
        yield_now: false,
        wake: Vec::new(),
        frames: Vec::new(),
    };
    let closed = task.run().await;
    tracing::debug!(%peer, reason = %closed.reason, "client connection ended");
    let mut wr = task.wr;
    ending.end(closed);
    let _ = wr.shutdown().await;
}

/// A connection task's state between events.
struct Task<'h, 'a, R, W> {
    /// What callers and this task share.
    handle: &'h Arc<ConnHandle>,
    /// The server, for messages.
    peer: SocketAddr,
    /// Frame cap, heartbeat and idle timeouts.
    settings: ConnSettings,
    /// Where responses come from.
    rd: R,
    /// Where requests go.
    wr: W,
    /// Splits responses out of `rbuf`.
    codec: FrameCodec,
    /// The read buffer.
    rbuf: BytesMut,
    /// The buffer being written, taken from `Shared::out` whole.
    writing: BytesMut,
    /// The stream may hold written bytes back (TLS): flush once `writing` is empty.
    flush_after_write: bool,
    /// Written bytes may be held back by the stream; flush them.
    unflushed: bool,
    /// Oneway requests (slab ids) in `writing`: done once it is written.
    writing_oneway: Vec<u64>,
    /// When the server was last heard from.
    last_read: Instant,
    /// When the last heartbeat was sent.
    last_heartbeat: Instant,
    /// Request id of the last heartbeat.
    heartbeat_id: u64,
    /// When a tick last saw calls outstanding or bytes being written: the output
    /// buffers are released after [`RELEASE_AFTER`] without either.
    last_busy: Instant,
    /// Heartbeats and the idle check.
    tick: Interval,
    /// Fires at the earliest call deadline.
    timer: Pin<&'a mut Sleep>,
    /// The deadline `timer` is set for, if any.
    armed: Option<Instant>,
    /// Let the callers just answered run before reading on.
    yield_now: bool,
    /// Callers to wake, collected under the lock and woken after it is released.
    wake: Vec<Waker>,
    /// Frames of one read, decoded before the lock is taken.
    frames: Vec<Frame>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Task<'_, '_, R, W> {
    /// Handles events until the connection ends; returns why it ended.
    async fn run(&mut self) -> Closed {
        loop {
            if std::mem::take(&mut self.yield_now) {
                tokio::task::yield_now().await;
            }
            if let Err(closed) = self.prepare() {
                return closed;
            }
            self.codec.reserve_for_read(&mut self.rbuf, READ_CHUNK);
            let ended = tokio::select! {
                biased;
                res = write_or_flush(&mut self.wr, &mut self.writing), if !self.writing.is_empty() || self.unflushed => {
                    match res {
                        Ok(wrote) => {
                            self.unflushed = wrote && self.flush_after_write;
                            None
                        }
                        Err(e) => Some(Closed::io(format!("write to {} failed", self.peer), e)),
                    }
                }
                res = self.rd.read_buf(&mut self.rbuf) => match res {
                    Ok(0) => Some(Closed::from("the server closed the connection")),
                    Ok(_) => self.on_read(),
                    Err(e) => Some(Closed::io(format!("read from {} failed", self.peer), e)),
                },
                () = self.handle.wake.notified() => {
                    self.yield_now = self.more_requests_coming();
                    None
                }
                () = &mut self.timer, if self.armed.is_some() => self.on_deadline(),
                _ = self.tick.tick() => self.on_tick(),
            };
            if let Some(closed) = ended {
                return closed;
            }
        }
    }

    /// Before waiting: completes the oneway requests just written, takes the requests
    /// callers queued since (all at once), schedules their deadlines and arms the timer
    /// for the earliest.
    ///
    /// # Errors
    ///
    /// The reason to end: the server announced shutdown and nothing is left to do.
    fn prepare(&mut self) -> Result<(), Closed> {
        let next_deadline = {
            let mut shared = self.handle.lock();
            schedule_deadlines(&mut shared);
            if self.writing.is_empty() {
                if !self.writing_oneway.is_empty() {
                    let written = Timestamp::now();
                    for id in self.writing_oneway.drain(..) {
                        self.wake
                            .extend(shared.calls.complete(id, Ok(None), written));
                    }
                }
                if !shared.out.is_empty() {
                    // The written buffer becomes the callers' next output buffer:
                    // have it fill from its start, not from where the write ended.
                    rewind(&mut self.writing);
                    std::mem::swap(&mut self.writing, &mut shared.out);
                    self.writing_oneway.append(&mut shared.written);
                    shared.unsent.clear();
                    shared.scheduled = 0;
                }
            }
            // While a write is pending, requests queue up behind it without waking
            // this task; have the next one wake it, to schedule its deadline.
            shared.wake_on_submit = !self.writing.is_empty();
            if shared.draining
                && shared.calls.is_empty()
                && shared.out.is_empty()
                && self.writing.is_empty()
                && !self.unflushed
            {
                return Err(Closed::from("the server is shutting down"));
            }
            shared.calls.next_deadline()
        };
        self.wake.drain(..).for_each(Waker::wake);
        if let Some(deadline) = next_deadline {
            if self.armed != Some(deadline) {
                self.timer.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
        }
        Ok(())
    }

    /// Whether callers are likely to queue more requests within moments: calls are
    /// waiting besides those whose requests were just queued. Then the task yields once
    /// before taking the output buffer, so those requests go out in the same write. On
    /// a multi-threaded runtime a woken task otherwise runs at once, in parallel with
    /// the callers on the other worker: at 16 B × 256 in flight the client made 0.24 to
    /// 0.30 `writev` per call (three or four requests per syscall) where the one-task
    /// raw echo makes 0.004. With one call in flight this is false and nothing waits.
    fn more_requests_coming(&self) -> bool {
        let shared = self.handle.lock();
        shared.calls.len() > shared.unsent.len()
    }

    /// Responses arrived: decode them (outside the lock callers queue their calls
    /// under), then hand each to its caller.
    fn on_read(&mut self) -> Option<Closed> {
        self.last_read = Instant::now();
        let mut failure = None;
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => self.frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(format!("malformed response from {}: {e}", self.peer));
                    break;
                }
            }
        }
        // The responses' arrival on the balancer's clock, converted once for the batch.
        let read = Timestamp::of(self.last_read.into_std());
        let mut shared = self.handle.lock();
        let waiting = shared.calls.len();
        for frame in self.frames.drain(..) {
            if let Err(reason) = on_frame(frame, read, &mut shared, self.handle, &mut self.wake) {
                failure.get_or_insert(reason);
                break;
            }
        }
        // Let the callers just answered run (and queue their next calls) before
        // reading on. Not when no call is left waiting: the answered callers' next
        // requests wake this task anyway, and on a multi-threaded runtime the yield
        // cost a zero-timeout `epoll_wait` and a wake-up of the other worker per call
        // (16 B, 1 in flight: 2.7 context switches, 1.5 futex calls and 2.8
        // `epoll_wait` per call with it; 1.0, 0 and 1.0 without).
        self.yield_now = shared.calls.len() < waiting && !shared.calls.is_empty();
        drop(shared);
        self.frames.clear();
        self.wake.drain(..).for_each(Waker::wake);
        if let Some(reason) = &failure {
            tracing::warn!(peer = %self.peer, %reason, "closing connection");
        }
        failure.map(Closed::from)
    }

    /// The earliest deadline passed: fail the calls whose time is up.
    fn on_deadline(&mut self) -> Option<Closed> {
        self.armed = None;
        self.handle
            .lock()
            .calls
            .expire(Instant::now(), &mut self.wake);
        self.wake.drain(..).for_each(Waker::wake);
        None
    }

    /// Periodic: close a connection silent past the idle timeout, send a heartbeat
    /// when the server has been quiet, and end once the client is gone.
    fn on_tick(&mut self) -> Option<Closed> {
        let silent = self.last_read.elapsed();
        let settings = self.settings;
        if silent >= settings.idle_timeout {
            let mut closed = Closed::from(format!(
                "no frame from {} for {silent:?} (idle timeout {:?})",
                self.peer, settings.idle_timeout
            ));
            closed.silent = true;
            return Some(closed);
        }
        let mut shared = self.handle.lock();
        if silent >= settings.heartbeat_interval
            && self.last_heartbeat.elapsed() >= settings.heartbeat_interval
        {
            self.heartbeat_id = self.heartbeat_id.wrapping_add(1);
            encode_heartbeat(&mut shared.out, self.heartbeat_id, false);
            self.last_heartbeat = Instant::now();
        }
        if self.last_busy.elapsed() >= RELEASE_AFTER
            && shared.calls.is_empty()
            && shared.out.is_empty()
            && self.writing.is_empty()
            && (shared.out.capacity() > 0 || self.writing.capacity() > 0)
        {
            shared.out = BytesMut::new();
            self.writing = BytesMut::new();
        } else if !shared.calls.is_empty() || !self.writing.is_empty() {
            self.last_busy = Instant::now();
        }
        // Only this task holds the handle: the client is gone.
        let client_gone = Arc::strong_count(self.handle) == 1
            && shared.calls.is_empty()
            && shared.out.is_empty()
            && self.writing.is_empty();
        client_gone.then(|| Closed::from("client dropped"))
    }
}

/// Moves an empty buffer's write position back to the start of its allocation.
///
/// Writing a buffer advances its start, and appending goes on at its end: a buffer
/// that was written whole and then refilled would fill the untouched half of its
/// allocation, so the two output buffers that alternate would each touch all of their
/// capacity (at 64 KiB × 256 in flight, twice the resident memory of one buffer: 70
/// against raw's 37 MiB). Rewound, each touches only as much as its largest batch.
fn rewind(buf: &mut BytesMut) {
    debug_assert!(buf.is_empty());
    // Asking for more than the space left after the end makes `BytesMut` take the
    // space before the start back (it never allocates here); nothing to take back
    // when the buffer already starts at its allocation's start.
    let _ = buf.try_reclaim(buf.capacity() + 1);
}

/// Writes what `writing` holds, as much as the socket takes; with nothing to write,
/// flushes what the stream holds back. Returns whether it wrote.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    writing: &mut BytesMut,
) -> std::io::Result<bool> {
    if writing.is_empty() {
        wr.flush().await.map(|()| false)
    } else {
        wr.write_buf(writing).await.map(|_| true)
    }
}

/// Ends a connection exactly once: marks it closed and fails every call still
/// waiting, when the connection task finishes or is dropped.
struct Ending {
    /// The connection's shared state.
    handle: Arc<ConnHandle>,
    /// The server, for the error of requests never written.
    peer: SocketAddr,
    /// Whether [`end`](Ending::end) has run.
    ended: bool,
}

impl Ending {
    /// Closes the connection for `reason`: new calls are refused, requests never
    /// written fail as [`RpcError::NotSent`] (safe to retry elsewhere), everything else
    /// as [`RpcError::ConnectionLost`].
    fn end(&mut self, closed: Closed) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let handle = &self.handle;
        let _ = handle.reason.set(closed.clone());
        let reason = &closed.reason;
        let mut wake = Vec::new();
        {
            let mut shared = handle.lock();
            shared.closed = Some(closed.clone());
            handle.closed.store(true, Ordering::Release);
            // Requests never written did not reach the server: say so, so that they
            // can be retried elsewhere without running twice.
            let now = Timestamp::now();
            let unsent = std::mem::take(&mut shared.unsent);
            for id in unsent {
                let outcome = Err(RpcError::NotSent {
                    addr: self.peer,
                    reason: reason.clone(),
                });
                wake.extend(shared.calls.complete(id, outcome, now));
            }
            // Everything else, oneway requests being written included, may have
            // reached the server.
            shared.calls.fail_all(|_| closed.error(), now, &mut wake);
            shared.written.clear();
            shared.out.clear();
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if !self.ended {
            tracing::debug!(peer = %self.peer, "client connection task dropped with its runtime");
            self.end(Closed::from(RUNTIME_GONE));
        }
    }
}

/// Why a connection ended: what callers still waiting (or arriving late) are told.
#[derive(Debug, Clone)]
struct Closed {
    /// What happened, in words.
    reason: String,
    /// The I/O error behind it, if there was one.
    source: Option<Arc<std::io::Error>>,
    /// The server went silent past the idle timeout (it may be hung, or the link
    /// stalled): reconnecting at once would likely hang again.
    silent: bool,
}

impl Closed {
    /// The connection ended because of `error` while doing `what`.
    fn io(what: String, error: std::io::Error) -> Closed {
        Closed {
            reason: format!("{what}: {error}"),
            source: Some(Arc::new(error)),
            silent: false,
        }
    }

    /// The error of a call that may have reached the server.
    fn error(&self) -> RpcError {
        RpcError::ConnectionLost {
            reason: self.reason.clone(),
            source: self.source.clone(),
        }
    }
}

impl<S: Into<String>> From<S> for Closed {
    fn from(reason: S) -> Closed {
        Closed {
            reason: reason.into(),
            source: None,
            silent: false,
        }
    }
}

/// Why calls fail once the runtime a client's connections ran on has shut down.
pub(crate) const RUNTIME_GONE: &str = "the tokio runtime this client's connections ran on \
     has shut down (create the client on a runtime that outlives it, or with \
     Client::connect_blocking, which owns its runtime)";

/// Routes one frame from the server, read at `read`.
///
/// # Errors
///
/// A frame a client must never receive; the connection is closed.
fn on_frame(
    frame: Frame,
    read: Timestamp,
    shared: &mut Shared,
    handle: &ConnHandle,
    wake: &mut Vec<Waker>,
) -> Result<(), String> {
    let flags = frame.header.flags;
    if flags.contains(Flags::HEARTBEAT) {
        return Ok(());
    }
    if flags.contains(Flags::EVENT) {
        if Event::from_code(frame.header.status) == Event::GoAway {
            tracing::debug!("server announced shutdown (GOAWAY)");
            shared.draining = true;
            handle.draining.store(true, Ordering::Release);
        }
        return Ok(());
    }
    if !flags.contains(Flags::RESPONSE) {
        return Err("the server sent a request frame".to_owned());
    }
    // A response to a call that timed out or was given up matches no waiting call.
    wake.extend(
        shared
            .calls
            .complete(frame.header.request_id, Ok(Some(frame)), read),
    );
    Ok(())
}

/// Schedules the deadlines of the calls queued since the last time, counting from now
/// (one clock reading for the whole batch).
fn schedule_deadlines(shared: &mut Shared) {
    if shared.scheduled == shared.unsent.len() {
        return;
    }
    let now = Instant::now();
    let stamp = Timestamp::of(now.into_std());
    let Shared {
        calls,
        unsent,
        scheduled,
        ..
    } = shared;
    for &id in &unsent[*scheduled..] {
        calls.schedule(id, now, stamp);
    }
    *scheduled = unsent.len();
}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use bytes::{Buf, BufMut, BytesMut};
    use std::future::Future;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{rewind, ConnSettings, Connection, RELEASE_AFTER};
    use crate::protocol::encode_heartbeat;
    use crate::transport::ClientStream;

    /// A request's bytes as the peer below sees them: it never parses them.
    const REQUEST: usize = 64 * 1024;

    #[test]
    fn a_written_buffer_is_rewound_to_the_start_of_its_allocation() {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_bytes(7, 3000);
        buf.advance(3000);
        assert!(buf.capacity() < 1200, "advancing gave up the front");
        rewind(&mut buf);
        assert!(buf.capacity() >= 4096, "rewound: {} bytes", buf.capacity());
        // A buffer that was never advanced is left alone.
        let mut fresh = BytesMut::with_capacity(100);
        rewind(&mut fresh);
        assert!(fresh.capacity() >= 100);
    }

    /// A burst of large requests grows the output buffers; once the connection has
    /// been quiet for [`RELEASE_AFTER`] both are given back. The peer reads nothing at
    /// first, so the writer stalls while callers fill the other buffer; then it reads
    /// everything, and the big buffer ends in the connection task as the one it wrote
    /// last. The requests are oneway (done once written, nothing to cancel), and the
    /// peer sends heartbeat responses, so that the client sends nothing of its own.
    #[tokio::test]
    async fn output_buffers_grown_by_a_burst_are_released_after_a_quiet_spell() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (start_reading, reading) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = stream.into_split();
            let beat = tokio::spawn(async move {
                let mut frame = BytesMut::new();
                loop {
                    encode_heartbeat(&mut frame, 1, true);
                    if wr.write_all_buf(&mut frame).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let _ = reading.await;
            let mut sink = vec![0; 1 << 20];
            while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            beat.abort();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let settings = ConnSettings {
            max_frame_len: 1 << 30,
            // The periodic tick that releases the buffers comes every 100 ms.
            heartbeat_interval: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(3600),
        };
        let conn = Connection::spawn(ClientStream::Plain(stream), addr, settings);
        let encode = |buf: &mut BytesMut, _id: u64| {
            buf.put_bytes(0xA5, REQUEST);
            Ok(())
        };
        let waker = Waker::noop();
        let mut sent = Vec::new();
        // 64 MiB: more than the socket buffers take.
        for _ in 0..1024 {
            sent.push(
                conn.submit(&encode, true, Duration::from_secs(60), waker)
                    .unwrap(),
            );
            tokio::task::yield_now().await;
        }
        let queued = conn.inner.lock().out.capacity();
        assert!(
            queued >= 8 * REQUEST,
            "callers queued behind the stalled write: {queued} bytes"
        );
        start_reading.send(()).unwrap();
        // Wait until every request has been written.
        while !sent.is_empty() {
            sent.retain_mut(|request| {
                let mut cx = std::task::Context::from_waker(waker);
                std::pin::Pin::new(request).poll(&mut cx).is_pending()
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conn.inner.lock().calls.is_empty());
        let small = |buf: &mut BytesMut, _id: u64| {
            buf.put_bytes(0, 16);
            Ok(())
        };
        // A small request makes the task take the callers' buffer and hand them the
        // one it wrote last, the big one: rewound, it offers its whole allocation
        // again, not only the part past where the write ended.
        let _small = conn
            .submit(&small, true, Duration::from_secs(60), waker)
            .unwrap();
        let taken = || async {
            while !conn.inner.lock().out.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            conn.inner.lock().out.capacity()
        };
        let rewound = taken().await;
        assert!(
            rewound >= queued,
            "the written buffer offers {rewound} of its {queued} bytes"
        );
        tokio::time::sleep(RELEASE_AFTER + Duration::from_millis(500)).await;
        assert!(
            conn.inner.lock().out.capacity() < REQUEST,
            "the callers' buffer was released"
        );
        // The buffer the task wrote last comes back as the callers' next one once
        // another small request has been taken: it was released too (it held the
        // requests written first, 64 KiB or more).
        let _small = conn
            .submit(&small, true, Duration::from_secs(60), waker)
            .unwrap();
        let next = taken().await;
        assert!(
            next < REQUEST,
            "the written buffer was released: it came back with {next} bytes"
        );
        peer.abort();
    }
}

//! One client connection: a task that owns the socket and multiplexes calls over it.
//!
//! Callers encode their request frames themselves and hand them over a channel; the
//! task appends everything queued to one write buffer (many requests, one syscall),
//! remembers each call's reply slot by request id, and routes responses back as they
//! arrive, in any order. It sends heartbeats when the peer has been quiet, closes the
//! connection when the peer stays silent past the idle timeout, and on any ending
//! fails every call still waiting with [`RpcError::ConnectionLost`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::error::RpcError;
use crate::protocol::{encode_heartbeat, Event, Flags, Frame, FrameCodec};

use super::pending::{Calls, Pending, ReplySlot};

/// Where the request id sits in a frame header.
const REQUEST_ID: std::ops::Range<usize> = 8..16;

/// Reads are made into at least this much free buffer space.
const READ_CHUNK: usize = 64 * 1024;
/// Stop taking new requests from callers while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;

/// A request on its way from a caller to the connection task.
pub(crate) enum Outgoing {
    /// A call that expects a response.
    Call {
        /// The encoded request frame; the connection task stamps its request id.
        frame: Bytes,
        /// Where the response goes.
        reply: ReplySlot,
        /// How long the caller waits. The connection task fails the call when it
        /// passes, so callers need no timer of their own.
        timeout: Duration,
    },
    /// A oneway call; `written` is told once the frame is on the socket.
    Oneway {
        /// The encoded request frame.
        frame: Bytes,
        /// Told when the frame has been written.
        written: oneshot::Sender<Result<(), RpcError>>,
    },
}

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

/// State shared between the connection task and its handles.
#[derive(Debug, Default)]
struct ConnState {
    /// The task has ended; the connection is unusable.
    closed: AtomicBool,
    /// The server announced shutdown (GOAWAY); send no new calls here.
    draining: AtomicBool,
    /// Why the connection ended, for callers that arrive late.
    reason: OnceLock<String>,
}

/// A handle to a live connection; cloning it is one reference-count increment.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    /// The sender and the shared flags.
    inner: Arc<ConnHandle>,
}

#[derive(Debug)]
struct ConnHandle {
    /// Requests go to the connection task through here.
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Shared flags.
    state: Arc<ConnState>,
}

impl Connection {
    /// Starts the connection task for `stream` on the current runtime.
    pub(crate) fn spawn(stream: TcpStream, peer: SocketAddr, settings: ConnSettings) -> Connection {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ConnState::default());
        tokio::spawn(run(stream, peer, rx, Arc::clone(&state), settings));
        Connection {
            inner: Arc::new(ConnHandle { tx, state }),
        }
    }

    /// Whether new calls may be sent on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        let state = &self.inner.state;
        !state.closed.load(Ordering::Acquire) && !state.draining.load(Ordering::Acquire)
    }

    /// Whether the server announced shutdown (GOAWAY) and the connection is still
    /// finishing its calls. Once it has closed this is false again, so the next call
    /// dials afresh (the server may be back).
    pub(crate) fn is_draining(&self) -> bool {
        let state = &self.inner.state;
        state.draining.load(Ordering::Acquire) && !state.closed.load(Ordering::Acquire)
    }

    /// Hands a request to the connection task.
    ///
    /// # Errors
    ///
    /// [`RpcError::ConnectionLost`] if the task has ended.
    pub(crate) fn send(&self, outgoing: Outgoing) -> Result<(), RpcError> {
        self.inner.tx.send(outgoing).map_err(|_| self.lost())
    }

    /// The error for calls on a connection that has ended.
    pub(crate) fn lost(&self) -> RpcError {
        RpcError::ConnectionLost(
            self.inner
                .state
                .reason
                .get()
                .cloned()
                .unwrap_or_else(|| "connection closed".to_owned()),
        )
    }
}

/// The connection task.
async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    state: Arc<ConnState>,
    settings: ConnSettings,
) {
    let (mut rd, mut wr) = stream.split();
    let mut codec = FrameCodec::new(settings.max_frame_len);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut pending = Calls::default();
    let mut oneway_id: u64 = 0;
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // Oneway callers waiting for their frame to reach the socket; all of them are
    // satisfied when the write buffer next becomes empty.
    let mut written: Vec<oneshot::Sender<Result<(), RpcError>>> = Vec::new();
    let mut input_closed = false;
    let mut last_read = Instant::now();
    let mut last_heartbeat = Instant::now();
    let mut heartbeat_id: u64 = 0;
    let tick_every = (settings.heartbeat_interval / 2)
        .min(settings.idle_timeout / 4)
        .max(Duration::from_millis(5));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut yield_now = false;
    let reason: String = loop {
        if std::mem::take(&mut yield_now) {
            tokio::task::yield_now().await;
        }
        codec.reserve_for_read(&mut rbuf, READ_CHUNK);
        tokio::select! {
            biased;
            msg = rx.recv(), if !input_closed && !state.draining.load(Ordering::Acquire) && wbuf.len() < WRITE_HIGH_WATER => match msg {
                Some(msg) => {
                    let mut queue = Queue { wbuf: &mut wbuf, pending: &mut pending, written: &mut written, oneway_id: &mut oneway_id, now: Instant::now() };
                    queue.push(msg);
                    while queue.wbuf.len() < WRITE_HIGH_WATER {
                        match rx.try_recv() {
                            Ok(msg) => queue.push(msg),
                            Err(_) => break,
                        }
                    }
                }
                None => input_closed = true,
            },
            res = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => match res {
                Ok(_) => {
                    if wbuf.is_empty() {
                        for waiter in written.drain(..) {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                }
                Err(e) => break format!("write to {peer} failed: {e}"),
            },
            res = rd.read_buf(&mut rbuf) => match res {
                Ok(0) => break "the server closed the connection".to_owned(),
                Ok(_) => {
                    last_read = Instant::now();
                    let mut failure = None;
                    let waiting = pending.len();
                    loop {
                        match codec.decode(&mut rbuf) {
                            Ok(Some(frame)) => {
                                if let Err(reason) = on_frame(frame, &mut pending, &state) {
                                    failure = Some(reason);
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                failure = Some(format!("malformed response from {peer}: {e}"));
                                break;
                            }
                        }
                    }
                    if let Some(reason) = failure {
                        tracing::warn!(%peer, %reason, "closing connection");
                        break reason;
                    }
                    // Let the callers just answered run (and queue their next calls)
                    // before reading on: their requests then go out while the rest of
                    // the server's replies are still arriving.
                    yield_now = pending.len() < waiting;
                }
                Err(e) => break format!("read from {peer} failed: {e}"),
            },
            () = &mut timer, if armed.is_some() => {
                armed = None;
                pending.expire(Instant::now());
            }
            _ = tick.tick() => {
                let silent = last_read.elapsed();
                if silent >= settings.idle_timeout {
                    break format!("no frame from {peer} for {silent:?} (idle timeout {:?})", settings.idle_timeout);
                }
                if silent >= settings.heartbeat_interval && last_heartbeat.elapsed() >= settings.heartbeat_interval {
                    heartbeat_id = heartbeat_id.wrapping_add(1);
                    encode_heartbeat(&mut wbuf, heartbeat_id, false);
                    last_heartbeat = Instant::now();
                }
                // Callers that gave up (dropped the call) dropped their receivers.
                pending.forget_abandoned();
            }
        }
        // Aim the timer at the earliest deadline left.
        if let Some(deadline) = pending.next_deadline() {
            if armed != Some(deadline) {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
        }
        let draining = state.draining.load(Ordering::Acquire);
        if (input_closed || draining) && pending.is_empty() && wbuf.is_empty() {
            break if draining {
                "the server is shutting down".to_owned()
            } else {
                "client dropped".to_owned()
            };
        }
    };

    tracing::debug!(%peer, %reason, "client connection ended");
    let _ = state.reason.set(reason.clone());
    state.closed.store(true, Ordering::Release);
    rx.close();
    let _ = wr.shutdown().await;
    let lost = || RpcError::ConnectionLost(reason.clone());
    // Requests still queued were never written, so they are safe to send elsewhere.
    let unsent = || {
        if state.draining.load(Ordering::Acquire) {
            RpcError::ShuttingDown
        } else {
            lost()
        }
    };
    for call in pending.drain() {
        let _ = call.slot.send(Err(lost()));
    }
    for waiter in written.drain(..) {
        let _ = waiter.send(Err(lost()));
    }
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Outgoing::Call { reply, .. } => {
                let _ = reply.send(Err(unsent()));
            }
            Outgoing::Oneway { written, .. } => {
                let _ = written.send(Err(unsent()));
            }
        }
    }
}

/// Appends callers' requests to the write buffer, stamping request ids.
struct Queue<'a> {
    /// The connection's write buffer.
    wbuf: &'a mut BytesMut,
    /// Calls waiting for responses.
    pending: &'a mut Calls,
    /// Oneway callers waiting for their frame to be written.
    written: &'a mut Vec<oneshot::Sender<Result<(), RpcError>>>,
    /// Ids for oneway requests, which get no response.
    oneway_id: &'a mut u64,
    /// Deadlines count from here (one clock read per batch).
    now: Instant,
}

impl Queue<'_> {
    fn push(&mut self, msg: Outgoing) {
        let start = self.wbuf.len();
        let id = match msg {
            Outgoing::Call {
                frame,
                reply,
                timeout,
            } => {
                if reply.is_closed() {
                    return;
                }
                self.wbuf.extend_from_slice(&frame);
                let call = Pending {
                    slot: reply,
                    timeout,
                };
                self.pending.insert(call, self.now + timeout)
            }
            Outgoing::Oneway { frame, written } => {
                self.wbuf.extend_from_slice(&frame);
                self.written.push(written);
                *self.oneway_id = self.oneway_id.wrapping_add(1);
                *self.oneway_id
            }
        };
        self.wbuf[start + REQUEST_ID.start..start + REQUEST_ID.end]
            .copy_from_slice(&id.to_be_bytes());
    }
}

/// Routes one frame from the server.
///
/// # Errors
///
/// A frame a client must never receive; the connection is closed.
fn on_frame(frame: Frame, pending: &mut Calls, state: &ConnState) -> Result<(), String> {
    let flags = frame.header.flags;
    if flags.contains(Flags::HEARTBEAT) {
        return Ok(());
    }
    if flags.contains(Flags::EVENT) {
        if Event::from_code(frame.header.status) == Event::GoAway {
            tracing::debug!("server announced shutdown (GOAWAY)");
            state.draining.store(true, Ordering::Release);
        }
        return Ok(());
    }
    if !flags.contains(Flags::RESPONSE) {
        return Err("the server sent a request frame".to_owned());
    }
    if let Some(call) = pending.remove(frame.header.request_id) {
        let _ = call.slot.send(Ok(frame));
    }
    Ok(())
}

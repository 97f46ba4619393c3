//! A fault-injecting TCP proxy for tests, in-process on loopback.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every connection it accepts
//! to an upstream address, each direction by a reader task (takes bytes off one
//! socket) and a writer task (puts them on the other), joined by a queue. Faults are
//! switched on and off while connections run, and apply to all of them:
//!
//! - [`set_latency`](Proxy::set_latency): every chunk is delivered that much later
//!   (each way; reading goes on meanwhile, so latency does not cut throughput);
//! - [`set_bandwidth`](Proxy::set_bandwidth): at most so many bytes per second each way;
//! - [`stall`](Proxy::stall): bytes are accepted (read off the sockets) but nothing is
//!   forwarded, either way, until the stall ends: a hung peer or a black-holed link,
//!   which TCP itself never reports;
//! - [`pause_after`](Proxy::pause_after): one direction forwards `n` more bytes, then
//!   stops reading (TCP flow control pushes back on the sender);
//! - [`reset`](Proxy::reset) / [`reset_after`](Proxy::reset_after): both sockets of
//!   every connection are reset (RST, not FIN), now or once `n` more bytes went one way,
//!   which puts the reset in the middle of a frame;
//! - [`half_close`](Proxy::half_close): a FIN one way (later bytes that way are
//!   dropped); the other way goes on.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Reads are made in chunks of at most this many bytes.
const CHUNK: usize = 16 * 1024;

/// A direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the client that connected to the proxy, to the upstream server.
    ToServer,
    /// From the upstream server back to the client.
    ToClient,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::ToServer => 0,
            Dir::ToClient => 1,
        }
    }
}

/// What happens when a direction's byte budget runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnBudget {
    /// Stop reading that way.
    Pause,
    /// Reset every connection once the last allowed byte is written.
    Reset,
}

/// The fault settings of one direction.
#[derive(Debug, Clone, Copy)]
struct Way {
    /// Delivery delay of every chunk.
    latency: Duration,
    /// Bytes per second, if limited.
    bytes_per_sec: Option<u64>,
    /// Read but hold everything.
    stalled: bool,
    /// Read nothing.
    paused: bool,
    /// Bytes that may still be read, and what happens after them.
    budget: Option<(usize, OnBudget)>,
    /// FIN sent this way; further bytes are dropped.
    closed: bool,
}

impl Default for Way {
    fn default() -> Way {
        Way {
            latency: Duration::ZERO,
            bytes_per_sec: None,
            stalled: false,
            paused: false,
            budget: None,
            closed: false,
        }
    }
}

/// Shared between the proxy handle and its tasks.
struct Control {
    /// Settings of both directions; tasks wait on changes.
    ways: watch::Sender<[Way; 2]>,
    /// One token per open connection: cancelling it resets that connection.
    resets: Mutex<Vec<CancellationToken>>,
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// Bytes written, per direction.
    forwarded: [AtomicU64; 2],
}

impl Control {
    fn reset_all(&self) {
        for token in self.resets.lock().unwrap().drain(..) {
            token.cancel();
        }
    }
}

/// A running proxy; stops accepting when dropped (connections it forwards end with
/// the test's runtime).
pub struct Proxy {
    addr: SocketAddr,
    control: Arc<Control>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.control.reset_all();
    }
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` in front of `upstream`, with no faults.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control {
            ways: watch::channel([Way::default(); 2]).0,
            resets: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&control)));
        Proxy {
            addr,
            control,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn change(&self, dirs: &[Dir], f: impl Fn(&mut Way)) {
        self.control.ways.send_modify(|ways| {
            for dir in dirs {
                f(&mut ways[dir.index()]);
            }
        });
    }

    /// Delays every chunk by `latency`, each way.
    pub fn set_latency(&self, latency: Duration) {
        self.change(&[Dir::ToServer, Dir::ToClient], |w| w.latency = latency);
    }

    /// Limits each way to `bytes_per_sec` (None: unlimited).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.change(&[Dir::ToServer, Dir::ToClient], |w| {
            w.bytes_per_sec = bytes_per_sec
        });
    }

    /// Starts (`true`) or ends a stall: bytes are accepted, nothing is forwarded.
    pub fn stall(&self, stalled: bool) {
        self.change(&[Dir::ToServer, Dir::ToClient], |w| w.stalled = stalled);
    }

    /// `dir` forwards `bytes` more bytes, then reads nothing until [`resume`](Self::resume).
    pub fn pause_after(&self, dir: Dir, bytes: usize) {
        self.change(&[dir], |w| w.budget = Some((bytes, OnBudget::Pause)));
    }

    /// Ends pauses and byte budgets, both ways.
    pub fn resume(&self) {
        self.change(&[Dir::ToServer, Dir::ToClient], |w| {
            w.paused = false;
            w.budget = None;
        });
    }

    /// `dir` forwards `bytes` more bytes, then every connection is reset.
    pub fn reset_after(&self, dir: Dir, bytes: usize) {
        self.change(&[dir], |w| w.budget = Some((bytes, OnBudget::Reset)));
    }

    /// Resets both sockets of every open connection now (RST).
    pub fn reset(&self) {
        self.control.reset_all();
    }

    /// Sends a FIN in direction `dir` on every connection; bytes later sent that way
    /// are dropped. The other direction goes on.
    pub fn half_close(&self, dir: Dir) {
        self.change(&[dir], |w| w.closed = true);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded in `dir` so far, over all connections.
    pub fn forwarded(&self, dir: Dir) -> u64 {
        self.control.forwarded[dir.index()].load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue; // the client sees its connection dropped
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        control.accepted.fetch_add(1, Ordering::SeqCst);
        let token = CancellationToken::new();
        control.resets.lock().unwrap().push(token.clone());
        let (client_rd, client_wr) = client.into_split();
        let (server_rd, server_wr) = server.into_split();
        forward(Dir::ToServer, client_rd, server_wr, &control, &token);
        forward(Dir::ToClient, server_rd, client_wr, &control, &token);
    }
}

/// What a reader hands its writer.
enum Piece {
    /// Bytes to deliver at `due`; `reset_after`: reset everything once written.
    Data {
        due: Instant,
        bytes: Vec<u8>,
        reset_after: bool,
    },
    /// The source closed its side: pass the FIN on.
    Eof,
}

/// Starts the reader and writer of one direction.
fn forward(
    dir: Dir,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    control: &Arc<Control>,
    token: &CancellationToken,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(read_side(dir, rd, tx, Arc::clone(control), token.clone()));
    tokio::spawn(write_side(dir, wr, rx, Arc::clone(control), token.clone()));
}

async fn read_side(
    dir: Dir,
    mut rd: OwnedReadHalf,
    tx: mpsc::UnboundedSender<Piece>,
    control: Arc<Control>,
    token: CancellationToken,
) {
    let mut ways = control.ways.subscribe();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Wait while paused (or out of budget).
        let allowed = tokio::select! {
            () = token.cancelled() => break,
            way = ways.wait_for(|w| {
                let w = w[dir.index()];
                !w.paused && !matches!(w.budget, Some((0, _)))
            }) => match way {
                Ok(w) => w[dir.index()].budget.map_or(CHUNK, |(left, _)| left.min(CHUNK)),
                Err(_) => break,
            },
        };
        let n = tokio::select! {
            () = token.cancelled() => break,
            read = rd.read(&mut buf[..allowed]) => match read {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Piece::Eof);
                    // Keep the half (and so the socket) open until the connection ends.
                    token.cancelled().await;
                    break;
                }
                Ok(n) => n,
            },
        };
        let mut reset_after = false;
        let mut latency = Duration::ZERO;
        control.ways.send_modify(|ways| {
            let way = &mut ways[dir.index()];
            latency = way.latency;
            if let Some((left, on)) = &mut way.budget {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    match on {
                        OnBudget::Pause => way.paused = true,
                        OnBudget::Reset => {
                            reset_after = true;
                            way.budget = None;
                        }
                    }
                }
            }
        });
        let piece = Piece::Data {
            due: Instant::now() + latency,
            bytes: buf[..n].to_vec(),
            reset_after,
        };
        if tx.send(piece).is_err() {
            break;
        }
    }
    // Reset rather than close: with a zero linger, the close sends RST.
    reset_on_close(rd.as_ref());
}

/// Waits until direction `dir` is half-closed.
async fn closed(ways: &mut watch::Receiver<[Way; 2]>, dir: Dir) {
    let _ = ways.wait_for(|w| w[dir.index()].closed).await;
}

/// Makes the socket's close a reset. (Deprecated in tokio because a non-zero linger
/// blocks the thread on drop; a zero one does not.)
#[allow(deprecated)]
fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn write_side(
    dir: Dir,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Piece>,
    control: Arc<Control>,
    token: CancellationToken,
) {
    let mut ways = control.ways.subscribe();
    let mut fin_sent = false;
    loop {
        let piece = tokio::select! {
            () = token.cancelled() => break,
            // A half-close takes effect at once, even with nothing to forward.
            _ = closed(&mut ways, dir), if !fin_sent => {
                let _ = wr.shutdown().await;
                fin_sent = true;
                continue;
            }
            piece = rx.recv() => match piece {
                Some(piece) => piece,
                None => break,
            },
        };
        let (due, bytes, reset_after) = match piece {
            Piece::Eof => {
                if !fin_sent {
                    let _ = wr.shutdown().await;
                    fin_sent = true;
                }
                continue;
            }
            Piece::Data {
                due,
                bytes,
                reset_after,
            } => (due, bytes, reset_after),
        };
        let delivered = async {
            tokio::time::sleep_until(due).await;
            let _ = ways.wait_for(|w| !w[dir.index()].stalled).await;
            let way = ways.borrow()[dir.index()];
            if way.closed {
                return true; // dropped
            }
            let mut sent = 0;
            while sent < bytes.len() {
                // Under a bandwidth limit, write in slices of a tenth of a second.
                let slice = way.bytes_per_sec.map_or(bytes.len(), |bps| {
                    ((bps / 10).max(1) as usize).min(bytes.len() - sent)
                });
                let end = (sent + slice).min(bytes.len());
                if wr.write_all(&bytes[sent..end]).await.is_err() {
                    return false;
                }
                let len = end - sent;
                control.forwarded[dir.index()].fetch_add(len as u64, Ordering::SeqCst);
                sent = end;
                if let Some(bps) = way.bytes_per_sec {
                    let secs = len as f64 / bps as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
            }
            true
        };
        let ok = tokio::select! {
            () = token.cancelled() => break,
            ok = delivered => ok,
        };
        if !ok {
            break;
        }
        if reset_after {
            control.reset_all();
            break;
        }
    }
    reset_on_close(wr.as_ref());
    // Dropping a write half would send a FIN first; forgotten, the socket closes (with
    // RST, given the zero linger) once the read half is dropped too.
    wr.forget();
}

//! Worker reactors: Netty's `EventLoopGroup`.
//!
//! Each worker is a current-thread tokio runtime on a thread of its own (`rpc-worker-N`).
//! A connection handed to a worker is registered with that worker's reactor and all
//! its I/O, decoding and (by default) handler polling happen there, so connections do
//! not migrate between threads and one connection's work needs no locks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{connection, ServerShared};

/// A connection on its way from the boss to a worker.
type Handoff = (std::net::TcpStream, SocketAddr);

/// The running workers.
#[derive(Debug)]
pub(crate) struct WorkerGroup {
    /// One channel per worker; the boss sends accepted sockets down them.
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    /// The worker threads, joined on shutdown.
    threads: Vec<JoinHandle<()>>,
    /// The worker the next connection goes to.
    next: usize,
}

impl WorkerGroup {
    /// Starts `count` workers.
    ///
    /// # Errors
    ///
    /// If a thread or runtime cannot be created.
    pub(crate) fn start(count: usize, shared: &Arc<ServerShared>) -> io::Result<WorkerGroup> {
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let shared = Arc::clone(shared);
            let thread = thread::Builder::new()
                .name(format!("rpc-worker-{index}"))
                .spawn(move || runtime.block_on(run(rx, shared)))?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(WorkerGroup {
            senders,
            threads,
            next: 0,
        })
    }

    /// Hands a connection to the next worker.
    ///
    /// # Errors
    ///
    /// If the socket cannot be detached from the boss's reactor or the worker is gone.
    pub(crate) fn dispatch(&mut self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let stream = stream.into_std()?;
        let sender = &self.senders[self.next];
        self.next = (self.next + 1) % self.senders.len();
        sender
            .send((stream, peer))
            .map_err(|_| io::Error::other("worker thread has stopped"))
    }

    /// Tells the workers no more connections come and waits until every connection has
    /// ended and every worker thread has exited.
    pub(crate) async fn join(self) {
        drop(self.senders);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("could not join the worker threads");
        }
    }
}

/// A worker's main loop: serve every connection handed over until the boss is done,
/// then wait for the connections to end.
async fn run(mut rx: mpsc::UnboundedReceiver<Handoff>, shared: Arc<ServerShared>) {
    let tracker = TaskTracker::new();
    while let Some((stream, peer)) = rx.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                tracker.spawn(connection::serve(stream, peer, Arc::clone(&shared)));
            }
            Err(e) => {
                shared.release(peer);
                tracing::warn!(%peer, error = %e, "cannot register connection with worker");
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

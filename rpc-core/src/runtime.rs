//! Tokio runtimes that live on threads of their own.
//!
//! A runtime must not be dropped inside an async context, and the owner of one (a
//! client built from plain `fn main`, the server's business pool) may well be dropped
//! there. So each owned runtime runs on a dedicated thread that builds it, parks on a
//! stop signal, and drops it there; the owner keeps only a [`Handle`].

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Numbers owned runtimes, so a thread can tell which one it belongs to.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the owned runtime this thread works for; 0 for other threads.
    static RUNTIME_ID: Cell<u64> = const { Cell::new(0) };
}

/// A multi-threaded runtime owned by a background thread; dropping this stops it.
#[derive(Debug)]
pub(crate) struct OwnedRuntime {
    /// Where tasks are spawned.
    handle: Handle,
    /// Tells this runtime's threads apart from all others.
    id: u64,
    /// Dropping (or sending on) this tells the owning thread to shut the runtime down.
    stop: Option<oneshot::Sender<()>>,
}

impl OwnedRuntime {
    /// Starts a runtime with `threads` worker threads named `{name}-{n}`.
    ///
    /// # Errors
    ///
    /// If the runtime or its thread cannot be created.
    pub(crate) fn start(name: &str, threads: usize) -> io::Result<OwnedRuntime> {
        let (handle_tx, handle_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        thread::Builder::new()
            .name(format!("{name}-owner"))
            .spawn(move || {
                let runtime = Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name(thread_name)
                    .on_thread_start(move || RUNTIME_ID.with(|current| current.set(id)))
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        // Waits for the stop signal or for the owner to be dropped.
                        let _ = runtime.block_on(stop_rx);
                        runtime.shutdown_timeout(Duration::from_secs(1));
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("runtime thread exited before starting"))??;
        Ok(OwnedRuntime {
            handle,
            id,
            stop: Some(stop_tx),
        })
    }

    /// Whether the calling thread is one of this runtime's (a worker or a blocking
    /// thread): blocking it on work this runtime must do could deadlock.
    pub(crate) fn is_current_thread(&self) -> bool {
        RUNTIME_ID.with(Cell::get) == self.id
    }

    /// The runtime's handle.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

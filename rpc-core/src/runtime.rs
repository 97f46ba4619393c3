//! Tokio runtimes that live on threads of their own.
//!
//! A runtime must not be dropped inside an async context, and the owner of one (a
//! client built from plain `fn main`, the server's business pool) may well be dropped
//! there. So each owned runtime runs on a dedicated thread that builds it, parks on a
//! stop signal, and drops it there; the owner keeps only a [`Handle`].

use std::io;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A multi-threaded runtime owned by a background thread; dropping this stops it.
#[derive(Debug)]
pub(crate) struct OwnedRuntime {
    /// Where tasks are spawned.
    handle: Handle,
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
        thread::Builder::new()
            .name(format!("{name}-owner"))
            .spawn(move || {
                let runtime = Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name(thread_name)
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
            stop: Some(stop_tx),
        })
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

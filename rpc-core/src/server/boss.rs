//! The boss: accepts connections and hands them to the workers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::worker::WorkerGroup;
use super::ServerShared;

/// Accepts connections until `signal` completes, then starts the graceful shutdown:
/// stops accepting, tells every connection to drain, and waits for all of them.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<ServerShared>,
    mut workers: WorkerGroup,
    signal: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(signal);
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    if let Err(limit) = shared.admit(peer) {
                        tracing::warn!(%peer, "refusing connection: {limit}");
                        continue;
                    }
                    if let Err(e) = crate::transport::configure(&stream) {
                        tracing::warn!(%peer, error = %e, "cannot set the socket up");
                    }
                    if let Err(e) = workers.dispatch(stream, peer) {
                        shared.release(peer);
                        tracing::error!(%peer, error = %e, "cannot hand connection to a worker");
                    }
                }
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning.
                    tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
    drop(listener);
    tracing::info!("server shutting down: draining connections");
    shared.shutdown.cancel();
    workers.join().await;
    tracing::info!("server stopped");
    Ok(())
}

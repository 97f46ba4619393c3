//! The connections to one server: a small pool, each slot reconnecting with
//! exponential backoff.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::config::ClientConfig;
use super::connection::{ConnSettings, Connection};
use super::ClientInner;
use crate::error::RpcError;
use crate::transport::ClientStream;

/// One server address and the client's pooled connections to it: what each provider
/// of a client's [`Balancer`](crate::Balancer) carries. Opaque; the client opens,
/// reuses and reopens the connections itself.
pub struct Endpoint {
    /// The server.
    pub(super) addr: SocketAddr,
    /// The connection pool.
    slots: Box<[Slot]>,
    /// Round-robin position over `slots`.
    next_slot: AtomicUsize,
}

/// One pooled connection and its reconnect state.
#[derive(Default)]
struct Slot {
    /// The live connection, if any.
    /// Read on every call, from any thread: lock-free loads.
    conn: ArcSwapOption<Connection>,
    /// Serializes connection attempts and holds the backoff.
    connecting: tokio::sync::Mutex<Backoff>,
}

/// Reconnect backoff of a slot.
#[derive(Default)]
struct Backoff {
    /// Consecutive failed attempts.
    failures: u32,
    /// No attempt before this instant.
    not_before: Option<Instant>,
    /// The last attempt's error, returned to calls made during the backoff.
    last_error: Option<Arc<io::Error>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("connections", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn new(addr: SocketAddr, config: &ClientConfig) -> Endpoint {
        Endpoint {
            addr,
            slots: (0..config.connections).map(|_| Slot::default()).collect(),
            next_slot: AtomicUsize::new(0),
        }
    }

    /// A usable connection from the pool, connecting if needed.
    pub(super) async fn connection(&self, client: &ClientInner) -> Result<Connection, RpcError> {
        let slot = self.next_slot();
        if let Some(conn) = slot.current() {
            return Ok(conn);
        }
        let mut backoff = slot.connecting.lock().await;
        if let Some(conn) = slot.current() {
            return Ok(conn);
        }
        // A server that went silent past the idle timeout (hung, or behind a stalled
        // link) would most likely accept a new connection and hang it too: wait out a
        // backoff first, so that calls fail fast as not sent and a balancer skips it.
        if let Some(reason) = slot
            .conn
            .load()
            .as_deref()
            .and_then(Connection::went_silent)
        {
            slot.conn.store(None);
            self.back_off(
                &mut backoff,
                client,
                Arc::new(io::Error::new(io::ErrorKind::TimedOut, reason)),
            );
        }
        if let Some(not_before) = backoff.not_before {
            if Instant::now() < not_before {
                return Err(RpcError::Connect {
                    addr: self.addr,
                    source: backoff
                        .last_error
                        .clone()
                        .unwrap_or_else(|| Arc::new(io::Error::other("reconnect backoff"))),
                });
            }
        }
        let addr = self.addr;
        let settings = ConnSettings {
            max_frame_len: client.config.max_frame_len,
            heartbeat_interval: client.config.heartbeat_interval,
            idle_timeout: client.config.idle_timeout,
        };
        let connect_timeout = client.config.connect_timeout;
        #[cfg(feature = "tls")]
        let tls = client.config.tls.clone();
        // Connect on the client's runtime so the socket registers with its reactor.
        let attempt = client.runtime.spawn(async move {
            let started = Instant::now();
            let stream = crate::transport::connect(addr, connect_timeout).await?;
            #[cfg(feature = "tls")]
            let stream = match tls {
                Some(tls) => {
                    let left = connect_timeout.saturating_sub(started.elapsed());
                    ClientStream::Tls(Box::new(tls.connect(stream, addr, left).await?))
                }
                None => ClientStream::Plain(stream),
            };
            #[cfg(not(feature = "tls"))]
            let stream = {
                let _ = started;
                ClientStream::Plain(stream)
            };
            Ok::<_, io::Error>(Connection::spawn(stream, addr, settings))
        });
        let result = match attempt.await {
            Ok(result) => result,
            // The task never ran: the runtime is shutting down or gone.
            Err(e) if e.is_cancelled() => return Err(RpcError::ClientClosed),
            Err(e) => Err(io::Error::other(format!("connect task failed: {e}"))),
        };
        match result {
            Ok(conn) => {
                *backoff = Backoff::default();
                slot.conn.store(Some(Arc::new(conn.clone())));
                tracing::debug!(%addr, "connected");
                Ok(conn)
            }
            Err(e) => {
                let e = Arc::new(e);
                self.back_off(&mut backoff, client, Arc::clone(&e));
                Err(RpcError::Connect { addr, source: e })
            }
        }
    }

    /// Starts (or lengthens) the slot's reconnect backoff after `error`.
    fn back_off(&self, backoff: &mut Backoff, client: &ClientInner, error: Arc<io::Error>) {
        let wait = client
            .config
            .reconnect_backoff
            .saturating_mul(1 << backoff.failures.min(16))
            .min(client.config.max_reconnect_backoff);
        backoff.failures += 1;
        backoff.not_before = Some(Instant::now() + wait);
        tracing::debug!(addr = %self.addr, %error, ?wait, "connect failed; backing off");
        backoff.last_error = Some(error);
    }

    /// The next pooled connection (round-robin), if it is open and takes calls.
    pub(super) fn ready(&self) -> Option<Connection> {
        self.next_slot().current()
    }

    /// The next slot of the pool, round-robin.
    fn next_slot(&self) -> &Slot {
        // With one connection (the default) there is nothing to rotate: skip the
        // shared counter, a cache line every calling thread would otherwise write.
        if let [only] = &*self.slots {
            return only;
        }
        let index = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        &self.slots[index]
    }

    /// Whether the server announced shutdown on one of our connections to it.
    pub(super) fn is_draining(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.conn
                .load()
                .as_deref()
                .is_some_and(Connection::is_draining)
        })
    }
}

impl Slot {
    /// The slot's connection if it can take new calls.
    fn current(&self) -> Option<Connection> {
        let guard = self.conn.load();
        guard.as_deref().filter(|c| c.is_usable()).cloned()
    }
}

//! The server's I/O: Netty's boss / worker model on tokio.
//!
//! - [`boss`]: accepts connections and hands each to a worker, round-robin;
//! - [`worker`]: a fixed set of reactors, each a single-threaded runtime on its own
//!   thread, owning the connections it was given;
//! - [`connection`]: the per-connection loop (read, decode, dispatch, encode, write).
//!
//! The client's connections live in `crate::client`.

pub(crate) mod boss;
mod connection;
pub(crate) mod worker;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::server::{ServerConfig, Service};

/// What every connection of a server shares.
pub(crate) struct ServerShared {
    /// Hosted services by name.
    pub(crate) services: HashMap<String, Arc<dyn Service>>,
    /// Comma-separated service names, for "service not found" messages.
    pub(crate) service_names: String,
    /// The server's settings.
    pub(crate) config: ServerConfig,
    /// The business pool, when handlers do not run on the workers.
    pub(crate) pool: Option<Handle>,
    /// Cancelled when graceful shutdown begins.
    pub(crate) shutdown: CancellationToken,
    /// Open connections, to enforce `max_connections`.
    pub(crate) connections: Arc<AtomicUsize>,
}

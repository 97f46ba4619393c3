//! What the client and the server share below the protocol: setting up TCP sockets
//! (TLS will live here too). The client's connections are in `crate::client`, the
//! server's in `crate::server`; neither uses the other.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Sets a freshly connected or accepted socket up for RPC traffic: no Nagle delay
/// (requests and replies are small and latency-bound; writes are coalesced by the
/// connection loops themselves).
///
/// # Errors
///
/// If the socket option cannot be set.
pub(crate) fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}

/// Connects to `addr` within `timeout` and sets the socket up ([`configure`]).
///
/// # Errors
///
/// If the connection fails or takes longer than `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )
        })??;
    configure(&stream)?;
    Ok(stream)
}

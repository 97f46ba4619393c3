//! What the client and the server share below the protocol: setting up TCP sockets,
//! the stream the server's connection loop drives ([`ServerIo`]), the stream a
//! client connection owns ([`ClientStream`]), and TLS (`tls`, with the `tls` feature).
//! The client's connections are in `crate::client`, the server's in `crate::server`;
//! neither uses the other.
//!
//! Plaintext costs nothing for TLS being possible: the server's connection loop is
//! generic over [`ServerIo`] and the client's connection task over its read and write
//! halves, so the plaintext instantiations are the code that ran before TLS existed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

#[cfg(feature = "tls")]
pub(crate) mod tls;

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

/// The stream under a server connection, driven by readiness: the loop waits until
/// the socket is readable or writable (borrowing the stream shared, so both waits can
/// be in one `select!`), then reads or writes without blocking. The server reads
/// into its worker's spare buffer only once the socket is readable, so an idle
/// connection holds no read buffer.
pub(crate) trait ServerIo: AsyncWrite + Unpin {
    /// Waits until a read may make progress.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + '_;
    /// Reads what is there into `buf`, without waiting. `Ok(0)` is the end of the
    /// stream; `WouldBlock` means nothing was there after all.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Waits until a write may make progress.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + '_;
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Whether bytes written are still held below the socket (TLS records not yet
    /// sent), so the loop must wait for writability even with nothing of its own to
    /// write.
    fn wants_flush(&self) -> bool;
    /// Sends what [`wants_flush`](Self::wants_flush) holds, as far as the socket takes
    /// it now.
    ///
    /// # Errors
    ///
    /// If the socket fails.
    fn try_flush(&mut self) -> io::Result<()>;
}

impl ServerIo for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        TcpStream::readable(self)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    fn writable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        TcpStream::writable(self)
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    fn wants_flush(&self) -> bool {
        false
    }

    fn try_flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The stream a client connection task owns: plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) enum ClientStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS; boxed, as its session state is large.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

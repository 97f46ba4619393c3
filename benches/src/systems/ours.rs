//! This framework: an echo service made with `#[rpc_core::service]`.

use std::io;
use std::net::SocketAddr;

use rpc_core::{Client, Server};
use serde_bytes::ByteBuf;

use super::LISTEN_ADDR;
use crate::load::{closed_loop, EchoCaller, Load, Measurement};

/// The benchmark's echo service.
#[rpc_core::service(name = "bench.Echo")]
pub trait Echo {
    /// Returns `data` unchanged.
    async fn echo(&self, data: ByteBuf) -> ByteBuf;
}

/// Echoes what it is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// Serves [`Echo`] with one worker reactor.
pub(super) async fn serve(ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let server = Server::builder()
        .workers(1)
        .add_service(EchoServer::new(EchoImpl))
        .bind(LISTEN_ADDR)
        .await?;
    ready(server.local_addr()?);
    server.serve().await
}

/// Runs `load` through one [`Client`] (default settings: one connection).
pub(super) async fn drive(addr: SocketAddr, load: &Load) -> io::Result<Measurement> {
    let client = Client::builder()
        .connections(1)
        .connect(addr)
        .await
        .map_err(io::Error::other)?;
    Ok(closed_loop(Caller(EchoClient::new(client)), load).await)
}

/// Calls through the generated stub, in future mode.
#[derive(Debug, Clone)]
struct Caller(EchoClient);

impl EchoCaller for Caller {
    async fn echo(&self, payload: &[u8]) -> Result<usize, String> {
        self.0
            .echo(ByteBuf::from(payload.to_vec()))
            .await
            .map(|echo| echo.len())
            .map_err(|e| e.to_string())
    }
}

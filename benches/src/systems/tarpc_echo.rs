//! tarpc: the same echo service over its bincode serde transport on TCP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::context::{self, Context};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::LengthDelimitedCodec;

use super::LISTEN_ADDR;
use crate::load::{closed_loop, EchoCaller, Load, Measurement};

/// The echo service, tarpc style.
#[tarpc::service]
pub(crate) trait TarpcEcho {
    /// Returns `data` unchanged.
    async fn echo(data: ByteBuf) -> ByteBuf;
}

/// Echoes what it is sent.
#[derive(Debug, Clone, Copy)]
struct EchoImpl;

impl TarpcEcho for EchoImpl {
    async fn echo(self, _: Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// tarpc's length-delimited framing with the same 8 MiB cap as ours.
fn framing() -> tokio_util::codec::length_delimited::Builder {
    let mut builder = LengthDelimitedCodec::builder();
    builder.max_frame_length(rpc_core::protocol::DEFAULT_MAX_FRAME_LEN);
    builder
}

/// Serves the echo, each request spawned as a task (tarpc's own examples do so).
pub(super) async fn serve(ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let listener = TcpListener::bind(LISTEN_ADDR).await?;
    ready(listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let transport =
            tarpc::serde_transport::new(framing().new_framed(stream), Bincode::default());
        tokio::spawn(
            BaseChannel::with_defaults(transport)
                .execute(EchoImpl.serve())
                .for_each(spawn),
        );
    }
}

async fn spawn(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

/// Runs `load` through one tarpc client over one connection.
pub(super) async fn drive(addr: SocketAddr, load: &Load) -> io::Result<Measurement> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let transport = tarpc::serde_transport::new(framing().new_framed(stream), Bincode::default());
    let client = TarpcEchoClient::new(tarpc::client::Config::default(), transport).spawn();
    Ok(closed_loop(Caller(client), load).await)
}

/// Calls through tarpc's generated client.
#[derive(Debug, Clone)]
struct Caller(TarpcEchoClient);

impl EchoCaller for Caller {
    async fn echo(&self, payload: &Bytes) -> Result<usize, String> {
        // tarpc's fastest payload type owns a `Vec`: one copy per call.
        self.0
            .echo(context::current(), ByteBuf::from(payload.to_vec()))
            .await
            .map(|echo| echo.len())
            .map_err(|e| e.to_string())
    }
}

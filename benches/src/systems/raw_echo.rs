//! The physical floor: length-prefixed frames (tokio-util's `LengthDelimitedCodec`)
//! echoed back as they are, no serialization, no request ids.
//!
//! Both ends keep one read and one write buffer, decode every frame a read brings in,
//! and write whatever is queued in one syscall: the least work a framed echo over one
//! socket can do.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::LISTEN_ADDR;
use crate::load::{Load, Measurement, Tally, Window};

/// Reads are made into at least this much free buffer space (as ours does).
const READ_CHUNK: usize = 64 * 1024;
/// The server stops reading while this much waits to be written.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;

/// The framing, with the same 8 MiB cap as ours.
fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(rpc_core::protocol::DEFAULT_MAX_FRAME_LEN)
        .new_codec()
}

/// Makes sure a read has room for a good chunk.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Serves the echo, one task per connection.
pub(super) async fn serve(ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let listener = TcpListener::bind(LISTEN_ADDR).await?;
    ready(listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = echo(stream).await {
                eprintln!("raw echo: connection from {peer} failed: {e}");
            }
        });
    }
}

/// Echoes every frame of one connection until the peer closes it.
async fn echo(mut stream: TcpStream) -> io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let mut codec = codec();
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        make_room(&mut rbuf);
        tokio::select! {
            biased;
            written = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                written?;
            }
            read = rd.read_buf(&mut rbuf), if wbuf.len() < WRITE_HIGH_WATER => {
                if read? == 0 {
                    return Ok(());
                }
                while let Some(frame) = codec.decode(&mut rbuf)? {
                    codec.encode(frame.freeze(), &mut wbuf)?;
                }
            }
        }
    }
}

/// Keeps `load.in_flight` requests outstanding on one connection from one task: each
/// reply is matched to its request's send time by order, and answered with a new
/// request until the window ends.
pub(super) async fn drive(addr: SocketAddr, load: &Load) -> io::Result<Measurement> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.split();
    let mut codec = codec();
    let payload = Bytes::from(vec![0xA5; load.payload]);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut sent = VecDeque::with_capacity(load.in_flight);
    let mut tally = Tally::new();
    let window = Window::starting_now(load);
    let mut sending = true;
    let now = Instant::now();
    for _ in 0..load.in_flight.max(1) {
        codec.encode(payload.clone(), &mut wbuf)?;
        sent.push_back(now);
    }
    while !sent.is_empty() {
        make_room(&mut rbuf);
        tokio::select! {
            biased;
            written = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                written?;
            }
            read = rd.read_buf(&mut rbuf) => {
                if read? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the raw echo server closed the connection"));
                }
                while let Some(frame) = codec.decode(&mut rbuf)? {
                    let ended = Instant::now();
                    let started = sent.pop_front().ok_or_else(|| io::Error::other("reply to no request"))?;
                    if frame.len() == payload.len() {
                        sending &= tally.record(&window, started, ended);
                    } else {
                        tally.error(|| format!("echo of {} bytes came back with {}", payload.len(), frame.len()));
                        sending = false;
                    }
                    if sending {
                        codec.encode(payload.clone(), &mut wbuf)?;
                        sent.push_back(ended);
                    }
                }
            }
        }
    }
    Ok(tally.finish(load))
}

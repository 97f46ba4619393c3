//! `docs/test-vectors.json`, run against our server over real TCP: every vector's
//! frames are written to a fresh connection and the replies (or the close) must be
//! exactly as the file says. The file is read at compile time, so editing it re-runs
//! this; a server that drifts from it fails here.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use rpc_core::protocol::{Flags, Frame, FrameCodec, HEADER_LEN};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const VECTORS: &str = include_str!("../../docs/test-vectors.json");

/// The id of the heartbeat that proves nothing else was sent.
const PROBE_ID: u64 = 0xabcd;

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads whole frames off one connection.
struct Reader {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Reader {
    /// The next frame; `None` if the server closed (EOF or reset) first.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).expect("a valid frame") {
                return Some(frame);
            }
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("the server neither answered nor closed within 10 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// The whole frame as bytes.
fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.encode(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

/// Runs one vector; `Err` says how the server differed.
async fn run(addr: SocketAddr, vector: &Value) -> Result<(), String> {
    let mut wire = Vec::new();
    for frame in vector["send"].as_array().expect("send is a list") {
        wire.extend(hex(frame.as_str().expect("hex string")));
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&wire).await.unwrap();
    let mut reader = Reader {
        stream,
        buf: BytesMut::new(),
        codec: FrameCodec::default(),
    };
    let wanted = vector["replies"].as_array().expect("replies is a list");
    let mut got = HashMap::new();
    for _ in wanted {
        let frame = reader
            .next()
            .await
            .ok_or_else(|| format!("closed after {} of {} replies", got.len(), wanted.len()))?;
        got.insert(frame.header.request_id, frame);
    }
    for want in wanted {
        if let Some(expected) = want.get("frame") {
            let expected = hex(expected.as_str().unwrap());
            let id = u64::from_be_bytes(expected[8..16].try_into().unwrap());
            let frame = got.get(&id).ok_or(format!("no reply with id {id}"))?;
            let actual = encoded(frame);
            if actual != expected {
                return Err(format!(
                    "reply {} differs from the vector's {}",
                    to_hex(&actual),
                    to_hex(&expected)
                ));
            }
        } else {
            let id = want["request_id"].as_u64().unwrap();
            let frame = got.get(&id).ok_or(format!("no reply with id {id}"))?;
            let (flags, status) = (
                u64::from(frame.header.flags.bits()),
                u64::from(frame.header.status),
            );
            if (flags, status)
                != (
                    want["flags"].as_u64().unwrap(),
                    want["status"].as_u64().unwrap(),
                )
            {
                return Err(format!("reply flags {flags} status {status}, want {want}"));
            }
            rmp_serde::from_slice::<String>(&frame.body)
                .map_err(|e| format!("error body is not a string: {e}"))?;
        }
    }
    match vector["then"].as_str().unwrap() {
        "open" => {
            let mut probe = BytesMut::new();
            rpc_core::protocol::encode_heartbeat(&mut probe, PROBE_ID, false);
            reader.stream.write_all(&probe).await.unwrap();
            let frame = reader
                .next()
                .await
                .ok_or("closed instead of answering the probe")?;
            if frame.header.flags != Flags::HEARTBEAT.with(Flags::RESPONSE)
                || frame.header.request_id != PROBE_ID
            {
                return Err(format!(
                    "a frame other than the probe's answer came: {frame:?}"
                ));
            }
        }
        "close" => {
            let mut rest = [0u8; HEADER_LEN];
            let read = tokio::time::timeout(Duration::from_secs(10), reader.stream.read(&mut rest))
                .await
                .map_err(|_| "still open 10 s later".to_owned())?;
            if let (Ok(n @ 1..), true) = (read, reader.buf.is_empty()) {
                return Err(format!("{n} more bytes instead of a close"));
            }
            if !reader.buf.is_empty() {
                return Err(format!(
                    "{} more bytes instead of a close",
                    reader.buf.len()
                ));
            }
        }
        other => panic!("unknown `then`: {other}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_answers_every_test_vector_as_the_file_says() {
    let doc: Value = serde_json::from_str(VECTORS).expect("docs/test-vectors.json is JSON");
    let vectors = doc["vectors"].as_array().expect("a vectors list");
    assert!(vectors.len() >= 30, "too few vectors: {}", vectors.len());
    let mut names: Vec<&str> = vectors
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), vectors.len(), "vector names are unique");
    assert_eq!(doc["service"]["name"], "test.Calculator");

    tokio::time::timeout(Duration::from_secs(60), async {
        let (server, recorded) = start().await;
        let mut failures = Vec::new();
        for vector in vectors {
            let name = vector["name"].as_str().unwrap();
            if let Err(why) = run(server.local_addr(), vector).await {
                failures.push(format!("{name}: {why}"));
            }
        }
        assert!(
            failures.is_empty(),
            "vectors failed:\n{}",
            failures.join("\n")
        );
        // The oneway vectors really ran: record(5) as a plain request and with the flag.
        assert_eq!(recorded.load(Ordering::SeqCst), 10);
        server.shutdown().await.unwrap();
    })
    .await
    .expect("the vectors took longer than 60 s");
}

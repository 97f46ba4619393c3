//! A hostile or broken peer gets an error response or has its own connection closed;
//! every other client keeps being served.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rpc_core::protocol::{
    encode_request, metadata::MetadataWriter, Flags, Frame, FrameCodec, RequestTarget, Status,
    HEADER_LEN, MAGIC, VERSION,
};
use rpc_core::Client;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Writes `bytes` on a fresh connection and asserts the server closes it.
async fn assert_closed_after(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("server should close the connection");
    // EOF or reset: either way the server dropped us, having sent nothing.
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "unexpected bytes back: {read:?}"
    );
}

fn target<'a>(service: &'a str, method: &'a str) -> RequestTarget<'a> {
    RequestTarget {
        service,
        method,
        timeout: Some(Duration::from_secs(5)),
        trace: None,
        auth_token: None,
        attachments: &[],
    }
}

/// Sends one frame on a raw connection and returns the server's response.
async fn roundtrip(addr: std::net::SocketAddr, frame: BytesMut) -> Frame {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed.get_mut().write_all(&frame).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .expect("a response")
        .expect("not closed")
        .expect("a valid frame")
}

fn message(frame: &Frame) -> String {
    rmp_serde::from_slice(&frame.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_broken_frames_close_only_that_connection() {
    bounded(async {
        let (server, _) = start().await;
        let addr = server.local_addr();
        let good = CalculatorClient::new(Client::connect(addr).await.unwrap());
        assert_eq!(good.add(1, 2).await.unwrap(), 3);

        // Plain garbage.
        assert_closed_after(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        // Right magic, wrong version.
        assert_closed_after(addr, &[MAGIC[0], MAGIC[1], 99, 0]).await;
        // A declared length far over the maximum: rejected from the header alone.
        let mut huge = [0u8; HEADER_LEN];
        huge[..3].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION]);
        huge[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_closed_after(addr, &huge).await;
        // Reserved flag bits.
        let mut reserved = [0u8; HEADER_LEN];
        reserved[..4].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION, 0xf0]);
        assert_closed_after(addr, &reserved).await;
        // A client must not send responses.
        let mut wire = BytesMut::new();
        Frame::new(
            Flags::RESPONSE,
            0,
            1,
            Default::default(),
            Default::default(),
        )
        .encode(&mut wire, 1024)
        .unwrap();
        assert_closed_after(addr, &wire).await;
        // A frame cut short, then the peer goes away.
        let mut cut = BytesMut::new();
        encode_request(
            &mut cut,
            1,
            false,
            &target("test.Calculator", "add"),
            &(1, 2),
            1 << 20,
        )
        .unwrap();
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&cut[..cut.len() - 3]).await.unwrap();
        }

        // The well-behaved client never noticed.
        for i in 0..10 {
            assert_eq!(good.add(i, 1).await.unwrap(), i + 1);
        }
        // And new clients are welcome.
        let fresh = CalculatorClient::new(Client::connect(addr).await.unwrap());
        assert_eq!(fresh.add(2, 2).await.unwrap(), 4);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_responses_and_the_connection_lives_on() {
    bounded(async {
        let (server, _) = start().await;
        let addr = server.local_addr();

        // Arguments that do not decode into (i64, i64).
        let mut frame = BytesMut::new();
        encode_request(
            &mut frame,
            7,
            false,
            &target("test.Calculator", "add"),
            &("two", "three"),
            1 << 20,
        )
        .unwrap();
        let resp = roundtrip(addr, frame).await;
        assert_eq!(resp.header.request_id, 7);
        assert!(resp.header.flags.contains(Flags::RESPONSE));
        assert_eq!(Status::from_code(resp.header.status), Status::BadRequest);
        assert!(message(&resp).contains("add"), "{}", message(&resp));

        // Wrong number of arguments.
        let mut frame = BytesMut::new();
        encode_request(
            &mut frame,
            8,
            false,
            &target("test.Calculator", "add"),
            &(1,),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            Status::from_code(roundtrip(addr, frame).await.header.status),
            Status::BadRequest
        );

        // Unknown service and method.
        let mut frame = BytesMut::new();
        encode_request(
            &mut frame,
            9,
            false,
            &target("nope", "add"),
            &(1, 2),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            Status::from_code(roundtrip(addr, frame).await.header.status),
            Status::ServiceNotFound
        );
        let mut frame = BytesMut::new();
        encode_request(
            &mut frame,
            10,
            false,
            &target("test.Calculator", "nope"),
            &(1, 2),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            Status::from_code(roundtrip(addr, frame).await.header.status),
            Status::MethodNotFound
        );

        // Metadata without a method name.
        let mut meta = BytesMut::new();
        MetadataWriter::new(&mut meta)
            .entry(
                rpc_core::protocol::metadata::tag::SERVICE,
                b"test.Calculator",
            )
            .unwrap();
        let mut wire = BytesMut::new();
        Frame::new(
            Flags::empty(),
            0,
            11,
            meta.freeze(),
            bytes::Bytes::from_static(&[0x92, 1, 2]),
        )
        .encode(&mut wire, 1 << 20)
        .unwrap();
        let resp = roundtrip(addr, wire).await;
        assert_eq!(Status::from_code(resp.header.status), Status::BadRequest);
        assert!(message(&resp).contains("method"), "{}", message(&resp));

        // An unsupported serialization id.
        let mut frame = BytesMut::new();
        encode_request(
            &mut frame,
            12,
            false,
            &target("test.Calculator", "add"),
            &(1, 2),
            1 << 20,
        )
        .unwrap();
        frame[4] = 9;
        assert_eq!(
            Status::from_code(roundtrip(addr, frame).await.header.status),
            Status::BadRequest
        );

        // On one connection: a bad request, then a good one, both answered.
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::default());
        let mut bad = BytesMut::new();
        encode_request(
            &mut bad,
            1,
            false,
            &target("test.Calculator", "add"),
            &"x",
            1 << 20,
        )
        .unwrap();
        let mut good = BytesMut::new();
        encode_request(
            &mut good,
            2,
            false,
            &target("test.Calculator", "add"),
            &(40, 2),
            1 << 20,
        )
        .unwrap();
        let mut codec_buf = BytesMut::new();
        codec_buf.extend_from_slice(&bad);
        codec_buf.extend_from_slice(&good);
        framed.get_mut().write_all(&codec_buf).await.unwrap();
        let first = framed.next().await.unwrap().unwrap();
        let second = framed.next().await.unwrap().unwrap();
        assert_eq!(
            (
                first.header.request_id,
                Status::from_code(first.header.status)
            ),
            (1, Status::BadRequest)
        );
        assert_eq!(
            (
                second.header.request_id,
                Status::from_code(second.header.status)
            ),
            (2, Status::Ok)
        );
        assert_eq!(rmp_serde::from_slice::<i64>(&second.body).unwrap(), 42);

        // Heartbeats are answered with the same id.
        let mut hb = BytesMut::new();
        rpc_core::protocol::encode_heartbeat(&mut hb, 77, false);
        framed.get_mut().write_all(&hb).await.unwrap();
        let pong = framed.next().await.unwrap().unwrap();
        assert!(pong
            .header
            .flags
            .contains(Flags::HEARTBEAT.with(Flags::RESPONSE)));
        assert_eq!(pong.header.request_id, 77);
        let _ = framed.send(&pong).await; // a heartbeat response from a client is ignored
        drop(framed);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_in_both_directions() {
    bounded(async {
        let (server, _) = start_with(
            rpc_core::Server::builder()
                .workers(1)
                .max_frame_len(64 * 1024),
        )
        .await;
        let addr = server.local_addr();
        let client = Client::builder()
            .max_frame_len(1 << 20)
            .connect(addr)
            .await
            .unwrap();
        let calc = CalculatorClient::new(client.clone());
        // Too big for the server: it closes this connection, the call fails.
        let err = calc
            .echo(serde_bytes::ByteBuf::from(vec![0u8; 100 * 1024]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, rpc_core::RpcError::ConnectionLost { .. }),
            "{err:?}"
        );
        // Too big for the client's own limit: refused before sending.
        let small = CalculatorClient::new(
            Client::builder()
                .max_frame_len(1024)
                .connect(addr)
                .await
                .unwrap(),
        );
        let err = small
            .echo(serde_bytes::ByteBuf::from(vec![0u8; 4096]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, rpc_core::RpcError::RequestTooLarge { max: 1024, .. }),
            "{err:?}"
        );
        // Within limits everything works, on a reconnected connection too.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let data = serde_bytes::ByteBuf::from(vec![7u8; 32 * 1024]);
        assert_eq!(calc.echo(data.clone()).await.unwrap(), data);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_stay_with_their_connection_while_others_share_the_worker() {
    bounded(async {
        // One worker: every connection reads through the same spare buffer.
        let (server, _) = start_with(rpc_core::Server::builder().workers(1)).await;
        let addr = server.local_addr();
        let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
        let payload = serde_bytes::ByteBuf::from(vec![0x5a; 100_000]);
        let mut wire = BytesMut::new();
        encode_request(
            &mut wire,
            7,
            false,
            &target("test.Calculator", "echo"),
            &(&payload,),
            usize::MAX,
        )
        .unwrap();
        encode_request(
            &mut wire,
            8,
            false,
            &target("test.Calculator", "add"),
            &(40, 2),
            usize::MAX,
        )
        .unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::default());
        // The big frame in pieces (the last piece also carries the start of the next
        // frame), with the other connection's traffic through the worker in between.
        let cuts = [
            10,
            HEADER_LEN + 3,
            40_000,
            99_000,
            wire.len() - 5,
            wire.len(),
        ];
        let mut sent = 0;
        for (round, &cut) in cuts.iter().enumerate() {
            framed.get_mut().write_all(&wire[sent..cut]).await.unwrap();
            framed.get_mut().flush().await.unwrap();
            sent = cut;
            tokio::time::sleep(Duration::from_millis(20)).await;
            for i in 0..20i64 {
                assert_eq!(calc.add(i, round as i64).await.unwrap(), i + round as i64);
            }
        }
        let mut answers = Vec::new();
        for _ in 0..2 {
            let frame = tokio::time::timeout(Duration::from_secs(5), framed.next())
                .await
                .expect("a response")
                .expect("not closed")
                .expect("a valid frame");
            assert_eq!(Status::from_code(frame.header.status), Status::Ok);
            answers.push(frame);
        }
        answers.sort_by_key(|f| f.header.request_id);
        let echoed: serde_bytes::ByteBuf = rmp_serde::from_slice(&answers[0].body).unwrap();
        assert!(echoed == payload, "the big frame arrived intact");
        assert_eq!(rmp_serde::from_slice::<i64>(&answers[1].body).unwrap(), 42);
        drop(framed);
        server.shutdown().await.unwrap();
    })
    .await;
}

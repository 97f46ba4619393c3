//! Slow and hostile peers: each is closed with a logged reason, by the limit meant for
//! it, while a well-behaved client on its own connection keeps being served.

mod support;

use std::time::{Duration, Instant};

use rpc_core::{Client, RpcError, Server};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the server closes `stream` (EOF or reset); returns how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open past {limit:?}"),
        }
    }
}

#[tokio::test]
async fn half_a_header_is_closed_after_the_frame_timeout_not_the_idle_timeout() {
    bounded(async {
        let (server, _) = start_with(
            Server::builder()
                .workers(2)
                .frame_timeout(Duration::from_millis(300))
                .idle_timeout(Duration::from_secs(90)),
        )
        .await;
        let good = CalculatorClient::new(Client::connect(server.local_addr()).await.unwrap());
        let mut stalled = Vec::new();
        for _ in 0..50 {
            let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
            raw.write_all(&[0x52, 0x50, 0x01, 0x00, 0x01])
                .await
                .unwrap();
            stalled.push(raw);
        }
        // The good client is served meanwhile.
        for i in 0..20 {
            assert_eq!(good.add(i, 1).await.unwrap(), i + 1);
        }
        for raw in &mut stalled {
            let took = closed_within(raw, Duration::from_secs(3)).await;
            assert!(took < Duration::from_secs(3));
        }
        assert_eq!(good.add(2, 2).await.unwrap(), 4);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn connections_per_peer_address_are_capped() {
    bounded(async {
        let (server, _) = start_with(Server::builder().workers(2).max_connections(100, 3)).await;
        let good = CalculatorClient::new(Client::connect(server.local_addr()).await.unwrap());
        let mut raw = Vec::new();
        for _ in 0..2 {
            raw.push(TcpStream::connect(server.local_addr()).await.unwrap());
        }
        // The fourth from 127.0.0.1 is closed as accepted.
        let mut fourth = TcpStream::connect(server.local_addr()).await.unwrap();
        closed_within(&mut fourth, Duration::from_secs(3)).await;
        assert_eq!(good.add(1, 2).await.unwrap(), 3);
        // Closing one frees a place.
        drop(raw.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = Client::connect(server.local_addr()).await.unwrap();
        assert_eq!(CalculatorClient::new(again).add(2, 2).await.unwrap(), 4);
        drop(raw);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn bad_limits_are_refused_at_bind() {
    for builder in [
        Server::builder().frame_timeout(Duration::ZERO),
        Server::builder().max_connections(10, 0),
        Server::builder().max_write_buffer(10),
    ] {
        let err = builder.bind("127.0.0.1:0").await.expect_err("invalid");
        assert!(matches!(err, RpcError::InvalidConfig(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_closed_while_another_keeps_its_latency() {
    bounded(async {
        let cap = 256 * 1024;
        let (server, _) = start_with(
            Server::builder()
                .workers(2)
                .max_write_buffer(cap)
                .frame_timeout(Duration::from_millis(500)),
        )
        .await;
        let addr = server.local_addr();
        let good = CalculatorClient::new(Client::connect(addr).await.unwrap());
        let mut baseline = Duration::ZERO;
        for i in 0..50 {
            let t = Instant::now();
            assert_eq!(good.add(i, 1).await.unwrap(), i + 1);
            baseline = baseline.max(t.elapsed());
        }
        // The hostile peer pipelines 64 KiB echoes and never reads a reply; its write
        // fails once the server has closed the connection.
        let mut frame = bytes::BytesMut::new();
        rpc_core::protocol::encode_request(
            &mut frame,
            1,
            false,
            &rpc_core::protocol::RequestTarget {
                service: "test.Calculator",
                method: "echo",
                timeout: Some(Duration::from_secs(60)),
                trace: None,
                auth_token: None,
                attachments: &[],
            },
            &(serde_bytes::ByteBuf::from(vec![7u8; 64 * 1024]),),
            1 << 20,
        )
        .unwrap();
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let hostile = tokio::spawn(async move {
            let mut sent = 0usize;
            let mut id = 1u64;
            loop {
                // Fresh ids: a request id in flight would close the connection for
                // another reason.
                frame[8..16].copy_from_slice(&id.to_be_bytes());
                id += 1;
                if raw.write_all(&frame).await.is_err() {
                    return sent;
                }
                sent += frame.len();
            }
        });
        // Meanwhile the well-behaved client on its own connection is served as before.
        let started = Instant::now();
        let mut worst = Duration::ZERO;
        let mut calls = 0;
        while !hostile.is_finished() && started.elapsed() < Duration::from_secs(12) {
            let t = Instant::now();
            assert_eq!(good.add(2, 3).await.unwrap(), 5);
            worst = worst.max(t.elapsed());
            calls += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = tokio::time::timeout(Duration::from_secs(5), hostile)
            .await
            .expect("the server never closed the client that does not read")
            .unwrap();
        let closed_after = started.elapsed();
        assert!(sent > cap, "only {sent} bytes were sent before the close");
        assert!(
            worst < Duration::from_millis(750),
            "the good client's worst call took {worst:?} (before: {baseline:?})"
        );
        eprintln!(
            "never-reading client closed after {closed_after:?} ({sent} bytes sent); good \
             client: {calls} calls, worst {worst:?} (before: worst {baseline:?})"
        );
        let wait = Instant::now();
        while server.open_connections() > 1 {
            assert!(
                wait.elapsed() < Duration::from_secs(3),
                "connection not released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(good.add(1, 1).await.unwrap(), 2);
        server.shutdown().await.unwrap();
    })
    .await;
}

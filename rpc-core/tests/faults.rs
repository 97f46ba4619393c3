//! Faults of the network between client and server, injected by the proxy in
//! `support/proxy.rs` on real loopback connections: a stalled link, a reset in the
//! middle of a frame, a slow link, half-closes.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxy::{Dir, Proxy};
use rpc_core::lb::{PickContext, Provider, Strategy};
use rpc_core::{Client, RpcError, Server};
use support::*;

/// Bounds a test's body (these run slower than most: they wait out timeouts).
async fn within<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test took longer than {limit:?}"))
}

/// A client straight to `addr`, to read a server's `hits()` (its count of `add` calls)
/// without going through the proxy.
async fn hits(addr: SocketAddr) -> u64 {
    let client = Client::connect(addr).await.unwrap();
    CalculatorClient::new(client).hits().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_is_detected_within_the_idle_timeout_and_its_calls_fail_fast() {
    within(Duration::from_secs(30), async {
        let (server, _) = start().await;
        let proxy = Proxy::start(server.local_addr()).await;
        let idle = Duration::from_millis(800);
        let client = Client::builder()
            .heartbeat(Duration::from_millis(100), idle)
            .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(4))
            .timeout(Duration::from_secs(30))
            .connect(proxy.addr())
            .await
            .unwrap();
        let calc = CalculatorClient::new(client);
        assert_eq!(calc.add(1, 2).await.unwrap(), 3);

        // Bytes go into the link and nothing comes back: no error from TCP, ever.
        proxy.stall(true);
        let stalled = Instant::now();
        let (a, b, c) = tokio::join!(calc.add(1, 1), calc.sleep(10), calc.add(2, 2));
        let detected = stalled.elapsed();
        for result in [a, b.map(|n| n as i64), c] {
            assert!(
                matches!(result, Err(RpcError::ConnectionLost { .. })),
                "{result:?}"
            );
        }
        // Within the idle timeout (plus the check's granularity and a loaded machine's
        // slack), not the calls' 30 s timeout.
        assert!(
            detected >= idle - Duration::from_millis(100),
            "{detected:?}"
        );
        assert!(
            detected < idle + Duration::from_millis(1500),
            "{detected:?}"
        );

        // The next calls fail fast (the connection is backing off), not after another
        // idle timeout.
        let t = Instant::now();
        let err = calc.add(1, 1).await.unwrap_err();
        assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );

        // Once the link recovers and the backoff has passed, calls go through again.
        proxy.stall(false);
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(calc.add(3, 4).await.unwrap(), 7);
        eprintln!("stall detected after {detected:?} (idle timeout {idle:?})");
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_frame_fails_calls_at_once_and_unsent_calls_go_to_another_provider() {
    within(Duration::from_secs(60), async {
        // Big frames allowed on A, so that a request larger than the kernel's socket
        // buffers can be cut in the middle.
        let big_frames = || Server::builder().workers(2).max_frame_len(64 << 20);
        let (a, _) = start_with(big_frames()).await;
        let (b, _) = start_with(big_frames()).await;
        let proxy = Proxy::start(a.local_addr()).await;
        let client = Client::builder()
            .balancer(Strategy::RoundRobin)
            .max_frame_len(64 << 20)
            .timeout(Duration::from_secs(30))
            .connect_providers(
                "test.Calculator",
                [Provider::new(proxy.addr()), Provider::new(b.local_addr())],
            )
            .await
            .unwrap();
        let calc = CalculatorClient::new(client.clone());
        for i in 0..4 {
            assert_eq!(calc.add(i, 1).await.unwrap(), i + 1);
        }
        let (a_hits, b_hits) = (hits(a.local_addr()).await, hits(b.local_addr()).await);
        assert!(
            a_hits > 0 && b_hits > 0,
            "both providers warmed: {a_hits} {b_hits}"
        );

        // A 24 MiB request to A: the link takes 100 KB of it and then no more, so the
        // client's write stalls in the middle of the frame.
        let balancer = client.balancer().unwrap();
        balancer.set_healthy(b.local_addr(), false);
        proxy.pause_after(Dir::ToServer, 100_000);
        let big = {
            let calc = calc.clone();
            tokio::spawn(async move {
                calc.echo(serde_bytes::ByteBuf::from(vec![1u8; 24 << 20]))
                    .await
                    .map(|_| ())
            })
        };
        let t = Instant::now();
        while proxy.forwarded(Dir::ToServer) < 100_000 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the big request never left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        balancer.set_healthy(b.local_addr(), true);
        // Calls picked for A now queue behind the stalled write: they never leave the
        // client. Those picked for B are answered.
        let small: Vec<_> = (0..10)
            .map(|i| {
                let calc = calc.clone();
                tokio::spawn(async move { calc.add(i, 100).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        proxy.reset();
        let reset = Instant::now();
        let err = big.await.unwrap().unwrap_err();
        let failed_after = reset.elapsed();
        assert!(
            matches!(err, RpcError::ConnectionLost { .. }),
            "the call cut mid-frame: {err:?}"
        );
        assert!(failed_after < Duration::from_secs(2), "{failed_after:?}");
        for (i, call) in small.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), i as i64 + 100);
        }
        let retried_within = reset.elapsed();
        // None of them ran on A: they were never sent there; B ran them all.
        assert_eq!(hits(a.local_addr()).await, a_hits);
        assert_eq!(hits(b.local_addr()).await, b_hits + 10);
        eprintln!(
            "reset: the cut call failed after {failed_after:?}, the unsent ones were \
             answered by B within {retried_within:?}"
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_hold_over_a_slow_link() {
    within(Duration::from_secs(60), async {
        let (server, _) = start().await;
        let proxy = Proxy::start(server.local_addr()).await;
        let client = Client::builder()
            .timeout(Duration::from_secs(20))
            .connect(proxy.addr())
            .await
            .unwrap();
        let calc = CalculatorClient::new(client);
        assert_eq!(calc.add(1, 1).await.unwrap(), 2);
        let latency = Duration::from_millis(150);
        proxy.set_latency(latency);
        proxy.set_bandwidth(Some(1 << 20));
        let slack = Duration::from_millis(700);

        // A call with time to spare succeeds, after the round trip.
        let t = Instant::now();
        let sum = calc
            .add(2, 3)
            .timeout(Duration::from_secs(3))
            .await
            .unwrap();
        let rtt = t.elapsed();
        assert_eq!(sum, 5);
        assert!(rtt >= 2 * latency, "{rtt:?}");

        // Deadlines shorter than the round trip fail at the deadline, not later.
        for timeout in [Duration::from_millis(100), Duration::from_millis(250)] {
            let t = Instant::now();
            let err = calc.add(1, 2).timeout(timeout).await.unwrap_err();
            let took = t.elapsed();
            assert!(matches!(err, RpcError::Timeout(_)), "{err:?}");
            assert!(
                took >= timeout && took < timeout + slack,
                "{timeout:?}: {took:?}"
            );
        }
        // The server's side of a deadline: it gives up on a slow handler and says so;
        // the client has its answer at its deadline either way.
        let t = Instant::now();
        let err = calc
            .sleep(3_000)
            .timeout(Duration::from_millis(600))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Timeout(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_millis(600) + slack,
            "{:?}",
            t.elapsed()
        );

        // A payload the bandwidth cannot carry in time (2 MiB at 1 MiB/s).
        let t = Instant::now();
        let err = calc
            .echo(serde_bytes::ByteBuf::from(vec![0u8; 2 << 20]))
            .timeout(Duration::from_millis(400))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Timeout(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_millis(400) + slack,
            "{:?}",
            t.elapsed()
        );

        // Late replies to the calls given up are discarded; the connection serves on.
        assert_eq!(
            calc.add(20, 22)
                .timeout(Duration::from_secs(15))
                .await
                .unwrap(),
            42
        );
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_a_stalled_link_is_marked_unhealthy_and_no_longer_picked() {
    within(Duration::from_secs(40), async {
        let (a, _) = start().await;
        let (b, _) = start().await;
        let proxy = Proxy::start(a.local_addr()).await;
        let client = Client::builder()
            .balancer(Strategy::RoundRobin)
            .heartbeat(Duration::from_millis(100), Duration::from_millis(600))
            .reconnect_backoff(Duration::from_secs(8), Duration::from_secs(16))
            .timeout(Duration::from_secs(10))
            .connect_providers(
                "test.Calculator",
                [Provider::new(proxy.addr()), Provider::new(b.local_addr())],
            )
            .await
            .unwrap();
        let calc = CalculatorClient::new(client.clone());
        for i in 0..10 {
            assert_eq!(calc.add(i, 0).await.unwrap(), i);
        }
        assert!(
            hits(a.local_addr()).await > 0,
            "A took calls before the stall"
        );

        proxy.stall(true);
        // Calls made now: those picked for A wait until the idle timeout shows the link
        // is dead, then fail (they may have run: not retried); the others succeed.
        let stalled = Instant::now();
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let calc = calc.clone();
                tokio::spawn(async move { calc.add(i, 1).await })
            })
            .collect();
        let mut lost = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => {}
                Err(RpcError::ConnectionLost { .. }) => lost += 1,
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        let detected = stalled.elapsed();
        assert!(lost > 0, "no call was picked for A");
        assert!(detected < Duration::from_secs(3), "{detected:?}");

        // From now on A is skipped: every call succeeds at once, on B.
        let (a_hits, b_hits) = (hits(a.local_addr()).await, hits(b.local_addr()).await);
        let t = Instant::now();
        for i in 0..40 {
            assert_eq!(calc.add(i, 2).await.unwrap(), i + 2);
        }
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "40 calls took {took:?}");
        assert_eq!(hits(a.local_addr()).await, a_hits);
        assert_eq!(hits(b.local_addr()).await, b_hits + 40);
        let balancer = client.balancer().unwrap();
        for _ in 0..20 {
            let picked = balancer.pick(&PickContext::new()).unwrap();
            assert_eq!(picked.addr(), b.local_addr(), "the balancer picked A");
        }
        eprintln!(
            "stalled provider: {lost} calls lost after {detected:?}; then 40 calls on B in {took:?}"
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closes_end_or_drain_the_connection_as_the_protocol_says() {
    within(Duration::from_secs(30), async {
        let (server, _) = start().await;
        let proxy = Proxy::start(server.local_addr()).await;
        let client = Client::builder()
            .timeout(Duration::from_secs(20))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
            .connect(proxy.addr())
            .await
            .unwrap();
        let calc = CalculatorClient::new(client);
        assert_eq!(calc.add(1, 1).await.unwrap(), 2);

        // The server's side goes quiet with a FIN: the call in flight fails at once
        // (not at its 20 s timeout).
        let pending = {
            let calc = calc.clone();
            tokio::spawn(async move { calc.sleep(3_000).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.half_close(Dir::ToClient);
        let t = Instant::now();
        let err = pending.await.unwrap().unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(proxy);

        // The client's side ends (FIN toward the server): the server still finishes and
        // answers the calls it had received, then closes.
        let proxy = Proxy::start(server.local_addr()).await;
        let client = Client::builder()
            .timeout(Duration::from_secs(20))
            .connect(proxy.addr())
            .await
            .unwrap();
        let calc = CalculatorClient::new(client);
        let pending = {
            let calc = calc.clone();
            tokio::spawn(async move { calc.sleep(400).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        proxy.half_close(Dir::ToServer);
        assert_eq!(pending.await.unwrap().unwrap(), 400);
        server.shutdown().await.unwrap();
    })
    .await;
}

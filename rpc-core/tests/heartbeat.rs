//! Heartbeats, silent peers, idle connections and reconnection.

mod support;

use std::time::Duration;

use rpc_core::{Client, RpcError, Server};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_detected_and_pending_calls_fail_fast() {
    bounded(async {
        let addr = black_hole(None).await;
        let client = Client::builder()
            .heartbeat(Duration::from_millis(50), Duration::from_millis(300))
            .connect(addr)
            .await
            .unwrap();
        let calc = CalculatorClient::new(client);
        let started = std::time::Instant::now();
        let err = calc
            .add(1, 2)
            .timeout(Duration::from_secs(15))
            .await
            .unwrap_err();
        match &err {
            RpcError::ConnectionLost { reason, .. } => assert!(reason.contains("idle"), "{reason}"),
            other => panic!("expected connection lost, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_connection_open() {
    bounded(async {
        let (server, _) =
            start_with(Server::builder().idle_timeout(Duration::from_millis(300))).await;
        let addr = server.local_addr();

        let beating = Client::builder()
            .heartbeat(Duration::from_millis(50), Duration::from_secs(2))
            .connect(addr)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            server.open_connections(),
            1,
            "the server closed a heartbeating connection"
        );
        assert_eq!(
            CalculatorClient::new(beating.clone())
                .add(1, 1)
                .await
                .unwrap(),
            2
        );
        drop(beating);

        // Without heartbeats the server closes the idle connection...
        tokio::time::sleep(Duration::from_millis(100)).await;
        let quiet = Client::builder()
            .heartbeat(Duration::from_secs(60), Duration::from_secs(120))
            .connect(addr)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while server.open_connections() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle connection was not closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...and the client reconnects transparently on the next call.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(CalculatorClient::new(quiet).add(2, 2).await.unwrap(), 4);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_with_backoff_after_the_server_returns() {
    bounded(async {
        let (server, _) = start().await;
        let addr = server.local_addr();
        let client = Client::builder()
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .connect(addr)
            .await
            .unwrap();
        let calc = CalculatorClient::new(client);
        assert_eq!(calc.add(1, 1).await.unwrap(), 2);
        server.shutdown().await.unwrap();

        // Server gone: calls fail with a connect error, fast, not a hang.
        let started = std::time::Instant::now();
        let err = calc.add(1, 1).await.unwrap_err();
        assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
        // During the backoff the next call fails at once without dialing.
        let err = calc.add(1, 1).await.unwrap_err();
        assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));

        // The server comes back on the same port.
        let server = Server::builder()
            .add_service(CalculatorServer::new(Calc::default()))
            .bind(addr)
            .await
            .unwrap()
            .spawn();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match calc.add(3, 4).await {
                Ok(v) => {
                    assert_eq!(v, 7);
                    break;
                }
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "never reconnected: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        server.shutdown().await.unwrap();
    })
    .await;
}

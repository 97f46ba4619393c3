//! Graceful shutdown: announce, stop accepting, drain, close; no accepted call loses
//! its response.

mod support;

use std::time::Duration;

use rpc_core::{Client, RpcError, Server};
use support::*;

async fn no_call_loses_its_response(builder: rpc_core::ServerBuilder) {
    let (server, _) = start_with(builder.drain_timeout(Duration::from_secs(5))).await;
    let addr = server.local_addr();
    let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
    let mut calls = Vec::new();
    for i in 0..100u64 {
        let calc = calc.clone();
        calls.push(tokio::spawn(async move { calc.sleep(200 + i).await }));
    }
    // Let every request reach the server, then shut down while they run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    server.begin_shutdown();
    // New connections are refused once the listener is closed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        Client::connect(addr).await.is_err(),
        "a new client was accepted during shutdown"
    );
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().unwrap(),
            200 + i as u64,
            "call {i} lost its response"
        );
    }
    // After GOAWAY the client sends nothing new on that connection.
    let err = calc.add(1, 1).await.unwrap_err();
    assert!(
        matches!(err, RpcError::Connect { .. } | RpcError::ShuttingDown),
        "{err:?}"
    );
    server.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited for the drain timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_workers() {
    bounded(no_call_loses_its_response(Server::builder().workers(2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_business_pool() {
    bounded(no_call_loses_its_response(
        Server::builder().workers(1).business_pool(2),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    bounded(async {
        let (server, _) =
            start_with(Server::builder().drain_timeout(Duration::from_millis(200))).await;
        let calc = CalculatorClient::new(Client::connect(server.local_addr()).await.unwrap());
        let slow = tokio::spawn({
            let calc = calc.clone();
            async move { calc.sleep(10_000).timeout(Duration::from_secs(15)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        server.shutdown().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        let err = slow.await.unwrap().unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_shutdown_takes_a_signal_future() {
    bounded(async {
        let server = Server::builder()
            .add_service(CalculatorServer::new(Calc::default()))
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve_with_shutdown(async {
            let _ = rx.await;
        }));
        let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
        assert_eq!(calc.add(1, 2).await.unwrap(), 3);
        tx.send(()).unwrap();
        serving.await.unwrap().unwrap();
    })
    .await;
}

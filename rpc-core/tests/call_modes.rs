//! The four call modes over real TCP, each with success and with the errors.

mod support;

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use rpc_core::{Client, RpcError};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_mode_success_and_errors() {
    bounded(async {
        let (server, _) = start().await;
        let client = Client::connect(server.local_addr()).await.unwrap();
        let calc = CalculatorClient::new(client.clone());

        assert_eq!(calc.add(2, 40).await.unwrap(), 42);
        assert_eq!(calc.divide(9, 3).await.unwrap(), 3);
        let p = calc
            .midpoint(
                Point { x: 0.0, y: 0.0, label: "a".into() },
                Point { x: 2.0, y: 4.0, label: "b".into() },
            )
            .await
            .unwrap();
        assert_eq!(p, Point { x: 1.0, y: 2.0, label: "a-b".into() });
        assert_eq!(calc.hits().await.unwrap(), 1);

        // Typed application error, distinguishable from transport errors.
        match calc.divide(1, 0).await {
            Err(RpcError::Application(MathError::DivideByZero)) => {}
            other => panic!("expected application error, got {other:?}"),
        }
        match calc.divide(i64::MIN, -1).await {
            Err(RpcError::Application(MathError::Overflow { a, b })) => assert_eq!((a, b), (i64::MIN, -1)),
            other => panic!("expected overflow, got {other:?}"),
        }

        // Timeout.
        let err = calc.sleep(2_000).timeout(Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, RpcError::Timeout(d) if d == Duration::from_millis(100)), "{err:?}");

        // Unknown method and unknown service.
        let v2 = CalculatorV2Client::new(client.clone());
        let err = v2.subtract(1, 2).await.unwrap_err();
        assert!(matches!(&err, RpcError::MethodNotFound(m) if m.contains("subtract")), "{err:?}");
        let missing = MissingClient::new(client.clone());
        let err = missing.anything().await.unwrap_err();
        assert!(matches!(&err, RpcError::ServiceNotFound(m) if m.contains("test.Missing") && m.contains("test.Calculator")), "{err:?}");

        // A panicking handler is an internal error; the connection keeps working.
        let err = calc.explode().await.unwrap_err();
        assert!(matches!(&err, RpcError::Internal(m) if m.contains("boom")), "{err:?}");
        assert_eq!(calc.add(1, 1).await.unwrap(), 2);

        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_mode_connection_lost() {
    bounded(async {
        let addr = black_hole(Some(Duration::from_millis(200))).await;
        let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
        let started = std::time::Instant::now();
        let err = calc
            .add(1, 2)
            .timeout(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failed promptly"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_are_multiplexed_and_answered_out_of_order() {
    bounded(async {
        let (server, _) = start().await;
        let calc = CalculatorClient::new(Client::connect(server.local_addr()).await.unwrap());
        // Slow calls first, fast ones after: the fast ones must not wait for the slow.
        let slow = tokio::spawn({
            let calc = calc.clone();
            async move { calc.sleep(500).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        let mut fast = Vec::new();
        for i in 0..200 {
            let calc = calc.clone();
            fast.push(tokio::spawn(async move { calc.add(i, i).await }));
        }
        for (i, f) in fast.into_iter().enumerate() {
            assert_eq!(f.await.unwrap().unwrap(), 2 * i as i64);
        }
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "fast calls waited for the slow one"
        );
        assert_eq!(slow.await.unwrap().unwrap(), 500);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_calls_late_responses_never_reach_the_calls_that_reuse_their_slots() {
    bounded(async {
        let (server, _) = start().await;
        let calc = CalculatorClient::new(Client::connect(server.local_addr()).await.unwrap());
        for round in 0..3u64 {
            // Calls given up before their responses come back (their futures are
            // dropped by the timeout)...
            let mut abandoned = tokio::task::JoinSet::new();
            for i in 0..100 {
                let calc = calc.clone();
                abandoned.spawn(async move {
                    let call = calc.sleep(30 + i % 3);
                    tokio::time::timeout(Duration::from_millis(5), call).await
                });
            }
            while let Some(outcome) = abandoned.join_next().await {
                assert!(outcome.unwrap().is_err(), "given up before the reply");
            }
            // ...and new calls, on the freed slots, in flight while the late
            // responses arrive: each gets its own answer.
            let mut fresh = tokio::task::JoinSet::new();
            for i in 0..300i64 {
                let calc = calc.clone();
                fresh.spawn(async move {
                    tokio::time::sleep(Duration::from_millis((i % 40) as u64)).await;
                    (i, calc.add(i, round as i64).await)
                });
            }
            while let Some(joined) = fresh.join_next().await {
                let (i, sum) = joined.unwrap();
                assert_eq!(sum.unwrap(), i + round as i64);
            }
        }
        server.shutdown().await.unwrap();
    })
    .await;
}

#[test]
fn sync_mode_from_plain_thread() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, _) = rt.block_on(start());
    let addr = server.local_addr();

    // A client built with no runtime in sight owns its own.
    let client = Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_blocking(addr)
        .unwrap();
    let calc = CalculatorClient::new(client.clone());
    assert_eq!(calc.add(20, 22).blocking().unwrap(), 42);
    assert!(matches!(
        calc.divide(1, 0).blocking(),
        Err(RpcError::Application(MathError::DivideByZero))
    ));
    let err = calc
        .sleep(2_000)
        .timeout(Duration::from_millis(100))
        .blocking()
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout(_)), "{err:?}");
    let err = CalculatorV2Client::new(client.clone())
        .subtract(1, 1)
        .blocking()
        .unwrap_err();
    assert!(matches!(err, RpcError::MethodNotFound(_)), "{err:?}");
    let err = MissingClient::new(client.clone())
        .anything()
        .blocking()
        .unwrap_err();
    assert!(matches!(err, RpcError::ServiceNotFound(_)), "{err:?}");

    // Connection lost.
    let lost_addr = rt.block_on(black_hole(Some(Duration::from_millis(200))));
    let lost = CalculatorClient::new(Client::connect_blocking(lost_addr).unwrap());
    let err = lost
        .add(1, 1)
        .timeout(Duration::from_secs(10))
        .blocking()
        .unwrap_err();
    assert!(matches!(err, RpcError::ConnectionLost { .. }), "{err:?}");

    rt.block_on(server.shutdown()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_inside_runtime_is_an_error_not_a_deadlock() {
    bounded(async {
        let (server, _) = start().await;
        let calc = CalculatorClient::new(Client::connect(server.local_addr()).await.unwrap());
        let err = calc.add(1, 2).blocking().unwrap_err();
        assert!(matches!(err, RpcError::BlockingInAsyncContext), "{err:?}");
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_mode_runs_exactly_once() {
    bounded(async {
        let (server, _) = start().await;
        let client = Client::connect(server.local_addr()).await.unwrap();
        let calc = CalculatorClient::new(client.clone());
        let (tx, rx) = mpsc::channel::<String>();

        let t = tx.clone();
        calc.add(1, 2)
            .callback(move |r| t.send(format!("add {r:?}")).unwrap());
        let t = tx.clone();
        calc.divide(1, 0)
            .callback(move |r| t.send(format!("divide {r:?}")).unwrap());
        let t = tx.clone();
        calc.sleep(2_000)
            .timeout(Duration::from_millis(50))
            .callback(move |r| {
                t.send(format!("sleep {}", matches!(r, Err(RpcError::Timeout(_)))))
                    .unwrap()
            });
        let t = tx.clone();
        CalculatorV2Client::new(client.clone())
            .subtract(1, 1)
            .callback(move |r| {
                t.send(format!(
                    "subtract {}",
                    matches!(r, Err(RpcError::MethodNotFound(_)))
                ))
                .unwrap()
            });
        let t = tx.clone();
        MissingClient::new(client.clone())
            .anything()
            .callback(move |r| {
                t.send(format!(
                    "missing {}",
                    matches!(r, Err(RpcError::ServiceNotFound(_)))
                ))
                .unwrap()
            });
        let lost = CalculatorClient::new(
            Client::connect(black_hole(Some(Duration::from_millis(100))).await)
                .await
                .unwrap(),
        );
        let t = tx.clone();
        lost.add(1, 1).callback(move |r| {
            t.send(format!(
                "lost {}",
                matches!(r, Err(RpcError::ConnectionLost { .. }))
            ))
            .unwrap()
        });
        drop(tx);

        let mut got = tokio::task::spawn_blocking(move || rx.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                "add Ok(3)".to_owned(),
                "divide Err(Application(DivideByZero))".to_owned(),
                "lost true".to_owned(),
                "missing true".to_owned(),
                "sleep true".to_owned(),
                "subtract true".to_owned(),
            ]
        );
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneway_mode_returns_once_written_and_gets_no_reply() {
    bounded(async {
        let (server, recorded) = start().await;
        let client = Client::connect(server.local_addr()).await.unwrap();
        let calc = CalculatorClient::new(client.clone());

        // A #[oneway] method.
        for _ in 0..10 {
            calc.record(5).await.unwrap();
        }
        // Any method can be sent oneway: a slow one returns at once.
        let started = std::time::Instant::now();
        calc.sleep(1_000).oneway().await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        // Oneway to an unknown method: the server answers nothing, the caller sees Ok.
        CalculatorV2Client::new(client.clone())
            .subtract(1, 1)
            .oneway()
            .await
            .unwrap();

        // A normal call after them proves ordering and that no stray reply confused
        // the connection.
        assert_eq!(calc.add(1, 1).await.unwrap(), 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while recorded.load(Ordering::SeqCst) != 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "oneway calls did not all arrive"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Oneway in sync and callback modes.
        let (tx, rx) = mpsc::channel();
        calc.record(1)
            .callback(move |r| tx.send(r.is_ok()).unwrap());
        assert!(tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap());
        let blocking_calc = calc.clone();
        // spawn_blocking threads carry the runtime context too: the clear error, not a hang.
        let err = tokio::task::spawn_blocking(move || blocking_calc.record(1).blocking())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, RpcError::BlockingInAsyncContext), "{err:?}");
        // A plain thread may block.
        let plain_calc = calc.clone();
        std::thread::spawn(move || plain_calc.record(1).blocking())
            .join()
            .unwrap()
            .unwrap();

        // The provider goes away: a oneway call cannot be written and says so.
        server.shutdown().await.unwrap();
        let err = calc.record(1).await.unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::ConnectionLost { .. } | RpcError::Connect { .. } | RpcError::ShuttingDown
            ),
            "{err:?}"
        );
    })
    .await;
}

#[test]
fn oneway_sync_mode_from_plain_thread() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, recorded) = rt.block_on(start());
    let calc = CalculatorClient::new(Client::connect_blocking(server.local_addr()).unwrap());
    calc.record(7).blocking().unwrap();
    assert_eq!(calc.add(1, 1).blocking().unwrap(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recorded.load(Ordering::SeqCst) != 7 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.block_on(server.shutdown()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_stalled_write_still_time_out() {
    bounded(async {
        // A peer that accepts and never reads: once the socket buffers are full, writes
        // stall.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        });
        let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
        let chunk = serde_bytes::ByteBuf::from(vec![1u8; 1 << 20]);
        let timeout = Duration::from_millis(300);
        // Oneway requests complete once written, until the write stalls.
        let mut stalled = None;
        for sent in 0..256 {
            let started = std::time::Instant::now();
            match calc.echo(chunk.clone()).timeout(timeout).oneway().await {
                Ok(()) => {}
                Err(e) => {
                    stalled = Some((sent, e, started.elapsed()));
                    break;
                }
            }
        }
        let (sent, error, took) = stalled.expect("the write never stalled");
        assert!(sent > 0, "the first request was written");
        assert!(matches!(error, RpcError::Timeout(_)), "{error:?}");
        assert!(took < Duration::from_secs(3), "timed out late: {took:?}");
        // Calls queued behind the stalled write time out on their own deadlines: a
        // short one queued after a long one is not held up by it.
        let long = tokio::spawn({
            let calc = calc.clone();
            async move { calc.add(1, 2).timeout(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let err = calc.add(3, 4).timeout(timeout).await.unwrap_err();
        assert!(matches!(err, RpcError::Timeout(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "timed out late: {:?}",
            started.elapsed()
        );
        long.abort();
        holder.abort();
    })
    .await;
}

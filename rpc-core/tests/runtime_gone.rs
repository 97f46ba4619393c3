//! A client that outlives the tokio runtime it was created on: every call fails at
//! once with a clear error instead of hanging (the connection task that enforced
//! deadlines died with that runtime). A client kept in a `static` shared by several
//! `#[tokio::test]`s is in exactly this position.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rpc_core::{Client, RpcError};
use support::{start as start_server, CalculatorClient};

/// Well past the calls' 1 s timeout, and far below the test harness's patience.
const PATIENCE: Duration = Duration::from_secs(5);

/// A server on a runtime of its own thread, and a client created on a runtime that
/// has been dropped since.
fn orphaned_client() -> (CalculatorClient, tokio::runtime::Runtime) {
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let (server, _) = server_rt.block_on(start_server());
    let addr = server.local_addr();
    std::mem::forget(server);
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let calc = client_rt.block_on(async {
        let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
        assert_eq!(
            calc.add(1, 2).await.unwrap(),
            3,
            "works while its runtime lives"
        );
        calc
    });
    drop(client_rt);
    (calc, server_rt)
}

/// Runs `f` on a plain thread and waits for it at most [`PATIENCE`].
fn within_patience<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .expect("the call hung on a client whose runtime is gone")
}

fn assert_runtime_gone<E: std::fmt::Debug>(result: Result<i64, RpcError<E>>) {
    match result {
        Err(RpcError::ClientClosed) => {}
        Err(RpcError::ConnectionLost { reason, .. }) => {
            assert!(reason.contains("runtime"), "{reason}");
        }
        other => panic!("expected the runtime-gone error, got {other:?}"),
    }
}

#[test]
fn a_blocking_call_fails_at_once() {
    let (calc, _server_rt) = orphaned_client();
    let started = Instant::now();
    let result = within_patience(move || calc.add(2, 3).timeout(Duration::from_secs(1)).blocking());
    assert_runtime_gone(result);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_awaited_call_from_another_runtime_fails_at_once() {
    let (calc, _server_rt) = orphaned_client();
    let result = within_patience(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { calc.add(2, 3).timeout(Duration::from_secs(1)).await })
    });
    assert_runtime_gone(result);
}

#[test]
fn every_later_call_fails_too_and_the_error_says_why() {
    let (calc, _server_rt) = orphaned_client();
    let results = within_patience(move || {
        (0..3)
            .map(|_| calc.add(2, 3).timeout(Duration::from_secs(1)).blocking())
            .collect::<Vec<_>>()
    });
    for result in results {
        let err = result.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("runtime"), "{text}");
        assert!(
            matches!(
                err,
                RpcError::ClientClosed | RpcError::ConnectionLost { .. }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn a_callback_runs_at_once_with_client_closed() {
    let (calc, _server_rt) = orphaned_client();
    let (tx, rx) = mpsc::channel();
    calc.add(2, 3).callback(move |result| {
        let _ = tx.send(result);
    });
    let result = rx.recv_timeout(PATIENCE).expect("the callback never ran");
    assert!(matches!(result, Err(RpcError::ClientClosed)), "{result:?}");
}

#[test]
fn a_blocking_call_returns_by_its_timeout_even_if_nothing_answers() {
    // A client whose connection task is alive but whose runtime is never driven
    // again: a current-thread runtime nobody blocks on. The backstop in sync mode
    // still returns when the timeout passes.
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let (server, _) = server_rt.block_on(start_server());
    let addr = server.local_addr();
    let idle_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let calc =
        idle_rt.block_on(async { CalculatorClient::new(Client::connect(addr).await.unwrap()) });
    let started = Instant::now();
    let result = within_patience(move || {
        calc.add(2, 3)
            .timeout(Duration::from_millis(300))
            .blocking()
    });
    assert!(
        matches!(result, Err(RpcError::Timeout(t)) if t == Duration::from_millis(300)),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle_rt);
    server_rt.block_on(server.shutdown()).unwrap();
}

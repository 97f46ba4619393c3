//! Deadlines and cancellation on the server: a call whose deadline passed while it
//! waited is never started; a call its caller dropped is stopped; a request id still
//! in flight cannot be reused.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use rpc_core::protocol::{encode_request, Frame, FrameCodec, RequestTarget, Status};
use rpc_core::server::CallContext;
use rpc_core::{service, Client, Server, ServerBuilder, ServerHandle};
use support::bounded;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Methods that take their time.
#[service(name = "test.Slow")]
pub trait Slow {
    /// Blocks its thread for `ms` (a CPU-bound handler), counting starts.
    async fn busy(&self, ms: u64) -> u64;
    /// Waits until cancelled; a task it spawns watches the cancellation.
    async fn forever(&self) -> u64;
    /// Answers at once.
    async fn ping(&self) -> u64;
}

#[derive(Debug, Default, Clone)]
struct Counters {
    /// `busy` handlers started.
    started: Arc<AtomicU64>,
    /// `forever` handlers dropped by the server.
    dropped: Arc<AtomicU64>,
    /// Spawned watchers that saw their call cancelled.
    saw_cancel: Arc<AtomicU64>,
}

struct SlowImpl(Counters);

/// Counts the handler's future being dropped.
struct DropGuard(Arc<AtomicU64>);
impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Slow for SlowImpl {
    async fn busy(&self, ms: u64) -> u64 {
        self.0.started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
    async fn forever(&self) -> u64 {
        let _guard = DropGuard(Arc::clone(&self.0.dropped));
        let cancel = CallContext::with_current(|c| c.map(CallContext::cancellation))
            .expect("inside a handler");
        let saw = Arc::clone(&self.0.saw_cancel);
        tokio::spawn(async move {
            cancel.cancelled().await;
            saw.fetch_add(1, Ordering::SeqCst);
        });
        std::future::pending::<()>().await;
        0
    }
    async fn ping(&self) -> u64 {
        1
    }
}

async fn start(builder: ServerBuilder) -> (ServerHandle, Counters) {
    let counters = Counters::default();
    let server = builder
        .add_service(SlowServer::new(SlowImpl(counters.clone())))
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    (server.spawn(), counters)
}

/// `n` requests for `test.Slow.busy(ms)` with a `deadline`, ids 1..=n, in one buffer.
fn busy_requests(n: u64, ms: u64, deadline: Duration) -> BytesMut {
    let mut buf = BytesMut::new();
    for id in 1..=n {
        let target = RequestTarget {
            service: "test.Slow",
            method: "busy",
            timeout: Some(deadline),
            trace: None,
            auth_token: None,
            attachments: &[],
        };
        encode_request(&mut buf, id, false, &target, &(ms,), 1 << 20).unwrap();
    }
    buf
}

/// Writes `requests` at once and reads `n` replies; returns how many had each status.
async fn statuses(addr: std::net::SocketAddr, requests: BytesMut, n: usize) -> (usize, usize) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &requests)
        .await
        .unwrap();
    let mut framed = Framed::new(stream, FrameCodec::new(1 << 20));
    let (mut ok, mut timeout) = (0, 0);
    for _ in 0..n {
        let frame: Frame = framed.next().await.expect("a reply").expect("a frame");
        match Status::from_code(frame.header.status) {
            Status::Ok => ok += 1,
            Status::Timeout => timeout += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, timeout)
}

#[tokio::test]
async fn calls_whose_deadline_passed_in_the_pool_queue_are_never_started() {
    bounded(async {
        let (server, counters) = start(Server::builder().workers(1).business_pool(1)).await;
        // 200 calls of 1 ms each, all with a 5 ms deadline, on a one-thread pool: only
        // the first few can start in time.
        let requests = busy_requests(200, 1, Duration::from_millis(5));
        let (ok, timeout) = statuses(server.local_addr(), requests, 200).await;
        let started = counters.started.load(Ordering::SeqCst);
        assert_eq!(ok + timeout, 200);
        assert!(
            started < 20,
            "{started} of 200 handlers started although their deadline had passed"
        );
        assert!(timeout >= 180, "only {timeout} answered TIMEOUT");
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn calls_whose_deadline_passed_in_the_read_batch_are_never_started() {
    bounded(async {
        // No pool: handlers run on the worker, one after the other, in the batch.
        let (server, counters) = start(Server::builder().workers(1)).await;
        let requests = busy_requests(200, 1, Duration::from_millis(5));
        let (ok, timeout) = statuses(server.local_addr(), requests, 200).await;
        let started = counters.started.load(Ordering::SeqCst);
        assert_eq!(ok + timeout, 200);
        // The clock is read every 8 requests, so a few more than 5 may start.
        assert!(started < 30, "{started} of 200 handlers started late");
        assert!(timeout >= 170, "only {timeout} answered TIMEOUT");
        server.shutdown().await.unwrap();
    })
    .await;
}

async fn wait_for(counter: &AtomicU64, want: u64) {
    for _ in 0..200 {
        if counter.load(Ordering::SeqCst) >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "counter stayed at {} (wanted {want})",
        counter.load(Ordering::SeqCst)
    );
}

async fn dropped_calls_are_cancelled_on_the_server(builder: ServerBuilder) {
    let (server, counters) = start(builder).await;
    let client = SlowClient::new(Client::connect(server.local_addr()).await.unwrap());
    for round in 1..=3 {
        let call = client.forever().timeout(Duration::from_secs(30));
        // Give up after 50 ms: the future is dropped.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(gave_up.is_err());
        wait_for(&counters.dropped, round).await;
        wait_for(&counters.saw_cancel, round).await;
    }
    // The connection lives on.
    assert_eq!(client.ping().await.unwrap(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dropped_call_stops_its_handler_on_the_worker() {
    bounded(dropped_calls_are_cancelled_on_the_server(
        Server::builder().workers(1),
    ))
    .await;
}

#[tokio::test]
async fn a_dropped_call_stops_its_handler_on_the_business_pool() {
    bounded(dropped_calls_are_cancelled_on_the_server(
        Server::builder().workers(1).business_pool(2),
    ))
    .await;
}

#[tokio::test]
async fn a_call_that_timed_out_is_not_cancelled_but_ends_by_its_deadline() {
    bounded(async {
        let (server, counters) = start(Server::builder().workers(1)).await;
        let client = SlowClient::new(Client::connect(server.local_addr()).await.unwrap());
        let result = client.forever().timeout(Duration::from_millis(100)).await;
        assert!(matches!(result, Err(rpc_core::RpcError::Timeout(_))));
        // The server drops the handler at the deadline it was sent.
        wait_for(&counters.dropped, 1).await;
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_request_id_still_in_flight_closes_that_connection_only() {
    bounded(async {
        let (server, _) = start(Server::builder().workers(1)).await;
        let addr = server.local_addr();
        let good = SlowClient::new(Client::connect(addr).await.unwrap());

        let mut buf = BytesMut::new();
        for _ in 0..2 {
            let target = RequestTarget {
                service: "test.Slow",
                method: "forever",
                timeout: Some(Duration::from_secs(10)),
                trace: None,
                auth_token: None,
                attachments: &[],
            };
            encode_request(&mut buf, 7, false, &target, &(), 1 << 20).unwrap();
        }
        let mut raw = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw, &buf)
            .await
            .unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "the connection was not closed"
        );
        assert!(rest.is_empty(), "no reply may be sent under the reused id");
        assert_eq!(good.ping().await.unwrap(), 1);
        server.shutdown().await.unwrap();
    })
    .await;
}

//! Slow-request isolation over TCP: a method whose handlers block past their
//! deadlines is moved to the slow pool, and a fast method on the same business pool
//! keeps a low p99 while the slow one is hammered.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_core::filter::isolation::IsolationLayer;
use rpc_core::{service, Client, RpcError, Server};

/// A fast method and a slow, blocking one.
#[service(name = "test.Mixed")]
pub trait Mixed {
    /// Answers at once.
    async fn fast(&self) -> u8;
    /// Blocks its thread for `ms`.
    async fn blocking(&self, ms: u64) -> u64;
}

#[derive(Default, Clone)]
struct MixedImpl {
    /// Names of the threads `blocking` ran on.
    blocking_threads: Arc<Mutex<Vec<String>>>,
    /// Names of the threads `fast` ran on.
    fast_threads: Arc<Mutex<Vec<String>>>,
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

impl Mixed for MixedImpl {
    async fn fast(&self) -> u8 {
        self.fast_threads.lock().unwrap().push(thread_name());
        1
    }
    async fn blocking(&self, ms: u64) -> u64 {
        self.blocking_threads.lock().unwrap().push(thread_name());
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_that_misses_its_deadlines_moves_to_the_slow_pool_and_the_others_stay_fast() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let isolation = IsolationLayer::builder()
            .ratio(0.5)
            .min_calls(4)
            .window(Duration::from_secs(30))
            .threads(1)
            .build()
            .unwrap();
        let service = MixedImpl::default();
        let server = Server::builder()
            .workers(1)
            .business_pool(2)
            .layer(isolation.clone())
            .add_service(MixedServer::new(service.clone()))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let client = MixedClient::new(Client::connect(server.local_addr()).await.unwrap());

        // Learn: blocking calls that time out (200 ms of work, 50 ms deadline).
        for _ in 0..4 {
            let late = client
                .blocking(200)
                .timeout(Duration::from_millis(50))
                .await;
            assert!(matches!(late, Err(RpcError::Timeout(_))), "{late:?}");
        }
        // Let the pool threads finish the work they were stuck in.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(isolation.isolated(), ["test.Mixed.blocking"]);
        // Those that got a pool thread ran there (the others were never started).
        let learned = service.blocking_threads.lock().unwrap().len();
        assert!(learned >= 1);

        // Hammer the slow method from four callers; time the fast one meanwhile.
        let stop = Instant::now() + Duration::from_secs(2);
        let hammers: Vec<_> = (0..4)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        let _ = client
                            .blocking(200)
                            .timeout(Duration::from_millis(100))
                            .into_future()
                            .await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut latencies = Vec::new();
        while Instant::now() < stop {
            let started = Instant::now();
            assert_eq!(client.fast().await.unwrap(), 1);
            latencies.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for h in hammers {
            h.await.unwrap();
        }
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        // Without isolation the two pool threads are held by 200 ms sleeps and a fast
        // call waits for one; isolated, it never waits behind them.
        assert!(
            p99 < Duration::from_millis(120),
            "fast p99 {p99:?} over {} calls",
            latencies.len()
        );

        let blocking = service.blocking_threads.lock().unwrap().clone();
        assert!(
            blocking[..learned]
                .iter()
                .all(|t| t.starts_with("rpc-business")),
            "{blocking:?}"
        );
        assert!(blocking.len() > learned, "{blocking:?}");
        assert!(
            blocking[learned..]
                .iter()
                .all(|t| t.starts_with("rpc-slow")),
            "{blocking:?}"
        );
        let fast = service.fast_threads.lock().unwrap().clone();
        assert!(
            fast.iter().all(|t| t.starts_with("rpc-business")),
            "{fast:?}"
        );
        server.shutdown().await.unwrap();
    })
    .await
    .expect("test took too long");
}

#[test]
fn bad_isolation_settings_are_errors_when_built() {
    assert!(IsolationLayer::builder().ratio(0.0).build().is_err());
    assert!(IsolationLayer::builder().ratio(1.5).build().is_err());
    assert!(IsolationLayer::builder().threads(0).build().is_err());
    assert!(IsolationLayer::builder()
        .window(Duration::ZERO)
        .build()
        .is_err());
}

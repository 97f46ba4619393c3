//! Cluster fault tolerance, circuit breaking and degradation, end to end over TCP:
//! several real servers on 127.0.0.1, some failing or slow on purpose (a server layer
//! fails calls while a switch is on, and counts every call that reaches the server).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rpc_core::filter::breaker::{BreakerLayer, CircuitState};
use rpc_core::filter::cluster::{ClusterLayer, Policy, RetryBudget};
use rpc_core::filter::fallback::FallbackLayer;
use rpc_core::filter::{
    BoxError, ClientRequest, ClientResponse, Rejection, ServerRequest, ServerResponse,
};
use rpc_core::lb::{Provider, Strategy};
use rpc_core::protocol::Status;
use rpc_core::server::CallContext;
use rpc_core::{service, Client, ClientBuilder, RpcError, Server, ServerHandle};
use serde::{Deserialize, Serialize};

/// Who answered a read, and whether it took the slow path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    port: u16,
    slow: bool,
}

/// The service every provider hosts.
#[service(name = "test.Fleet")]
trait Fleet {
    /// A read: safe to run twice.
    #[idempotent]
    async fn read(&self, n: u64) -> Answer;
    /// A write (never marked idempotent).
    async fn write(&self, n: u64) -> u16;
    /// A lookup that may find nothing.
    async fn lookup(&self, n: u64) -> Option<u64>;
    /// The `tag` attachment the call carried.
    async fn tag(&self) -> String;
}

/// How a provider behaves, switched by the tests while it runs.
#[derive(Debug, Default)]
struct Knobs {
    /// Its port, for answers.
    port: AtomicU64,
    /// While set, every call is refused with INTERNAL before the handler.
    fail: AtomicBool,
    /// Every call sleeps this long first.
    delay_ms: AtomicU64,
    /// Every `slow_every`th read (0: none) takes `slow_ms` more.
    slow_every: AtomicU64,
    /// See `slow_every`.
    slow_ms: AtomicU64,
    /// Calls that reached the server (counted by its layer, failed or not).
    calls: AtomicU64,
    /// Reads handled.
    reads: AtomicU64,
    /// Reads that took the slow path.
    slow_reads: AtomicU64,
}

impl Knobs {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

struct Node(Arc<Knobs>);

impl Fleet for Node {
    async fn read(&self, _n: u64) -> Answer {
        let k = &self.0;
        let delay = k.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let nth = k.reads.fetch_add(1, Ordering::SeqCst) + 1;
        let every = k.slow_every.load(Ordering::SeqCst);
        let slow = every > 0 && nth % every == 0;
        if slow {
            k.slow_reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(k.slow_ms.load(Ordering::SeqCst))).await;
        }
        Answer {
            port: k.port.load(Ordering::SeqCst) as u16,
            slow,
        }
    }
    async fn write(&self, _n: u64) -> u16 {
        self.0.port.load(Ordering::SeqCst) as u16
    }
    async fn lookup(&self, n: u64) -> Option<u64> {
        Some(n)
    }
    async fn tag(&self) -> String {
        CallContext::current()
            .and_then(|c| {
                c.attachment("tag")
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            })
            .unwrap_or_default()
    }
}

/// The server layer: counts calls, fails them while the switch is on.
#[derive(Clone)]
struct FaultLayer(Arc<Knobs>);

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            knobs: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
struct FaultService<S> {
    inner: S,
    knobs: Arc<Knobs>,
}

impl<S> tower::Service<ServerRequest> for FaultService<S>
where
    S: tower::Service<ServerRequest, Response = ServerResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ServerResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ServerResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        self.knobs.calls.fetch_add(1, Ordering::SeqCst);
        if self.knobs.fail.load(Ordering::SeqCst) {
            let refusal = Rejection::new(Status::InternalError, "injected failure");
            return Box::pin(std::future::ready(Err(BoxError::from(refusal))));
        }
        Box::pin(self.inner.call(request))
    }
}

/// A provider on an ephemeral port.
struct Fixture {
    handle: ServerHandle,
    knobs: Arc<Knobs>,
}

impl Fixture {
    async fn start() -> Fixture {
        let knobs = Arc::new(Knobs::default());
        let server = Server::builder()
            .workers(1)
            .layer(FaultLayer(Arc::clone(&knobs)))
            .add_service(FleetServer::new(Node(Arc::clone(&knobs))))
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        knobs
            .port
            .store(u64::from(server.local_addr().port()), Ordering::SeqCst);
        Fixture {
            handle: server.spawn(),
            knobs,
        }
    }
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
    fn port(&self) -> u16 {
        self.addr().port()
    }
}

async fn fleet(n: usize) -> Vec<Fixture> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(Fixture::start().await);
    }
    all
}

async fn stop(fleet: Vec<Fixture>) {
    for f in fleet {
        f.handle.shutdown().await.unwrap();
    }
}

fn providers(fleet: &[Fixture]) -> Vec<Provider> {
    fleet.iter().map(|f| Provider::new(f.addr())).collect()
}

/// A round-robin client over `fleet` with `builder`'s layers.
async fn client(builder: ClientBuilder, fleet: &[Fixture]) -> FleetClient {
    client_with(builder.balancer(Strategy::RoundRobin), fleet).await
}

/// A client over `fleet` with `builder`'s layers and balancer.
async fn client_with(builder: ClientBuilder, fleet: &[Fixture]) -> FleetClient {
    let client = builder
        .timeout(Duration::from_secs(5))
        .connect_providers("test.Fleet", providers(fleet))
        .await
        .unwrap();
    FleetClient::new(client)
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_retries_an_idempotent_method_on_another_provider() {
    bounded(async {
        let fleet = fleet(3).await;
        fleet[0].knobs.set_failing(true);
        // Marked by the trait's `#[idempotent]`, through the stub's list.
        assert_eq!(FleetClient::IDEMPOTENT_METHODS, ["read"]);
        let cluster = ClusterLayer::builder()
            .idempotent_methods(FleetClient::SERVICE_NAME, FleetClient::IDEMPOTENT_METHODS)
            .method("test.Fleet", "read", Policy::failover(2))
            .build()
            .unwrap();
        let stub = client(Client::builder().layer(cluster.clone()), &fleet).await;
        for n in 0..30 {
            let answer = stub
                .read(n)
                .await
                .expect("failover hides the failing provider");
            assert_ne!(
                answer.port,
                fleet[0].port(),
                "the failing provider never answers"
            );
        }
        let failed = fleet[0].knobs.calls();
        assert!(failed >= 5, "the failing provider got its share: {failed}");
        let stats = cluster.stats();
        assert_eq!(
            stats.retries, failed,
            "one retry per failed attempt: {stats:?}"
        );
        let served = fleet[1].knobs.calls() + fleet[2].knobs.calls();
        assert_eq!(served, 30, "each call answered once by a healthy provider");
        stop(fleet).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_provider_that_failed() {
    bounded(async {
        // ip-hash sends every call with one key to one provider: a retry goes
        // elsewhere only because it avoids the provider that failed it.
        let fleet = fleet(3).await;
        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "read")
            .method("test.Fleet", "read", Policy::failover(1))
            .build()
            .unwrap();
        let stub = client_with(
            Client::builder()
                .layer(cluster.clone())
                .balancer(Strategy::IpHash),
            &fleet,
        )
        .await;
        let home = stub.read(0).hash_key(42).await.unwrap().port;
        let home = fleet.iter().find(|f| f.port() == home).unwrap();
        home.knobs.set_failing(true);
        for n in 0..10 {
            let answer = stub.read(n).hash_key(42).await.unwrap();
            assert_ne!(answer.port, home.port());
        }
        assert_eq!(
            home.knobs.calls(),
            11,
            "one failed attempt per call, never retried there"
        );
        assert_eq!(cluster.stats().retries, 10);
        stop(fleet).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_never_retries_a_non_idempotent_call_that_reached_a_server() {
    bounded(async {
        let fleet = fleet(2).await;
        fleet[0].knobs.set_failing(true);
        let cluster = ClusterLayer::builder()
            .idempotent_methods(FleetClient::SERVICE_NAME, FleetClient::IDEMPOTENT_METHODS)
            .policy(Policy::failover(2))
            .build()
            .unwrap();
        let client = Client::builder()
            .layer(cluster.clone())
            .balancer(Strategy::RoundRobin)
            .connect_providers(
                "test.Fleet",
                [
                    Provider::new(fleet[0].addr()),
                    Provider::new(fleet[1].addr()),
                    // Never reachable: a write sent there certainly did not run, and
                    // goes to another provider.
                    Provider::new(dead_addr()),
                ],
            )
            .await
            .unwrap();
        let stub = FleetClient::new(client);
        let mut failed = 0;
        for n in 0..30 {
            match stub.write(n).await {
                Ok(port) => assert_eq!(port, fleet[1].port()),
                Err(RpcError::Internal(_)) => failed += 1,
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
        let reached = fleet[0].knobs.calls();
        assert!(reached >= 5, "{reached}");
        assert_eq!(
            failed, reached,
            "every write that reached the failing server failed"
        );
        assert_eq!(reached + fleet[1].knobs.calls(), 30, "no write ran twice");
        assert_eq!(cluster.stats().retries, 0);
        stop(fleet).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failfast_fails_at_once() {
    bounded(async {
        let fleet = fleet(2).await;
        fleet[0].knobs.set_failing(true);
        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "read")
            .method("test.Fleet", "read", Policy::failfast())
            .build()
            .unwrap();
        let stub = client(Client::builder().layer(cluster.clone()), &fleet).await;
        let mut failed = 0;
        for n in 0..20 {
            if let Err(e) = stub.read(n).await {
                assert!(matches!(e, RpcError::Internal(_)), "{e:?}");
                failed += 1;
            }
        }
        assert_eq!(
            failed, 10,
            "round-robin: every other call hit the failing provider"
        );
        assert_eq!(fleet[0].knobs.calls() + fleet[1].knobs.calls(), 20);
        assert_eq!(cluster.stats().retries, 0);
        stop(fleet).await;
    })
    .await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread: the chain runs on this thread, where the capturing subscriber is set.
#[tokio::test]
async fn failsafe_answers_the_default_and_logs_a_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(async {
        let fleet = fleet(2).await;
        for f in &fleet {
            f.knobs.set_failing(true);
        }
        let fallback_answer = Answer {
            port: 0,
            slow: false,
        };
        let cluster = ClusterLayer::builder()
            .method("test.Fleet", "lookup", Policy::failsafe())
            .method(
                "test.Fleet",
                "read",
                Policy::failsafe_value(&fallback_answer),
            )
            .build()
            .unwrap();
        let stub = client(Client::builder().layer(cluster.clone()), &fleet).await;
        assert_eq!(stub.lookup(7).await.unwrap(), None, "nil: None");
        assert_eq!(stub.read(7).await.unwrap(), fallback_answer);
        // Methods without the policy still fail.
        assert!(matches!(stub.write(7).await, Err(RpcError::Internal(_))));
        assert_eq!(cluster.stats().failsafe_defaults, 2);
        for f in &fleet {
            f.knobs.set_failing(false);
        }
        assert_eq!(
            stub.lookup(7).await.unwrap(),
            Some(7),
            "a success passes through"
        );
        stop(fleet).await;
    })
    .await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logged.matches("failsafe").count(), 2, "{logged}");
    assert!(
        logged.contains("WARN") && logged.contains("test.Fleet"),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forking_takes_the_first_success() {
    bounded(async {
        let fleet = fleet(3).await;
        fleet[0].knobs.delay_ms.store(2_000, Ordering::SeqCst); // slow
        fleet[1].knobs.set_failing(true); // failing
                                          // The winner takes 50 ms, so that every copy is written before it answers (a
                                          // copy still queued when the call ends is dropped unsent, as it should be).
        fleet[2].knobs.delay_ms.store(50, Ordering::SeqCst);
        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "read")
            .method("test.Fleet", "read", Policy::forking(3))
            .build()
            .unwrap();
        // ip-hash with one key: the copies reach three providers only because each is
        // pinned to a different one.
        let stub = client_with(
            Client::builder()
                .layer(cluster.clone())
                .balancer(Strategy::IpHash),
            &fleet,
        )
        .await;
        let started = Instant::now();
        for n in 0..10 {
            let answer = stub.read(n).hash_key(42).await.unwrap();
            assert_eq!(answer.port, fleet[2].port(), "the fast, healthy one wins");
        }
        // Ten calls, each waiting for the slow provider, would take 20 s.
        assert!(started.elapsed() < Duration::from_secs(15));
        // The losing copies were written before the winner answered; give the servers
        // a moment to read the last ones.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fleet.iter().any(|f| f.knobs.calls() < 10) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for f in &fleet {
            assert_eq!(f.knobs.calls(), 10, "every call went to every provider");
        }
        assert_eq!(cluster.stats().forks, 20);
        stop(fleet).await;
    })
    .await;
}

/// Makes `calls` sequential reads; returns the answers and each call's latency.
async fn reads(stub: &FleetClient, calls: u64) -> (Vec<Answer>, Vec<Duration>) {
    let mut answers = Vec::new();
    let mut latencies = Vec::new();
    for n in 0..calls {
        let started = Instant::now();
        answers.push(stub.read(n).await.unwrap());
        latencies.push(started.elapsed());
    }
    latencies.sort();
    (answers, latencies)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_the_tail_when_one_provider_is_slow() {
    bounded(async {
        // One read in 25 on provider 0 takes 600 ms more: 2 % of all reads, so the
        // p95 stays fast.
        let fleet = fleet(2).await;
        fleet[0].knobs.slow_every.store(25, Ordering::SeqCst);
        fleet[0].knobs.slow_ms.store(600, Ordering::SeqCst);

        // Without hedging, the slow reads are the tail.
        let plain = client(Client::builder(), &fleet).await;
        let (answers, latencies) = reads(&plain, 200).await;
        let slow_plain = answers.iter().filter(|a| a.slow).count();
        assert!(slow_plain >= 3, "{slow_plain}");
        assert!(p99(&latencies) >= Duration::from_millis(600));

        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "read")
            .method(
                "test.Fleet",
                "read",
                Policy::hedged()
                    .hedge_min_delay(Duration::from_millis(30))
                    .hedge_min_samples(10),
            )
            .build()
            .unwrap();
        let hedged = client(Client::builder().layer(cluster.clone()), &fleet).await;
        let slow_before = fleet[0].knobs.slow_reads.load(Ordering::SeqCst);
        let (answers, latencies) = reads(&hedged, 200).await;
        let slow_started = fleet[0].knobs.slow_reads.load(Ordering::SeqCst) - slow_before;
        assert!(slow_started >= 3, "the slow path ran: {slow_started}");
        let slow_hedged = answers.iter().filter(|a| a.slow).count();
        assert_eq!(
            slow_hedged, 0,
            "every slow read was beaten by its hedged copy"
        );
        let stats = cluster.stats();
        assert!(
            stats.hedges >= slow_started && stats.hedges <= 40,
            "copies only for the slow reads (and hiccups): {stats:?}"
        );
        assert!(
            p99(&latencies) < Duration::from_millis(400),
            "p99 with hedging: {:?}",
            p99(&latencies)
        );
        stop(fleet).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_under_a_failing_cluster() {
    bounded(async {
        let fleet = fleet(3).await;
        for f in &fleet {
            f.knobs.set_failing(true);
        }
        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "read")
            .method("test.Fleet", "read", Policy::failover(3))
            .budget(RetryBudget::builder().ratio(0.1).min_per_second(0))
            .build()
            .unwrap();
        let stub = client(Client::builder().layer(cluster.clone()), &fleet).await;
        for n in 0..100 {
            assert!(stub.read(n).await.is_err());
        }
        let sent: u64 = fleet.iter().map(|f| f.knobs.calls()).sum();
        // Unbudgeted, 3 retries each would send 400.
        assert!(
            (105..=111).contains(&sent),
            "calls reaching servers: {sent}"
        );
        let stats = cluster.stats();
        assert_eq!(stats.retries, sent - 100);
        assert!(stats.budget.refused >= 80, "{stats:?}");
        stop(fleet).await;
    })
    .await;
}

fn breaker(cool_down: Duration) -> BreakerLayer {
    BreakerLayer::builder()
        .min_calls(5)
        .failure_rate(0.5)
        .window(Duration::from_secs(30))
        .cool_down(cool_down)
        .max_cool_down(Duration::from_secs(60))
        .probes(2)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_failing_provider_then_half_opens_and_closes() {
    bounded(async {
        let fleet = fleet(2).await;
        let bad = &fleet[0];
        bad.knobs.set_failing(true);
        let cool_down = Duration::from_secs(3);
        let breaker = breaker(cool_down);
        let stub = client(Client::builder().layer(breaker.clone()), &fleet).await;

        // Round-robin: the bad provider fails every other call until it has failed 5.
        let mut failures = 0;
        for n in 0..20 {
            if stub.read(n).await.is_err() {
                failures += 1;
            }
        }
        let opened_at = Instant::now();
        assert_eq!(failures, 5, "the circuit opened after min_calls failures");
        assert_eq!(bad.knobs.calls(), 5);
        assert!(matches!(
            breaker.state(bad.addr()),
            CircuitState::Open { .. }
        ));
        assert_eq!(breaker.state(fleet[1].addr()), CircuitState::Closed);

        // During the cool-down no call reaches it, and none fails.
        for n in 0..20 {
            assert_eq!(stub.read(n).await.unwrap().port, fleet[1].port());
        }
        assert!(
            opened_at.elapsed() < cool_down,
            "the machine is too slow for this check"
        );
        assert_eq!(bad.knobs.calls(), 5, "no call reached the open provider");

        // It recovers; after the cool-down, probes reach it and close the circuit.
        bad.knobs.set_failing(false);
        tokio::time::sleep(cool_down - opened_at.elapsed() + Duration::from_millis(100)).await;
        let mut answered_by_bad = 0;
        for n in 0..20 {
            if stub.read(n).await.unwrap().port == bad.port() {
                answered_by_bad += 1;
            }
        }
        assert_eq!(breaker.state(bad.addr()), CircuitState::Closed);
        assert!(answered_by_bad >= 5, "back in the set: {answered_by_bad}");
        let circuit = breaker
            .circuits()
            .into_iter()
            .find(|c| c.provider == bad.addr())
            .unwrap();
        assert_eq!(circuit.trips, 1);
        assert_eq!(circuit.cool_down, cool_down, "closing resets the cool-down");
        stop(fleet).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reopens_the_circuit_with_a_longer_cool_down() {
    bounded(async {
        let fleet = fleet(2).await;
        let bad = &fleet[0];
        bad.knobs.set_failing(true);
        let cool_down = Duration::from_millis(300);
        let breaker = breaker(cool_down);
        let stub = client(Client::builder().layer(breaker.clone()), &fleet).await;
        for n in 0..10 {
            let _ = stub.read(n).await;
        }
        assert!(matches!(
            breaker.state(bad.addr()),
            CircuitState::Open { .. }
        ));
        assert_eq!(bad.knobs.calls(), 5);
        tokio::time::sleep(cool_down + Duration::from_millis(100)).await;
        // The next call is the probe: pinned to the bad provider, it fails.
        assert!(matches!(stub.read(0).await, Err(RpcError::Internal(_))));
        assert_eq!(bad.knobs.calls(), 6, "one probe reached it");
        let circuit = breaker
            .circuits()
            .into_iter()
            .find(|c| c.provider == bad.addr())
            .unwrap();
        assert!(
            matches!(circuit.state, CircuitState::Open { .. }),
            "{circuit:?}"
        );
        assert_eq!(circuit.trips, 2);
        assert_eq!(circuit.cool_down, cool_down * 2);
        for n in 0..10 {
            assert_eq!(stub.read(n).await.unwrap().port, fleet[1].port());
        }
        assert_eq!(bad.knobs.calls(), 6);
        stop(fleet).await;
    })
    .await;
}

fn read_fallback() -> FallbackLayer {
    FallbackLayer::builder()
        .value("test.Fleet", "read", |_, _| Answer {
            port: 1,
            slow: false,
        })
        .build()
        .unwrap()
}

const FALLBACK: Answer = Answer {
    port: 1,
    slow: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_answers_when_no_provider_is_left() {
    bounded(async {
        let fallback = read_fallback();
        let client = Client::builder()
            .layer(fallback.clone())
            .connect_providers("test.Fleet", Vec::new())
            .await
            .unwrap();
        let stub = FleetClient::new(client);
        assert_eq!(stub.read(1).await.unwrap(), FALLBACK);
        // A method without a fallback gets the error.
        assert!(matches!(
            stub.write(1).await,
            Err(RpcError::NoProvider { .. })
        ));
        assert_eq!(fallback.used(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_answers_when_every_retry_failed() {
    bounded(async {
        let fleet = fleet(3).await;
        for f in &fleet {
            f.knobs.set_failing(true);
        }
        let fallback = read_fallback();
        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "read")
            .method("test.Fleet", "read", Policy::failover(2))
            .build()
            .unwrap();
        let stub = client(
            Client::builder().layer(fallback.clone()).layer(cluster),
            &fleet,
        )
        .await;
        assert_eq!(stub.read(1).await.unwrap(), FALLBACK);
        let sent: u64 = fleet.iter().map(|f| f.knobs.calls()).sum();
        assert_eq!(
            sent, 3,
            "the first attempt and two retries, one per provider"
        );
        for f in &fleet {
            assert_eq!(f.knobs.calls(), 1);
        }
        // Healthy again: the real answer.
        fleet[0].knobs.set_failing(false);
        fleet[1].knobs.set_failing(false);
        fleet[2].knobs.set_failing(false);
        assert_ne!(stub.read(2).await.unwrap(), FALLBACK);
        assert_eq!(fallback.used(), 1);
        stop(fleet).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_answers_while_the_circuit_is_open() {
    bounded(async {
        let fleet = fleet(1).await;
        let only = &fleet[0];
        only.knobs.set_failing(true);
        let fallback = FallbackLayer::builder()
            .value("test.Fleet", "read", |_, _| FALLBACK)
            .unavailable_only()
            .build()
            .unwrap();
        let breaker = breaker(Duration::from_secs(30));
        // Over a balancer, and to a single server (where the breaker refuses calls
        // itself).
        let balanced = Client::builder()
            .layer(fallback.clone())
            .layer(breaker.clone())
            .connect_providers("test.Fleet", providers(&fleet))
            .await
            .unwrap();
        let single = Client::builder()
            .layer(fallback.clone())
            .layer(breaker.clone())
            .connect(only.addr())
            .await
            .unwrap();
        for client in [balanced, single] {
            let stub = FleetClient::new(client);
            let before = only.knobs.calls();
            if matches!(breaker.state(only.addr()), CircuitState::Closed) {
                for n in 0..5 {
                    // Failures, not unavailability: no fallback for these.
                    assert!(matches!(stub.read(n).await, Err(RpcError::Internal(_))));
                }
            }
            assert!(matches!(
                breaker.state(only.addr()),
                CircuitState::Open { .. }
            ));
            let reached = only.knobs.calls();
            for n in 0..5 {
                assert_eq!(stub.read(n).await.unwrap(), FALLBACK);
            }
            assert_eq!(only.knobs.calls(), reached, "nothing reached it while open");
            assert!(reached - before <= 5);
        }
        assert_eq!(fallback.used(), 10);
        stop(fleet).await;
    })
    .await;
}

#[test]
fn bad_configuration_is_refused_at_build_time() {
    let invalid = |result: Result<(), RpcError>, needle: &str| match result {
        Err(RpcError::InvalidConfig(message)) => {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            )
        }
        other => panic!("expected InvalidConfig about {needle:?}, got {other:?}"),
    };
    let cluster = |b: rpc_core::filter::cluster::ClusterBuilder| b.build().map(drop);
    // Retries without any idempotent method (and not limited to unsent calls).
    invalid(
        cluster(ClusterLayer::builder().policy(Policy::failover(2))),
        "idempotent",
    );
    invalid(
        cluster(ClusterLayer::builder().service("test.Fleet", Policy::failover(1))),
        "idempotent",
    );
    invalid(
        cluster(
            ClusterLayer::builder()
                .idempotent("test.Fleet", "read")
                .method("test.Fleet", "write", Policy::failover(1)),
        ),
        "idempotent",
    );
    invalid(
        cluster(ClusterLayer::builder().method("test.Fleet", "read", Policy::hedged())),
        "idempotent",
    );
    // The trait's `#[idempotent]` marks `read`, not `write`.
    invalid(
        cluster(
            ClusterLayer::builder()
                .idempotent_methods(FleetClient::SERVICE_NAME, FleetClient::IDEMPOTENT_METHODS)
                .method("test.Fleet", "write", Policy::failover(1)),
        ),
        "idempotent",
    );
    // ...fine when limited to calls that never reached a server.
    assert!(ClusterLayer::builder()
        .policy(Policy::failover(2).unsent_only())
        .build()
        .is_ok());
    let marked = || ClusterLayer::builder().idempotent("test.Fleet", "read");
    invalid(
        cluster(marked().method("test.Fleet", "read", Policy::forking(0))),
        "forking",
    );
    invalid(
        cluster(marked().method("test.Fleet", "read", Policy::failover(100))),
        "at most",
    );
    invalid(
        cluster(marked().method(
            "test.Fleet",
            "read",
            Policy::failover(1).attempt_timeout(Duration::ZERO),
        )),
        "attempt timeout",
    );
    invalid(
        cluster(marked().method("test.Fleet", "read", Policy::hedged().hedge_quantile(1.5))),
        "quantile",
    );
    invalid(
        cluster(marked().method(
            "test.Fleet",
            "read",
            Policy::hedged().hedge_min_delay(Duration::ZERO),
        )),
        "minimum delay",
    );
    invalid(
        cluster(marked().method(
            "test.Fleet",
            "read",
            Policy::hedged().hedge_window(Duration::ZERO),
        )),
        "window",
    );
    invalid(
        cluster(marked().budget(RetryBudget::builder().ratio(1.5))),
        "ratio",
    );
    invalid(
        cluster(marked().budget(RetryBudget::builder().ratio(-0.5))),
        "ratio",
    );
    invalid(
        cluster(marked().budget(RetryBudget::builder().window(Duration::ZERO))),
        "window",
    );
    invalid(
        cluster(ClusterLayer::builder().idempotent("", "read")),
        "name",
    );

    let breaker = |b: rpc_core::filter::breaker::BreakerBuilder| b.build().map(drop);
    invalid(
        breaker(BreakerLayer::builder().failure_rate(0.0)),
        "failure rate",
    );
    invalid(
        breaker(BreakerLayer::builder().failure_rate(1.1)),
        "failure rate",
    );
    invalid(
        breaker(BreakerLayer::builder().min_calls(0)),
        "minimum number of calls",
    );
    invalid(breaker(BreakerLayer::builder().probes(0)), "probe");
    invalid(
        breaker(BreakerLayer::builder().window(Duration::ZERO)),
        "window",
    );
    invalid(
        breaker(BreakerLayer::builder().cool_down(Duration::ZERO)),
        "cool-down",
    );
    invalid(
        breaker(
            BreakerLayer::builder()
                .cool_down(Duration::from_secs(10))
                .max_cool_down(Duration::from_secs(1)),
        ),
        "maximum cool-down",
    );

    invalid(FallbackLayer::builder().build().map(drop), "no fallback");
    invalid(
        FallbackLayer::builder()
            .value("test.Fleet", "read", |_, _| 1)
            .value("test.Fleet", "read", |_, _| 2)
            .build()
            .map(drop),
        "two fallbacks",
    );
}

/// A user's own tower layer: tags every call with an attachment and counts the
/// answers by provider.
#[derive(Clone, Default)]
struct TagLayer {
    seen: Arc<Mutex<Vec<Option<SocketAddr>>>>,
}

impl<S> tower::Layer<S> for TagLayer {
    type Service = TagService<S>;
    fn layer(&self, inner: S) -> TagService<S> {
        TagService {
            inner,
            seen: Arc::clone(&self.seen),
        }
    }
}

#[derive(Clone)]
struct TagService<S> {
    inner: S,
    seen: Arc<Mutex<Vec<Option<SocketAddr>>>>,
}

impl<S> tower::Service<ClientRequest> for TagService<S>
where
    S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ClientResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ClientRequest) -> Self::Future {
        request
            .attachments_mut()
            .push(("tag".to_owned(), b"from-my-layer".to_vec()));
        let seen = Arc::clone(&self.seen);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            seen.lock().unwrap().push(response.provider());
            Ok(response)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_defined_tower_layer_runs_in_the_client_chain() {
    bounded(async {
        let fleet = fleet(2).await;
        let mine = TagLayer::default();
        let cluster = ClusterLayer::builder()
            .idempotent("test.Fleet", "tag")
            .method("test.Fleet", "tag", Policy::failover(1))
            .build()
            .unwrap();
        // Stock tower middleware fits too.
        let stub = client(
            Client::builder()
                .layer(cluster)
                .layer(mine.clone())
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5))),
            &fleet,
        )
        .await;
        for _ in 0..4 {
            assert_eq!(stub.tag().await.unwrap(), "from-my-layer");
        }
        let seen = mine.seen.lock().unwrap().clone();
        let expected: Vec<Option<SocketAddr>> = [0, 1, 0, 1]
            .iter()
            .map(|&i| Some(fleet[i].addr()))
            .collect();
        assert_eq!(seen, expected, "the transport says which provider answered");
        stop(fleet).await;
    })
    .await;
}

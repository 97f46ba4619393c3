//! The server's filters end to end over TCP: token authentication, per-method limits
//! with load shedding, fault injection, metrics (scraped over HTTP), a user's own
//! tower layer on both sides, and a tower limiter that would queue.
//!
//! The framework's own filters run two ways: added first, the server (or client)
//! runs them itself without a chain; behind another layer, they run in the tower
//! chain. Each of their tests runs both ways ([`Path`]).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::filter::auth::TokenAuthLayer;
use rpc_core::filter::fault::FaultLayer;
use rpc_core::filter::limit::LimitLayer;
use rpc_core::filter::{ClientRequest, ServerRequest};
use rpc_core::protocol::Status;
use rpc_core::{service, Client, RpcError, Server, ServerHandle};

/// The service behind every test.
#[service(name = "test.Shop")]
pub trait Shop {
    /// Counts.
    async fn ping(&self) -> u64;
    /// Sleeps `ms`, then answers it.
    async fn slow(&self, ms: u64) -> u64;
    /// Takes a number (to send it the wrong argument type).
    async fn take(&self, n: u32) -> u32;
}

#[derive(Default)]
struct ShopImpl {
    pings: Arc<AtomicU64>,
}

impl Shop for ShopImpl {
    async fn ping(&self) -> u64 {
        self.pings.fetch_add(1, Ordering::Relaxed) + 1
    }
    async fn slow(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
    async fn take(&self, n: u32) -> u32 {
        n
    }
}

/// A service with the same wire name whose `take` sends a string, to check what a
/// server decodes.
#[service(name = "test.Shop")]
pub trait WrongShop {
    /// `take` with the wrong argument type.
    async fn take(&self, n: String) -> u32;
}

/// How a test's filters run.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// Added first: run by the server (client) itself, without a chain.
    Inline,
    /// Behind a do-nothing tower layer: in the chain, as tower services.
    Chain,
}

/// A spawned server of [`ShopImpl`] behind these layers, run as `$path` says.
macro_rules! serve_shop {
    ($path:expr, $($layer:expr),+ $(,)?) => {{
        let builder = Server::builder().workers(1);
        let bound = match $path {
            Path::Inline => builder
                $(.layer($layer))+
                .add_service(ShopServer::new(ShopImpl::default()))
                .bind("127.0.0.1:0")
                .await,
            Path::Chain => builder
                .layer(tower::layer::util::Identity::new())
                $(.layer($layer))+
                .add_service(ShopServer::new(ShopImpl::default()))
                .bind("127.0.0.1:0")
                .await,
        };
        bound.unwrap().spawn()
    }};
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took too long")
}

async fn client(server: &ServerHandle) -> Client {
    Client::connect(server.local_addr()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_valid_token_is_refused_before_its_arguments_are_decoded() {
    token_auth(Path::Inline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_valid_token_is_refused_in_a_chain_too() {
    token_auth(Path::Chain).await;
}

async fn token_auth(path: Path) {
    bounded(async {
        let server = serve_shop!(path, TokenAuthLayer::tokens(["good-token"]));
        let addr = server.local_addr();

        let anonymous = ShopClient::new(client(&server).await);
        assert!(matches!(
            anonymous.ping().await,
            Err(RpcError::Unauthenticated(_))
        ));
        // Arguments that would not decode: refused for the token, not for the arguments.
        let wrong = WrongShopClient::new(client(&server).await);
        assert!(matches!(
            wrong.take("x".into()).await,
            Err(RpcError::Unauthenticated(_))
        ));

        let bad = Client::builder()
            .auth_token("bad-token")
            .connect(addr)
            .await
            .unwrap();
        let bad = ShopClient::new(bad);
        assert!(matches!(
            bad.ping().await,
            Err(RpcError::Unauthenticated(_))
        ));

        let good = Client::builder()
            .auth_token("good-token")
            .connect(addr)
            .await
            .unwrap();
        assert_eq!(ShopClient::new(good.clone()).ping().await.unwrap(), 1);
        // With a valid token, bad arguments are what is wrong.
        let wrong = WrongShopClient::new(good);
        assert!(matches!(
            wrong.take("x".into()).await,
            Err(RpcError::BadRequest(_))
        ));
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_closure_sees_the_method() {
    bounded(async {
        let server = Server::builder()
            .workers(1)
            .layer(TokenAuthLayer::with(|token, request: &ServerRequest| {
                token == b"admin" || (token == b"reader" && request.method() == "ping")
            }))
            .add_service(ShopServer::new(ShopImpl::default()))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let addr = server.local_addr();
        let reader = ShopClient::new(
            Client::builder()
                .auth_token("reader")
                .connect(addr)
                .await
                .unwrap(),
        );
        assert_eq!(reader.ping().await.unwrap(), 1);
        assert!(matches!(
            reader.take(3).await,
            Err(RpcError::Unauthenticated(_))
        ));
        let admin = ShopClient::new(
            Client::builder()
                .auth_token("admin")
                .connect(addr)
                .await
                .unwrap(),
        );
        assert_eq!(admin.take(3).await.unwrap(), 3);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_a_concurrency_limit_are_shed_at_once_and_other_methods_go_on() {
    concurrency_limit(Path::Inline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_a_concurrency_limit_are_shed_in_a_chain_too() {
    concurrency_limit(Path::Chain).await;
}

async fn concurrency_limit(path: Path) {
    bounded(async {
        let limits = LimitLayer::builder()
            .concurrency("test.Shop", "slow", 2)
            .build()
            .unwrap();
        let server = serve_shop!(path, limits);
        let shop = ShopClient::new(client(&server).await);
        let started = Instant::now();
        let calls: Vec<_> = (0..10)
            .map(|_| tokio::spawn(shop.slow(400).into_future()))
            .collect();
        // While two run, the others were answered at once, and `ping` is not limited.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shop.ping().await.unwrap(), 1);
        let mut ok = 0;
        let mut shed = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(400) => ok += 1,
                Err(RpcError::Overloaded(message)) => {
                    assert!(message.contains("concurrency limit"), "{message}");
                    shed += 1;
                }
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!((ok, shed), (2, 8));
        // Once they finished, the limit admits calls again.
        assert_eq!(shop.slow(1).await.unwrap(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_a_rate_limit_are_shed() {
    rate_limit(Path::Inline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_a_rate_limit_are_shed_in_a_chain_too() {
    rate_limit(Path::Chain).await;
}

async fn rate_limit(path: Path) {
    bounded(async {
        let limits = LimitLayer::builder()
            .rate_with_burst("test.Shop", "*", 5.0, 5.0)
            .build()
            .unwrap();
        let server = serve_shop!(path, limits);
        let shop = ShopClient::new(client(&server).await);
        let mut ok = 0;
        let mut shed = 0;
        for _ in 0..20 {
            match shop.ping().await {
                Ok(_) => ok += 1,
                Err(RpcError::Overloaded(m)) => {
                    assert!(m.contains("rate limit"), "{m}");
                    shed += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        // The burst of five, plus at most a few refilled while the calls ran.
        assert!((5..=8).contains(&ok), "{ok} admitted");
        assert_eq!(ok + shed, 20);
        // Each method has its own bucket: `take` still has its burst.
        assert_eq!(shop.take(7).await.unwrap(), 7);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[test]
fn bad_limits_and_faults_are_errors_when_built() {
    let zero = LimitLayer::builder().concurrency("s", "m", 0).build();
    assert!(matches!(zero, Err(RpcError::InvalidConfig(m)) if m.contains("s.m")));
    assert!(LimitLayer::builder().rate("s", "m", 0.0).build().is_err());
    assert!(LimitLayer::builder()
        .rate("s", "m", f64::NAN)
        .build()
        .is_err());
    assert!(LimitLayer::builder().build().is_err());
    assert!(FaultLayer::builder()
        .abort("s", "m", 1.5, Status::Overloaded)
        .build()
        .is_err());
    assert!(FaultLayer::builder()
        .abort("s", "m", 0.5, Status::Ok)
        .build()
        .is_err());
    assert!(FaultLayer::builder().build().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_delay_and_fail_calls_of_their_method() {
    bounded(async {
        let faults = FaultLayer::builder()
            .delay("test.Shop", "ping", 1.0, Duration::from_millis(150))
            .abort("test.Shop", "take", 1.0, Status::InternalError)
            .build()
            .unwrap();
        let server = Server::builder()
            .workers(1)
            .layer(faults)
            .add_service(ShopServer::new(ShopImpl::default()))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let shop = ShopClient::new(client(&server).await);
        let started = Instant::now();
        assert_eq!(shop.ping().await.unwrap(), 1);
        assert!(started.elapsed() >= Duration::from_millis(150));
        match shop.take(1).await {
            Err(RpcError::Internal(m)) => assert!(m.contains("injected fault"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A delay longer than the caller waits is a timeout, and the server gives up too.
        let late = shop.ping().timeout(Duration::from_millis(50)).await;
        assert!(matches!(late, Err(RpcError::Timeout(_))), "{late:?}");
        // `slow` has no rule.
        assert_eq!(shop.slow(1).await.unwrap(), 1);

        // On a client: the call fails before it is sent.
        let faulty = Client::builder()
            .layer(
                FaultLayer::builder()
                    .abort("test.Shop", "*", 1.0, Status::Overloaded)
                    .build()
                    .unwrap(),
            )
            .connect(server.local_addr())
            .await
            .unwrap();
        let before = shop.ping().await.unwrap();
        assert!(matches!(
            ShopClient::new(faulty).ping().await,
            Err(RpcError::Overloaded(_))
        ));
        assert_eq!(
            shop.ping().await.unwrap(),
            before + 1,
            "the faulty call reached the server"
        );
        server.shutdown().await.unwrap();
    })
    .await;
}

/// A user's own middleware: counts the calls it sees and tags them.
#[derive(Clone, Default)]
struct Counting {
    seen: Arc<AtomicU64>,
}

impl<S> tower::Layer<S> for Counting {
    type Service = CountingService<S>;
    fn layer(&self, inner: S) -> CountingService<S> {
        CountingService {
            inner,
            seen: Arc::clone(&self.seen),
        }
    }
}

#[derive(Clone)]
struct CountingService<S> {
    inner: S,
    seen: Arc<AtomicU64>,
}

impl<S: tower::Service<ServerRequest>> tower::Service<ServerRequest> for CountingService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, mut request: ServerRequest) -> S::Future {
        self.seen.fetch_add(1, Ordering::Relaxed);
        request
            .context_mut()
            .attachments
            .push(("seen-by".to_owned(), b"counting".to_vec()));
        self.inner.call(request)
    }
}

impl<S: tower::Service<ClientRequest>> tower::Service<ClientRequest> for CountingService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, mut request: ClientRequest) -> S::Future {
        self.seen.fetch_add(1, Ordering::Relaxed);
        request
            .attachments_mut()
            .push(("sent-by".to_owned(), b"counting".to_vec()));
        self.inner.call(request)
    }
}

/// Answers which attachments the handler saw.
#[service(name = "test.Attachments")]
pub trait Attachments {
    /// The attachment keys of this call.
    async fn keys(&self) -> Vec<String>;
}

struct AttachmentsImpl;

impl Attachments for AttachmentsImpl {
    async fn keys(&self) -> Vec<String> {
        rpc_core::server::CallContext::with_current(|ctx| {
            ctx.map(|c| c.attachments.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_tower_layer_runs_on_both_sides() {
    bounded(async {
        let on_server = Counting::default();
        let on_client = Counting::default();
        let server = Server::builder()
            .workers(1)
            .layer(on_server.clone())
            .add_service(AttachmentsServer::new(AttachmentsImpl))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let client = Client::builder()
            .layer(on_client.clone())
            .connect(server.local_addr())
            .await
            .unwrap();
        let keys = AttachmentsClient::new(client)
            .keys()
            .attachment("mine", b"1".to_vec())
            .await
            .unwrap();
        assert_eq!(keys, ["mine", "sent-by", "seen-by"]);
        assert_eq!(on_server.seen.load(Ordering::Relaxed), 1);
        assert_eq!(on_client.seen.load(Ordering::Relaxed), 1);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_limiter_that_would_queue_sheds_instead() {
    bounded(async {
        let server = Server::builder()
            .workers(1)
            .layer(tower::limit::ConcurrencyLimitLayer::new(1))
            .add_service(ShopServer::new(ShopImpl::default()))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let shop = ShopClient::new(client(&server).await);
        let first = tokio::spawn(shop.slow(300).into_future());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let second = shop.slow(1).await;
        assert!(matches!(second, Err(RpcError::Overloaded(_))), "{second:?}");
        assert!(started.elapsed() < Duration::from_millis(250), "it waited");
        assert_eq!(first.await.unwrap().unwrap(), 300);
        server.shutdown().await.unwrap();
    })
    .await;
}

/// GET `path` over a plain TCP connection; the response head and body.
#[cfg(feature = "metrics-http")]
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text body.
#[cfg(feature = "metrics-http")]
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let set = rest.trim_end_matches('}');
            let all = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

// Needs rpc-core's `metrics-http` feature (on in `cargo test --workspace`).
#[cfg(feature = "metrics-http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_outcome_and_are_scraped_over_http() {
    metrics_scraped(Path::Inline).await;
}

#[cfg(feature = "metrics-http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_outcome_in_a_chain_too() {
    metrics_scraped(Path::Chain).await;
}

#[cfg(feature = "metrics-http")]
async fn metrics_scraped(path: Path) {
    use rpc_core::filter::metrics::Metrics;
    bounded(async {
        let server_metrics = Metrics::new();
        let client_metrics = Metrics::new();
        let limits = LimitLayer::builder()
            .concurrency("test.Shop", "slow", 1)
            .build()
            .unwrap();
        let server = serve_shop!(path, server_metrics.server_layer(), limits);
        let endpoint = server_metrics.serve("127.0.0.1:0").await.unwrap();
        let client = match path {
            Path::Inline => Client::builder(),
            Path::Chain => Client::builder().layer(tower::layer::util::Identity::new()),
        };
        let client = client
            .layer(client_metrics.client_layer())
            .connect(server.local_addr())
            .await
            .unwrap();
        let shop = ShopClient::new(client);
        for _ in 0..5 {
            shop.ping().await.unwrap();
        }
        let busy = tokio::spawn(shop.slow(300).into_future());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(shop.slow(1).await, Err(RpcError::Overloaded(_))));

        let (head, text) = http_get(endpoint.local_addr(), "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        let ping = [("service", "test.Shop"), ("method", "ping")];
        let slow = [("service", "test.Shop"), ("method", "slow")];
        assert_eq!(
            sample(
                &text,
                "rpc_server_calls_total",
                &[ping[0], ping[1], ("outcome", "ok")]
            ),
            Some(5.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "rpc_server_calls_total",
                &[slow[0], slow[1], ("outcome", "overloaded")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "rpc_server_in_flight", &slow),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "rpc_server_latency_seconds_count", &ping),
            Some(5.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "rpc_server_latency_seconds_bucket",
                &[ping[0], ping[1], ("le", "+Inf")]
            ),
            Some(5.0),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));

        busy.await.unwrap().unwrap();
        let snapshot = client_metrics.snapshot();
        let ping = snapshot.iter().find(|m| m.method == "ping").unwrap();
        assert!(!ping.server);
        assert_eq!((ping.calls, ping.errors, ping.in_flight), (5, 0, 0));
        assert!(ping.p99 >= ping.p50 && ping.p50 > Duration::ZERO);
        let slow = snapshot.iter().find(|m| m.method == "slow").unwrap();
        assert_eq!(slow.calls, 2);
        assert_eq!(slow.outcomes, [("ok", 1), ("overloaded", 1)]);
        // The server's own numbers stayed in its own registry.
        assert!(server_metrics.snapshot().iter().all(|m| m.server));
        drop(endpoint);
        server.shutdown().await.unwrap();
    })
    .await;
}

//! The admin dashboard of the `rpc-registry` binary, over real TCP: the registry runs
//! as a child process; providers and consumers run in the test and talk to it as
//! they would in production. The JSON API, the token on operator actions, overrides
//! reaching a running consumer's balancer within a second and surviving a provider
//! restart, load reported with heartbeats, and the registry's Prometheus text.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::filter::metrics::Metrics;
use rpc_core::lb::Strategy;
use rpc_core::ServerHandle;
use rpc_registry::{Consumer, Instance, Publisher};
use support::admin::{instance, start_registry};
use support::http::http;
use support::*;

const TOKEN: &str = "t0ken-for-tests";

/// A provider serving [`SERVICE`] with its methods listed and a metadata entry,
/// published with fast heartbeats; reporting load when `metrics` is given.
async fn start_provider(
    url: &str,
    addr: SocketAddr,
    metrics: Option<&Metrics>,
) -> (ServerHandle, Publisher) {
    let server = provider_at(addr, metrics).await;
    let builder = Publisher::builder(rpc_registry::connect(url).unwrap())
        .owner("dashboard-test-provider")
        .heartbeat_interval(Duration::from_millis(100))
        .retry_interval(Duration::from_millis(50))
        .deregister_delay(Duration::from_millis(100));
    let builder = match metrics {
        Some(metrics) => builder.metrics(metrics.clone()),
        None => builder,
    };
    let publisher = builder.start();
    let instance = Instance::of(&WhoamiServer::new(Named(String::new())), addr.to_string())
        .metadata("zone", "test-1");
    publisher.publish(instance).unwrap();
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    (server, publisher)
}

/// A free port on 127.0.0.1.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn consumer(url: &str) -> Consumer {
    Consumer::builder(rpc_registry::connect(url).unwrap())
        .client(
            rpc_core::Client::builder()
                .balancer(Strategy::WeightedRoundRobin)
                // The providers here are seconds old: no warm-up ramp, so the calls
                // spread by the weights alone.
                .balancer_config(rpc_core::lb::Config::default().warm_up(Duration::ZERO)),
        )
        .client_name("dashboard-test-consumer")
        .retry_interval(Duration::from_millis(50))
        .connect(SERVICE)
        .await
        .unwrap()
}

/// `GET /api/services/{SERVICE}` once the registry has a record of it.
async fn service_json(admin: SocketAddr) -> serde_json::Value {
    let answer = http(
        admin,
        "GET",
        &format!("/api/services/{SERVICE}"),
        None,
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// Polls `GET /api/services/{SERVICE}` until `ready` holds, at most `limit`.
async fn wait_json(
    admin: SocketAddr,
    limit: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let json = service_json(admin).await;
        if ready(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {json:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn weight_of(list: &[Instance], addr: SocketAddr) -> Option<u32> {
    let addr = addr.to_string();
    list.iter().find(|i| i.addr == addr).map(|i| i.weight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_services_instances_and_consumers() {
    let registry = start_registry(Some(TOKEN));
    let (a, b) = (free_addr(), free_addr());
    let (server_a, publisher_a) = start_provider(&registry.url, a, None).await;
    let (server_b, publisher_b) = start_provider(&registry.url, b, None).await;
    let consumer = consumer(&registry.url).await;

    let json = wait_json(registry.admin, Duration::from_secs(5), |s| {
        s["consumers"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    assert_eq!(json["service"], SERVICE);
    for addr in [a, b] {
        let i = instance(&json, &addr.to_string()).unwrap_or_else(|| panic!("{addr}: {json:#}"));
        assert_eq!(i["weight"], 100);
        assert_eq!(i["registered_weight"], 100);
        assert_eq!(i["health"], "healthy", "{i:#}");
        assert_eq!(i["methods"], serde_json::json!(["whoami"]));
        assert_eq!(i["metadata"]["zone"], "test-1");
        assert_eq!(i["owner"], "dashboard-test-provider");
        assert!(i["last_heartbeat_ms"].as_u64().unwrap() < 1000, "{i:#}");
        assert!(i["age_ms"].as_u64().unwrap() < 60_000, "{i:#}");
        assert!(i["override"]["weight"].is_null() && i["override"]["disabled"] == false);
    }
    let consumers = json["consumers"].as_array().unwrap();
    assert!(
        consumers
            .iter()
            .any(|c| c["client_name"] == "dashboard-test-consumer" && c["addr"] == "127.0.0.1"),
        "{json:#}"
    );

    let all = http(registry.admin, "GET", "/api/services", None, None).await;
    assert_eq!(all.status, 200);
    assert!(
        all.head.contains("content-type: application/json"),
        "{}",
        all.head
    );
    let all = all.json();
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["service"] == SERVICE));

    let info = http(registry.admin, "GET", "/api/info", None, None)
        .await
        .json();
    assert_eq!(info["actions_enabled"], true);
    assert_eq!(info["registry"], registry.url);
    assert_eq!(info["instances"], 2);

    let missing = http(registry.admin, "GET", "/api/services/no.Such", None, None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("no.Such"));

    let page = http(registry.admin, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.head.contains("content-type: text/html"),
        "{}",
        page.head
    );
    assert!(page.body.contains("<svg id=\"chart\""));
    for outside in ["src=", "<link", "@import", "url(", "https://"] {
        assert!(
            !page.body.contains(outside),
            "the page fetches nothing from elsewhere: {outside}"
        );
    }

    consumer.shutdown().await;
    for (server, publisher) in [(server_a, publisher_a), (server_b, publisher_b)] {
        publisher.shutdown().await;
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_need_the_admin_token() {
    let registry = start_registry(Some(TOKEN));
    let a = free_addr();
    let (server, publisher) = start_provider(&registry.url, a, None).await;
    let path = format!("/api/services/{SERVICE}/instances/{a}/disable");
    for token in [None, Some("wrong"), Some("t0ken-for-test")] {
        let answer = http(registry.admin, "POST", &path, token, None).await;
        assert_eq!(answer.status, 401, "{token:?}: {}", answer.body);
        assert!(
            answer.head.contains("www-authenticate: bearer"),
            "{}",
            answer.head
        );
    }
    let weight = format!("/api/services/{SERVICE}/instances/{a}/weight");
    let answer = http(
        registry.admin,
        "PUT",
        &weight,
        None,
        Some(r#"{"weight":1}"#),
    )
    .await;
    assert_eq!(answer.status, 401);
    let json = service_json(registry.admin).await;
    let i = instance(&json, &a.to_string()).unwrap();
    assert_eq!(i["health"], "healthy", "nothing changed: {i:#}");
    assert_eq!(i["weight"], 100);

    // The right token: done; an unknown instance: 404; a bad body: 4xx.
    let answer = http(registry.admin, "POST", &path, Some(TOKEN), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["override"]["disabled"], true);
    let unknown = format!("/api/services/{SERVICE}/instances/127.0.0.1:1/disable");
    let answer = http(registry.admin, "POST", &unknown, Some(TOKEN), None).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let answer = http(
        registry.admin,
        "PUT",
        &weight,
        Some(TOKEN),
        Some(r#"{"weight":-1}"#),
    )
    .await;
    assert!((400..500).contains(&answer.status), "{}", answer.status);

    // Without a configured token, actions are refused altogether.
    let read_only = start_registry(None);
    let answer = http(read_only.admin, "POST", &path, Some(TOKEN), None).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("--admin-token"), "{}", answer.body);
    let info = http(read_only.admin, "GET", "/api/info", None, None)
        .await
        .json();
    assert_eq!(info["actions_enabled"], false);

    publisher.shutdown().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_reach_a_running_consumer_within_a_second_and_survive_provider_restarts() {
    let registry = start_registry(Some(TOKEN));
    let (a, b) = (free_addr(), free_addr());
    let (server_a, publisher_a) = start_provider(&registry.url, a, None).await;
    let (server_b, publisher_b) = start_provider(&registry.url, b, None).await;
    let consumer = consumer(&registry.url).await;
    assert!(
        consumer
            .wait_for(Duration::from_secs(5), |list| list.len() == 2)
            .await
    );
    let whoami = WhoamiClient::new(consumer.client());
    let instance_path =
        |addr: SocketAddr, what: &str| format!("/api/services/{SERVICE}/instances/{addr}/{what}");

    // A weight: the consumer's balancer has it within a second.
    let asked = Instant::now();
    let answer = http(
        registry.admin,
        "PUT",
        &instance_path(a, "weight"),
        Some(TOKEN),
        Some(r#"{"weight":5}"#),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        consumer
            .wait_for(Duration::from_secs(1), |list| weight_of(list, a) == Some(5))
            .await,
        "weight not applied within 1 s: {:?}",
        consumer.providers()
    );
    tracing::info!(elapsed = ?asked.elapsed(), "weight applied");
    // The balancer follows: of 105 calls, a (weight 5) gets about 5.
    let mut to_a = 0;
    for _ in 0..105 {
        if whoami.whoami().await.unwrap() == a.to_string() {
            to_a += 1;
        }
    }
    assert!(
        to_a <= 10,
        "a answered {to_a} of 105 calls at weight 5 against 100"
    );

    // a restarts: it registers weight 100 again, but the consumer never sees 100.
    let mut changes = consumer.changes();
    let watched = tokio::spawn(async move {
        let mut seen = Vec::new();
        while changes.changed().await.is_ok() {
            seen.push(weight_of(&changes.borrow_and_update(), a));
        }
        seen
    });
    publisher_a.shutdown().await;
    server_a.shutdown().await.unwrap();
    let (server_a, publisher_a) = start_provider(&registry.url, a, None).await;
    let json = wait_json(registry.admin, Duration::from_secs(5), |s| {
        instance(s, &a.to_string()).is_some()
    })
    .await;
    let i = instance(&json, &a.to_string()).unwrap();
    assert_eq!(i["registered_weight"], 100);
    assert_eq!(i["weight"], 5, "the override outlived the restart: {i:#}");
    assert!(
        consumer
            .wait_for(Duration::from_secs(2), |list| weight_of(list, a) == Some(5))
            .await
    );

    // Disabling b: the consumer drops it within a second and calls only a.
    let asked = Instant::now();
    let answer = http(
        registry.admin,
        "POST",
        &instance_path(b, "disable"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        consumer
            .wait_for(Duration::from_secs(1), |list| weight_of(list, b).is_none())
            .await,
        "b not dropped within 1 s: {:?}",
        consumer.providers()
    );
    assert!(asked.elapsed() < Duration::from_secs(1));
    for _ in 0..20 {
        assert_eq!(whoami.whoami().await.unwrap(), a.to_string());
    }

    // b restarts: registered again (the dashboard shows it, disabled), never called.
    publisher_b.shutdown().await;
    server_b.shutdown().await.unwrap();
    let (server_b, publisher_b) = start_provider(&registry.url, b, None).await;
    let json = wait_json(registry.admin, Duration::from_secs(5), |s| {
        instance(s, &b.to_string()).is_some()
    })
    .await;
    assert_eq!(
        instance(&json, &b.to_string()).unwrap()["health"],
        "disabled"
    );
    assert!(
        !consumer
            .wait_for(Duration::from_millis(500), |list| weight_of(list, b)
                .is_some())
            .await,
        "a disabled instance came back with its restart"
    );
    for _ in 0..20 {
        assert_eq!(whoami.whoami().await.unwrap(), a.to_string());
    }

    // Enabling b and resetting a's weight: back to what they registered.
    for (addr, method, what) in [(b, "POST", "enable"), (a, "DELETE", "weight")] {
        let answer = http(
            registry.admin,
            method,
            &instance_path(addr, what),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert!(
        consumer
            .wait_for(Duration::from_secs(1), |list| weight_of(list, a)
                == Some(100)
                && weight_of(list, b) == Some(100))
            .await,
        "{:?}",
        consumer.providers()
    );
    let json = service_json(registry.admin).await;
    assert!(
        json["overrides"].as_object().unwrap().is_empty(),
        "{json:#}"
    );

    // The consumer gone, its change stream ends.
    consumer.shutdown().await;
    let seen = tokio::time::timeout(Duration::from_secs(5), watched)
        .await
        .expect("the change stream ended")
        .unwrap();
    assert!(seen.contains(&None), "a's departure was seen: {seen:?}");
    let first_back = seen
        .iter()
        .skip_while(|w| w.is_some())
        .find(|w| w.is_some());
    assert_eq!(
        first_back,
        Some(&Some(5)),
        "back from its restart, a had the override at once: {seen:?}"
    );
    for (server, publisher) in [(server_a, publisher_a), (server_b, publisher_b)] {
        publisher.shutdown().await;
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_under_load_shows_live_calls_per_second() {
    let registry = start_registry(Some(TOKEN));
    let a = free_addr();
    let metrics = Metrics::new();
    let (server, publisher) = start_provider(&registry.url, a, Some(&metrics)).await;
    let consumer = consumer(&registry.url).await;
    let whoami = WhoamiClient::new(consumer.client());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                whoami.whoami().await.unwrap();
                calls += 1;
            }
            calls
        })
    };
    let json = wait_json(registry.admin, Duration::from_secs(10), |s| {
        instance(s, &a.to_string())
            .is_some_and(|i| i["load"]["calls_per_s"].as_f64().unwrap_or(0.0) > 10.0)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = load.await.unwrap();
    let i = instance(&json, &a.to_string()).unwrap();
    let load = &i["load"];
    assert_eq!(load["error_rate"], 0.0, "{load:#}");
    assert!(load["p99_ms"].as_f64().unwrap() > 0.0, "{load:#}");
    assert!(load["mean_ms"].as_f64().unwrap() > 0.0, "{load:#}");
    assert!(
        load["methods"]["whoami"]["calls_per_s"].as_f64().unwrap() > 10.0,
        "{load:#}"
    );
    assert!(i["load_reported_ms"].as_u64().unwrap() < 1000, "{i:#}");
    let service_rate = json["load"]["calls_per_s"].as_f64().unwrap();
    assert!(service_rate > 10.0, "{json:#}");
    assert!(calls > 0);

    consumer.shutdown().await;
    publisher.shutdown().await;
    server.shutdown().await.unwrap();
}

/// The samples of a Prometheus text body by series (`name{labels}`), checking every
/// line is a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or a sample with a
/// numeric value, and that the body ends with `# EOF`.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end");
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(
                        !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                        "{line:?}"
                    );
                }
            }
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_metrics_are_prometheus_text() {
    let registry = start_registry(Some(TOKEN));
    let a = free_addr();
    let (server, publisher) = start_provider(&registry.url, a, Some(&Metrics::new())).await;
    let consumer = consumer(&registry.url).await;
    // A few heartbeats.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = http(registry.admin, "GET", "/metrics", None, None).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .head
            .contains("content-type: application/openmetrics-text"),
        "{}",
        answer.head
    );
    let samples = parse_prometheus(&answer.body);
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", answer.body))
    };
    assert_eq!(value("rpc_registry_instances"), 1.0);
    assert_eq!(
        value("rpc_registry_leases"),
        2.0,
        "the provider's and the consumer's"
    );
    assert!(value("rpc_registry_heartbeats_total") >= 2.0);
    assert!(value("rpc_registry_load_reports_total") >= 2.0);
    assert!(value("rpc_registry_registrations_total") >= 1.0);
    assert!(value("rpc_registry_watches_total") >= 1.0);
    assert_eq!(
        value("rpc_registry_watches_waiting"),
        1.0,
        "the consumer's long poll"
    );
    assert_eq!(
        value(&format!(
            "rpc_registry_service_instances{{service=\"{SERVICE}\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "rpc_registry_service_consumers{{service=\"{SERVICE}\"}}"
        )),
        1.0
    );
    consumer.shutdown().await;
    publisher.shutdown().await;
    server.shutdown().await.unwrap();
}

/// The registry's API as it was before load reports: no `heartbeat_with_load`.
#[rpc_core::service(name = "rpc.Registry")]
trait OldRegistry {
    async fn grant(
        &self,
        request: rpc_registry::LeaseRequest,
    ) -> Result<rpc_registry::Lease, rpc_registry::RegistryError>;
    async fn heartbeat(
        &self,
        lease: rpc_registry::LeaseId,
    ) -> Result<(), rpc_registry::RegistryError>;
    async fn revoke(&self, lease: rpc_registry::LeaseId)
        -> Result<(), rpc_registry::RegistryError>;
    async fn register(
        &self,
        lease: rpc_registry::LeaseId,
        instance: Instance,
    ) -> Result<rpc_registry::Revision, rpc_registry::RegistryError>;
}

/// Counts heartbeats; grants one lease per call, accepts every registration.
#[derive(Default)]
struct Old {
    heartbeats: std::sync::atomic::AtomicU64,
    registered: std::sync::atomic::AtomicBool,
}

impl OldRegistry for Arc<Old> {
    async fn grant(
        &self,
        _request: rpc_registry::LeaseRequest,
    ) -> Result<rpc_registry::Lease, rpc_registry::RegistryError> {
        let lease: rpc_registry::Lease = serde_json::from_value(serde_json::json!({
            "id": 7, "ttl_ms": 1000, "heartbeat_ms": 100
        }))
        .unwrap();
        Ok(lease)
    }
    async fn heartbeat(
        &self,
        _lease: rpc_registry::LeaseId,
    ) -> Result<(), rpc_registry::RegistryError> {
        self.heartbeats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    async fn revoke(
        &self,
        _lease: rpc_registry::LeaseId,
    ) -> Result<(), rpc_registry::RegistryError> {
        Ok(())
    }
    async fn register(
        &self,
        _lease: rpc_registry::LeaseId,
        _instance: Instance,
    ) -> Result<rpc_registry::Revision, rpc_registry::RegistryError> {
        self.registered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(rpc_registry::Revision::new(1, 1))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_load_reports_gets_plain_heartbeats() {
    let old = Arc::new(Old::default());
    let registry = rpc_core::Server::builder()
        .add_service(OldRegistryServer::new(Arc::clone(&old)))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn();
    let url = format!("rpc://{}", registry.local_addr());
    let a = free_addr();
    let (server, publisher) = start_provider(&url, a, Some(&Metrics::new())).await;
    assert!(old.registered.load(std::sync::atomic::Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let beats = old.heartbeats.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        beats >= 3,
        "{beats} heartbeats in 600 ms at 100 ms: the publisher fell back to plain heartbeats"
    );
    assert_eq!(
        publisher.leases(),
        vec![Some(rpc_registry::LeaseId(7))],
        "the lease held"
    );
    publisher.shutdown().await;
    server.shutdown().await.unwrap();
    registry.shutdown().await.unwrap();
}

//! The registry, providers and consumers as real processes, under continuous load:
//! a provider killed with SIGKILL, one shut down gracefully, the registry killed and
//! restarted, a provider joining, a consumer started from its snapshot, and two
//! registries with one lost.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rpc_core::Client;
use rpc_examples::{InventoryClient, INVENTORY_SERVICE};
use rpc_registry::RegistryApiClient;
use support::{
    consumer, run_consumer_process, start_registered_provider, start_registry, terminate,
    wait_with_deadline, Load,
};

/// Registry flags for these tests: TTL 1 s (heartbeats every 333 ms), so eviction and
/// the start-up grace take about a second.
const FAST: &[&str] = &[
    "--ttl",
    "1s",
    "--heartbeat-interval",
    "300ms",
    "--sweep-interval",
    "100ms",
];

/// Registry flags with a 3 s TTL (heartbeats every second): a removal within a second
/// can only be a deregistration, and "two heartbeats" is two seconds.
const SLOW: &[&str] = &[
    "--ttl",
    "3s",
    "--heartbeat-interval",
    "1s",
    "--sweep-interval",
    "100ms",
];

/// The inventory instances `registry` lists now (`None` if it cannot be asked).
async fn listed(registry: SocketAddr) -> Option<usize> {
    let client = Client::builder()
        .timeout(Duration::from_millis(500))
        .connect(registry)
        .await
        .ok()?;
    let view = RegistryApiClient::new(client)
        .lookup(INVENTORY_SERVICE.into())
        .await
        .ok()?;
    Some(view.instances.len())
}

/// Waits until `registry` lists `count` instances; returns how long it took.
async fn until_listed(registry: SocketAddr, count: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if listed(registry).await == Some(count) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "registry {registry} did not list {count} instances within {limit:?} (lists {:?})",
            listed(registry).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_provider_is_evicted_within_ttl_and_no_call_fails() {
    let (_registry, addr) = start_registry("127.0.0.1:0", FAST);
    let url = format!("rpc://{addr}");
    let mut providers: Vec<_> = (0..3)
        .map(|_| start_registered_provider(&url, 100))
        .collect();
    until_listed(addr, 3, Duration::from_secs(5)).await;
    let consumer = consumer(&url, "process-test").await;
    assert_eq!(consumer.providers().len(), 3);
    let load = Load::start(&InventoryClient::new(consumer.client()));
    // Past the registry's start-up grace (one TTL), so eviction is up to the TTL.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let (mut victim, _) = providers.pop().unwrap();
    victim.0.kill().unwrap(); // SIGKILL: no deregistration, no GOAWAY
    victim.0.wait().unwrap();
    let killed = Instant::now();
    let evicted = until_listed(addr, 2, Duration::from_secs(4)).await;
    assert!(
        evicted <= Duration::from_secs(2),
        "evicted {evicted:?} after the kill; TTL 1 s + 1 s allowed"
    );
    assert!(
        consumer
            .wait_for(Duration::from_secs(1), |l| l.len() == 2)
            .await,
        "the consumer heard of the eviction"
    );
    let failed = load
        .finish_after_kill(killed, Duration::from_millis(500))
        .await;
    println!("evicted {evicted:?} after SIGKILL; {failed} failed call(s) in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_provider_shutdown_fails_no_call() {
    let (_registry, addr) = start_registry("127.0.0.1:0", SLOW);
    let url = format!("rpc://{addr}");
    let mut providers: Vec<_> = (0..3)
        .map(|_| start_registered_provider(&url, 100))
        .collect();
    until_listed(addr, 3, Duration::from_secs(5)).await;
    let consumer = consumer(&url, "process-test").await;
    let load = Load::start(&InventoryClient::new(consumer.client()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut leaving, _) = providers.pop().unwrap();
    terminate(&leaving.0);
    // Deregistered at once, well before its TTL would run out.
    let gone = until_listed(addr, 2, Duration::from_secs(2)).await;
    assert!(gone < Duration::from_secs(1), "deregistered after {gone:?}");
    let status = wait_with_deadline(&mut leaving.0, Duration::from_secs(15));
    assert!(status.success(), "provider exited with {status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(load.ok() > 0);
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert_eq!(consumer.providers().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_killed_and_restarted() {
    let (mut registry, addr) = start_registry("127.0.0.1:0", SLOW);
    let url = format!("rpc://{addr}");
    let _providers: Vec<_> = (0..3)
        .map(|_| start_registered_provider(&url, 100))
        .collect();
    until_listed(addr, 3, Duration::from_secs(5)).await;
    let consumer = consumer(&url, "process-test").await;
    let load = Load::start(&InventoryClient::new(consumer.client()));

    registry.0.kill().unwrap();
    registry.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        consumer.providers().len(),
        3,
        "an outage never empties the list"
    );

    let (_registry, again) = start_registry(&addr.to_string(), SLOW);
    assert_eq!(again, addr);
    let back = until_listed(addr, 3, Duration::from_secs(5)).await;
    assert!(
        back <= Duration::from_secs(2),
        "providers back after {back:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert_eq!(consumer.providers().len(), 3);

    // A new consumer process discovers them all.
    let out = tokio::task::spawn_blocking(move || run_consumer_process(&url, &[]))
        .await
        .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");
    assert!(out.contains("0 failed"), "{out}");
    println!("providers re-registered {back:?} after the registry came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_provider_gets_calls_within_a_second() {
    let (_registry, addr) = start_registry("127.0.0.1:0", FAST);
    let url = format!("rpc://{addr}");
    let _providers: Vec<_> = (0..3)
        .map(|_| start_registered_provider(&url, 100))
        .collect();
    until_listed(addr, 3, Duration::from_secs(5)).await;
    let consumer = consumer(&url, "process-test").await;
    let inventory = InventoryClient::new(consumer.client());
    let load = Load::start(&inventory);

    let (_joined, joined_addr) = start_registered_provider(&url, 100);
    let started = Instant::now();
    let direct = InventoryClient::new(Client::connect(joined_addr).await.unwrap());
    // Audit events go through the balancer; the new provider counts those it gets.
    loop {
        inventory.audit("probe".into()).await.unwrap();
        if direct.audit_count().await.unwrap() > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the new provider got no call within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "the new provider got its first call {:?} after it started",
        started.elapsed()
    );
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_starts_from_its_snapshot_while_the_registry_is_down() {
    let dir = std::env::temp_dir().join(format!("rpc-snapshot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("inventory.json");
    let snapshot_arg = snapshot.to_str().unwrap().to_owned();
    let (mut registry, addr) = start_registry("127.0.0.1:0", FAST);
    let url = format!("rpc://{addr}");
    let _providers: Vec<_> = (0..3)
        .map(|_| start_registered_provider(&url, 100))
        .collect();
    until_listed(addr, 3, Duration::from_secs(5)).await;
    let (u, s) = (url.clone(), snapshot_arg.clone());
    let out = tokio::task::spawn_blocking(move || run_consumer_process(&u, &["--snapshot", &s]))
        .await
        .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");

    registry.0.kill().unwrap();
    registry.0.wait().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run_consumer_process(&url, &["--snapshot", &snapshot_arg])
    })
    .await
    .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");
    assert!(out.contains("53 ok, 0 failed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_one_killed() {
    let (mut first, first_addr) = start_registry("127.0.0.1:0", FAST);
    let (_second, second_addr) = start_registry("127.0.0.1:0", FAST);
    let url = format!("rpc://{first_addr},{second_addr}");
    let _providers: Vec<_> = (0..3)
        .map(|_| start_registered_provider(&url, 100))
        .collect();
    until_listed(first_addr, 3, Duration::from_secs(5)).await;
    until_listed(second_addr, 3, Duration::from_secs(5)).await;
    let consumer = consumer(&url, "process-test").await;
    assert_eq!(consumer.providers().len(), 3, "merged without duplicates");
    let load = Load::start(&InventoryClient::new(consumer.client()));

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert_eq!(consumer.providers().len(), 3);

    let out = tokio::task::spawn_blocking(move || run_consumer_process(&url, &[]))
        .await
        .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");
    assert!(out.contains("0 failed"), "{out}");
}

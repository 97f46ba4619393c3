//! The etcd backend against real etcd servers (Debian `etcd-server`, started here on
//! loopback ports): providers and consumers as real processes under continuous load.
//! Each test skips with a loud message when `etcd` is not installed; `.ci/run`
//! installs it.

mod support;

use std::time::{Duration, Instant};

use rpc_examples::{InventoryClient, INVENTORY_SERVICE};
use rpc_registry::{Consumer, Instance, Publisher};
use support::{
    consumer, have, run_consumer_process, start_provider, EtcdCluster, Load, Reaper, TempDir,
};

/// Lease TTL of the providers in these tests (etcd counts whole seconds).
const TTL: &str = "1s";

/// Starts the provider binary registered through `url` with a 1 s lease.
fn provider(url: &str) -> Reaper {
    support::start_registered_provider_with(url, 100, &["--ttl", TTL]).0
}

/// Waits until the consumer's balancer has `count` providers.
async fn until_count(consumer: &Consumer, count: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    assert!(
        consumer.wait_for(limit, |l| l.len() == count).await,
        "consumer did not reach {count} providers within {limit:?} (has {})",
        consumer.providers().len()
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_register_discover_call_and_weight_change() {
    if !have("etcd", "etcd_register_discover_call_and_weight_change") {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let url = cluster.url();
    let _a = provider(&url);
    // A plain provider process whose registration this test drives, to change weight.
    let (_b, b_addr) = start_provider(1);
    let publisher = Publisher::builder(rpc_registry::connect(&url).unwrap())
        .ttl(Duration::from_secs(1))
        .start();
    publisher
        .publish(Instance::new(INVENTORY_SERVICE, b_addr.to_string()).weight(100))
        .unwrap();
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = consumer(&url, "etcd-test").await;
    until_count(&consumer, 2, Duration::from_secs(5)).await;
    let inventory = InventoryClient::new(consumer.client());
    let load = Load::start(&inventory);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(load.ok() > 0, "calls succeed");

    publisher
        .publish(Instance::new(INVENTORY_SERVICE, b_addr.to_string()).weight(300))
        .unwrap();
    let changed = Instant::now();
    let b = b_addr.to_string();
    assert!(
        consumer
            .wait_for(Duration::from_secs(3), |l| l
                .iter()
                .any(|i| i.addr == b && i.weight == 300))
            .await,
        "the weight change reached the consumer's balancer"
    );
    println!("weight change seen after {:?}", changed.elapsed());
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    publisher.shutdown().await;
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_provider_disappears_within_ttl() {
    if !have("etcd", "etcd_killed_provider_disappears_within_ttl") {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let url = cluster.url();
    let mut providers: Vec<Reaper> = (0..3).map(|_| provider(&url)).collect();
    let consumer = consumer(&url, "etcd-test").await;
    until_count(&consumer, 3, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(consumer.client()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut victim = providers.pop().unwrap();
    victim.0.kill().unwrap(); // SIGKILL: no deregistration
    victim.0.wait().unwrap();
    let killed = Instant::now();
    let gone = until_count(&consumer, 2, Duration::from_secs(4)).await;
    // etcd expires a lease up to its TTL after the last keep-alive.
    assert!(
        gone <= Duration::from_secs(2),
        "gone {gone:?} after the kill; TTL 1 s + 1 s allowed"
    );
    load.finish_after_kill(killed, Duration::from_millis(300))
        .await;
    println!("etcd: killed provider gone from the balancer after {gone:?}");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_calls_going_and_providers_come_back() {
    if !have(
        "etcd",
        "etcd_outage_keeps_calls_going_and_providers_come_back",
    ) {
        return;
    }
    let mut cluster = EtcdCluster::start(1);
    let url = cluster.url();
    let _providers: Vec<Reaper> = (0..2).map(|_| provider(&url)).collect();
    let first = consumer(&url, "etcd-test").await;
    until_count(&first, 2, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(first.client()));

    cluster.members[0].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        first.providers().len(),
        2,
        "an outage never empties the list"
    );
    cluster.members[0].start();
    cluster.wait_healthy(Duration::from_secs(20));

    let second = consumer(&url, "etcd-test").await;
    until_count(&second, 2, Duration::from_secs(5)).await;
    // Past a lease TTL after the restart: the providers' leases were renewed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(second.providers().len(), 2, "providers stayed registered");
    assert_eq!(first.providers().len(), 2);
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_node_cluster_leader_killed() {
    if !have("etcd", "etcd_three_node_cluster_leader_killed") {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let url = cluster.url();
    let _providers: Vec<Reaper> = (0..2).map(|_| provider(&url)).collect();
    let first = consumer(&url, "etcd-test").await;
    until_count(&first, 2, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(first.client()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let leader = cluster
        .members
        .iter()
        .position(support::EtcdMember::is_leader)
        .expect("a leader");
    cluster.members[leader].kill();
    // Several lease TTLs with the leader gone: nothing may expire or fail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(first.providers().len(), 2, "no provider lost");
    let _third = provider(&url);
    let second = consumer(&url, "etcd-test").await;
    until_count(&second, 3, Duration::from_secs(5)).await;
    until_count(&first, 3, Duration::from_secs(5)).await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_consumer_starts_from_its_snapshot_while_etcd_is_down() {
    if !have(
        "etcd",
        "etcd_consumer_starts_from_its_snapshot_while_etcd_is_down",
    ) {
        return;
    }
    let dir = TempDir::new("etcd-snapshot");
    let snapshot = dir.0.join("inventory.json");
    let snapshot = snapshot.to_str().unwrap().to_owned();
    let mut cluster = EtcdCluster::start(1);
    let url = cluster.url();
    let _providers: Vec<Reaper> = (0..3).map(|_| provider(&url)).collect();
    let watcher = consumer(&url, "etcd-test").await;
    until_count(&watcher, 3, Duration::from_secs(5)).await;
    watcher.shutdown().await;
    let (u, s) = (url.clone(), snapshot.clone());
    let out = tokio::task::spawn_blocking(move || run_consumer_process(&u, &["--snapshot", &s]))
        .await
        .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");

    cluster.members[0].kill();
    let out =
        tokio::task::spawn_blocking(move || run_consumer_process(&url, &["--snapshot", &snapshot]))
            .await
            .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");
    assert!(out.contains("53 ok, 0 failed"), "{out}");
}

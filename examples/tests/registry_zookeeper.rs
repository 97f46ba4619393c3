//! The ZooKeeper backend against real ZooKeeper servers (Debian `zookeeper` 3.8, started
//! here on loopback ports with the JRE): providers and consumers as real processes
//! under continuous load. Each test skips with a loud message when java or the
//! ZooKeeper jar is missing or rpc-registry lacks its `zookeeper` feature; `.ci/run`
//! installs the package and the workspace build enables the feature.

mod support;

use std::time::{Duration, Instant};

use rpc_examples::{InventoryClient, INVENTORY_SERVICE};
use rpc_registry::{Consumer, Instance, Publisher};
use support::zookeeper::{ZkEnsemble, ZkNode};
use support::{
    consumer, have_zookeeper, run_consumer_process, start_provider, Load, Reaper, TempDir,
};

/// Session timeout of the providers in these tests. The client gives a session up
/// 1.4 timeouts after it last heard from the server; the server expires one a timeout
/// after its last ping, rounded up to a tick (200 ms here).
const SESSION: Duration = Duration::from_secs(2);

/// Starts the provider binary registered through `url` with a session of `session`.
fn provider_with(url: &str, session: Duration) -> Reaper {
    let ttl = format!("{}ms", session.as_millis());
    support::start_registered_provider_with(url, 100, &["--ttl", &ttl]).0
}

/// Starts the provider binary registered through `url` with a [`SESSION`] session.
fn provider(url: &str) -> Reaper {
    provider_with(url, SESSION)
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

/// Checks every 20 ms for `period` that the consumer keeps `count` providers.
async fn keeps_count(consumer: &Consumer, count: usize, period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert_eq!(
            consumer.providers().len(),
            count,
            "the consumer's provider list changed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_register_discover_call_and_weight_change() {
    if !have_zookeeper("zookeeper_register_discover_call_and_weight_change") {
        return;
    }
    let ensemble = ZkEnsemble::start(1);
    let url = ensemble.url();
    let _a = provider(&url);
    // A plain provider process whose registration this test drives, to change weight.
    let (_b, b_addr) = start_provider(1);
    let publisher = Publisher::builder(rpc_registry::connect(&url).unwrap())
        .ttl(SESSION)
        .start();
    publisher
        .publish(Instance::new(INVENTORY_SERVICE, b_addr.to_string()).weight(100))
        .unwrap();
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = consumer(&url, "zookeeper-test").await;
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

    // The consumer announced itself in Dubbo's layout, under its own session.
    let registries = rpc_registry::connect(&url).unwrap();
    let backend = &registries.members()[0];
    let consumers = backend.consumers(INVENTORY_SERVICE).await.unwrap();
    assert!(
        consumers.iter().any(|c| c.client_name == "zookeeper-test"),
        "{consumers:?}"
    );
    let services = backend.services().await.unwrap();
    assert!(
        services
            .iter()
            .any(|s| s.service == INVENTORY_SERVICE && s.instances == 2 && s.consumers >= 1),
        "{services:?}"
    );

    // A graceful leave of the last provider but one: gone at once, marked departed.
    publisher.shutdown().await;
    until_count(&consumer, 1, Duration::from_secs(2)).await;
    let view = backend.lookup(INVENTORY_SERVICE).await.unwrap();
    assert_eq!(view.departed, vec![b.clone()], "{view:?}");
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_killed_provider_disappears_within_session_timeout() {
    if !have_zookeeper("zookeeper_killed_provider_disappears_within_session_timeout") {
        return;
    }
    let ensemble = ZkEnsemble::start(1);
    let url = ensemble.url();
    let mut providers: Vec<Reaper> = (0..3).map(|_| provider(&url)).collect();
    let consumer = consumer(&url, "zookeeper-test").await;
    until_count(&consumer, 3, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(consumer.client()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut victim = providers.pop().unwrap();
    victim.0.kill().unwrap(); // SIGKILL: no deregistration, the session just stops
    victim.0.wait().unwrap();
    let killed = Instant::now();
    let gone = until_count(&consumer, 2, SESSION + Duration::from_secs(3)).await;
    assert!(
        gone <= SESSION + Duration::from_secs(1),
        "gone {gone:?} after the kill; session timeout {SESSION:?} + 1 s allowed"
    );
    load.finish_after_kill(killed, Duration::from_millis(300))
        .await;
    println!("zookeeper: killed provider gone from the balancer after {gone:?}");
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_outage_keeps_calls_going_and_providers_come_back() {
    if !have_zookeeper("zookeeper_outage_keeps_calls_going_and_providers_come_back") {
        return;
    }
    let mut ensemble = ZkEnsemble::start(1);
    let url = ensemble.url();
    // Sessions that outlive the outage and the server's restart (a JVM start).
    let session = Duration::from_secs(8);
    let _providers: Vec<Reaper> = (0..2).map(|_| provider_with(&url, session)).collect();
    let first = consumer(&url, "zookeeper-test").await;
    until_count(&first, 2, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(first.client()));

    // Shorter than the session timeout: the sessions live on, and so do their nodes.
    let stopped = Instant::now();
    ensemble.nodes[0].kill();
    keeps_count(&first, 2, Duration::from_millis(1500)).await;
    ensemble.nodes[0].start();
    ensemble.wait_serving(Duration::from_secs(20));
    println!("ZooKeeper was down for {:?}", stopped.elapsed());

    let second = consumer(&url, "zookeeper-test").await;
    until_count(&second, 2, Duration::from_secs(5)).await;
    // Well past the time the clients took to reconnect: the providers' sessions were
    // resumed, their nodes never left.
    keeps_count(&second, 2, Duration::from_secs(3)).await;
    assert_eq!(first.providers().len(), 2);
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_session_expiry_providers_register_again() {
    if !have_zookeeper("zookeeper_session_expiry_providers_register_again") {
        return;
    }
    let mut ensemble = ZkEnsemble::start(1);
    let url = ensemble.url();
    let _providers: Vec<Reaper> = (0..2).map(|_| provider(&url)).collect();
    // And one registered from here, to see its session change.
    let (_c, c_addr) = start_provider(1);
    let publisher = Publisher::builder(rpc_registry::connect(&url).unwrap())
        .ttl(SESSION)
        .start();
    publisher
        .publish(Instance::new(INVENTORY_SERVICE, c_addr.to_string()))
        .unwrap();
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let session_before = publisher.leases()[0].expect("a session");
    let first = consumer(&url, "zookeeper-test").await;
    until_count(&first, 3, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(first.client()));

    // Down for well over 1.4 session timeouts: every client gives its session up.
    ensemble.nodes[0].kill();
    keeps_count(&first, 3, SESSION * 2 + Duration::from_secs(1)).await;
    ensemble.nodes[0].start();
    ensemble.wait_serving(Duration::from_secs(20));

    // The providers open new sessions and register again; the old sessions' nodes
    // (which the restarted server holds until it expires them) are replaced.
    let second = consumer(&url, "zookeeper-test").await;
    until_count(&second, 3, Duration::from_secs(10)).await;
    publisher
        .wait_registered(Duration::from_secs(10))
        .await
        .unwrap();
    let session_after = publisher.leases()[0].expect("a session");
    assert_ne!(
        session_before, session_after,
        "registered under a new session"
    );
    // Past the old sessions' expiry on the server: the nodes are the new sessions'.
    keeps_count(&second, 3, SESSION + Duration::from_secs(1)).await;
    assert_eq!(
        first.providers().len(),
        3,
        "an expiry never empties the list"
    );
    publisher.shutdown().await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_consumer_starts_from_its_snapshot_while_zookeeper_is_down() {
    if !have_zookeeper("zookeeper_consumer_starts_from_its_snapshot_while_zookeeper_is_down") {
        return;
    }
    let dir = TempDir::new("zookeeper-snapshot");
    let snapshot = dir.0.join("inventory.json");
    let snapshot = snapshot.to_str().unwrap().to_owned();
    let mut ensemble = ZkEnsemble::start(1);
    let url = ensemble.url();
    let _providers: Vec<Reaper> = (0..3).map(|_| provider(&url)).collect();
    let watcher = consumer(&url, "zookeeper-test").await;
    until_count(&watcher, 3, Duration::from_secs(5)).await;
    watcher.shutdown().await;
    let (u, s) = (url.clone(), snapshot.clone());
    let out = tokio::task::spawn_blocking(move || run_consumer_process(&u, &["--snapshot", &s]))
        .await
        .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");

    ensemble.nodes[0].kill();
    let out =
        tokio::task::spawn_blocking(move || run_consumer_process(&url, &["--snapshot", &snapshot]))
            .await
            .unwrap();
    assert!(out.contains("discovered 3 provider(s)"), "{out}");
    assert!(out.contains("53 ok, 0 failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_three_node_ensemble_leader_killed() {
    if !have_zookeeper("zookeeper_three_node_ensemble_leader_killed") {
        return;
    }
    let mut ensemble = ZkEnsemble::start(3);
    let url = ensemble.url();
    // Sessions long enough to ride out a leader election on a loaded machine.
    let session = Duration::from_secs(4);
    let _providers: Vec<Reaper> = (0..2).map(|_| provider_with(&url, session)).collect();
    let first = consumer(&url, "zookeeper-test").await;
    until_count(&first, 2, Duration::from_secs(5)).await;
    let load = Load::start(&InventoryClient::new(first.client()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let leader = ensemble
        .nodes
        .iter()
        .position(ZkNode::is_leader)
        .expect("a leader");
    println!("killing ZooKeeper server {}", ensemble.nodes[leader].id);
    ensemble.nodes[leader].kill();
    // Past a session timeout with the leader gone: nothing may expire, vanish or fail.
    keeps_count(&first, 2, session + Duration::from_secs(1)).await;
    let _third = provider_with(&url, session);
    let second = consumer(&url, "zookeeper-test").await;
    until_count(&second, 3, Duration::from_secs(10)).await;
    until_count(&first, 3, Duration::from_secs(5)).await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    first.shutdown().await;
    second.shutdown().await;
}

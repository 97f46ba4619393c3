//! Registration, lookup and long-poll watches over real TCP.

mod support;

use std::time::{Duration, Instant};

use rpc_core::Client;
use rpc_registry::{
    Consumer, ConsumerInfo, Instance, LeaseRequest, RegistryApiClient, RegistryConfig, Revision,
};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_lookup_and_watch_latency() {
    let registry = registry(RegistryConfig::default()).await;
    let api = RegistryApiClient::new(Client::connect(registry.local_addr()).await.unwrap());
    let lease = api.grant(LeaseRequest::new("t", 0)).await.unwrap();
    assert_eq!(lease.ttl_ms, 6000, "default TTL");
    assert_eq!(lease.heartbeat_ms, 2000, "default heartbeat");

    let view = api.lookup(SERVICE.into()).await.unwrap();
    assert!(view.instances.is_empty());

    // A watch from the current revision waits; a registration wakes it at once.
    let mut latencies = Vec::new();
    let mut since = view.revision;
    for n in 0..20u16 {
        let watcher = api.clone();
        let watch = tokio::spawn(async move {
            let view = watcher
                .watch(SERVICE.into(), since, 10_000)
                .timeout(Duration::from_secs(15))
                .await
                .unwrap();
            (view, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let changed_at = Instant::now();
        let revision = api
            .register(
                lease.id,
                Instance::new(SERVICE, format!("127.0.0.1:{}", 2000 + n)),
            )
            .await
            .unwrap();
        let (view, seen_at) = watch.await.unwrap();
        assert_eq!(view.revision, revision);
        assert_eq!(view.instances.len(), usize::from(n) + 1);
        latencies.push(seen_at - changed_at);
        since = revision;
    }
    latencies.sort();
    let worst = *latencies.last().unwrap();
    println!(
        "change-to-watcher latency: median {:?}, max {worst:?}",
        latencies[10]
    );
    assert!(
        worst < Duration::from_millis(100),
        "a change took {worst:?} to reach a watcher"
    );

    // With nothing changing, a watch answers after its wait with the same revision.
    let started = Instant::now();
    let view = api.watch(SERVICE.into(), since, 200).await.unwrap();
    assert_eq!(view.revision, since);
    assert!(started.elapsed() >= Duration::from_millis(190));

    // A revision from another epoch (a restarted registry) is answered at once.
    let started = Instant::now();
    let view = api
        .watch(
            SERVICE.into(),
            Revision::new(since.epoch ^ 1, since.index),
            5_000,
        )
        .await
        .unwrap();
    assert_eq!(view.instances.len(), 20);
    assert!(started.elapsed() < Duration::from_secs(1));

    let services = api.services().await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].instances, 20);
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_discovers_calls_and_follows_changes() {
    let registry = registry(fast_config()).await;
    let url = url(registry.local_addr());
    let a = provider().await;
    let b = provider().await;
    let publisher_a = publisher(&url);
    let publisher_b = publisher(&url);
    publish(&publisher_a, &a, 100);
    publisher_a
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();

    let consumer = Consumer::builder(rpc_registry::connect(&url).unwrap())
        .client_name("discovery-test")
        .connect(SERVICE)
        .await
        .unwrap();
    let whoami = WhoamiClient::new(consumer.client());
    assert_eq!(whoami.whoami().await.unwrap(), a.local_addr().to_string());

    // A provider joins: the consumer calls it without being rebuilt.
    let mut changes = consumer.changes();
    assert_eq!(changes.borrow_and_update().len(), 1);
    let joined = Instant::now();
    publish(&publisher_b, &b, 100);
    assert!(
        consumer
            .wait_for(Duration::from_secs(2), |list| list.len() == 2)
            .await
    );
    println!("join reached the consumer in {:?}", joined.elapsed());
    assert!(changes.has_changed().unwrap(), "the change was announced");
    assert_eq!(changes.borrow_and_update().len(), 2);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(whoami.whoami().await.unwrap());
    }
    assert_eq!(seen.len(), 2, "calls reach both providers: {seen:?}");

    // The consumer announced itself.
    let api = RegistryApiClient::new(Client::connect(registry.local_addr()).await.unwrap());
    let mut consumers = Vec::new();
    for _ in 0..100 {
        consumers = api.consumers(SERVICE.into()).await.unwrap();
        if !consumers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(consumers.len(), 1);
    let expected = ConsumerInfo::new(SERVICE, "discovery-test");
    assert_eq!(consumers[0].client_name, expected.client_name);
    assert_eq!(
        consumers[0].addr, "127.0.0.1",
        "the registry records the caller's ip"
    );

    // Graceful departure of one: it leaves the list, no call fails meanwhile.
    publisher_b.shutdown().await;
    assert!(
        consumer
            .wait_for(Duration::from_secs(2), |list| list.len() == 1)
            .await
    );
    b.shutdown().await.unwrap();
    for _ in 0..10 {
        assert_eq!(whoami.whoami().await.unwrap(), a.local_addr().to_string());
    }

    // The last one leaves gracefully too: the list may empty.
    publisher_a.shutdown().await;
    assert!(
        consumer
            .wait_for(Duration::from_secs(2), |list| list.is_empty())
            .await,
        "a graceful departure empties the list"
    );
    consumer.shutdown().await;
    a.shutdown().await.unwrap();
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_version_select_providers() {
    let registry = registry(fast_config()).await;
    let url = url(registry.local_addr());
    let stable = provider().await;
    let canary = provider().await;
    let publisher = publisher(&url);
    publisher
        .publish(Instance::new(SERVICE, stable.local_addr().to_string()).version("1"))
        .unwrap();
    publisher
        .publish(
            Instance::new(SERVICE, canary.local_addr().to_string())
                .version("1")
                .group("canary"),
        )
        .unwrap();
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = Consumer::builder(rpc_registry::connect(&url).unwrap())
        .group("canary")
        .version("1")
        .connect(SERVICE)
        .await
        .unwrap();
    let whoami = WhoamiClient::new(consumer.client());
    for _ in 0..5 {
        assert_eq!(
            whoami.whoami().await.unwrap(),
            canary.local_addr().to_string()
        );
    }
    publisher.shutdown().await;
    registry.shutdown().await.unwrap();
}

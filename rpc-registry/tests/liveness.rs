//! Leases over real TCP: eviction at the TTL and its guards, re-registration after a
//! lost lease or a registry restart.

mod support;

use std::time::{Duration, Instant};

use rpc_core::Client;
use rpc_registry::{
    Instance, LeaseRequest, RegistryApiClient, RegistryConfig, RegistryError, RegistryServer,
};
use support::*;

async fn api(registry: &RegistryServer) -> RegistryApiClient {
    RegistryApiClient::new(Client::connect(registry.local_addr()).await.unwrap())
}

/// Polls `check` every 10 ms until it holds, failing after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_lease_is_evicted_after_its_ttl_and_watchers_are_told() {
    let registry = registry(fast_config()).await;
    // Past the grace period (one TTL after start), so the TTL alone decides.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let api = api(&registry).await;
    let lease = api.grant(LeaseRequest::new("silent", 300)).await.unwrap();
    let revision = api
        .register(lease.id, Instance::new(SERVICE, "127.0.0.1:4000"))
        .await
        .unwrap();
    let registered = Instant::now();
    // No heartbeat from here on. A watch sees the eviction.
    let view = api
        .watch(SERVICE.into(), revision, 5_000)
        .timeout(Duration::from_secs(6))
        .await
        .unwrap();
    let evicted_after = registered.elapsed();
    assert!(view.instances.is_empty());
    assert!(
        view.departed.is_empty(),
        "an eviction is not a graceful departure"
    );
    assert!(
        evicted_after >= Duration::from_millis(290),
        "evicted before its TTL: {evicted_after:?}"
    );
    assert!(
        evicted_after < Duration::from_millis(300 + 700),
        "evicted {evicted_after:?} after the last sign of life (TTL 300 ms, sweep 50 ms)"
    );
    assert!(matches!(
        api.heartbeat(lease.id).await,
        Err(rpc_core::RpcError::Application(RegistryError::UnknownLease(id))) if id == lease.id
    ));
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_instances_past_many_ttls() {
    let registry = registry(fast_config()).await;
    let url = url(registry.local_addr());
    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // ~4 TTLs
    assert_eq!(registry.instance_count(), 1);
    publisher.shutdown().await;
    assert_eq!(registry.instance_count(), 0, "shutdown deregisters");
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_registry_waits_one_ttl_and_evicts_a_share_per_sweep() {
    let config = RegistryConfig::default()
        .heartbeat_interval(Duration::from_millis(100))
        .ttl(Duration::from_millis(1000))
        .min_ttl(Duration::from_millis(100))
        .sweep_interval(Duration::from_millis(200))
        .max_evict_share(0.25);
    let registry = registry(config).await;
    let started = Instant::now();
    let api = api(&registry).await;
    for n in 0..8u16 {
        let lease = api.grant(LeaseRequest::new("silent", 100)).await.unwrap();
        api.register(
            lease.id,
            Instance::new(SERVICE, format!("127.0.0.1:{}", 5000 + n)),
        )
        .await
        .unwrap();
    }
    // Every lease expires after 100 ms, but a fresh registry evicts nothing during
    // its first TTL (1 s).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        registry.instance_count(),
        8,
        "evicted during the grace period"
    );
    // Then at most a quarter per sweep (200 ms apart): 8 -> 6 -> 4 -> 3 -> 2 -> 1 -> 0,
    // never all at once.
    let mut counts = vec![8];
    while registry.instance_count() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "eviction stalled: {counts:?}"
        );
        let count = registry.instance_count();
        if *counts.last().unwrap() != count {
            counts.push(count);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    counts.push(0);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "first eviction before one TTL"
    );
    for pair in counts.windows(2) {
        let evicted = pair[0] - pair[1];
        let budget = (pair[0] as f64 * 0.25).ceil() as usize;
        assert!(
            evicted <= budget.max(1),
            "one sweep evicted {evicted} of {}: {counts:?}",
            pair[0]
        );
    }
    assert!(
        counts.len() >= 5,
        "eviction was not spread over sweeps: {counts:?}"
    );
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_lease_makes_the_provider_register_again() {
    let registry = registry(fast_config()).await;
    let url = url(registry.local_addr());
    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();

    // Take the lease away behind the provider's back (as an eviction would).
    let api = api(&registry).await;
    assert_eq!(registry.lease_count(), 1);
    let [Some(lease)] = publisher.leases()[..] else {
        panic!("one lease with the one registry")
    };
    api.revoke(lease).await.unwrap();
    assert_eq!(registry.instance_count(), 0);

    // The next heartbeat hears "unknown lease" and the provider registers again.
    let took = eventually(Duration::from_secs(2), "re-registration", || {
        registry.instance_count() == 1
    })
    .await;
    println!("re-registered {took:?} after losing the lease");
    assert_eq!(registry.lease_count(), 1);
    let [Some(again)] = publisher.leases()[..] else {
        panic!("a new lease")
    };
    assert_ne!(again, lease, "registered under a new lease");
    publisher.shutdown().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_register_again_when_the_registry_restarts() {
    let registry = registry(fast_config()).await;
    let addr = registry.local_addr();
    let url = url(addr);
    let servers = [provider().await, provider().await];
    let publishers: Vec<_> = servers
        .iter()
        .map(|server| {
            let p = publisher(&url);
            publish(&p, server, 100);
            p
        })
        .collect();
    for p in &publishers {
        p.wait_registered(Duration::from_secs(5)).await.unwrap();
    }
    registry.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Same address, new process state: empty, new epoch.
    let registry = RegistryServer::bind(addr, fast_config()).await.unwrap();
    let took = eventually(Duration::from_secs(3), "providers back", || {
        registry.instance_count() == 2
    })
    .await;
    println!("providers back {took:?} after the registry restarted");
    for p in &publishers {
        p.wait_registered(Duration::from_secs(2)).await.unwrap();
        p.shutdown().await;
    }
    registry.shutdown().await.unwrap();
}

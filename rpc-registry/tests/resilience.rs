//! The consumer keeps calling through registry failures: its last list survives an
//! outage and a restart, its snapshot lets it start with every registry down, and two
//! registries are merged.

mod support;

use std::time::Duration;

use rpc_registry::{Consumer, RegistryServer};
use support::*;

fn consumer_for(url: &str) -> rpc_registry::ConsumerBuilder {
    Consumer::builder(rpc_registry::connect(url).unwrap())
        .retry_interval(Duration::from_millis(50))
        .lookup_timeout(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_never_empties_the_list() {
    let registry = registry(fast_config()).await;
    let addr = registry.local_addr();
    let url = url(addr);
    let server = provider().await;
    // A provider whose publisher is gone without deregistering: after a restart the
    // registry will not know it, as if its heartbeats were lost.
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = consumer_for(&url).connect(SERVICE).await.unwrap();
    let whoami = WhoamiClient::new(consumer.client());
    assert_eq!(consumer.providers().len(), 1);

    registry.shutdown().await.unwrap();
    for _ in 0..20 {
        whoami
            .whoami()
            .await
            .expect("calls go on while the registry is down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The provider stops heartbeating (its publisher is dropped without revoking, as
    // the registry is down), and the registry comes back empty.
    drop(publisher);
    let registry = RegistryServer::bind(addr, fast_config()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(registry.instance_count(), 0);
    assert_eq!(
        consumer.providers().len(),
        1,
        "an empty list without a graceful departure is refused"
    );
    for _ in 0..10 {
        whoami
            .whoami()
            .await
            .expect("calls go on to the last known provider");
    }
    consumer.shutdown().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_lets_a_consumer_start_while_the_registry_is_down() {
    let dir = std::env::temp_dir().join(format!("rpc-registry-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("whoami.json");
    let _ = std::fs::remove_file(&snapshot);

    let registry = registry(fast_config()).await;
    let url = url(registry.local_addr());
    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let first = consumer_for(&url)
        .snapshot_file(&snapshot)
        .connect(SERVICE)
        .await
        .unwrap();
    assert_eq!(first.providers().len(), 1);
    first.shutdown().await;
    assert!(snapshot.exists(), "the consumer saved its list");

    // Every registry down.
    publisher.shutdown().await;
    registry.shutdown().await.unwrap();

    let second = consumer_for(&url)
        .snapshot_file(&snapshot)
        .connect(SERVICE)
        .await
        .unwrap();
    assert_eq!(second.providers().len(), 1);
    let whoami = WhoamiClient::new(second.client());
    assert_eq!(
        whoami.whoami().await.unwrap(),
        server.local_addr().to_string()
    );

    // Without a snapshot it starts empty, and calls say so.
    let third = consumer_for(&url).connect(SERVICE).await.unwrap();
    let e = WhoamiClient::new(third.client())
        .whoami()
        .await
        .unwrap_err();
    assert!(matches!(e, rpc_core::RpcError::NoProvider { .. }), "{e}");

    // A registry that answers with nothing (one that just restarted, say) does not
    // wipe the snapshot out: nobody left gracefully.
    let empty = support::registry(fast_config()).await;
    let fifth = consumer_for(&format!("rpc://{}", empty.local_addr()))
        .snapshot_file(&snapshot)
        .connect(SERVICE)
        .await
        .unwrap();
    assert_eq!(fifth.providers().len(), 1);
    let whoami = WhoamiClient::new(fifth.client());
    assert_eq!(
        whoami.whoami().await.unwrap(),
        server.local_addr().to_string()
    );
    fifth.shutdown().await;
    empty.shutdown().await.unwrap();

    // A corrupt snapshot is not trusted (and nothing is allocated on its say-so).
    std::fs::write(&snapshot, b"{\"format\": 1, \"service\": ").unwrap();
    let fourth = consumer_for(&url)
        .snapshot_file(&snapshot)
        .connect(SERVICE)
        .await
        .unwrap();
    assert!(fourth.providers().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_are_merged_and_one_can_be_lost() {
    let a = registry(fast_config()).await;
    let b = registry(fast_config()).await;
    let both = format!("rpc://{},{}", a.local_addr(), b.local_addr());
    let servers = [provider().await, provider().await];
    let publishers: Vec<_> = servers
        .iter()
        .map(|server| {
            let p = publisher(&both);
            publish(&p, server, 100);
            p
        })
        .collect();
    for p in &publishers {
        p.wait_registered(Duration::from_secs(5)).await.unwrap();
    }
    assert_eq!(a.instance_count(), 2);
    assert_eq!(b.instance_count(), 2);
    let consumer = consumer_for(&both).connect(SERVICE).await.unwrap();
    assert_eq!(consumer.providers().len(), 2, "merged without duplicates");
    let whoami = WhoamiClient::new(consumer.client());

    a.shutdown().await.unwrap();
    for _ in 0..20 {
        whoami
            .whoami()
            .await
            .expect("one registry lost: nothing fails");
    }
    // A new consumer still finds every provider through the other registry.
    let late = consumer_for(&both).connect(SERVICE).await.unwrap();
    assert_eq!(late.providers().len(), 2);
    // A provider leaving gracefully is seen through the live registry.
    publishers[0].shutdown().await;
    assert!(
        late.wait_for(Duration::from_secs(2), |list| list.len() == 1)
            .await
    );
    publishers[1].shutdown().await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_registry_does_not_cut_the_list_while_providers_return() {
    let registry = registry(fast_config()).await;
    let addr = registry.local_addr();
    let url = url(addr);
    let (one, two) = (provider().await, provider().await);
    let (p1, p2) = (publisher(&url), publisher(&url));
    publish(&p1, &one, 100);
    publish(&p2, &two, 100);
    p1.wait_registered(Duration::from_secs(5)).await.unwrap();
    p2.wait_registered(Duration::from_secs(5)).await.unwrap();
    let consumer = consumer_for(&url)
        .restart_settle(Duration::from_millis(1500))
        .connect(SERVICE)
        .await
        .unwrap();
    assert_eq!(consumer.providers().len(), 2);

    registry.shutdown().await.unwrap();
    // The second provider's process dies while the registry is down: it never
    // registers again.
    drop(p2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let registry = RegistryServer::bind(addr, fast_config()).await.unwrap();
    p1.wait_registered(Duration::from_secs(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registry.instance_count(), 1);
    assert_eq!(
        consumer.providers().len(),
        2,
        "right after a restart the earlier list still counts"
    );
    // Once the settling time is over, the list follows the registry.
    assert!(
        consumer
            .wait_for(Duration::from_secs(3), |list| list.len() == 1)
            .await,
        "after settling, the provider that never came back is dropped"
    );
    assert_eq!(consumer.providers()[0].addr, one.local_addr().to_string());
    p1.shutdown().await;
    registry.shutdown().await.unwrap();
}

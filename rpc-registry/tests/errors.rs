//! Bad input gets a clear, typed error over the wire, and caps keep the registry
//! bounded.

mod support;

use std::time::Duration;

use rpc_core::{Client, RpcError};
use rpc_registry::{
    Instance, LeaseId, LeaseRequest, RegistryApiClient, RegistryConfig, RegistryError,
};
use support::*;

fn refusal<T: std::fmt::Debug>(result: Result<T, RpcError<RegistryError>>) -> RegistryError {
    match result {
        Err(RpcError::Application(e)) => e,
        other => panic!("expected a registry refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_with_a_clear_error() {
    let registry = registry(
        RegistryConfig::default()
            .max_metadata_entries(4)
            .max_metadata_bytes(64),
    )
    .await;
    let api = RegistryApiClient::new(Client::connect(registry.local_addr()).await.unwrap());
    let lease = api.grant(LeaseRequest::new("t", 0)).await.unwrap();

    for (ttl_ms, what) in [(1, "tiny"), (24 * 3600 * 1000, "absurd")] {
        let e = refusal(api.grant(LeaseRequest::new("t", ttl_ms)).await);
        assert!(matches!(e, RegistryError::InvalidTtl { .. }), "{what}: {e}");
        assert!(e.to_string().contains("must be between"), "{e}");
    }
    for name in ["", "has space", &"x".repeat(300)] {
        let e = refusal(
            api.register(lease.id, Instance::new(name, "127.0.0.1:1"))
                .await,
        );
        assert!(matches!(e, RegistryError::InvalidService { .. }), "{e}");
        let e = refusal(api.lookup(name.to_owned()).await);
        assert!(matches!(e, RegistryError::InvalidService { .. }), "{e}");
    }
    for addr in ["", "nope", "127.0.0.1:0", "0.0.0.0:7001", "127.0.0.1"] {
        let e = refusal(api.register(lease.id, Instance::new(SERVICE, addr)).await);
        assert!(
            matches!(e, RegistryError::InvalidAddress { .. }),
            "{addr:?}: {e}"
        );
    }
    let mut fat = Instance::new(SERVICE, "127.0.0.1:1");
    for n in 0..5 {
        fat = fat.metadata(format!("k{n}"), "v");
    }
    let e = refusal(api.register(lease.id, fat).await);
    assert!(e.to_string().contains("5 entries, at most 4"), "{e}");
    let e = refusal(
        api.register(
            lease.id,
            Instance::new(SERVICE, "127.0.0.1:1").metadata("k", "v".repeat(100)),
        )
        .await,
    );
    assert!(e.to_string().contains("at most 64"), "{e}");

    let e = refusal(api.heartbeat(LeaseId(42)).await);
    assert_eq!(e, RegistryError::UnknownLease(LeaseId(42)));
    let e = refusal(
        api.register(LeaseId(42), Instance::new(SERVICE, "127.0.0.1:1"))
            .await,
    );
    assert_eq!(e, RegistryError::UnknownLease(LeaseId(42)));

    // Nothing was stored by any of that.
    assert_eq!(registry.instance_count(), 0);
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_hits_the_caps() {
    let registry = registry(
        RegistryConfig::default()
            .max_instances_per_lease(10)
            .max_instances(25),
    )
    .await;
    let api = RegistryApiClient::new(Client::connect(registry.local_addr()).await.unwrap());
    let mut refused = Vec::new();
    for l in 0..4u16 {
        let lease = api.grant(LeaseRequest::new("flood", 0)).await.unwrap();
        for n in 0..20u16 {
            let instance = Instance::new(SERVICE, format!("127.0.0.1:{}", 1000 + l * 100 + n));
            if let Err(e) = api.register(lease.id, instance).await {
                refused.push(refusal::<()>(Err(e)));
            }
        }
    }
    assert_eq!(registry.instance_count(), 25);
    assert!(refused.iter().any(|e| matches!(
        e,
        RegistryError::LimitReached { what, limit: 10 } if what == "instances per lease"
    )));
    assert!(refused.iter().any(|e| matches!(
        e,
        RegistryError::LimitReached { what, limit: 25 } if what == "instances"
    )));
    assert!(refused[0].to_string().contains("limit reached"));
    registry.shutdown().await.unwrap();
}

#[tokio::test]
async fn urls_are_checked() {
    let e = rpc_registry::connect("consul://c1:8500").unwrap_err();
    assert!(matches!(e, rpc_registry::Error::UnsupportedScheme { .. }));
    assert!(e.to_string().contains("rpc://host:port"), "{e}");
    // etcd and ZooKeeper are backends when their features are on, refused with
    // `FeatureOff` otherwise.
    assert_eq!(
        rpc_registry::connect("etcd://h:2379").is_ok(),
        cfg!(feature = "etcd")
    );
    assert_eq!(
        rpc_registry::connect("zookeeper://zk1:2181,zk2:2181/chroot").is_ok(),
        cfg!(feature = "zookeeper")
    );
    // A scheme of ours that this build leaves out names the features it needs.
    if !cfg!(all(feature = "zookeeper", feature = "tls")) {
        let e = rpc_registry::connect("zookeepers://zk1:2281?ca=ca.pem").unwrap_err();
        assert!(
            matches!(
                e,
                rpc_registry::Error::FeatureOff {
                    scheme: "zookeepers",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("`zookeeper` and `tls`"), "{e}");
    }
    if !cfg!(feature = "tls") {
        let e = rpc_registry::connect("rpcs://r:7000").unwrap_err();
        assert!(e.to_string().contains("`tls` feature"), "{e}");
    }
    for bad in [
        "rpc://",
        "rpc://host",
        "rpc://host:0",
        "rpc://:7000",
        "rpc://a:1,",
    ] {
        assert!(
            matches!(
                rpc_registry::connect(bad),
                Err(rpc_registry::Error::InvalidUrl { .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        rpc_registry::connect("127.0.0.1:7000")
            .unwrap()
            .members()
            .len(),
        1
    );

    // The provider side checks before sending anything.
    let publisher =
        rpc_registry::Publisher::builder(rpc_registry::connect("127.0.0.1:1").unwrap()).start();
    assert!(matches!(
        publisher.publish(Instance::new(SERVICE, "0.0.0.0:7001")),
        Err(rpc_registry::Error::Invalid(
            RegistryError::InvalidAddress { .. }
        ))
    ));
    let _ = tokio::time::timeout(Duration::from_secs(2), publisher.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_hears_about_a_refused_registration() {
    let registry = registry(RegistryConfig::default().max_metadata_entries(1)).await;
    let url = url(registry.local_addr());
    let publisher = publisher(&url);
    publisher
        .publish(
            Instance::new(SERVICE, "127.0.0.1:4100")
                .metadata("a", "1")
                .metadata("b", "2"),
        )
        .unwrap();
    let e = publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            rpc_registry::Error::Registry {
                source: RegistryError::InvalidField { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("at most 1"), "{e}");
    // Fixing the record clears the refusal.
    publisher
        .publish(Instance::new(SERVICE, "127.0.0.1:4100").metadata("a", "1"))
        .unwrap();
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(registry.instance_count(), 1);

    // A registry that never answers is named after the limit.
    let nowhere = publisher_for_nowhere();
    nowhere
        .publish(Instance::new(SERVICE, "127.0.0.1:4101"))
        .unwrap();
    let e = nowhere
        .wait_registered(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not registered within"), "{e}");
    publisher.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), nowhere.shutdown()).await;
    registry.shutdown().await.unwrap();
}

/// A publisher for a registry address where nothing listens.
fn publisher_for_nowhere() -> rpc_registry::Publisher {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    publisher(&url(addr))
}

//! Shared by the registry tests: a tiny service that says which provider answered,
//! and starting registries and providers on 127.0.0.1:0.

#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "dashboard")]
pub mod admin;
pub mod chromium;
pub mod http;
pub mod zookeeper;

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::{service, Server, ServerHandle};
use rpc_registry::{Instance, Publisher, RegistryConfig, RegistryServer};

/// Answers with the address of the provider that served the call.
#[service(name = "test.Whoami")]
pub trait Whoami {
    /// The provider's address.
    async fn whoami(&self) -> String;
}

/// Knows its own address.
pub struct Named(pub String);

impl Whoami for Named {
    async fn whoami(&self) -> String {
        self.0.clone()
    }
}

/// The service name the tests register.
pub const SERVICE: &str = "test.Whoami";

/// Registry settings for tests: short TTL and sweep so eviction shows in about a
/// second; no grace wait is skipped (the grace period is the TTL).
pub fn fast_config() -> RegistryConfig {
    RegistryConfig::default()
        .heartbeat_interval(Duration::from_millis(100))
        .ttl(Duration::from_millis(400))
        .sweep_interval(Duration::from_millis(50))
        .max_evict_share(1.0)
}

/// A registry on 127.0.0.1:0.
pub async fn registry(config: RegistryConfig) -> RegistryServer {
    RegistryServer::bind("127.0.0.1:0", config)
        .await
        .expect("registry binds")
}

/// A provider server on 127.0.0.1:0 answering with its address.
pub async fn provider() -> ServerHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    provider_at(addr, None).await
}

/// A provider server at `addr` (a restart binds the address again), counting its
/// calls into `metrics` when given.
pub async fn provider_at(
    addr: SocketAddr,
    metrics: Option<&rpc_core::filter::metrics::Metrics>,
) -> ServerHandle {
    let service = WhoamiServer::new(Named(addr.to_string()));
    match metrics {
        Some(metrics) => Server::builder()
            .workers(1)
            .layer(metrics.server_layer())
            .add_service(service)
            .bind(addr)
            .await
            .expect("provider binds")
            .spawn(),
        None => Server::builder()
            .workers(1)
            .add_service(service)
            .bind(addr)
            .await
            .expect("provider binds")
            .spawn(),
    }
}

/// A publisher for `url` with fast heartbeats and a short deregister delay.
pub fn publisher(url: &str) -> Publisher {
    Publisher::builder(rpc_registry::connect(url).unwrap())
        .owner("test-provider")
        .heartbeat_interval(Duration::from_millis(100))
        .retry_interval(Duration::from_millis(50))
        .deregister_delay(Duration::from_millis(100))
        .start()
}

/// Publishes `server` as an instance of [`SERVICE`].
pub fn publish(publisher: &Publisher, server: &ServerHandle, weight: u32) -> Instance {
    let instance = Instance::new(SERVICE, server.local_addr().to_string()).weight(weight);
    publisher.publish(instance.clone()).unwrap();
    instance
}

/// `rpc://addr`.
pub fn url(addr: SocketAddr) -> String {
    format!("rpc://{addr}")
}

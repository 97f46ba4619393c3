//! One process, the main job on the embedded registry: a registry, three providers
//! with weights 100, 200 and 300, and a consumer that discovers them and calls in all
//! four call modes, printing how the calls spread; then one provider leaves gracefully
//! and another joins, and the consumer follows without a restart.
//!
//! ```text
//! cargo run -p rpc-examples --bin quickstart
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc_core::lb::{Config as BalancerConfig, Strategy};
use rpc_core::{Client, RpcError, Server, ServerHandle};
use rpc_examples::{
    InMemoryInventory, Inventory, InventoryClient, InventoryError, InventoryServer, Item, NewItem,
    INVENTORY_SERVICE,
};
use rpc_registry::{Consumer, Instance, Publisher, RegistryConfig, RegistryServer};

/// The example inventory, counting the calls it serves so the spread can be shown.
struct Counted {
    inner: InMemoryInventory,
    calls: Arc<AtomicU64>,
}

impl Counted {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Inventory for Counted {
    async fn add_item(&self, item: NewItem) -> Result<u64, InventoryError> {
        self.count();
        self.inner.add_item(item).await
    }
    async fn get(&self, sku: String) -> Result<Item, InventoryError> {
        self.count();
        self.inner.get(sku).await
    }
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError> {
        self.count();
        self.inner.reserve(sku, quantity).await
    }
    async fn list(&self) -> Vec<Item> {
        self.count();
        self.inner.list().await
    }
    async fn audit(&self, event: String) {
        self.count();
        self.inner.audit(event).await
    }
    async fn audit_count(&self) -> u64 {
        self.count();
        self.inner.audit_count().await
    }
}

/// One provider "process": its server, its registration, its call counter.
struct ProviderProcess {
    name: &'static str,
    server: ServerHandle,
    publisher: Publisher,
    calls: Arc<AtomicU64>,
}

impl ProviderProcess {
    /// Serves on a free port and registers with `weight`.
    async fn start(
        name: &'static str,
        weight: u32,
        url: &str,
    ) -> Result<ProviderProcess, Box<dyn std::error::Error>> {
        let calls = Arc::new(AtomicU64::new(0));
        let server = Server::builder()
            .workers(1)
            .add_service(InventoryServer::new(Counted {
                inner: InMemoryInventory::default(),
                calls: Arc::clone(&calls),
            }))
            .bind("127.0.0.1:0")
            .await?
            .spawn();
        let publisher = Publisher::builder(rpc_registry::connect(url)?)
            .owner(name)
            .deregister_delay(Duration::from_millis(200))
            .start();
        publisher.publish(
            Instance::new(INVENTORY_SERVICE, server.local_addr().to_string()).weight(weight),
        )?;
        publisher.wait_registered(Duration::from_secs(5)).await?;
        println!(
            "provider {name} on {} registered with weight {weight}",
            server.local_addr()
        );
        Ok(ProviderProcess {
            name,
            server,
            publisher,
            calls,
        })
    }

    /// Graceful: deregister, let the consumer see it, then drain.
    async fn stop(self) -> Result<(), rpc_core::RpcError> {
        self.publisher.shutdown().await;
        self.server.shutdown().await
    }
}

/// Prints the calls each provider served since the last report, and resets them.
fn report_spread(what: &str, providers: &[&ProviderProcess]) {
    let spread: BTreeMap<&str, u64> = providers
        .iter()
        .map(|p| (p.name, p.calls.swap(0, Ordering::Relaxed)))
        .collect();
    println!("spread:   {what}: {spread:?}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rpc_examples::init_logging();

    // The registry: embedded, soft state, on a free port.
    let registry = RegistryServer::bind("127.0.0.1:0", RegistryConfig::default()).await?;
    let url = format!("rpc://{}", registry.local_addr());
    println!("registry listening on {url}");

    // Three providers with different weights.
    let a = ProviderProcess::start("a", 100, &url).await?;
    let b = ProviderProcess::start("b", 200, &url).await?;
    let c = ProviderProcess::start("c", 300, &url).await?;

    // The consumer: looks the service up, subscribes, and spreads calls by weight
    // (warm-up off, so new providers get their full weight at once in this demo).
    let consumer = Consumer::builder(rpc_registry::connect(&url)?)
        .client(
            Client::builder()
                .balancer(Strategy::WeightedRoundRobin)
                .balancer_config(BalancerConfig::default().warm_up(Duration::ZERO)),
        )
        .client_name("quickstart")
        .connect(INVENTORY_SERVICE)
        .await?;
    println!(
        "consumer discovered {} providers",
        consumer.providers().len()
    );
    let inventory = InventoryClient::new(consumer.client());

    // 1. Future mode (the default): `.await` the call.
    for _ in 0..54 {
        inventory.list().await?;
    }
    match inventory.get("espresso".into()).await {
        Err(RpcError::Application(InventoryError::NotFound { sku })) => {
            println!("future:   55 calls; {sku} not found (a typed application error)")
        }
        other => println!("future:   unexpected {other:?}"),
    }
    report_spread("future, weights 100/200/300", &[&a, &b, &c]);

    // 2. Sync mode: `.blocking()` from a plain thread, outside any async runtime.
    let sync_inventory = inventory.clone();
    let listed = std::thread::spawn(move || -> Result<usize, RpcError> {
        let mut items = 0;
        for _ in 0..12 {
            items += sync_inventory.list().blocking()?.len();
        }
        Ok(items)
    })
    .join()
    .expect("sync thread")?;
    println!("sync:     12 calls from a plain thread ({listed} items)");
    report_spread("sync", &[&a, &b, &c]);

    // 3. Callback mode: returns at once; each closure gets its result later.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..12 {
        let tx = tx.clone();
        inventory.list().callback(move |result| {
            let _ = tx.send(result.is_ok());
        });
    }
    drop(tx);
    let mut answered = 0;
    while let Some(ok) = rx.recv().await {
        answered += usize::from(ok);
    }
    println!("callback: {answered} of 12 callbacks got their answer");
    report_spread("callback", &[&a, &b, &c]);

    // 4. Oneway mode: returns once the request is written; no reply.
    for n in 0..12 {
        inventory.audit(format!("quickstart event {n}")).await?;
    }
    // Oneway requests are not acknowledged; give them a moment to be served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("oneway:   12 audit events sent");
    report_spread("oneway", &[&a, &b, &c]);

    // A provider leaves gracefully: deregistered first, so no call fails.
    a.stop().await?;
    consumer
        .wait_for(Duration::from_secs(2), |list| list.len() == 2)
        .await;
    println!(
        "provider a left; the consumer now knows {} providers",
        consumer.providers().len()
    );
    for _ in 0..50 {
        inventory.list().await?;
    }
    report_spread("after a left", &[&b, &c]);

    // A provider joins: the consumer finds it without a restart.
    let d = ProviderProcess::start("d", 500, &url).await?;
    consumer
        .wait_for(Duration::from_secs(2), |list| list.len() == 3)
        .await;
    println!(
        "provider d joined; the consumer now knows {} providers",
        consumer.providers().len()
    );
    for _ in 0..50 {
        inventory.list().await?;
    }
    report_spread("after d joined, weights 200/300/500", &[&b, &c, &d]);

    consumer.shutdown().await;
    for provider in [b, c, d] {
        provider.stop().await?;
    }
    registry.shutdown().await?;
    println!("all shut down gracefully");
    Ok(())
}

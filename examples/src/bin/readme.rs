//! The README's snippets as one program, so they compile as written (the test
//! `readme_snippets_are_in_the_readme_example` checks that every Rust block of the
//! README appears here, line for line).
//!
//! ```text
//! cargo run -p rpc-examples --bin readme
//! ```
//!
//! Serves the inventory on 127.0.0.1:7001, then calls it in every mode; then runs a
//! registry on 127.0.0.1:7000 and discovers a provider through it.

#![allow(missing_docs)]

use std::error::Error;
use std::time::Duration;

// ---- 1. Define it
use rpc_core::service;
use serde::{Deserialize, Serialize};

#[rustfmt::skip]
#[derive(Debug, Serialize, Deserialize)]
pub enum InventoryError {
    NotFound { sku: String },
    InsufficientStock { sku: String, available: u32 },
}

#[rustfmt::skip]
#[service(name = "example.Inventory")] // wire name; defaults to the trait name
pub trait Inventory {
    /// Takes units out of stock and returns how many are left.
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError>;
    /// Every SKU. Safe to run twice: a cluster may retry it on another provider.
    #[idempotent]
    async fn list(&self) -> Vec<String>;
    /// Fire-and-forget: the server sends no response.
    #[oneway]
    async fn audit(&self, event: String);
}

// ---- 2. Implement and serve it
use std::collections::BTreeMap;
use std::sync::Mutex;

#[rustfmt::skip]
struct MyInventory {
    stock: Mutex<BTreeMap<String, u32>>,
}

#[rustfmt::skip]
impl MyInventory {
    fn new() -> Self {
        let stock = BTreeMap::from([("espresso".to_owned(), 10)]);
        MyInventory { stock: Mutex::new(stock) }
    }
}

#[rustfmt::skip]
impl Inventory for MyInventory {
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError> {
        let mut stock = self.stock.lock().unwrap();
        let Some(available) = stock.get_mut(&sku) else {
            return Err(InventoryError::NotFound { sku });
        };
        if *available < quantity {
            return Err(InventoryError::InsufficientStock { sku, available: *available });
        }
        *available -= quantity;
        Ok(*available)
    }
    async fn list(&self) -> Vec<String> {
        self.stock.lock().unwrap().keys().cloned().collect()
    }
    async fn audit(&self, event: String) {
        println!("audit: {event}");
    }
}

#[rustfmt::skip]
/// The provider, until Ctrl-C.
async fn provider() -> Result<(), Box<dyn Error>> {
    let server = rpc_core::Server::builder()
        .workers(4)               // worker reactors (default: CPU count)
        .business_pool(16)        // optional: run handlers off the I/O threads
        .add_service(InventoryServer::new(MyInventory::new()))
        .bind("127.0.0.1:7001")
        .await?;
    server.serve_with_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await?;
    Ok(())
}

// ---- 3. Call it, in each mode
#[rustfmt::skip]
async fn consumer() -> Result<(), Box<dyn Error>> {
    use rpc_core::{Client, RpcError};

    let client = Client::connect("127.0.0.1:7001").await?;   // from async code
    let inventory = InventoryClient::new(client);

    // future: await the call
    let left = inventory.reserve("espresso".into(), 2).await?;

    // with a per-call timeout (also sent to the server as the call's deadline)
    let all = inventory.list().timeout(std::time::Duration::from_millis(200)).await?;

    // typed application errors
    match inventory.reserve("espresso".into(), 99).await {
        Err(RpcError::Application(InventoryError::InsufficientStock { available, .. })) => {
            println!("only {available} left");
        }
        Err(other) => return Err(other.into()), // timeout, connection lost, ...
        Ok(left) => println!("{left} left"),
    }

    // callback: returns at once; the closure runs exactly once with the result
    inventory.list().callback(|result| println!("{result:?}"));

    // oneway: returns once the request is written; no reply (any method can be sent oneway)
    inventory.audit("checked stock".into()).await?;

    println!("{left} left after the first reservation; skus: {all:?}");
    Ok(())
}

#[rustfmt::skip]
/// Sync mode, from a plain thread.
fn sync_consumer() -> Result<(), Box<dyn Error + Send + Sync>> {
    use rpc_core::Client;

    // sync: from plain, non-async code. A client built there owns its own small runtime.
    let client = Client::connect_blocking("127.0.0.1:7001")?;
    let left = InventoryClient::new(client).reserve("espresso".into(), 1).blocking()?;
    println!("sync: {left} left");
    Ok(())
}

// ---- Load balancing over several providers (built, never called: the other two
// addresses serve nothing here)
#[rustfmt::skip]
async fn balanced() -> Result<(), Box<dyn Error>> {
    use rpc_core::lb::{Provider, Strategy};

    let client = rpc_core::Client::builder()
        .balancer(Strategy::LeastConnection)           // or "least-connection".parse()?
        .connect_providers("example.Inventory", [
            Provider::new("127.0.0.1:7001".parse()?).weight(200),
            Provider::new("127.0.0.1:7002".parse()?),  // default weight 100
        ])
        .await?;
    let inventory = InventoryClient::new(client.clone());
    // Providers join, leave or change weight while calls run:
    client.update_providers([Provider::new("127.0.0.1:7003".parse()?)]);
    drop(inventory);
    Ok(())
}

// ---- Service discovery: the registry (a registry runs on 127.0.0.1:7000 meanwhile)
#[rustfmt::skip]
async fn discovery() -> Result<(), Box<dyn Error>> {
    use rpc_core::lb::Strategy;
    let server = rpc_core::Server::builder()
        .add_service(InventoryServer::new(MyInventory::new()))
        .bind("127.0.0.1:0")
        .await?
        .spawn();

    // Provider: register after binding; on shutdown deregister, wait, then drain.
    let publisher = rpc_registry::Publisher::builder(rpc_registry::connect("rpc://127.0.0.1:7000")?)
        .owner("inventory")
        .start();
    publisher.publish(rpc_registry::Instance::new("example.Inventory", server.local_addr().to_string()).weight(200))?;
    publisher.wait_registered(Duration::from_secs(5)).await?;

    // Consumer: a balanced client fed by the registry (weights, warm-up, joins, removals).
    let consumer = rpc_registry::Consumer::builder(rpc_registry::connect("rpc://127.0.0.1:7000")?)
        .client(rpc_core::Client::builder().balancer(Strategy::WeightedRoundRobin))
        .snapshot_file("inventory.providers.json")   // optional: start while the registry is down
        .connect("example.Inventory")
        .await?;
    let inventory = InventoryClient::new(consumer.client());
    println!("discovered: {:?}", inventory.list().await?);
    consumer.shutdown().await;

    publisher.shutdown().await;   // deregistered; subscribers have seen it
    server.shutdown().await?;     // drain
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let serving = tokio::spawn(async {
        if let Err(e) = provider().await {
            eprintln!("provider: {e}");
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    consumer().await?;
    tokio::task::spawn_blocking(sync_consumer)
        .await?
        .map_err(|e| e.to_string())?;
    balanced().await?;
    serving.abort();
    let registry = rpc_registry::RegistryServer::bind(
        "127.0.0.1:7000",
        rpc_registry::RegistryConfig::default(),
    )
    .await?;
    discovery().await?;
    registry.shutdown().await?;
    Ok(())
}

//! One process: starts a provider on an ephemeral port, calls it in all four call modes,
//! and shuts it down gracefully.
//!
//! ```text
//! cargo run -p rpc-examples --bin quickstart
//! ```

use std::time::Duration;

use rpc_core::{Client, RpcError, Server};
use rpc_examples::{InMemoryInventory, InventoryClient, InventoryError, InventoryServer, NewItem};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rpc_examples::init_logging();

    // Provider: host the service on a free port.
    let server = Server::builder()
        .add_service(InventoryServer::new(InMemoryInventory::default()))
        .bind("127.0.0.1:0")
        .await?
        .spawn();
    let addr = server.local_addr();
    println!("provider listening on {addr}");

    // Consumer: one multiplexed connection.
    let inventory = InventoryClient::new(Client::connect(addr).await?);

    // 1. Future mode (the default): `.await` the call.
    let id = inventory
        .add_item(NewItem {
            sku: "espresso".into(),
            name: "Espresso beans, 1 kg".into(),
            quantity: 12,
            price_cents: 2_400,
        })
        .await?;
    println!("future:   added espresso as item {id}");
    match inventory.reserve("espresso".into(), 50).await {
        Err(RpcError::Application(InventoryError::InsufficientStock { available, .. })) => {
            println!("future:   reserving 50 refused: only {available} in stock (typed error)");
        }
        other => println!("future:   unexpected {other:?}"),
    }

    // 2. Sync mode: `.blocking()` from a plain thread, outside any async runtime (from
    //    `fn main` without a runtime, build the client with `Client::connect_blocking`).
    let sync_inventory = inventory.clone();
    let left = std::thread::spawn(move || sync_inventory.reserve("espresso".into(), 2).blocking())
        .join()
        .expect("sync thread")?;
    println!("sync:     reserved 2, {left} left");

    // 3. Callback mode: returns at once, the closure gets the result later.
    let (tx, rx) = tokio::sync::oneshot::channel();
    inventory.get("espresso".into()).callback(move |result| {
        let _ = tx.send(result);
    });
    let item = rx.await??;
    println!("callback: {} x {}", item.quantity, item.name);

    // 4. Oneway mode: returns once the request is written; no reply.
    inventory
        .audit("quickstart looked at the espresso".into())
        .await?;
    println!("oneway:   audit event sent");

    // Per-call timeout, and the calls that came back.
    let items = inventory.list().timeout(Duration::from_secs(1)).await?;
    println!("items:    {items:?}");
    println!("audits:   {}", inventory.audit_count().await?);

    server.shutdown().await?;
    println!("provider shut down gracefully");
    Ok(())
}

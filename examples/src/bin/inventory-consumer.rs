//! Calls an inventory provider in all four call modes, from plain (non-async) code.
//!
//! ```text
//! cargo run -p rpc-examples --bin inventory-consumer -- --server 127.0.0.1:7001
//! ```

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use rpc_core::{Client, RpcError};
use rpc_examples::{InventoryClient, InventoryError, NewItem};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Calls the example inventory service in every call mode")]
struct Args {
    /// The provider's address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    server: String,
    /// SKU prefix, so several consumers can share one provider.
    #[arg(long, default_value = "demo")]
    prefix: String,
}

fn main() -> ExitCode {
    rpc_examples::init_logging();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // No async runtime here: the client owns one, and sync calls just block.
    let client = Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_blocking(args.server.as_str())?;
    let inventory = InventoryClient::new(client);
    let sku = format!("{}-widget", args.prefix);

    // Sync mode.
    let id = inventory
        .add_item(NewItem {
            sku: sku.clone(),
            name: "Widget".into(),
            quantity: 10,
            price_cents: 250,
        })
        .blocking()?;
    println!("sync: added {sku} as item {id}");
    let left = inventory.reserve(sku.clone(), 3).blocking()?;
    println!("sync: reserved 3, {left} left");

    // A typed application error, told apart from transport errors.
    match inventory.reserve(sku.clone(), 100).blocking() {
        Err(RpcError::Application(InventoryError::InsufficientStock { available, .. })) => {
            println!("sync: reserving 100 refused, only {available} available");
        }
        other => return Err(format!("expected InsufficientStock, got {other:?}").into()),
    }

    // Callback mode: returns at once; the closure runs when the reply arrives.
    let (tx, rx) = mpsc::channel();
    inventory.get(sku.clone()).callback(move |result| {
        let _ = tx.send(result);
    });
    let item = rx.recv_timeout(Duration::from_secs(5))??;
    println!(
        "callback: {} has {} units at {} cents",
        item.name, item.quantity, item.price_cents
    );

    // Oneway mode: returns once the request is written.
    for n in 0..3 {
        inventory
            .audit(format!("{} checked stock ({n})", args.prefix))
            .blocking()?;
    }
    println!("oneway: sent 3 audit events");

    // Future mode, from a runtime of our own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let items = runtime.block_on(async { inventory.list().await })?;
    println!("future: {} item(s) listed", items.len());
    let missing =
        runtime.block_on(async { inventory.get(format!("{}-missing", args.prefix)).await });
    match missing {
        Err(RpcError::Application(InventoryError::NotFound { sku })) => {
            println!("future: {sku} not found")
        }
        other => return Err(format!("expected NotFound, got {other:?}").into()),
    }
    // Oneway calls are not acknowledged, but a later call on the same connection is
    // processed after them by the worker, so the count is visible soon.
    let audits = inventory.audit_count().blocking()?;
    println!("audit events recorded so far: {audits}");
    println!("consumer done");
    Ok(())
}

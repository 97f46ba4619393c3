//! Calls an inventory provider in all four call modes, from plain (non-async) code.
//!
//! ```text
//! cargo run -p rpc-examples --bin inventory-consumer -- --server 127.0.0.1:7001
//! ```
//!
//! With `--registry`, it discovers the providers instead, spreads its calls over them
//! with the `--balancer` strategy, and reports how many failed:
//!
//! ```text
//! cargo run -p rpc-examples --bin inventory-consumer -- --registry rpc://127.0.0.1:7000 \
//!     --balancer weighted-round-robin --calls 1000
//! ```
//!
//! `--pace 5ms` spaces those calls out, for a consumer that keeps running while an
//! operator changes weights or disables providers on the registry's dashboard.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use rpc_core::lb::Strategy;
use rpc_core::{Client, RpcError};
use rpc_examples::{InventoryClient, InventoryError, NewItem, INVENTORY_SERVICE};
use rpc_registry::{parse_duration, Consumer};

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
    /// Discover the providers in these registries (`rpc://host:port[,host:port]`,
    /// `zookeeper://host:port[,host:port][/chroot]`,
    /// `etcd://host:port[,host:port][/root]`; with the `tls` feature `rpcs://`,
    /// `etcds://` and `zookeepers://...?ca=PATH`) instead of calling `--server`.
    #[arg(long)]
    registry: Option<String>,
    /// How calls are spread over discovered providers: round-robin,
    /// weighted-round-robin, least-connection, weighted-least-connection, ip-hash,
    /// random, weighted-random, ...
    #[arg(long, default_value = "round-robin")]
    balancer: Strategy,
    /// Keep the discovered providers in this file, and start from it when no registry
    /// answers.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Calls to make over the discovered providers.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// Wait this long between those calls (e.g. `5ms`), so a long run is a steady
    /// trickle an operator can watch on the dashboard rather than a burst.
    #[arg(long, value_parser = parse_duration)]
    pace: Option<Duration>,
}

fn main() -> ExitCode {
    rpc_examples::init_logging();
    let args = Args::parse();
    let result = match &args.registry {
        Some(url) => run_discovered(&args, url),
        None => run(&args),
    };
    match result {
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

/// Registry mode: discover the providers, call them `--calls` times (sync), once in each
/// of the other modes, and report failures.
fn run_discovered(args: &Args, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    // The subscriptions run in the background on a small runtime of our own; the calls
    // below are still plain blocking calls from `fn main`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut builder = Consumer::builder(rpc_registry::connect(url)?)
        .client(
            Client::builder()
                .timeout(Duration::from_secs(3))
                .balancer(args.balancer),
        )
        .client_name("inventory-consumer");
    if let Some(path) = &args.snapshot {
        builder = builder.snapshot_file(path);
    }
    let consumer = runtime.block_on(builder.connect(INVENTORY_SERVICE))?;
    println!("discovered {} provider(s)", consumer.providers().len());
    let inventory = InventoryClient::new(consumer.client());

    let mut failed = 0u32;
    for _ in 0..args.calls {
        if let Err(e) = inventory.list().blocking() {
            eprintln!("call failed: {e}");
            failed += 1;
        }
        if let Some(pace) = args.pace {
            std::thread::sleep(pace);
        }
    }
    let (tx, rx) = mpsc::channel();
    inventory.list().callback(move |result| {
        let _ = tx.send(result.is_ok());
    });
    if !rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false) {
        failed += 1;
    }
    if inventory
        .audit(format!("{} was here", args.prefix))
        .blocking()
        .is_err()
    {
        failed += 1;
    }
    if runtime.block_on(async { inventory.list().await }).is_err() {
        failed += 1;
    }
    let total = args.calls + 3;
    println!("calls: {} ok, {failed} failed", total - failed);
    runtime.block_on(consumer.shutdown());
    if failed > 0 {
        return Err(format!("{failed} of {total} calls failed").into());
    }
    println!("consumer done");
    Ok(())
}

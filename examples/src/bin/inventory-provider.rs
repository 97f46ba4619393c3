//! Serves the example inventory until Ctrl-C or SIGTERM, then shuts down gracefully.
//! With `--registry`, it registers with the registries and heartbeats; on shutdown it
//! deregisters first, waits for consumers to see it, and then drains.
//!
//! ```text
//! cargo run -p rpc-examples --bin inventory-provider -- --listen 127.0.0.1:7001
//! cargo run -p rpc-examples --bin inventory-provider -- --listen 127.0.0.1:7001 \
//!     --registry rpc://127.0.0.1:7000 --weight 200 --metrics-listen 127.0.0.1:9101
//! ```

use std::time::Duration;

use clap::Parser;
use rpc_core::Server;
use rpc_examples::{InMemoryInventory, InventoryServer};
use rpc_registry::{parse_duration, Instance, Publisher};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Serves the example inventory service")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
    /// Worker reactors (default: number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Run handlers on a business pool of this many threads.
    #[arg(long)]
    business_pool: Option<usize>,
    /// Register with these registries (`rpc://host:port[,host:port]`,
    /// `zookeeper://host:port[,host:port][/chroot]`,
    /// `etcd://host:port[,host:port][/root]`; with the `tls` feature `rpcs://`,
    /// `etcds://` and `zookeepers://...?ca=PATH`).
    #[arg(long)]
    registry: Option<String>,
    /// Weight to register with (relative share of calls).
    #[arg(long, default_value_t = 100)]
    weight: u32,
    /// Address to advertise (default: the listening address).
    #[arg(long)]
    advertise: Option<String>,
    /// Wait after deregistering before draining, so consumers see the departure.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    deregister_delay: Duration,
    /// Lease TTL to ask the registry for (default: the registry's); a provider killed
    /// without deregistering disappears after about this long.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Also serve the call metrics in Prometheus text format on this address (port 0
    /// picks a free port), at `/metrics`.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rpc_examples::init_logging();
    let args = Args::parse();
    let skeleton = InventoryServer::new(InMemoryInventory::default());
    // Registered with its method list, so the registry (and `rpcctl`) know them.
    let instance = |addr: String| Instance::of(&skeleton, addr).weight(args.weight);
    // Counted, so the publisher reports calls/s, errors and latency with its
    // heartbeats and the registry's dashboard shows them.
    let metrics = rpc_core::filter::metrics::Metrics::new();
    let mut builder = Server::builder()
        .layer(metrics.server_layer())
        .add_service(skeleton.clone());
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(threads) = args.business_pool {
        builder = builder.business_pool(threads);
    }
    let server = builder.bind(&args.listen).await?;
    let addr = server.local_addr();
    // The line scripts and tests read to find the port (first), and where the
    // metrics are scraped when asked for (second).
    println!("listening on {addr}");
    let _endpoint = match &args.metrics_listen {
        Some(listen) => {
            let endpoint = metrics.serve(listen.as_str()).await?;
            println!("metrics on {}", endpoint.url());
            Some(endpoint)
        }
        None => None,
    };
    let Some(url) = &args.registry else {
        server
            .serve_with_shutdown(rpc_examples::shutdown_signal())
            .await?;
        return Ok(());
    };
    let server = server.spawn();
    let mut publisher = Publisher::builder(rpc_registry::connect(url)?)
        .owner("inventory-provider")
        .metrics(metrics)
        .deregister_delay(args.deregister_delay);
    if let Some(ttl) = args.ttl {
        publisher = publisher.ttl(ttl);
    }
    let publisher = publisher.start();
    let advertised = args.advertise.unwrap_or_else(|| addr.to_string());
    publisher.publish(instance(advertised))?;
    match publisher.wait_registered(Duration::from_secs(5)).await {
        Ok(()) => tracing::info!(registry = %url, "registered"),
        // Refused for good: serving undiscoverable would hide the mistake.
        Err(e @ rpc_registry::Error::Registry { .. }) => {
            publisher.shutdown().await;
            server.shutdown().await?;
            return Err(e.into());
        }
        // Not reachable yet: registration goes on in the background.
        Err(e) => tracing::warn!(error = %e, "registry not reached yet; retrying"),
    }
    rpc_examples::shutdown_signal().await;
    // Deregister, let consumers see it, then drain: no consumer sends a call this
    // provider cannot answer.
    publisher.shutdown().await;
    server.shutdown().await?;
    Ok(())
}

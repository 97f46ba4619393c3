//! Serves the example inventory until Ctrl-C or SIGTERM, then shuts down gracefully.
//!
//! ```text
//! cargo run -p rpc-examples --bin inventory-provider -- --listen 127.0.0.1:7001
//! ```

use clap::Parser;
use rpc_core::Server;
use rpc_examples::{InMemoryInventory, InventoryServer};

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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rpc_examples::init_logging();
    let args = Args::parse();
    let mut builder =
        Server::builder().add_service(InventoryServer::new(InMemoryInventory::default()));
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(threads) = args.business_pool {
        builder = builder.business_pool(threads);
    }
    let server = builder.bind(&args.listen).await?;
    // The one line scripts and tests read to find the port.
    println!("listening on {}", server.local_addr());
    server.serve_with_shutdown(shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. Binaries install signal handlers; the library never
/// does.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

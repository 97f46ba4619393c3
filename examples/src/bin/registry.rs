//! Runs the embedded registry until Ctrl-C or SIGTERM (the same flags as the
//! `rpc-registry` binary of the `rpc-registry` crate).
//!
//! ```text
//! cargo run -p rpc-examples --bin registry -- --listen 127.0.0.1:7000 --ttl 6s
//! ```

use clap::Parser;
use rpc_registry::{RegistryArgs, RegistryServer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    rpc_examples::init_logging();
    let args = RegistryArgs::parse();
    let registry = RegistryServer::bind(&args.listen, args.config()?).await?;
    // The one line scripts and tests read to find the port.
    println!("registry listening on {}", registry.local_addr());
    rpc_examples::shutdown_signal().await;
    registry.shutdown().await
}

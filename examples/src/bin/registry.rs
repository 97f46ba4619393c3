//! Runs the embedded registry until Ctrl-C or SIGTERM (the same flags as the
//! `rpc-registry` binary of the `rpc-registry` crate).
//!
//! ```text
//! cargo run -p rpc-examples --bin registry -- --listen 127.0.0.1:7000 --ttl 6s
//! RPC_REGISTRY_ADMIN_TOKEN=s3cret cargo run -p rpc-examples --features dashboard \
//!     --bin registry -- --listen 127.0.0.1:7000 --admin-listen 127.0.0.1:7080
//! ```

use clap::Parser;
use rpc_registry::{RegistryArgs, RegistryServer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    rpc_examples::init_logging();
    let args = RegistryArgs::parse();
    let registry = RegistryServer::bind(&args.listen, args.config()?).await?;
    // The lines scripts and tests read to find the ports.
    println!("registry listening on {}", registry.local_addr());
    if let Some(admin) = registry.admin_addr() {
        println!("admin dashboard on http://{admin}/");
    }
    rpc_examples::shutdown_signal().await;
    registry.shutdown().await
}

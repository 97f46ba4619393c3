//! Runs the embedded registry until Ctrl-C or SIGTERM, or shows what a running
//! registry holds.
//!
//! ```text
//! cargo run -p rpc-registry -- --listen 127.0.0.1:7000 --ttl 6s --heartbeat-interval 2s
//! cargo run -p rpc-registry --features tls -- --listen 0.0.0.0:7000 \
//!     --tls-cert registry.pem --tls-key registry.key [--tls-client-ca clients-ca.pem]
//! RPC_REGISTRY_ADMIN_TOKEN=s3cret cargo run -p rpc-registry -- --listen 127.0.0.1:7000 \
//!     --admin-listen 127.0.0.1:7080
//! cargo run -p rpc-registry -- services --registry rpc://127.0.0.1:7000
//! cargo run -p rpc-registry -- instances --registry rpc://127.0.0.1:7000 example.Inventory
//! cargo run -p rpc-registry --features tls -- services \
//!     --registry 'rpcs://registry.internal:7000?ca=ca.pem'
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rpc_registry::{RegistryArgs, RegistryServer};

/// Serve a registry (the default), or inspect one.
#[derive(Debug, Parser)]
#[command(
    about = "The embedded heartbeat registry of the RPC framework",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Inspect a running registry instead of serving one.
    #[command(subcommand)]
    command: Option<Inspect>,
    /// Serving flags.
    #[command(flatten)]
    serve: RegistryArgs,
}

/// What to show.
#[derive(Debug, Subcommand)]
enum Inspect {
    /// Every service: instances, consumers, revision.
    Services {
        /// The registries (`rpc://host:port[,host:port]`, `rpcs://...` over TLS).
        #[arg(long, default_value = "rpc://127.0.0.1:7000")]
        registry: String,
    },
    /// The instances and consumers of one service.
    Instances {
        /// The registries (`rpc://host:port[,host:port]`, `rpcs://...` over TLS).
        #[arg(long, default_value = "rpc://127.0.0.1:7000")]
        registry: String,
        /// The service.
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    rpc_registry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(inspect) => show(inspect).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rpc-registry: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: RegistryArgs) -> Result<(), Box<dyn std::error::Error>> {
    let registry = RegistryServer::bind(&args.listen, args.config()?)
        .await
        .map_err(|e| format!("cannot start on {}: {e}", args.listen))?;
    // The lines scripts and tests read to find the ports.
    println!("registry listening on {}", registry.local_addr());
    if let Some(admin) = registry.admin_addr() {
        println!("admin dashboard on http://{admin}/");
    }
    rpc_registry::shutdown_signal().await;
    registry.shutdown().await?;
    Ok(())
}

async fn show(inspect: Inspect) -> Result<(), Box<dyn std::error::Error>> {
    let (url, service) = match &inspect {
        Inspect::Services { registry } => (registry, None),
        Inspect::Instances { registry, service } => (registry, Some(service)),
    };
    for member in rpc_registry::connect(url)?.members() {
        println!("{}", member.url());
        match service {
            None => {
                println!(
                    "  {:<40} {:>9} {:>9}  revision",
                    "service", "instances", "consumers"
                );
                for s in member.services().await? {
                    println!(
                        "  {:<40} {:>9} {:>9}  {}",
                        s.service, s.instances, s.consumers, s.revision.index
                    );
                }
            }
            Some(service) => {
                let view = member.lookup(service).await?;
                println!("  {service} at revision {}", view.revision.index);
                for i in &view.instances {
                    println!(
                        "  provider {:<22} weight {:>5}  group {:?} version {:?} metadata {:?}",
                        i.addr, i.weight, i.group, i.version, i.metadata
                    );
                }
                for c in member.consumers(service).await? {
                    println!("  consumer {:<22} {}", c.addr, c.client_name);
                }
            }
        }
    }
    Ok(())
}

//! Runs the embedded registry until Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run -p rpc-registry -- --listen 127.0.0.1:7000 --ttl 6s --heartbeat-interval 2s
//! ```

use std::process::ExitCode;

use clap::Parser;
use rpc_registry::{RegistryArgs, RegistryServer};

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let args = RegistryArgs::parse();
    let registry = match RegistryServer::bind(&args.listen, args.config()).await {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("registry failed to start on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    // The one line scripts and tests read to find the port.
    println!("registry listening on {}", registry.local_addr());
    shutdown_signal().await;
    match registry.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry shutdown: {e}");
            ExitCode::FAILURE
        }
    }
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

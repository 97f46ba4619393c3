//! Runs the embedded registry until Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run -p rpc-registry -- --listen 127.0.0.1:7000 --ttl 6s --heartbeat-interval 2s
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpc_registry::{RegistryConfig, RegistryServer};

/// Command-line options; every default is the library's.
#[derive(Debug, Parser)]
#[command(about = "The embedded heartbeat registry of the RPC framework")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Heartbeat interval suggested to providers (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Default lease TTL; also the grace period after start with no eviction.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    ttl: Duration,
    /// How often expired leases are looked for.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    sweep_interval: Duration,
    /// Largest share of all instances one sweep may evict (0 < share <= 1).
    #[arg(long, default_value_t = 0.15)]
    max_evict_share: f64,
    /// Longest a watch long poll waits.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    max_watch_wait: Duration,
    /// Most instances one lease may hold.
    #[arg(long, default_value_t = 1024)]
    max_instances_per_lease: usize,
    /// Most instances in the registry.
    #[arg(long, default_value_t = 1_000_000)]
    max_instances: usize,
    /// Worker reactors.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// Parses `250ms`, `2s`, `1m` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 2s or 1m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    let config = RegistryConfig::default()
        .heartbeat_interval(args.heartbeat_interval)
        .ttl(args.ttl)
        .min_ttl(args.ttl.min(RegistryConfig::default().min_ttl))
        .sweep_interval(args.sweep_interval)
        .max_evict_share(args.max_evict_share)
        .max_watch_wait(args.max_watch_wait)
        .max_instances_per_lease(args.max_instances_per_lease)
        .max_instances(args.max_instances)
        .workers(args.workers);
    let registry = match RegistryServer::bind(&args.listen, config).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}

//! What a registry process's `main` needs, shared by the `rpc-registry` binary and the
//! examples' binaries: [`RegistryArgs`] (so both registries take the same flags),
//! [`shutdown_signal`] and [`init_logging`]. Binaries call these; the libraries never
//! install signal handlers or loggers themselves.

use std::io;
#[cfg(feature = "tls")]
use std::path::PathBuf;
use std::time::Duration;

use crate::server::RegistryConfig;

/// Command-line options of a registry process; every default is the library's.
///
/// ```
/// use clap::Parser;
/// let args = rpc_registry::RegistryArgs::parse_from(["registry", "--ttl", "9s"]);
/// let config = args.config()?;
/// assert_eq!(config.ttl, std::time::Duration::from_secs(9));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// With the `tls` feature, `--tls-cert PATH --tls-key PATH` serve over TLS (clients
/// use `rpcs://` URLs) and `--tls-client-ca PATH` also requires client certificates
/// issued by that CA (mutual TLS). With the `dashboard` feature,
/// `--admin-listen ADDR` serves the admin dashboard and `--admin-token TOKEN` (or the
/// `RPC_REGISTRY_ADMIN_TOKEN` environment variable) allows its operator actions.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "The embedded heartbeat registry of the RPC framework",
    long_about = None
)]
#[non_exhaustive]
pub struct RegistryArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// Heartbeat interval suggested to providers (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Default lease TTL; also the grace period after start with no eviction.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// How often expired leases are looked for.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// Largest share of all instances one sweep may evict (0 < share <= 1).
    #[arg(long, default_value_t = 0.15)]
    pub max_evict_share: f64,
    /// Longest a watch long poll waits.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_watch_wait: Duration,
    /// Most instances one lease may hold.
    #[arg(long, default_value_t = 1024)]
    pub max_instances_per_lease: usize,
    /// Most instances in the registry.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_instances: usize,
    /// Worker reactors.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Serve the admin dashboard (page, JSON API, Prometheus metrics) over HTTP on
    /// this address (port 0 picks a free port); no dashboard without it.
    #[cfg(feature = "dashboard")]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Token that operator actions on the dashboard must present as
    /// `Authorization: Bearer <token>`; without one the dashboard is read-only.
    #[cfg(feature = "dashboard")]
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RPC_REGISTRY_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "admin_listen"
    )]
    pub admin_token: Option<String>,
    /// PEM certificate chain (leaf first) to serve TLS with; needs --tls-key.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate they issued (mutual
    /// TLS); needs --tls-cert.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry settings these flags describe (checked when the registry binds),
    /// with the TLS files read when TLS flags are given.
    ///
    /// # Errors
    ///
    /// A TLS file that cannot be read (`NotFound`, ...) or holds no usable
    /// certificate or key (`InvalidInput`); the message names the flag and the file.
    pub fn config(&self) -> io::Result<RegistryConfig> {
        let defaults = RegistryConfig::default();
        let config = RegistryConfig::default()
            .heartbeat_interval(self.heartbeat_interval)
            .ttl(self.ttl)
            // A TTL below the default floor given on the command line is meant.
            .min_ttl(self.ttl.min(defaults.min_ttl))
            .sweep_interval(self.sweep_interval)
            .max_evict_share(self.max_evict_share)
            .max_watch_wait(self.max_watch_wait)
            .max_instances_per_lease(self.max_instances_per_lease)
            .max_instances(self.max_instances)
            .workers(self.workers);
        #[cfg(feature = "tls")]
        let config = match self.server_tls()? {
            Some(tls) => config.tls(tls),
            None => config,
        };
        #[cfg(feature = "dashboard")]
        let config = match &self.admin_listen {
            Some(listen) => {
                let admin = crate::server::AdminConfig::new(listen.clone());
                config.admin(match &self.admin_token {
                    Some(token) => admin.token(token.clone()),
                    None => admin,
                })
            }
            None => config,
        };
        Ok(config)
    }

    /// The server's TLS settings from `--tls-cert`, `--tls-key` and
    /// `--tls-client-ca`; `None` without `--tls-cert`.
    #[cfg(feature = "tls")]
    fn server_tls(&self) -> io::Result<Option<rpc_core::ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let invalid = |e: rpc_core::RpcError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let tls =
            rpc_core::ServerTls::from_pem(&read("--tls-cert", cert)?, &read("--tls-key", key)?)
                .map_err(invalid)?;
        let tls = match &self.tls_client_ca {
            Some(ca) => tls
                .client_auth_required(&read("--tls-client-ca", ca)?)
                .map_err(invalid)?,
            None => tls,
        };
        Ok(Some(tls))
    }
}

/// The contents of the file a flag names; the error names both.
#[cfg(feature = "tls")]
fn read(flag: &str, path: &std::path::Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{flag} {}: {e}", path.display())))
}

/// Parses `250ms`, `2s`, `1m` or a bare number of seconds.
///
/// # Errors
///
/// Text that is not such a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// Completes on Ctrl-C or SIGTERM, for a binary's graceful shutdown.
///
/// # Panics
///
/// If the SIGTERM handler cannot be installed.
pub async fn shutdown_signal() {
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

/// Logs to stderr at `info`, or as `RUST_LOG` says, for a binary.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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

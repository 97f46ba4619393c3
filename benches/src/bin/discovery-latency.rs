//! `discovery-latency`: how long a provider's registration, and its death, take to
//! reach a consumer's balancer, on any registry backend.
//!
//! Each round starts a provider process (this binary with `--provider ADDR`), which
//! takes a lease with a 1 s TTL (a 1 s session on ZooKeeper), notes the time and
//! registers one instance under it; the round times until the consumer's provider list
//! (what its balancer balances over) has it. Then the provider is killed with SIGKILL
//! (no deregistration: its heartbeats, or its session's pings, just stop) and the
//! round times until the list no longer has it. Death-to-visible is therefore
//! dominated by the backend's expiry of a 1 s lease. One more instance stays
//! registered throughout, since a consumer never lets an outage-looking update empty
//! its list.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin discovery-latency                              # embedded registry, in process
//! cargo run --release -p rpc-benches --bin discovery-latency -- --registry etcd://127.0.0.1:2379
//! cargo run --release -p rpc-benches --bin discovery-latency -- --registry zookeeper://127.0.0.1:2181
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use rpc_registry::{Backend, Consumer, Instance, RegistryConfig, RegistryServer};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Registration-to-visible and death-to-visible at a consumer's balancer")]
struct Args {
    /// Registry URL; without it an embedded registry (TTL 1 s) is started in process.
    #[arg(long)]
    registry: Option<String>,
    /// Rounds (one registration and one death each).
    #[arg(long, default_value_t = 30)]
    rounds: u32,
    /// Run as the provider of one round: register ADDR through `--registry`, print
    /// when, and heartbeat until killed.
    #[arg(long, hide = true, requires = "registry")]
    provider: Option<String>,
}

/// Microseconds since the Unix epoch: the provider process and the bench compare
/// times on one machine's clock.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The provider of one round: a lease with a 1 s TTL, one instance under it, then
/// heartbeats until the bench kills this process.
async fn provide(url: &str, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let registries = rpc_registry::connect(url)?;
    let backend = Arc::clone(&registries.members()[0]);
    let lease = backend
        .grant("discovery-latency", Some(Duration::from_secs(1)))
        .await?;
    let started = unix_micros();
    backend
        .register(lease.id, &Instance::new(SERVICE, addr))
        .await?;
    println!("registered at {started}");
    std::io::stdout().flush()?;
    let every = Duration::from_millis(lease.heartbeat_ms.max(100));
    loop {
        tokio::time::sleep(every).await;
        let _ = backend.keep_alive(lease.id).await;
    }
}

/// Kills the provider by PID when dropped, so an early return leaves none behind.
struct Provider(Child);

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a provider process registering `addr` through `url`; returns it with the
/// time (Unix µs) it started registering.
fn spawn_provider(url: &str, addr: &str) -> Result<(Provider, u64), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--registry", url, "--provider", addr])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let provider = Provider(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let started = line
        .trim()
        .strip_prefix("registered at ")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("provider said {line:?}"))?;
    Ok((provider, started))
}

const SERVICE: &str = "bench.DiscoveryLatency";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let (Some(url), Some(addr)) = (&args.registry, &args.provider) {
        return provide(url, addr).await;
    }
    let mut _embedded = None;
    let url = match args.registry {
        Some(url) => url,
        None => {
            let config = RegistryConfig::default()
                .ttl(Duration::from_secs(1))
                .min_ttl(Duration::from_secs(1))
                .heartbeat_interval(Duration::from_millis(333))
                .sweep_interval(Duration::from_millis(100));
            let registry = RegistryServer::bind("127.0.0.1:0", config).await?;
            let url = format!("rpc://{}", registry.local_addr());
            _embedded = Some(registry);
            // Past the registry's start-up grace (one TTL), when it evicts nothing.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            url
        }
    };
    let registries = rpc_registry::connect(&url)?;
    let backend: Arc<dyn Backend> = Arc::clone(&registries.members()[0]);
    let consumer = Consumer::builder(registries)
        .retry_interval(Duration::from_millis(100))
        .client_name("discovery-latency")
        .connect(SERVICE)
        .await?;
    // One instance that stays: a consumer refuses an update that would empty its list
    // (unless its providers left gracefully), so each death leaves this one behind.
    let anchor = backend
        .grant("discovery-latency", Some(Duration::from_secs(1)))
        .await?;
    backend
        .register(anchor.id, &Instance::new(SERVICE, "127.0.0.1:19999"))
        .await?;
    let anchor_heartbeat = {
        let backend = Arc::clone(&backend);
        let every = Duration::from_millis(anchor.heartbeat_ms.max(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = backend.keep_alive(anchor.id).await;
            }
        })
    };
    let mut registered = Histogram::<u64>::new(3)?;
    let mut died = Histogram::<u64>::new(3)?;
    for round in 0..args.rounds {
        let addr = format!("127.0.0.1:{}", 20_000 + round);
        let (mut provider, started) = spawn_provider(&url, &addr)?;
        let seen = consumer
            .wait_for(Duration::from_secs(10), |l| {
                l.iter().any(|i| i.addr == addr)
            })
            .await;
        assert!(seen, "registration of {addr} not seen within 10 s");
        registered.record(unix_micros().saturating_sub(started))?;
        // Live a little (the consumer settles), then die without deregistering.
        tokio::time::sleep(Duration::from_millis(200)).await;
        provider.0.kill()?;
        let killed = Instant::now();
        let gone = consumer
            .wait_for(Duration::from_secs(15), |l| {
                l.iter().all(|i| i.addr != addr)
            })
            .await;
        assert!(gone, "death of {addr} not seen within 15 s");
        died.record(killed.elapsed().as_micros() as u64)?;
        drop(provider);
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{url}: {} rounds; registration-to-visible p50 {:.1} ms p99 {:.1} ms; \
         death-to-visible (1 s lease) p50 {:.0} ms p99 {:.0} ms",
        args.rounds,
        ms(&registered, 0.5),
        ms(&registered, 0.99),
        ms(&died, 0.5),
        ms(&died, 0.99),
    );
    anchor_heartbeat.abort();
    let _ = backend.revoke(anchor.id).await;
    consumer.shutdown().await;
    Ok(())
}

//! `discovery-latency`: how long a provider's registration, and its death, take to
//! reach a consumer's balancer, on any registry backend.
//!
//! Each round takes a lease with a 1 s TTL, registers one instance under it and times
//! until the consumer's provider list (what its balancer balances over) has it; then
//! stops heartbeating that lease (the provider "dies": no deregistration) and times
//! until the list no longer has it. Death-to-visible is therefore dominated by the
//! backend's expiry of a 1 s lease. One more instance stays registered throughout,
//! since a consumer never lets an outage-looking update empty its list.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin discovery-latency                              # embedded registry, in process
//! cargo run --release -p rpc-benches --bin discovery-latency -- --registry etcd://127.0.0.1:2379
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

const SERVICE: &str = "bench.DiscoveryLatency";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
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
        let lease = backend
            .grant("discovery-latency", Some(Duration::from_secs(1)))
            .await?;
        let started = Instant::now();
        backend
            .register(lease.id, &Instance::new(SERVICE, addr.clone()))
            .await?;
        let heartbeat = {
            let backend = Arc::clone(&backend);
            let every = Duration::from_millis(lease.heartbeat_ms.max(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = backend.keep_alive(lease.id).await;
                }
            })
        };
        let seen = consumer
            .wait_for(Duration::from_secs(10), |l| {
                l.iter().any(|i| i.addr == addr)
            })
            .await;
        assert!(seen, "registration of {addr} not seen within 10 s");
        registered.record(started.elapsed().as_micros() as u64)?;
        // Live a little (the consumer settles), then die without deregistering.
        tokio::time::sleep(Duration::from_millis(200)).await;
        heartbeat.abort();
        let killed = Instant::now();
        let gone = consumer
            .wait_for(Duration::from_secs(15), |l| {
                l.iter().all(|i| i.addr != addr)
            })
            .await;
        assert!(gone, "death of {addr} not seen within 15 s");
        died.record(killed.elapsed().as_micros() as u64)?;
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

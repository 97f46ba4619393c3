//! Calls three providers with each load-balancing strategy in turn and prints how the
//! calls spread. One provider is slow, to show the load-aware strategies avoiding it.
//!
//! ```text
//! cargo run -p rpc-examples --bin balancers
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use rpc_core::lb::{Provider, Strategy};
use rpc_core::{service, Client, Server, ServerHandle};

/// Answers with the port of the provider that served the call.
#[service(name = "example.Whoami")]
trait Whoami {
    /// The serving provider's port.
    async fn who(&self) -> u16;
}

/// A provider that takes `delay` per call.
struct Instance {
    /// Reported to callers.
    port: u16,
    /// Simulated work.
    delay: Duration,
}

impl Whoami for Instance {
    async fn who(&self) -> u16 {
        tokio::time::sleep(self.delay).await;
        self.port
    }
}

async fn start(
    delay: Duration,
    weight_label: &str,
) -> Result<ServerHandle, Box<dyn std::error::Error>> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = probe.local_addr()?;
    drop(probe);
    let handle = Server::builder()
        .workers(1)
        .add_service(WhoamiServer::new(Instance {
            port: addr.port(),
            delay,
        }))
        .bind(addr)
        .await?
        .spawn();
    println!("provider {addr} ({weight_label}, {delay:?} per call)");
    Ok(handle)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = start(Duration::from_millis(1), "weight 300").await?;
    let b = start(Duration::from_millis(1), "weight 100").await?;
    let slow = start(Duration::from_millis(30), "weight 100").await?;
    let providers = vec![
        Provider::new(a.local_addr()).weight(300),
        Provider::new(b.local_addr()).weight(100),
        Provider::new(slow.local_addr()).weight(100),
    ];
    println!();
    println!("{:<28} {:>8} {:>8} {:>8}", "strategy", "a", "b", "slow");
    for strategy in Strategy::ALL {
        let client = Client::builder()
            .balancer(strategy)
            .connect_providers("example.Whoami", providers.clone())
            .await?;
        let stub = WhoamiClient::new(client);
        let mut tasks = Vec::new();
        for worker in 0..8u64 {
            let stub = stub.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for call in 0..50u64 {
                    // The key only matters to ip-hash: a few "users", each sticky.
                    seen.push(stub.who().hash_key((worker * 50 + call) % 7).await?);
                }
                Ok::<_, rpc_core::RpcError>(seen)
            }));
        }
        let mut counts = BTreeMap::new();
        for task in tasks {
            for port in task.await?? {
                *counts.entry(port).or_insert(0u32) += 1;
            }
        }
        let count = |h: &ServerHandle| counts.get(&h.local_addr().port()).copied().unwrap_or(0);
        println!(
            "{:<28} {:>8} {:>8} {:>8}",
            strategy.to_string(),
            count(&a),
            count(&b),
            count(&slow)
        );
    }
    for handle in [a, b, slow] {
        handle.shutdown().await?;
    }
    Ok(())
}

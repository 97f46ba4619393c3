//! A consumer over three provider processes keeps working when one is killed with
//! SIGKILL mid-run: once the dead provider is marked unhealthy no call fails.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::lb::{Provider, Strategy};
use rpc_core::Client;
use rpc_examples::InventoryClient;
use support::{start_provider, Reaper};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_provider_is_skipped() {
    let providers: Vec<(Reaper, SocketAddr)> = (0..3).map(|_| start_provider(1)).collect();
    let client = Client::builder()
        .timeout(Duration::from_secs(2))
        .balancer(Strategy::RoundRobin)
        .connect_providers(
            "example.Inventory",
            providers.iter().map(|(_, addr)| Provider::new(*addr)),
        )
        .await
        .unwrap();
    let inventory = InventoryClient::new(client);
    let mut providers = providers;
    let mut failures = Vec::new();
    for call in 0..300 {
        if call == 100 {
            let (mut victim, _) = providers.pop().unwrap();
            victim.0.kill().unwrap(); // SIGKILL: no GOAWAY, no goodbye
            victim.0.wait().unwrap();
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), inventory.list())
            .await
            .expect("call bounded")
        {
            failures.push((call, e.to_string()));
        }
    }
    // Calls made one at a time, and the kill happens between two of them: the next
    // call that picks the dead provider cannot connect, marks it unhealthy and goes to
    // another provider, so no call fails.
    assert!(failures.is_empty(), "failed calls: {failures:?}");
}

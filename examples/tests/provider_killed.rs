//! A consumer over three provider processes keeps working when one is killed with
//! SIGKILL mid-run: once the dead provider is marked unhealthy no call fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rpc_core::lb::{Provider, Strategy};
use rpc_core::Client;
use rpc_examples::InventoryClient;

/// Kills the child by PID when dropped, so a failing test leaves no process behind.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_provider() -> (Reaper, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inventory-provider"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .parse()
        .unwrap();
    (Reaper(child), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_provider_is_skipped() {
    let providers: Vec<(Reaper, SocketAddr)> = (0..3).map(|_| start_provider()).collect();
    let client = Client::builder()
        .timeout(Duration::from_secs(2))
        .balancer(Strategy::RoundRobin)
        .connect_providers(
            "example.Inventory",
            providers.iter().map(|(_, addr)| Provider::new(*addr)),
        );
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

//! Shared by the process tests: child processes that are always reaped, and starting
//! the example provider on an ephemeral port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Kills the child by PID when dropped, so a failing test leaves no process behind.
pub(crate) struct Reaper(pub(crate) Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `inventory-provider` on 127.0.0.1:0 with `workers` worker reactors and returns
/// it with the address it printed.
pub(crate) fn start_provider(workers: usize) -> (Reaper, SocketAddr) {
    spawn_provider(&["--listen", "127.0.0.1:0", "--workers", &workers.to_string()])
}

/// Starts `inventory-provider` with `args` and returns it with the address it printed
/// on its first line.
fn spawn_provider(args: &[&str]) -> (Reaper, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inventory-provider"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start provider");
    let stdout = child.stdout.take().expect("piped stdout");
    let provider = Reaper(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .parse()
        .expect("an address");
    (provider, addr)
}

/// Waits for the child to exit, failing the test past `limit`.
pub(crate) fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit in {limit:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the `registry` example binary with extra flags on `listen` and returns it with
/// the address it printed.
pub(crate) fn start_registry(listen: &str, flags: &[&str]) -> (Reaper, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_registry"))
        .args(["--listen", listen])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start registry");
    let stdout = child.stdout.take().expect("piped stdout");
    let registry = Reaper(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("registry listening on ")
        .unwrap_or_else(|| panic!("registry address line, got {line:?}"))
        .parse()
        .expect("an address");
    (registry, addr)
}

/// Starts `inventory-provider` on 127.0.0.1:0 registered with `registry` (a URL) at
/// `weight`, and returns it with its address.
pub(crate) fn start_registered_provider(registry: &str, weight: u32) -> (Reaper, SocketAddr) {
    spawn_provider(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--registry",
        registry,
        "--weight",
        &weight.to_string(),
        "--deregister-delay",
        "300ms",
    ])
}

/// Sends SIGTERM to the child by PID.
pub(crate) fn terminate(child: &Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

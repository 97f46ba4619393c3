//! The dashboard tests' tools: the `rpc-registry` binary as a child process with its
//! admin port (HTTP requests to it are in [`super::http`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A registry process, killed by PID when dropped.
pub struct RegistryProcess {
    /// The child.
    child: Child,
    /// `rpc://addr` of the registry.
    pub url: String,
    /// The admin dashboard.
    pub admin: SocketAddr,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rpc-registry` on 127.0.0.1:0 with its dashboard on 127.0.0.1:0, fast
/// heartbeats (100 ms) and a 1 s TTL, and the admin token if given; waits (at most
/// 20 s) for the two lines that name its ports.
pub fn start_registry(token: Option<&str>) -> RegistryProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rpc-registry"));
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--heartbeat-interval", "100ms", "--ttl", "1s"])
        .env_remove("RPC_REGISTRY_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(token) = token {
        command.env("RPC_REGISTRY_ADMIN_TOKEN", token);
    }
    let mut child = command.spawn().expect("rpc-registry starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        read.recv_timeout(Duration::from_secs(20))
            .expect("rpc-registry printed its ports")
    };
    let registry = next();
    let admin = next();
    let registry = registry
        .strip_prefix("registry listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {registry:?}"))
        .to_owned();
    let admin = admin
        .strip_prefix("admin dashboard on http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected second line {admin:?}"))
        .parse()
        .unwrap();
    RegistryProcess {
        child,
        url: format!("rpc://{registry}"),
        admin,
    }
}

/// The instance at `addr` in `GET /api/services/{service}`'s answer.
pub fn instance<'a>(service: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    service["instances"]
        .as_array()?
        .iter()
        .find(|i| i["addr"] == addr)
}

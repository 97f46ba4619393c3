//! The dashboard tests' tools: the `rpc-registry` binary as a child process with its
//! admin port, and HTTP requests to it over plain TCP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The head, lower-cased.
    pub head: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `method path` on `addr` with an optional bearer token and JSON body, within 10 s.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took over 10 s"));
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let head = head.to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer { status, head, body }
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// The instance at `addr` in `GET /api/services/{service}`'s answer.
pub fn instance<'a>(service: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    service["instances"]
        .as_array()?
        .iter()
        .find(|i| i["addr"] == addr)
}

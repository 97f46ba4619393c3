//! Shared by the process tests: child processes that are always reaped, and starting
//! the example provider on an ephemeral port.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_core::lb::Strategy;
use rpc_core::Client;
use rpc_examples::{InventoryClient, INVENTORY_SERVICE};
use rpc_registry::Consumer;

// The ZooKeeper servers, started as rpc-registry's tests start them (one file).
#[path = "../../../rpc-registry/tests/support/zookeeper.rs"]
pub(crate) mod zookeeper;

// HTTP requests to the dashboard's API and the providers' metrics (one file with
// rpc-registry's tests).
#[path = "../../../rpc-registry/tests/support/http.rs"]
pub(crate) mod http;

// Finding Chromium, and its flags (one file with rpc-registry's tests).
#[path = "../../../rpc-registry/tests/support/chromium.rs"]
pub(crate) mod chromium;

pub(crate) mod devtools;

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
    let (provider, mut lines) = spawn_printing(env!("CARGO_BIN_EXE_inventory-provider"), args);
    let addr = after(&mut lines, "listening on ")
        .parse()
        .expect("an address");
    (provider, addr)
}

/// Starts `program` with `args`, stdout piped; returns it with its stdout's lines.
fn spawn_printing(
    program: &str,
    args: &[&str],
) -> (Reaper, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("RPC_REGISTRY_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    (Reaper(child), BufReader::new(stdout).lines())
}

/// The rest of the next line of `lines`, which must start with `prefix`.
fn after(lines: &mut impl Iterator<Item = std::io::Result<String>>, prefix: &str) -> String {
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("exited before printing {prefix:?}"))
        .expect("readable stdout");
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}..., got {line:?}"))
        .to_owned()
}

/// Starts `inventory-provider` registered with `registry` (a URL) at `weight` and
/// with its metrics served over HTTP; returns it with its address and metrics URL.
pub(crate) fn start_measured_provider(registry: &str, weight: u32) -> (Reaper, SocketAddr, String) {
    let (provider, mut lines) =
        spawn_registered(registry, weight, &["--metrics-listen", "127.0.0.1:0"]);
    let addr = after(&mut lines, "listening on ")
        .parse()
        .expect("an address");
    let metrics = after(&mut lines, "metrics on ");
    (provider, addr, metrics)
}

/// The calls of `method` that the provider whose metrics are at `url`
/// (`http://host:port/metrics`) has served, whatever their outcome.
pub(crate) async fn served(url: &str, method: &str) -> u64 {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (addr, path) = rest.split_at(rest.find('/').expect("a path"));
    let answer = http::http(addr.parse().unwrap(), "GET", path, None, None).await;
    assert_eq!(answer.status, 200, "GET {url}: {}", answer.body);
    let series = "rpc_server_calls_total{";
    let wanted = format!("method=\"{method}\"");
    answer
        .body
        .lines()
        .filter(|line| line.starts_with(series) && line.contains(&wanted))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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
    let mut args = vec!["--listen", listen];
    args.extend_from_slice(flags);
    let (registry, mut lines) = spawn_printing(env!("CARGO_BIN_EXE_registry"), &args);
    let addr = after(&mut lines, "registry listening on ")
        .parse()
        .expect("an address");
    (registry, addr)
}

/// Starts the `registry` example with its admin dashboard on 127.0.0.1:0, operator
/// actions allowed with `token`, and extra `flags`; returns it with the registry's
/// and the dashboard's addresses. `None` (and a loud message) when the binary was
/// built without rpc-registry's `dashboard` feature.
pub(crate) fn start_registry_with_dashboard(
    token: &str,
    flags: &[&str],
    test: &str,
) -> Option<(Reaper, SocketAddr, SocketAddr)> {
    let help = Command::new(env!("CARGO_BIN_EXE_registry"))
        .arg("--help")
        .output()
        .expect("registry --help");
    if !String::from_utf8_lossy(&help.stdout).contains("--admin-listen") {
        skipped(
            test,
            "the registry example was built without rpc-registry's `dashboard` feature; \
             run `cargo test --workspace` or add `--features dashboard`",
        );
        return None;
    }
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token",
        token,
    ];
    args.extend_from_slice(flags);
    let (registry, mut lines) = spawn_printing(env!("CARGO_BIN_EXE_registry"), &args);
    let addr = after(&mut lines, "registry listening on ")
        .parse()
        .expect("an address");
    let admin = after(&mut lines, "admin dashboard on http://");
    let admin = admin
        .strip_suffix('/')
        .unwrap_or(&admin)
        .parse()
        .expect("an address");
    Some((registry, addr, admin))
}

/// Starts `inventory-provider` on 127.0.0.1:0 registered with `registry` (a URL) at
/// `weight`, and returns it with its address.
pub(crate) fn start_registered_provider(registry: &str, weight: u32) -> (Reaper, SocketAddr) {
    start_registered_provider_with(registry, weight, &[])
}

/// [`start_registered_provider`] with extra flags (e.g. `--ttl 1s`).
pub(crate) fn start_registered_provider_with(
    registry: &str,
    weight: u32,
    extra: &[&str],
) -> (Reaper, SocketAddr) {
    let (provider, mut lines) = spawn_registered(registry, weight, extra);
    let addr = after(&mut lines, "listening on ")
        .parse()
        .expect("an address");
    (provider, addr)
}

/// Starts `inventory-provider` on 127.0.0.1:0 with one worker, registered with
/// `registry` at `weight`, with `extra` flags; returns it with its stdout's lines.
fn spawn_registered(
    registry: &str,
    weight: u32,
    extra: &[&str],
) -> (Reaper, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let weight = weight.to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--registry",
        registry,
        "--weight",
        &weight,
        "--deregister-delay",
        "300ms",
    ];
    args.extend_from_slice(extra);
    spawn_printing(env!("CARGO_BIN_EXE_inventory-provider"), &args)
}

/// Sends SIGTERM to the child by PID.
pub(crate) fn terminate(child: &Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Says loudly that `test` was skipped and why, so a skipped test is never mistaken
/// for a passing one.
fn skipped(test: &str, why: &str) -> bool {
    eprintln!("\n!!!!! SKIPPED {test}: {why} !!!!!\n");
    false
}

/// Whether `program` is on the PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether `program` is on the PATH; when not, says so loudly so a skipped test is
/// never mistaken for a passing one.
pub(crate) fn have(program: &str, test: &str) -> bool {
    if !on_path(program) {
        return skipped(
            test,
            &format!("`{program}` is not installed (Debian: etcd-server; .ci/run installs it)"),
        );
    }
    // The example binaries link the same rpc-registry as this test: without its
    // `etcd` feature (`cargo test -p rpc-examples` alone) they cannot speak etcd.
    if program == "etcd" && rpc_registry::connect("etcd://127.0.0.1:2379").is_err() {
        return skipped(
            test,
            "rpc-registry was built without its `etcd` feature; \
             run `cargo test --workspace` or add `--features etcd`",
        );
    }
    true
}

/// Whether ZooKeeper can be started here (a `java` on the PATH and Debian's
/// `zookeeper` jar) and the examples speak it (rpc-registry's `zookeeper` feature);
/// when not, says so loudly.
pub(crate) fn have_zookeeper(test: &str) -> bool {
    if !zookeeper::zookeeper_installed(test) {
        return false;
    }
    if rpc_registry::connect("zookeeper://127.0.0.1:2181").is_err() {
        return skipped(
            test,
            "rpc-registry was built without its `zookeeper` feature; \
             run `cargo test --workspace` or add `--features zookeeper`",
        );
    }
    true
}

/// Runs the `inventory-consumer` binary against `url` (50 sync calls and one in each
/// other mode) with `extra` flags, and returns what it printed; fails the test if it
/// fails or takes over 30 s.
pub(crate) fn run_consumer_process(url: &str, extra: &[&str]) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_inventory-consumer"))
        .args(["--registry", url, "--calls", "50"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start consumer");
    let mut child = Reaper(child);
    let status = wait_with_deadline(&mut child.0, Duration::from_secs(30));
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "consumer process failed:\n{out}");
    out
}

/// A fresh directory under the system temp dir, removed by [`TempDir`]'s drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One etcd member: client and peer URLs on 127.0.0.1, its own data dir. Stopping it
/// kills it by PID (SIGKILL); starting it again reuses its data dir and ports.
pub(crate) struct EtcdMember {
    /// Member name (`n0`, `n1`, ...).
    pub(crate) name: String,
    /// Client port.
    pub(crate) client_port: u16,
    /// Peer port.
    pub(crate) peer_port: u16,
    /// `n0=http://127.0.0.1:p0,...`: the whole cluster.
    initial_cluster: String,
    /// Its data dir.
    data: TempDir,
    /// The running process.
    child: Option<Reaper>,
}

impl EtcdMember {
    /// `host:port` for clients.
    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts) the member and returns at once.
    pub(crate) fn start(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data.0.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "rpc-test"])
            // Fast elections on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(Reaper(child));
    }

    /// Kills the member (SIGKILL, by PID) and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child = None;
    }

    /// Whether the member answers `/health` with `true`.
    pub(crate) fn healthy(&self) -> bool {
        http_get_contains(self.client_port, "/health", "\"health\":\"true\"")
    }

    /// The member's own view: whether it is the leader (its `/metrics`).
    pub(crate) fn is_leader(&self) -> bool {
        http_get_contains(self.client_port, "/metrics", "\netcd_server_is_leader 1")
    }
}

/// A GET on 127.0.0.1:`port` whose answer contains `needle`.
fn http_get_contains(port: u16, path: &str, needle: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains(needle)
}

/// An etcd cluster of `size` members on loopback, started and healthy.
pub(crate) struct EtcdCluster {
    /// Its members.
    pub(crate) members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts `size` members and waits (up to 20 s) until every one is healthy.
    pub(crate) fn start(size: usize) -> EtcdCluster {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdMember> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| EtcdMember {
                name: format!("n{i}"),
                client_port,
                peer_port,
                initial_cluster: initial_cluster.clone(),
                data: TempDir::new("etcd"),
                child: None,
            })
            .collect();
        for member in &mut members {
            member.start();
        }
        let cluster = EtcdCluster { members };
        cluster.wait_healthy(Duration::from_secs(20));
        cluster
    }

    /// Waits until every running member answers healthy.
    pub(crate) fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .all(EtcdMember::healthy)
        {
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcd://h1,h2,h3` for the whole cluster.
    pub(crate) fn url(&self) -> String {
        let endpoints: Vec<String> = self.members.iter().map(EtcdMember::endpoint).collect();
        format!("etcd://{}", endpoints.join(","))
    }
}

/// Calls made in a loop by a few tasks until stopped; failures kept with their time.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Tasks calling at once: each call in flight when a provider dies may fail (the
/// client cannot know whether it ran), so at most this many calls can be excused.
pub(crate) const CONCURRENCY: usize = 2;

impl Load {
    pub(crate) fn start(inventory: &InventoryClient) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..CONCURRENCY)
            .map(|_| {
                let inventory = inventory.clone();
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match inventory.list().timeout(Duration::from_secs(2)).await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures
                                .lock()
                                .unwrap()
                                .push((Instant::now(), e.to_string())),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// After a provider was killed at `killed`: calls still succeed over the next
    /// `settle`, and once stopped, no call failed later than 100 ms after the kill
    /// (only calls in flight on the victim may fail, at most one per task). Returns how
    /// many failed.
    pub(crate) async fn finish_after_kill(self, killed: Instant, settle: Duration) -> usize {
        let before = self.ok();
        tokio::time::sleep(settle).await;
        assert!(self.ok() > before, "calls go on");
        let failures = self.finish().await;
        let late: Vec<_> = failures
            .iter()
            .filter(|(at, _)| *at > killed + Duration::from_millis(100))
            .collect();
        assert!(late.is_empty(), "calls failed after the kill: {late:?}");
        assert!(failures.len() <= CONCURRENCY, "failed calls: {failures:?}");
        failures.len()
    }

    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the load and returns its failures.
    pub(crate) async fn finish(self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        failures
    }
}

/// A consumer of the inventory discovering through `url`, announcing itself as `name`.
pub(crate) async fn consumer(url: &str, name: &str) -> Consumer {
    Consumer::builder(rpc_registry::connect(url).unwrap())
        .client(
            Client::builder()
                .timeout(Duration::from_secs(2))
                .balancer(Strategy::RoundRobin),
        )
        .retry_interval(Duration::from_millis(100))
        .lookup_timeout(Duration::from_secs(1))
        .client_name(name)
        .connect(INVENTORY_SERVICE)
        .await
        .unwrap()
}

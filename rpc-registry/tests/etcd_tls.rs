//! The etcd backend over TLS (`etcds://`, features `etcd` and `tls`) against a real
//! etcd started here on loopback ports with certificates made at test time. Each test
//! skips with a loud message when `etcd` is not installed (Debian: etcd-server).

mod support;

// The same test certificates as rpc-core's TLS tests, from one file.
#[path = "../../rpc-core/tests/support/certs.rs"]
mod certs;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use certs::TestCa;
use rpc_registry::{Consumer, Error, Registries};
use support::*;

/// Whether `etcd` is on the PATH; says so loudly when not.
fn have_etcd(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("etcd").is_file()));
    if !found {
        eprintln!("\n!!!!! SKIPPED {test}: `etcd` is not installed (Debian: etcd-server) !!!!!\n");
    }
    found
}

/// A directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-registry-etcd-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member serving its clients over TLS only, killed (by PID) when dropped.
struct TlsEtcd {
    child: Child,
    /// `127.0.0.1:port` for clients.
    endpoint: String,
    /// Its files: data dir, certificates.
    dir: Dir,
    /// The CA that issued its certificate, as a file.
    ca_path: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsEtcd {
    /// Starts etcd with a certificate from `ca`; with `client_ca`, it requires client
    /// certificates issued by it.
    fn start(ca: &TestCa, client_ca: Option<&TestCa>) -> TlsEtcd {
        let dir = Dir::new();
        let identity = ca.server();
        let cert = dir.write("etcd.pem", &identity.cert_pem);
        let key = dir.write("etcd.key", &identity.key_pem);
        let ca_path = dir.write("ca.pem", &ca.cert_pem());
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new("etcd");
        command
            .args(["--name", "n0"])
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n0={peer}")])
            .args(["--cert-file", &cert, "--key-file", &key])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        if let Some(client_ca) = client_ca {
            let path = dir.write("clients-ca.pem", &client_ca.cert_pem());
            command.args(["--client-cert-auth", "--trusted-ca-file", &path]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        TlsEtcd {
            child,
            endpoint: format!("127.0.0.1:{client_port}"),
            dir,
            ca_path,
        }
    }

    /// `etcds://endpoint/root?{query}`.
    fn url(&self, query: &str) -> String {
        format!("etcds://{}/tls-test?{query}", self.endpoint)
    }
}

/// Looks `SERVICE` up through `registries` until it answers, at most `limit`.
async fn until_ready(registries: &Registries, limit: Duration) {
    let started = Instant::now();
    loop {
        let last = match registries.members()[0].lookup(SERVICE).await {
            Ok(_) => return,
            Err(e) => e,
        };
        assert!(
            started.elapsed() < limit,
            "etcd not ready over TLS within {limit:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The error of one lookup through `url`, which must fail within 5 s.
async fn lookup_error(url: &str) -> Error {
    let registries = rpc_registry::connect(url).unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        registries.members()[0].lookup(SERVICE),
    )
    .await
    .expect("a lookup that fails must fail, not hang")
    .expect_err("the lookup must fail");
    eprintln!("lookup through {url}: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_register_discover_and_call() {
    if !have_etcd("etcd_over_tls_register_discover_and_call") {
        return;
    }
    let ca = TestCa::new("etcd test CA");
    let etcd = TlsEtcd::start(&ca, None);
    let url = etcd.url(&format!("ca={}", etcd.ca_path));
    let registries = rpc_registry::connect(&url).unwrap();
    assert!(registries.members()[0].url().starts_with("etcds://"));
    until_ready(&registries, Duration::from_secs(20)).await;

    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = Consumer::builder(rpc_registry::connect(&url).unwrap())
        .connect(SERVICE)
        .await
        .unwrap();
    assert!(
        consumer
            .wait_for(Duration::from_secs(5), |p| p.len() == 1)
            .await
    );
    let answer = WhoamiClient::new(consumer.client()).whoami().await.unwrap();
    assert_eq!(answer, server.local_addr().to_string());

    // A CA that did not issue etcd's certificate, and plaintext, are refused.
    let other = TestCa::new("someone else's CA");
    let other_path = etcd.dir.write("other.pem", &other.cert_pem());
    let error = lookup_error(&etcd.url(&format!("ca={other_path}"))).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    let error = lookup_error(&format!("etcd://{}/tls-test", etcd.endpoint)).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("use etcds://"), "{error}");

    consumer.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates_takes_a_client_with_one() {
    if !have_etcd("etcd_with_client_certificates_takes_a_client_with_one") {
        return;
    }
    let ca = TestCa::new("etcd test CA");
    let clients = TestCa::new("clients CA");
    let etcd = TlsEtcd::start(&ca, Some(&clients));
    let identity = clients.client("provider");
    let cert = etcd.dir.write("client.pem", &identity.cert_pem);
    let key = etcd.dir.write("client.key", &identity.key_pem);
    let with = etcd.url(&format!("ca={}&cert={cert}&key={key}", etcd.ca_path));
    until_ready(
        &rpc_registry::connect(&with).unwrap(),
        Duration::from_secs(20),
    )
    .await;

    let error = lookup_error(&etcd.url(&format!("ca={}", etcd.ca_path))).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("cert= and key="), "{error}");
}

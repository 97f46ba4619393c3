//! The embedded registry over TLS (the `tls` feature), over real TCP on loopback with
//! certificates made at test time: `rpcs://` registration and discovery, mutual TLS,
//! an untrusted CA, plaintext and TLS crossed, bad `rpcs://` URLs, and the binary's
//! `--tls-cert`/`--tls-key` flags.

mod support;

// The same test certificates as rpc-core's TLS tests, from one file.
#[path = "../../rpc-core/tests/support/certs.rs"]
mod certs;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use certs::TestCa;
use rpc_core::ServerTls;
use rpc_registry::{Consumer, Error, RegistryServer};
use support::*;

/// A directory of its own for one test's PEM files, removed when dropped.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-registry-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    /// Writes `pem` to `name` and returns its path as text.
    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS registry with a certificate for 127.0.0.1 issued by `ca`.
async fn tls_registry(ca: &TestCa, client_ca: Option<&TestCa>) -> RegistryServer {
    let identity = ca.server();
    let mut tls =
        ServerTls::from_pem(identity.cert_pem.as_bytes(), identity.key_pem.as_bytes()).unwrap();
    if let Some(client_ca) = client_ca {
        tls = tls
            .client_auth_required(client_ca.cert_pem().as_bytes())
            .unwrap();
    }
    registry(fast_config().tls(tls)).await
}

/// The error of one lookup through the (single) registry `url` names, within 5 s.
async fn lookup_error(url: &str) -> Error {
    let registries = rpc_registry::connect(url).unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        registries.members()[0].lookup(SERVICE),
    )
    .await
    .expect("a lookup that fails must fail, not hang");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failing took {:?}",
        started.elapsed()
    );
    let error = result.expect_err("the lookup must fail");
    eprintln!("lookup through {url}: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_registers_over_rpcs_and_consumer_discovers_and_calls() {
    let ca = TestCa::new("registry test CA");
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.cert_pem());
    let registry = tls_registry(&ca, None).await;
    assert!(registry.url().starts_with("rpcs://"), "{}", registry.url());
    let url = format!("{}?ca={ca_path}", registry.url());

    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(registry.instance_count(), 1);

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

    consumer.shutdown().await;
    publisher.shutdown().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_registry_takes_clients_with_a_certificate_only() {
    let ca = TestCa::new("registry test CA");
    let clients = TestCa::new("clients CA");
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.cert_pem());
    let provider_identity = clients.client("provider");
    let cert = files.write("client.pem", &provider_identity.cert_pem);
    let key = files.write("client.key", &provider_identity.key_pem);
    let registry = tls_registry(&ca, Some(&clients)).await;

    let with_identity = format!("{}?ca={ca_path}&cert={cert}&key={key}", registry.url());
    let registries = rpc_registry::connect(&with_identity).unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(5),
        registries.members()[0].lookup(SERVICE),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(view.instances.is_empty());

    let without = format!("{}?ca={ca_path}", registry.url());
    let error = lookup_error(&without).await.to_string();
    assert!(error.contains("unreachable"), "{error}");
    assert!(error.contains("CertificateRequired"), "{error}");
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_certificate_from_another_ca_is_refused_clearly() {
    let ca = TestCa::new("registry test CA");
    let other = TestCa::new("someone else's CA");
    let files = Files::new();
    let other_path = files.write("other.pem", &other.cert_pem());
    let registry = tls_registry(&ca, None).await;

    let error = lookup_error(&format!("{}?ca={other_path}", registry.url())).await;
    let text = error.to_string();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(text.contains("TLS handshake"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    // Without `ca`, the system trust store decides: `tests/tls_system_store.rs`.
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_url_against_a_tls_registry_fails_clearly() {
    let ca = TestCa::new("registry test CA");
    let registry = tls_registry(&ca, None).await;
    let addr = registry.local_addr();

    let error = lookup_error(&format!("rpc://{addr}")).await;
    let text = error.to_string();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(text.contains("serves TLS only"), "{text}");
    assert!(text.contains(&format!("rpcs://{addr}")), "{text}");
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_url_against_a_plaintext_registry_fails_clearly() {
    let ca = TestCa::new("registry test CA");
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.cert_pem());
    let registry = registry(fast_config()).await;
    assert!(registry.url().starts_with("rpc://"), "{}", registry.url());

    let url = format!("rpcs://{}?ca={ca_path}", registry.local_addr());
    let text = lookup_error(&url).await.to_string();
    assert!(text.contains("TLS handshake"), "{text}");
    assert!(text.contains("plaintext"), "{text}");
    registry.shutdown().await.unwrap();
}

#[test]
fn bad_rpcs_urls_are_refused_before_anything_is_sent() {
    let ca = TestCa::new("registry test CA");
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.cert_pem());
    let missing = files.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let not_pem = files.write("not.pem", "hello");
    for (url, expected) in [
        (
            "rpcs://127.0.0.1:7000?trust=x".to_owned(),
            "unknown query parameter",
        ),
        ("rpcs://127.0.0.1:7000?ca".to_owned(), "has no value"),
        ("rpcs://127.0.0.1:7000?ca=".to_owned(), "is empty"),
        (
            format!("rpcs://127.0.0.1:7000?ca={ca_path}&ca={ca_path}"),
            "given twice",
        ),
        (
            format!("rpcs://127.0.0.1:7000?cert={ca_path}"),
            "cert and key go together",
        ),
        (format!("rpcs://127.0.0.1:7000?ca={missing}"), "missing.pem"),
        (
            format!("rpcs://127.0.0.1:7000?ca={not_pem}"),
            "TLS settings refused",
        ),
        (format!("rpcs://?ca={ca_path}"), "no registry address"),
        (
            "rpcs://127.0.0.1:7000?server_name=a b".to_owned(),
            "server name",
        ),
    ] {
        let error = rpc_registry::connect(&url).expect_err(&url).to_string();
        assert!(error.contains(expected), "{url}: {error}");
    }

    let registries = rpc_registry::connect(&format!(
        "rpcs://127.0.0.1:7000,localhost:7001?ca={ca_path}&server_name=registry.internal"
    ))
    .unwrap();
    let urls: Vec<&str> = registries.members().iter().map(|m| m.url()).collect();
    assert_eq!(urls, ["rpcs://127.0.0.1:7000", "rpcs://localhost:7001"]);
}

/// Kills the child when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_from_its_flags() {
    let ca = TestCa::new("registry test CA");
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.cert_pem());
    let identity = ca.server();
    let cert = files.write("registry.pem", &identity.cert_pem);
    let key = files.write("registry.key", &identity.key_pem);

    // A key without its certificate, or a file that is not there, is refused.
    let status = Command::new(env!("CARGO_BIN_EXE_rpc-registry"))
        .args(["--listen", "127.0.0.1:0", "--tls-key", &key])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "--tls-key alone accepted");
    let output = Command::new(env!("CARGO_BIN_EXE_rpc-registry"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"])
        .args(["--tls-key", &key])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--tls-cert /nonexistent.pem"), "{err}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_rpc-registry"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _registry = Reaper(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("the registry starts")
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("registry listening on ")
        .unwrap()
        .to_owned();

    let registries = rpc_registry::connect(&format!("rpcs://{addr}?ca={ca_path}")).unwrap();
    let services = tokio::time::timeout(Duration::from_secs(5), registries.members()[0].services())
        .await
        .unwrap()
        .unwrap();
    assert!(services.is_empty(), "{services:?}");
    // The binary's own inspection reaches it through an `rpcs://` URL too.
    let url = format!("rpcs://{addr}?ca={ca_path}");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rpc-registry"))
            .args(["services", "--registry", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("services answers")
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains(&format!("rpcs://{addr}")), "{out}");
    let text = lookup_error(&format!("rpc://{addr}")).await.to_string();
    assert!(text.contains("serves TLS only"), "{text}");
}

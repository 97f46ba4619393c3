//! The ZooKeeper backend over TLS (`zookeepers://`, features `zookeeper` and `tls`)
//! against a real ZooKeeper 3.8 serving a `secureClientPort` (Netty connection factory,
//! PEM stores), started here on loopback ports with certificates made at test time.
//! Each test skips with a loud message when java or the ZooKeeper jar is missing.

mod support;

// The same test certificates as rpc-core's TLS tests, from one file.
#[path = "../../rpc-core/tests/support/certs.rs"]
mod certs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use certs::TestCa;
use rpc_registry::{Consumer, Error, Registries};
use support::zookeeper::{zookeeper_installed, ServerTls, ZkEnsemble};
use support::*;

/// One TLS ZooKeeper server and the files its clients name in their URLs.
struct TlsZooKeeper {
    /// The server (killed by PID when dropped).
    ensemble: ZkEnsemble,
    /// Where the clients' PEM files live (removed when dropped).
    dir: Files,
    /// The CA that issued the server's certificate, as a file.
    ca_path: String,
}

/// A directory of the clients' PEM files, removed when dropped.
struct Files(PathBuf);

impl Files {
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

impl TlsZooKeeper {
    /// Starts a standalone server with a certificate from `ca`; with `clients`, it
    /// demands client certificates issued by it.
    fn start(ca: &TestCa, clients: Option<&TestCa>) -> TlsZooKeeper {
        let server = ca.server();
        let tls = ServerTls {
            cert_and_key_pem: format!("{}{}", server.cert_pem, server.key_pem),
            // With no client certificates asked for, the trust store is never used.
            client_ca_pem: clients.unwrap_or(ca).cert_pem(),
            need_client_cert: clients.is_some(),
        };
        let ensemble = ZkEnsemble::start_with(1, Some(&tls));
        let dir = std::env::temp_dir().join(format!(
            "rpc-registry-zookeeper-tls-{}-{}",
            std::process::id(),
            ensemble.nodes[0].client_port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Files(dir);
        let ca_path = dir.write("ca.pem", &ca.cert_pem());
        TlsZooKeeper {
            ensemble,
            dir,
            ca_path,
        }
    }

    /// `zookeepers://{secure port}/tls-test?{query}`.
    fn url(&self, query: &str) -> String {
        format!(
            "zookeepers://{}/tls-test?{query}",
            self.ensemble.secure_hosts()
        )
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
            "ZooKeeper not ready over TLS within {limit:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The error of one lookup through `url`, which must fail within 5 s.
async fn lookup_error(url: &str) -> Error {
    let registries = rpc_registry::connect(url).unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        registries.members()[0].lookup(SERVICE),
    )
    .await
    .expect("a lookup that fails must fail, not hang")
    .expect_err("the lookup must fail");
    eprintln!(
        "lookup through {url} failed after {:?}: {error}",
        started.elapsed()
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_over_tls_register_discover_and_call() {
    if !zookeeper_installed("zookeeper_over_tls_register_discover_and_call") {
        return;
    }
    let ca = TestCa::new("zookeeper test CA");
    let zk = TlsZooKeeper::start(&ca, None);
    let url = zk.url(&format!("ca={}", zk.ca_path));
    let registries = rpc_registry::connect(&url).unwrap();
    assert!(
        registries.members()[0].url().starts_with("zookeepers://"),
        "{}",
        registries.members()[0].url()
    );
    until_ready(&registries, Duration::from_secs(20)).await;

    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = Consumer::builder(rpc_registry::connect(&url).unwrap())
        .client_name("tls-consumer")
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
    // The consumer announces itself (in the background) over TLS too.
    let started = Instant::now();
    loop {
        let consumers = registries.members()[0].consumers(SERVICE).await.unwrap();
        if consumers.iter().any(|c| c.client_name == "tls-consumer") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no consumer announcement: {consumers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A CA that did not issue the server's certificate is refused, saying what to
    // check.
    let other = TestCa::new("someone else's CA");
    let other_path = zk.dir.write("other.pem", &other.cert_pem());
    let error = lookup_error(&zk.url(&format!("ca={other_path}"))).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("check that ca="), "{error}");

    // A graceful leave over TLS: gone from the consumer, marked departed.
    publisher.shutdown().await;
    assert!(
        consumer
            .wait_for(Duration::from_secs(5), |p| p.is_empty())
            .await
    );
    let view = registries.members()[0].lookup(SERVICE).await.unwrap();
    assert_eq!(view.departed, vec![server.local_addr().to_string()]);
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_demanding_client_certificates_takes_a_client_with_one() {
    if !zookeeper_installed("zookeeper_demanding_client_certificates_takes_a_client_with_one") {
        return;
    }
    let ca = TestCa::new("zookeeper test CA");
    let clients = TestCa::new("clients CA");
    let zk = TlsZooKeeper::start(&ca, Some(&clients));
    let identity = clients.client("provider");
    let cert = zk.dir.write("client.pem", &identity.cert_pem);
    let key = zk.dir.write("client.key", &identity.key_pem);
    let with = zk.url(&format!("ca={}&cert={cert}&key={key}", zk.ca_path));
    until_ready(
        &rpc_registry::connect(&with).unwrap(),
        Duration::from_secs(20),
    )
    .await;

    // Provider and consumer both present the certificate.
    let server = provider().await;
    let publisher = publisher(&with);
    publish(&publisher, &server, 100);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let consumer = Consumer::builder(rpc_registry::connect(&with).unwrap())
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

    // Without one, or with one from a CA the server does not trust: refused, saying
    // what to give.
    let error = lookup_error(&zk.url(&format!("ca={}", zk.ca_path))).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("cert= and key="), "{error}");
    let stranger = TestCa::new("someone else's CA").client("stranger");
    let cert = zk.dir.write("stranger.pem", &stranger.cert_pem);
    let key = zk.dir.write("stranger.key", &stranger.key_pem);
    let error = lookup_error(&zk.url(&format!("ca={}&cert={cert}&key={key}", zk.ca_path))).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");

    consumer.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_plaintext_client_on_the_secure_port_fails_clearly() {
    if !zookeeper_installed("zookeeper_plaintext_client_on_the_secure_port_fails_clearly") {
        return;
    }
    let ca = TestCa::new("zookeeper test CA");
    let zk = TlsZooKeeper::start(&ca, None);
    // The server is up (its TLS port answers a TLS client).
    until_ready(
        &rpc_registry::connect(&zk.url(&format!("ca={}", zk.ca_path))).unwrap(),
        Duration::from_secs(20),
    )
    .await;

    let plain = format!("zookeeper://{}/tls-test", zk.ensemble.secure_hosts());
    let error = lookup_error(&plain).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("use zookeepers://"), "{error}");
    // And the other way round: TLS to the plaintext port.
    let tls_to_plain = format!(
        "zookeepers://{}/tls-test?ca={}",
        zk.ensemble.nodes[0].endpoint(),
        zk.ca_path
    );
    let error = lookup_error(&tls_to_plain).await;
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
}

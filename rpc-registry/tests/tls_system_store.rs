//! `rpcs://` without `ca=` trusts the operating system's trust store. The store is
//! pointed at test CAs through `SSL_CERT_FILE` (which rustls-native-certs reads instead
//! of the platform's store), so this binary holds one test only: nothing else in the
//! process reads the environment while the test changes it.

mod support;

// The same test certificates as rpc-core's TLS tests, from one file.
#[path = "../../rpc-core/tests/support/certs.rs"]
mod certs;

use std::time::Duration;

use certs::TestCa;
use rpc_core::ServerTls;
use rpc_registry::Error;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_without_ca_trusts_the_system_store() {
    let dir =
        std::env::temp_dir().join(format!("rpc-registry-system-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca = TestCa::new("registry test CA");
    let identity = ca.server();
    let tls =
        ServerTls::from_pem(identity.cert_pem.as_bytes(), identity.key_pem.as_bytes()).unwrap();
    let registry = registry(fast_config().tls(tls)).await;
    let url = registry.url();
    assert!(url.starts_with("rpcs://"), "{url}");

    // `SSL_CERT_DIR` adds a directory's certificates to the file's (and shells often
    // set it): the store is the file alone here.
    std::env::remove_var("SSL_CERT_DIR");
    // The store holds the registry's CA: trusted, no `ca=` needed.
    std::env::set_var("SSL_CERT_FILE", file("system.pem", &ca.cert_pem()));
    let registries = rpc_registry::connect(&url).unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(5),
        registries.members()[0].lookup(SERVICE),
    )
    .await
    .expect("in time")
    .expect("a registry the system store trusts");
    assert!(view.instances.is_empty());

    // The store holds another CA only: refused at the handshake.
    let other = TestCa::new("someone else's CA");
    std::env::set_var("SSL_CERT_FILE", file("other.pem", &other.cert_pem()));
    let registries = rpc_registry::connect(&url).unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        registries.members()[0].lookup(SERVICE),
    )
    .await
    .expect("in time")
    .expect_err("a registry the system store does not trust");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    // A store without a certificate: refused when the URL is parsed, saying so.
    std::env::set_var("SSL_CERT_FILE", file("empty.pem", ""));
    let error = rpc_registry::connect(&url).unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("system trust store"), "{error}");

    std::env::remove_var("SSL_CERT_FILE");
    registry.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

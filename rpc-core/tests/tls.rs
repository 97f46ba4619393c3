//! TLS on both sides: verified servers, mutual TLS with the client's identity visible
//! to handlers, and clear errors (not hangs) for every mismatch.

#![cfg(feature = "tls")]

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::time::{Duration, Instant};

use certs::TestCa;
use rpc_core::server::CallContext;
use rpc_core::{service, Client, ClientTls, RpcError, Server, ServerHandle, ServerTls};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tells the caller who it is, as the server saw it.
#[service(name = "test.WhoAmI")]
pub trait WhoAmI {
    /// The client certificate's common name and URIs, or `None` without one.
    async fn who(&self) -> Option<(String, Vec<String>)>;
    /// Echoes bytes (to move large frames through TLS).
    async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
}

struct Who;

impl WhoAmI for Who {
    async fn who(&self) -> Option<(String, Vec<String>)> {
        let identity = CallContext::current()?.peer_identity?;
        Some((identity.common_name.clone()?, identity.uris.clone()))
    }
    async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
        data
    }
}

async fn tls_server(tls: ServerTls) -> ServerHandle {
    Server::builder()
        .workers(2)
        .tls(tls)
        .add_service(WhoAmIServer::new(Who))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn()
}

fn server_tls(ca: &TestCa) -> ServerTls {
    let id = ca.server();
    ServerTls::from_pem(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).unwrap()
}

fn client_tls(ca: &TestCa) -> ClientTls {
    ClientTls::with_ca_pem(ca.cert_pem().as_bytes()).unwrap()
}

#[tokio::test]
async fn calls_over_tls_verify_the_server_by_ip_or_name() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let server = tls_server(server_tls(&ca)).await;
        // By IP address (the default) and by DNS name.
        for tls in [
            client_tls(&ca),
            client_tls(&ca).server_name("localhost").unwrap(),
        ] {
            let client = Client::builder()
                .tls(tls)
                .connect(server.local_addr())
                .await
                .unwrap();
            let who = WhoAmIClient::new(client);
            assert_eq!(who.who().await.unwrap(), None, "no client certificate");
        }
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn large_and_many_concurrent_calls_over_tls() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let server = tls_server(server_tls(&ca)).await;
        let client = Client::builder()
            .tls(client_tls(&ca))
            .connect(server.local_addr())
            .await
            .unwrap();
        let who = WhoAmIClient::new(client);
        // Frames far larger than a TLS record (16 KiB) and than one read.
        let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let back = who
            .echo(serde_bytes::ByteBuf::from(big.clone()))
            .await
            .unwrap();
        assert_eq!(back.into_vec(), big);
        let calls = (0..500u32).map(|i| {
            let who = who.clone();
            async move {
                let data = vec![(i % 256) as u8; 100 + i as usize * 37];
                let back = who
                    .echo(serde_bytes::ByteBuf::from(data.clone()))
                    .await
                    .unwrap();
                assert_eq!(back.into_vec(), data);
            }
        });
        futures_util::future::join_all(calls).await;
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn mutual_tls_shows_the_client_identity_to_handlers() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let tls = server_tls(&ca)
            .client_auth_required(ca.cert_pem().as_bytes())
            .unwrap();
        let server = tls_server(tls).await;
        let alice = ca.client("alice");
        let client = Client::builder()
            .tls(
                client_tls(&ca)
                    .identity_pem(alice.cert_pem.as_bytes(), alice.key_pem.as_bytes())
                    .unwrap(),
            )
            .connect(server.local_addr())
            .await
            .unwrap();
        let who = WhoAmIClient::new(client);
        assert_eq!(
            who.who().await.unwrap(),
            Some(("alice".to_owned(), vec!["spiffe://test/alice".to_owned()]))
        );

        // Without a certificate the handshake fails: the client sees an error, soon.
        let started = Instant::now();
        let anonymous = Client::builder()
            .tls(client_tls(&ca))
            .connect(server.local_addr())
            .await;
        let outcome = match anonymous {
            Err(e) => e.to_string(),
            Ok(client) => WhoAmIClient::new(client)
                .who()
                .await
                .expect_err("a client without a certificate is refused")
                .to_string(),
        };
        assert!(started.elapsed() < Duration::from_secs(3), "{outcome}");

        // A certificate from another CA is refused too.
        let other = TestCa::new("other CA").client("mallory");
        let mallory = Client::builder()
            .tls(
                client_tls(&ca)
                    .identity_pem(other.cert_pem.as_bytes(), other.key_pem.as_bytes())
                    .unwrap(),
            )
            .connect(server.local_addr())
            .await;
        let refused = match mallory {
            Err(_) => true,
            Ok(client) => WhoAmIClient::new(client).who().await.is_err(),
        };
        assert!(refused);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn optional_client_auth_serves_both() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let tls = server_tls(&ca)
            .client_auth_optional(ca.cert_pem().as_bytes())
            .unwrap();
        let server = tls_server(tls).await;
        let bob = ca.client("bob");
        let with = Client::builder()
            .tls(
                client_tls(&ca)
                    .identity_pem(bob.cert_pem.as_bytes(), bob.key_pem.as_bytes())
                    .unwrap(),
            )
            .connect(server.local_addr())
            .await
            .unwrap();
        let without = Client::builder()
            .tls(client_tls(&ca))
            .connect(server.local_addr())
            .await
            .unwrap();
        assert_eq!(
            WhoAmIClient::new(with).who().await.unwrap().map(|w| w.0),
            Some("bob".to_owned())
        );
        assert_eq!(WhoAmIClient::new(without).who().await.unwrap(), None);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_or_misnamed_server_fails_the_connect() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let server = tls_server(server_tls(&ca)).await;
        let stranger = TestCa::new("stranger CA");
        let err = Client::builder()
            .tls(client_tls(&stranger))
            .connect(server.local_addr())
            .await
            .expect_err("a server signed by an unknown CA is refused");
        assert!(matches!(err, RpcError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("TLS handshake"), "{err}");
        let err = Client::builder()
            .tls(client_tls(&ca).server_name("elsewhere.example").unwrap())
            .connect(server.local_addr())
            .await
            .expect_err("a certificate for another name is refused");
        assert!(err.to_string().contains("certificate"), "{err}");
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn plaintext_client_on_a_tls_port_is_told_so() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let server = tls_server(server_tls(&ca)).await;
        let client = Client::connect(server.local_addr()).await.unwrap();
        let started = Instant::now();
        let err = WhoAmIClient::new(client)
            .who()
            .await
            .expect_err("plaintext is refused");
        assert!(
            matches!(&err, RpcError::BadRequest(m) if m.contains("requires TLS")),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn tls_client_on_a_plaintext_port_fails_at_connect() {
    bounded(async {
        let (server, _) = start().await;
        let ca = TestCa::new("test CA");
        let started = Instant::now();
        let err = Client::builder()
            .tls(client_tls(&ca))
            .connect(server.local_addr())
            .await
            .expect_err("a plaintext server fails the handshake");
        assert!(matches!(err, RpcError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("plaintext"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_after_the_handshake_timeout() {
    bounded(async {
        let ca = TestCa::new("test CA");
        let server =
            tls_server(server_tls(&ca).handshake_timeout(Duration::from_millis(300))).await;
        // Connects and says nothing; then another that sends half a ClientHello.
        for bytes in [&b""[..], &[0x16, 0x03, 0x01, 0x01][..]] {
            let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
            raw.write_all(bytes).await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf))
                .await
                .expect("the server closes the connection");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            assert!(started.elapsed() >= Duration::from_millis(250));
        }
        // Meanwhile, and after, a good client is served.
        let client = Client::builder()
            .tls(client_tls(&ca))
            .connect(server.local_addr())
            .await
            .unwrap();
        assert_eq!(WhoAmIClient::new(client).who().await.unwrap(), None);
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn bad_tls_settings_are_refused_when_built_or_bound() {
    assert!(matches!(
        ServerTls::from_pem(b"not pem", b"not pem"),
        Err(RpcError::InvalidConfig(_))
    ));
    assert!(matches!(
        ClientTls::with_ca_pem(b""),
        Err(RpcError::InvalidConfig(_))
    ));
    let ca = TestCa::new("test CA");
    let other = ca.server();
    let mismatched = ServerTls::from_pem(ca.server().cert_pem.as_bytes(), other.key_pem.as_bytes());
    assert!(matches!(mismatched, Err(RpcError::InvalidConfig(_))));
    let err = Server::builder()
        .tls(server_tls(&ca).handshake_timeout(Duration::ZERO))
        .bind("127.0.0.1:0")
        .await
        .expect_err("zero handshake timeout");
    assert!(matches!(err, RpcError::InvalidConfig(_)), "{err}");
}

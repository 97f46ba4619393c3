//! What `#[service]` does with attributes and names on the trait: `#[cfg]` takes a
//! method out of every generated item, lint levels and `#[deprecated]` follow the stub
//! method, raw identifiers lose their `r#` on the wire, and owned types with `'static`
//! lifetimes are accepted. Each is called over a real socket.

use std::borrow::Cow;

use rpc_core::server::Service;
use rpc_core::{Client, Server, ServerHandle};

mod services {
    // Generated code must not trip these on the user's behalf: the skeleton serves a
    // deprecated method without using it, and the stub of the eight-argument method
    // carries the method's `allow`.
    #![deny(deprecated, clippy::too_many_arguments)]

    use std::borrow::Cow;

    use rpc_core::service;

    /// Methods configured in and out.
    #[service(name = "test.Attrs")]
    pub trait Attrs {
        /// Always there.
        async fn kept(&self, n: u64) -> u64;
        /// Configured out: its types do not even exist, so any generated item that
        /// kept it (stub, dispatch arm, method list, checks) would not compile.
        #[cfg(not(test))]
        async fn gone(&self, x: NoSuchType) -> NoSuchResult;
        /// Configured in.
        #[cfg(test)]
        async fn configured_in(&self) -> u64;
        /// Old; use `kept`.
        #[deprecated = "use `kept`"]
        async fn old(&self, n: u64) -> u64;
        /// Many arguments, allowed here and so on the stub.
        #[allow(clippy::too_many_arguments)]
        #[allow(unknown_lints)]
        async fn sum(&self, a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8) -> u64;
        /// An owned type with a `'static` lifetime, both ways.
        async fn shout(&self, text: Cow<'static, str>) -> Cow<'static, str>;
    }

    /// Raw identifiers: the trait name is the default service name.
    #[allow(non_camel_case_types)]
    #[service]
    pub trait r#match {
        async fn r#type(&self, r#in: u64) -> u64;
        #[oneway]
        async fn r#loop(&self);
    }

    /// A deprecated service: its stub and skeleton types are deprecated too, and
    /// the generated code does not warn about its own use of them.
    #[deprecated = "use `Attrs`"]
    #[service]
    pub trait Retired {
        async fn still_works(&self) -> u64;
    }

    /// A whole service configured out with `#[cfg]` after `#[service]`.
    #[service]
    #[cfg(not(test))]
    pub trait Absent {
        async fn nothing(&self, x: NoSuchType);
    }

    pub(crate) struct Impl;

    impl Attrs for Impl {
        async fn kept(&self, n: u64) -> u64 {
            n + 1
        }
        async fn configured_in(&self) -> u64 {
            7
        }
        async fn old(&self, n: u64) -> u64 {
            n * 2
        }
        async fn sum(&self, a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8) -> u64 {
            [a, b, c, d, e, f, g, h].iter().map(|&x| u64::from(x)).sum()
        }
        async fn shout(&self, text: Cow<'static, str>) -> Cow<'static, str> {
            Cow::Owned(text.to_uppercase())
        }
    }

    #[allow(deprecated)]
    impl Retired for Impl {
        async fn still_works(&self) -> u64 {
            9
        }
    }

    impl r#match for Impl {
        async fn r#type(&self, r#in: u64) -> u64 {
            r#in + 100
        }
        async fn r#loop(&self) {}
    }
}

use services::{matchClient, matchServer, AttrsClient, AttrsServer, Impl};

#[allow(deprecated)]
async fn serve() -> (ServerHandle, Client) {
    let server = Server::builder()
        .add_service(AttrsServer::new(Impl))
        .add_service(services::RetiredServer::new(Impl))
        .add_service(matchServer::new(Impl))
        .bind("127.0.0.1:0")
        .await
        .expect("bind")
        .spawn();
    let client = Client::connect(server.local_addr()).await.expect("connect");
    (server, client)
}

#[tokio::test]
async fn cfg_removes_a_method_everywhere_and_keeps_the_others() {
    let (server, client) = serve().await;
    let stub = AttrsClient::new(client);
    assert_eq!(stub.kept(1).await.unwrap(), 2);
    assert_eq!(stub.configured_in().await.unwrap(), 7);
    assert_eq!(
        AttrsServer::new(Impl).methods(),
        &["kept", "configured_in", "old", "sum", "shout"]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
#[allow(deprecated)]
async fn deprecated_and_lint_attributes_follow_the_stub() {
    let (server, client) = serve().await;
    let stub = AttrsClient::new(client.clone());
    // The stub is deprecated like the method (this test allows it).
    assert_eq!(stub.old(21).await.unwrap(), 42);
    assert_eq!(stub.sum(1, 2, 3, 4, 5, 6, 7, 8).await.unwrap(), 36);
    let retired = services::RetiredClient::new(client);
    assert_eq!(retired.still_works().await.unwrap(), 9);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_identifiers_lose_their_prefix_on_the_wire() {
    let (server, client) = serve().await;
    let skeleton = matchServer::new(Impl);
    assert_eq!(skeleton.name(), "match");
    assert_eq!(matchClient::SERVICE_NAME, "match");
    assert_eq!(skeleton.methods(), &["type", "loop"]);
    // The server answers only to the names above, so the stub sent `match.type`.
    let stub = matchClient::new(client);
    assert_eq!(stub.r#type(1).await.unwrap(), 101);
    stub.r#loop().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn static_lifetimes_are_owned_types() {
    let (server, client) = serve().await;
    let stub = AttrsClient::new(client);
    let loud = stub.shout(Cow::Borrowed("quiet")).await.unwrap();
    assert_eq!(loud, "QUIET");
    server.shutdown().await.unwrap();
}

//! Handlers see the call's context: peer, deadline, auth token, attachments — also
//! after an `.await` and on the business pool.

mod support;

use std::time::Duration;

use rpc_core::server::CallContext;
use rpc_core::{service, Client, Server};
use serde::{Deserialize, Serialize};
use support::bounded;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Seen {
    tenant: Option<String>,
    token: Option<String>,
    has_deadline: bool,
    peer_is_loopback: bool,
}

#[service(name = "test.Context")]
trait Introspect {
    async fn seen(&self, sleep_ms: u64) -> Seen;
}

struct Impl;

fn seen_now() -> Seen {
    CallContext::with_current(|ctx| {
        let ctx = ctx.expect("a handler runs with a context");
        Seen {
            tenant: ctx
                .attachment("tenant")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            token: ctx
                .auth_token
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            has_deadline: ctx.deadline.is_some(),
            peer_is_loopback: ctx.peer.ip().is_loopback(),
        }
    })
}

impl Introspect for Impl {
    async fn seen(&self, sleep_ms: u64) -> Seen {
        let before = seen_now();
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        let after = seen_now();
        assert_eq!(before, after, "the context survives an await");
        after
    }
}

async fn check(builder: rpc_core::ServerBuilder) {
    let server = builder
        .add_service(IntrospectServer::new(Impl))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn();
    let client = Client::builder()
        .auth_token("s3cr3t")
        .connect(server.local_addr())
        .await
        .unwrap();
    let stub = IntrospectClient::new(client);
    for sleep_ms in [0, 30] {
        let seen = stub
            .seen(sleep_ms)
            .attachment("tenant", "acme")
            .await
            .unwrap();
        assert_eq!(
            seen,
            Seen {
                tenant: Some("acme".into()),
                token: Some("s3cr3t".into()),
                has_deadline: true,
                peer_is_loopback: true,
            }
        );
    }
    let seen = stub.seen(0).await.unwrap();
    assert_eq!(seen.tenant, None);
    assert!(
        CallContext::current().is_none(),
        "no context outside handlers"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_on_workers_see_the_call_context() {
    bounded(check(Server::builder().workers(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_on_the_business_pool_see_the_call_context() {
    bounded(check(Server::builder().workers(1).business_pool(2))).await;
}

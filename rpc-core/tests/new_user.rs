#![allow(missing_docs)]
//! What a new user hit, each pinned down: constructors with one shape and no panic
//! outside a runtime, error types usable with `?`, one bound for generic code, sync
//! mode where blocking is safe, error texts that say which call and which type.

mod support;

use std::error::Error;
use std::future::IntoFuture;
use std::time::Duration;

use rpc_core::lb::Provider;
use rpc_core::{service, Blob, Client, RemoteCall, RpcError, Server};
use serde::{Deserialize, Serialize};
use support::{bounded, start, CalculatorClient};

/// The README's error type: `Debug`, `Serialize`, `Deserialize`, and no `Display`.
#[derive(Debug, Serialize, Deserialize)]
pub enum InventoryError {
    NotFound { sku: String },
    InsufficientStock { sku: String, available: u32 },
}

#[service(name = "test.Inventory")]
pub trait Inventory {
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError>;
    async fn count(&self) -> u64;
}

struct Store;

impl Inventory for Store {
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError> {
        if quantity > 3 {
            Err(InventoryError::InsufficientStock { sku, available: 3 })
        } else {
            Ok(3 - quantity)
        }
    }
    async fn count(&self) -> u64 {
        42
    }
}

/// `test.Calculator`'s `add` as a client that expects the wrong result type.
#[service(name = "test.Calculator")]
pub trait WrongResult {
    async fn add(&self, a: i64, b: i64) -> String;
}

async fn inventory() -> (rpc_core::ServerHandle, InventoryClient) {
    let server = Server::builder()
        .add_service(InventoryServer::new(Store))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn();
    let client = InventoryClient::new(Client::connect(server.local_addr()).await.unwrap());
    (server, client)
}

#[tokio::test]
async fn a_service_error_without_display_goes_through_question_mark_into_box_dyn_error() {
    async fn app(stub: &InventoryClient) -> Result<u32, Box<dyn Error>> {
        let left = stub.reserve("espresso".into(), 1).await?;
        let _ = stub.reserve("espresso".into(), 99).await?;
        Ok(left)
    }
    let (server, stub) = inventory().await;
    let err = app(&stub).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("InsufficientStock"), "{text}");
    assert!(text.contains("available: 3"), "{text}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_method_without_arguments_is_a_call_of_unit() {
    let (server, stub) = inventory().await;
    let call: rpc_core::Call<(), u64> = stub.count();
    assert_eq!(call.await.unwrap(), 42);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn generic_code_names_one_bound() {
    async fn with_deadline<C: RemoteCall>(call: C) -> Result<C::Ok, RpcError<C::Err>> {
        call.timeout(Duration::from_secs(2)).await
    }
    let (server, stub) = inventory().await;
    assert_eq!(with_deadline(stub.count()).await.unwrap(), 42);
    assert_eq!(
        with_deadline(stub.reserve("tea".into(), 1)).await.unwrap(),
        2
    );
    assert!(matches!(
        with_deadline(stub.reserve("tea".into(), 9)).await,
        Err(RpcError::Application(
            InventoryError::InsufficientStock { .. }
        ))
    ));
    server.shutdown().await.unwrap();
}

#[test]
fn constructors_outside_a_runtime_return_an_error_instead_of_panicking() {
    let providers = [Provider::new("127.0.0.1:9".parse().unwrap())];
    let err = futures_executor::block_on(
        Client::builder().connect_providers("test.Inventory", providers.clone()),
    )
    .unwrap_err();
    assert!(matches!(err, RpcError::NoRuntime(_)), "{err:?}");
    assert!(err.to_string().contains("_blocking"), "{err}");

    let err = futures_executor::block_on(Client::connect("127.0.0.1:9")).unwrap_err();
    assert!(matches!(err, RpcError::NoRuntime(_)), "{err:?}");

    let err = futures_executor::block_on(Server::builder().bind("127.0.0.1:0")).unwrap_err();
    assert!(matches!(err, RpcError::NoRuntime(_)), "{err:?}");

    // The blocking variants own a runtime, and return the same `Result` shape.
    let client = Client::builder()
        .connect_providers_blocking("test.Inventory", providers)
        .unwrap();
    assert!(client.balancer().is_some());
}

#[test]
fn names_that_do_not_resolve_and_ports_that_cannot_be_bound_say_so() {
    let err = Client::connect_blocking("no-such-host.invalid:1").unwrap_err();
    assert!(
        matches!(&err, RpcError::Resolve { addr, .. } if addr.contains("no-such-host")),
        "{err:?}"
    );
    assert!(err.source().is_some(), "keeps its source");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Server::builder().bind(addr).await.unwrap_err();
        assert!(matches!(err, RpcError::Bind { .. }), "{err:?}");
        assert!(err.source().is_some());
    });
}

#[test]
fn blocking_is_refused_only_where_it_would_deadlock() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, _) = rt.block_on(start());
    let addr = server.local_addr();
    // A client that owns its runtime may block a spawn_blocking thread of another
    // runtime: its connections run elsewhere.
    let owned = CalculatorClient::new(Client::connect_blocking(addr).unwrap());
    let stub = owned.clone();
    let sum = rt
        .block_on(rt.spawn_blocking(move || stub.add(1, 2).blocking()))
        .unwrap();
    assert_eq!(sum.unwrap(), 3);
    // ...but not a thread of its own runtime (a callback), where it would wait on
    // itself.
    let (tx, rx) = std::sync::mpsc::channel();
    let stub = owned.clone();
    owned.add(1, 1).callback(move |_| {
        let _ = tx.send(stub.add(2, 2).blocking());
    });
    let inner = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(inner, Err(RpcError::BlockingInAsyncContext)),
        "{inner:?}"
    );
    // A client on the caller's runtime is refused anywhere inside a runtime.
    let shared = rt.block_on(async { CalculatorClient::new(Client::connect(addr).await.unwrap()) });
    let refused = rt.block_on(async { shared.add(1, 2).blocking() });
    assert!(
        matches!(refused, Err(RpcError::BlockingInAsyncContext)),
        "{refused:?}"
    );
    rt.block_on(server.shutdown()).unwrap();
}

#[tokio::test]
async fn a_request_over_the_frame_limit_is_a_local_error_and_nothing_is_sent() {
    let (server, _) = start().await;
    let client = Client::builder()
        .max_frame_len(1 << 20)
        .connect(server.local_addr())
        .await
        .unwrap();
    #[service(name = "test.Calculator")]
    trait BlobEcho {
        async fn echo(&self, data: Blob) -> Blob;
    }
    let stub = BlobEchoClient::new(client.clone());
    let err = bounded(stub.echo(Blob::from(vec![7u8; 2 << 20])).into_future())
        .await
        .unwrap_err();
    match err {
        RpcError::RequestTooLarge { len, max } => {
            assert!(len > 2 << 20, "{len}");
            assert_eq!(max, 1 << 20);
        }
        other => panic!("expected RequestTooLarge, got {other:?}"),
    }
    // The connection was never touched: the next call goes through on it.
    let calc = CalculatorClient::new(client);
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_result_that_does_not_decode_names_the_method_and_the_type() {
    let (server, _) = start().await;
    let stub = WrongResultClient::new(Client::connect(server.local_addr()).await.unwrap());
    let err = stub.add(1, 2).await.unwrap_err();
    let RpcError::Serialization { message: text, .. } = &err else {
        panic!("expected a serialization error, got {err:?}");
    };
    assert!(text.contains("test.Calculator.add"), "{text}");
    assert!(text.contains("String"), "{text}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn settings_out_of_range_are_refused_when_connecting_and_binding() {
    use rpc_core::lb::Provider;
    let (server, _) = start().await;
    let addr = server.local_addr();
    let refused = [
        Client::builder().connections(0),
        Client::builder().timeout(Duration::ZERO),
        Client::builder().max_frame_len(64),
        Client::builder().heartbeat(Duration::from_secs(10), Duration::from_secs(5)),
        Client::builder().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
    ];
    for builder in refused {
        let shown = format!("{builder:?}");
        let err = builder.clone().connect(addr).await.unwrap_err();
        assert!(
            matches!(err, RpcError::InvalidConfig(_)),
            "{shown}: {err:?}"
        );
        let err = builder
            .connect_providers("test.Calculator", [Provider::new(addr)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, RpcError::InvalidConfig(_)),
            "{shown}: {err:?}"
        );
    }
    let refused = [
        Server::builder().workers(0),
        Server::builder().business_pool(0),
        Server::builder().max_frame_len(64),
        Server::builder().idle_timeout(Duration::ZERO),
    ];
    for builder in refused {
        let shown = format!("{builder:?}");
        let err = builder.bind("127.0.0.1:0").await.unwrap_err();
        let RpcError::InvalidConfig(text) = &err else {
            panic!("{shown}: {err:?}");
        };
        assert!(!text.is_empty());
    }
    // The smallest frame cap accepted works end to end.
    let (small, _) = support::start_with(Server::builder().workers(1).max_frame_len(1024)).await;
    let client = Client::builder()
        .max_frame_len(1024)
        .connect(small.local_addr())
        .await
        .unwrap();
    let calc = CalculatorClient::new(client);
    let fits = serde_bytes::ByteBuf::from(vec![1u8; 900]);
    assert_eq!(calc.echo(fits.clone()).await.unwrap(), fits);
    let over = calc.echo(serde_bytes::ByteBuf::from(vec![1u8; 2000])).await;
    assert!(
        matches!(over, Err(RpcError::RequestTooLarge { .. })),
        "{over:?}"
    );
    assert_eq!(
        calc.add(1, 2).await.unwrap(),
        3,
        "the connection still works"
    );
    small.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_keep_their_sources() {
    let (server, _) = start().await;
    let stub = WrongResultClient::new(Client::connect(server.local_addr()).await.unwrap());
    let err = stub.add(1, 2).await.unwrap_err();
    assert!(matches!(err, RpcError::Serialization { .. }));
    assert!(err.source().is_some(), "the decoder's error: {err:?}");

    // A connection reset by the peer: ConnectionLost carries the I/O error.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resetter = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // Wait for the request, then reset (linger 0 sends RST on close).
        let mut stream = stream;
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        stream.set_zero_linger().unwrap();
        drop(stream);
    });
    let calc = CalculatorClient::new(Client::connect(addr).await.unwrap());
    let err = calc.add(1, 2).await.unwrap_err();
    resetter.await.unwrap();
    match &err {
        RpcError::ConnectionLost { source, .. } => {
            assert!(source.is_some(), "{err:?}");
            assert!(err.source().is_some());
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}

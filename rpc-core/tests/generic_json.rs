//! Generic invocation: any method with JSON arguments and a JSON result, against a
//! real server over TCP, with the lossy corners of JSON <-> MessagePack pinned down.

#![cfg(feature = "json")]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rpc_core::{service, Blob, Client, GenericError, RpcError, Server, ServerHandle};
use serde_json::json;
use support::*;

/// The corners: big integers, bytes, maps with integer keys.
#[service(name = "test.Corners")]
trait Corners {
    /// Echoes its integers.
    async fn big(&self, unsigned: u64, signed: i64) -> (u64, i64);
    /// Echoes bytes as a `bin`.
    async fn bytes(&self, data: Blob) -> Blob;
    /// Counts per id.
    async fn by_id(&self, ids: Vec<u32>) -> HashMap<u32, String>;
    /// Takes a map keyed by integers.
    async fn keyed(&self, map: BTreeMap<u32, String>) -> usize;
    /// An optional argument.
    async fn greet(&self, name: String, title: Option<String>) -> String;
}

struct CornersImpl;

impl Corners for CornersImpl {
    async fn big(&self, unsigned: u64, signed: i64) -> (u64, i64) {
        (unsigned, signed)
    }
    async fn bytes(&self, data: Blob) -> Blob {
        data
    }
    async fn by_id(&self, ids: Vec<u32>) -> HashMap<u32, String> {
        ids.into_iter().map(|id| (id, format!("#{id}"))).collect()
    }
    async fn keyed(&self, map: BTreeMap<u32, String>) -> usize {
        map.len()
    }
    async fn greet(&self, name: String, title: Option<String>) -> String {
        match title {
            Some(title) => format!("{title} {name}"),
            None => name,
        }
    }
}

async fn server() -> (ServerHandle, Client) {
    let server = Server::builder()
        .workers(1)
        .add_service(CalculatorServer::new(Calc::default()))
        .add_service(CornersServer::new(CornersImpl))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn();
    let client = Client::builder()
        .timeout(Duration::from_secs(2))
        .connect(server.local_addr())
        .await
        .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_named_and_single_arguments() {
    bounded(async {
        let (server, client) = server().await;
        let sum = client
            .call_json("test.Calculator", "add", json!([2, 3]))
            .await
            .unwrap();
        assert_eq!(sum, json!(5));
        let sum = client
            .call_json("test.Calculator", "add", json!({"b": 3, "a": 2}))
            .await
            .unwrap();
        assert_eq!(sum, json!(5));
        assert_eq!(
            client
                .call_json("test.Calculator", "sleep", json!(1))
                .await
                .unwrap(),
            json!(1),
            "a scalar is the single argument"
        );
        assert_eq!(
            client
                .call_json("test.Calculator", "hits", json!([]))
                .await
                .unwrap(),
            json!(2)
        );
        // Structs are objects; the result comes back as one.
        let mid = client
            .call_json(
                "test.Calculator",
                "midpoint",
                json!([{"x": 0.0, "y": 0.0, "label": "a"}, {"x": 2, "y": 4, "label": "b"}]),
            )
            .await
            .unwrap();
        assert_eq!(mid, json!({"x": 1.0, "y": 2.0, "label": "a-b"}));
        // A missing named argument is null, which an Option takes.
        let hello = client
            .call_json("test.Corners", "greet", json!({"name": "Ada"}))
            .await
            .unwrap();
        assert_eq!(hello, json!("Ada"));
        let hello = client
            .call_json(
                "test.Corners",
                "greet",
                json!({"name": "Ada", "title": "Dr"}),
            )
            .await
            .unwrap();
        assert_eq!(hello, json!("Dr Ada"));
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_are_json_and_apart_from_call_errors() {
    bounded(async {
        let (server, client) = server().await;
        match client
            .call_json("test.Calculator", "divide", json!([1, 0]))
            .await
        {
            Err(e @ GenericError::Application(_)) => {
                assert_eq!(e.kind(), "APPLICATION_ERROR");
                let GenericError::Application(value) = e else { unreachable!() };
                assert_eq!(value, json!("DivideByZero"));
            }
            other => panic!("{other:?}"),
        }
        match client
            .call_json("test.Calculator", "divide", json!([i64::MIN, -1]))
            .await
        {
            Err(GenericError::Application(value)) => {
                assert_eq!(value, json!({"Overflow": {"a": i64::MIN, "b": -1}}));
            }
            other => panic!("{other:?}"),
        }
        let wrong = client
            .call_json("test.Calculator", "add", json!(["two", 3]))
            .await
            .unwrap_err();
        assert!(matches!(&wrong, GenericError::Rpc(RpcError::BadRequest(_))), "{wrong:?}");
        assert_eq!(wrong.kind(), "BAD_REQUEST");
        let missing = client
            .call_json("test.Calculator", "nope", json!([]))
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), "METHOD_NOT_FOUND", "{missing:?}");
        let missing = client
            .call_json("test.Nope", "nope", json!([]))
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), "SERVICE_NOT_FOUND", "{missing:?}");
        // Named arguments are checked against the description before anything is sent.
        let unknown = client
            .call_json("test.Calculator", "add", json!({"a": 1, "c": 2}))
            .await
            .unwrap_err();
        assert!(
            matches!(&unknown, GenericError::Arguments { reason, .. } if reason.contains("`c`") && reason.contains("a, b")),
            "{unknown:?}"
        );
        let unknown = client
            .call_json("test.Calculator", "nope", json!({"a": 1}))
            .await
            .unwrap_err();
        assert_eq!(unknown.kind(), "METHOD_NOT_FOUND", "{unknown:?}");
        let unknown = client
            .call_json("test.Nope", "add", json!({"a": 1}))
            .await
            .unwrap_err();
        assert_eq!(unknown.kind(), "SERVICE_NOT_FOUND", "{unknown:?}");
        // Server-side failures keep their status.
        let timeout = client
            .call_json("test.Calculator", "sleep", json!([500]))
            .timeout(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(timeout.kind(), "TIMEOUT", "{timeout:?}");
        let panic = client
            .call_json("test.Calculator", "explode", json!([]))
            .await
            .unwrap_err();
        assert_eq!(panic.kind(), "INTERNAL_ERROR", "{panic:?}");
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneway_returns_null_once_written() {
    bounded(async {
        let calc = Calc::default();
        let recorded = std::sync::Arc::clone(&calc.recorded);
        let server = Server::builder()
            .workers(1)
            .add_service(CalculatorServer::new(calc))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let client = Client::connect(server.local_addr()).await.unwrap();
        let done = client
            .call_json("test.Calculator", "record", json!([7]))
            .oneway()
            .await
            .unwrap();
        assert_eq!(done, serde_json::Value::Null);
        // A oneway method is also sent without the flag: its reply is nil.
        let done = client
            .call_json("test.Calculator", "record", json!([5]))
            .await
            .unwrap();
        assert_eq!(done, serde_json::Value::Null);
        tokio::time::timeout(Duration::from_secs(5), async {
            while recorded.load(std::sync::atomic::Ordering::SeqCst) != 12 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both calls ran");
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_corners_have_a_fixed_answer() {
    bounded(async {
        let (server, client) = server().await;
        // 64-bit integers beyond 2^53 stay exact, both ways.
        let big = client
            .call_json("test.Corners", "big", json!([u64::MAX, i64::MIN]))
            .await
            .unwrap();
        assert_eq!(big, json!([u64::MAX, i64::MIN]));
        assert_eq!(
            serde_json::to_string(&big).unwrap(),
            "[18446744073709551615,-9223372036854775808]"
        );
        // Beyond u64 a JSON integer is a float, which an integer argument refuses.
        let too_big: serde_json::Value = serde_json::from_str("[18446744073709551616, 0]").unwrap();
        let error = client
            .call_json("test.Corners", "big", too_big)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "BAD_REQUEST", "{error:?}");
        // bin comes back as an array of numbers, and goes back in as one.
        let bytes = client
            .call_json("test.Corners", "bytes", json!([[0, 1, 255]]))
            .await
            .unwrap();
        assert_eq!(bytes, json!([0, 1, 255]));
        let again = client
            .call_json("test.Corners", "bytes", json!([bytes]))
            .await
            .unwrap();
        assert_eq!(again, json!([0, 1, 255]));
        // Integer map keys come back as strings...
        let by_id = client
            .call_json("test.Corners", "by_id", json!([[1, 20]]))
            .await
            .unwrap();
        assert_eq!(by_id, json!({"1": "#1", "20": "#20"}));
        // ...and cannot be sent: JSON keys are strings, the server wants integers.
        let error = client
            .call_json("test.Corners", "keyed", json!([{"1": "a"}]))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "BAD_REQUEST", "{error:?}");
        assert_eq!(
            client
                .call_json("test.Corners", "keyed", json!([{}]))
                .await
                .unwrap(),
            json!(0)
        );
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_are_not_application_errors() {
    bounded(async {
        let silent = black_hole(None).await;
        let client = Client::builder()
            .timeout(Duration::from_millis(100))
            .connect(silent)
            .await
            .unwrap();
        let error = client
            .call_json("test.Calculator", "add", json!([1, 2]))
            .await
            .unwrap_err();
        assert!(
            matches!(error, GenericError::Rpc(RpcError::Timeout(_))),
            "{error:?}"
        );
        assert_eq!(error.kind(), "TIMEOUT");
    })
    .await;
}

/// The service of docs/PROTOCOL.md's reflection example, as written there.
mod documented {
    use rpc_core::service;

    /// Arithmetic.
    #[service]
    pub trait Calculator {
        /// Adds.
        async fn add(&self, a: i64, b: i64) -> i64;
    }

    pub(crate) struct Adder;

    impl Calculator for Adder {
        async fn add(&self, a: i64, b: i64) -> i64 {
            a + b
        }
    }
}

/// The example of docs/PROTOCOL.md section 14 is what a server answers, read as JSON
/// by a generic call of the reflection service itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_reflection_example_is_what_a_server_answers() {
    bounded(async {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let block = doc
            .split("```json reflection-example\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .expect("docs/PROTOCOL.md has a ```json reflection-example block");
        let documented: serde_json::Value = serde_json::from_str(block).unwrap();
        let server = Server::builder()
            .workers(1)
            .add_service(documented::CalculatorServer::new(documented::Adder))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let client = Client::connect(server.local_addr()).await.unwrap();
        let answered = client
            .call_json("rpc.Reflection", "describe", json!(["Calculator"]))
            .await
            .unwrap();
        assert_eq!(answered, documented);
        assert_eq!(
            serde_json::to_string(&answered).unwrap(),
            serde_json::to_string(&documented).unwrap(),
            "keys in the documented order"
        );
        let services = client
            .call_json("rpc.Reflection", "services", json!([]))
            .await
            .unwrap();
        assert_eq!(services, json!(["Calculator", "rpc.Reflection"]));
        server.shutdown().await.unwrap();
    })
    .await;
}

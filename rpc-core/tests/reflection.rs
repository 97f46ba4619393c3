//! The built-in reflection service: every server hosts `rpc.Reflection`, which lists
//! the services on its port and describes each from what `#[service]` generated.

mod support;

use std::collections::HashMap;

use rpc_core::reflection::{ReflectionClient, ReflectionError, REFLECTION_SERVICE};
use rpc_core::server::{DispatchError, Dispatched, Service};
use rpc_core::{service, Client, RpcError, Server};
use support::*;

/// Keeps a map with integer keys, and has a raw-identifier method.
#[service(name = "test.Odd")]
trait Odd {
    /// Names by number.
    ///
    /// Second paragraph.
    #[idempotent]
    async fn names(&self, by_id: HashMap<u32, String>) -> Vec<(u32, String)>;
    /// A raw identifier: `type` on the wire.
    async fn r#type(&self, r#ref: Option<Vec<u8>>) -> ::std::result::Result<(), String>;
    #[cfg(any())]
    async fn configured_out(&self) -> u8;
}

struct OddImpl;

impl Odd for OddImpl {
    async fn names(&self, by_id: HashMap<u32, String>) -> Vec<(u32, String)> {
        let mut all: Vec<_> = by_id.into_iter().collect();
        all.sort();
        all
    }
    async fn r#type(&self, _: Option<Vec<u8>>) -> Result<(), String> {
        Ok(())
    }
}

/// A hand-written service: described by its method names only.
struct Manual;

impl Service for Manual {
    fn name(&self) -> &str {
        "test.Manual"
    }
    fn methods(&self) -> &'static [&'static str] {
        &["poke"]
    }
    fn call(&self, method: &str, _args: &[u8]) -> Result<Dispatched, DispatchError> {
        Err(DispatchError::MethodNotFound {
            service: "test.Manual".into(),
            method: method.into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_lists_and_describes_its_services() {
    bounded(async {
        let server = Server::builder()
            .workers(1)
            .add_service(CalculatorServer::new(Calc::default()))
            .add_service(OddServer::new(OddImpl))
            .add_service(Manual)
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let reflection = ReflectionClient::new(Client::connect(server.local_addr()).await.unwrap());
        assert_eq!(
            reflection.services().await.unwrap(),
            [
                "rpc.Reflection",
                "test.Calculator",
                "test.Manual",
                "test.Odd"
            ]
        );

        let calc = reflection.describe("test.Calculator".into()).await.unwrap();
        assert_eq!(calc.name, "test.Calculator");
        assert_eq!(calc.docs, "The test service.");
        assert!(calc.described);
        let names: Vec<&str> = calc.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["add", "divide", "sleep", "midpoint", "hits", "record", "explode", "echo"]
        );
        let divide = calc.method("divide").unwrap();
        assert_eq!(divide.docs, "Divides; typed error on zero.");
        assert_eq!(divide.result, "i64");
        assert_eq!(divide.error.as_deref(), Some("MathError"));
        assert!(!divide.oneway);
        assert_eq!(
            divide.signature(),
            "divide(a: i64, b: i64) -> Result<i64, MathError>"
        );
        let record = calc.method("record").unwrap();
        assert!(record.oneway);
        assert_eq!(record.result, "()");
        assert_eq!(record.signature(), "record(n: u64)  [oneway]");
        assert_eq!(
            calc.method("echo").unwrap().signature(),
            "echo(data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf"
        );
        assert_eq!(calc.method("hits").unwrap().signature(), "hits() -> u64");

        let odd = reflection.describe("test.Odd".into()).await.unwrap();
        assert_eq!(
            odd.methods.len(),
            2,
            "the configured-out method is not listed"
        );
        let names = odd.method("names").unwrap();
        assert_eq!(names.docs, "Names by number.\n\nSecond paragraph.");
        assert_eq!(names.args[0].name, "by_id");
        assert_eq!(names.args[0].ty, "HashMap<u32, String>");
        assert_eq!(names.result, "Vec<(u32, String)>");
        assert!(names.idempotent, "declared #[idempotent]");
        assert!(
            names.signature().ends_with("  [idempotent]"),
            "{}",
            names.signature()
        );
        assert_eq!(OddClient::IDEMPOTENT_METHODS, ["names"]);
        let ty = odd.method("type").unwrap();
        assert!(!ty.idempotent);
        assert_eq!(ty.args[0].name, "ref", "raw identifiers lose their r#");
        assert_eq!(ty.args[0].ty, "Option<Vec<u8>>");
        assert_eq!(ty.result, "()");
        assert_eq!(ty.error.as_deref(), Some("String"));

        let manual = reflection.describe("test.Manual".into()).await.unwrap();
        assert!(!manual.described);
        assert_eq!(manual.methods[0].name, "poke");

        // It describes itself.
        let own = reflection
            .describe(REFLECTION_SERVICE.into())
            .await
            .unwrap();
        assert_eq!(
            own.method("describe").unwrap().signature(),
            "describe(service: String) -> Result<ServiceDescriptor, ReflectionError>"
        );
        let all = reflection.describe_all().await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[1], calc);

        match reflection.describe("test.Nope".into()).await {
            Err(RpcError::Application(ReflectionError::UnknownService { service, hosted })) => {
                assert_eq!(service, "test.Nope");
                assert_eq!(hosted.len(), 4);
            }
            other => panic!("{other:?}"),
        }
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_no_services_still_hosts_reflection() {
    bounded(async {
        let server = Server::builder()
            .workers(1)
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let reflection = ReflectionClient::new(Client::connect(server.local_addr()).await.unwrap());
        assert_eq!(reflection.services().await.unwrap(), ["rpc.Reflection"]);
        server.shutdown().await.unwrap();
    })
    .await;
}

/// Someone else's service under the reserved name.
#[service(name = "rpc.Reflection")]
trait Impostor {
    async fn services(&self) -> Vec<String>;
}

struct ImpostorImpl;

impl Impostor for ImpostorImpl {
    async fn services(&self) -> Vec<String> {
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reflection_name_is_reserved() {
    let error = Server::builder()
        .add_service(ImpostorServer::new(ImpostorImpl))
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RpcError::InvalidConfig(m) if m.contains("rpc.Reflection") && m.contains("reserved")),
        "{error:?}"
    );
}

//! With the `otel` feature: spans exported to OpenTelemetry (an in-memory exporter)
//! form one trace across a consumer, provider A and provider B, and the ids on the
//! wire are the exported ones.

#![cfg(feature = "otel")]

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rpc_core::filter::trace::TraceLayer;
use rpc_core::server::CallContext;
use rpc_core::{service, Client, Server};
use tracing_subscriber::layer::SubscriberExt;

/// A provider that answers with the trace it saw, or asks the next one first.
#[service(name = "test.OtelRelay")]
pub trait OtelRelay {
    /// (trace id, this call's span id) of every hop from here on.
    async fn relay(&self) -> Vec<(String, String)>;
}

struct Hop {
    next: Option<OtelRelayClient>,
}

impl OtelRelay for Hop {
    async fn relay(&self) -> Vec<(String, String)> {
        let span = CallContext::with_current(|c| c.and_then(|c| c.span)).expect("traced");
        let mut hops = vec![(span.trace_id_hex(), span.span_id_hex())];
        if let Some(next) = &self.next {
            hops.extend(next.relay().await.unwrap());
        }
        hops
    }
}

async fn server(next: Option<OtelRelayClient>) -> rpc_core::ServerHandle {
    Server::builder()
        .workers(1)
        .layer(TraceLayer::server())
        .add_service(OtelRelayServer::new(Hop { next }))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn()
}

async fn client(addr: std::net::SocketAddr) -> OtelRelayClient {
    OtelRelayClient::new(
        Client::builder()
            .layer(TraceLayer::client())
            .connect(addr)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_form_one_trace_with_the_ids_sent_on_the_wire() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("rpc-test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    tokio::time::timeout(Duration::from_secs(30), async {
        let b = server(None).await;
        let a = server(Some(client(b.local_addr()).await)).await;
        let hops = client(a.local_addr()).await.relay().await.unwrap();
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        let _ = provider.force_flush();

        let spans = exporter.get_finished_spans().unwrap();
        let rpc: Vec<_> = spans
            .iter()
            .filter(|s| s.name.starts_with("rpc."))
            .collect();
        assert_eq!(rpc.len(), 4, "{rpc:#?}");
        let trace = rpc[0].span_context.trace_id();
        assert!(rpc.iter().all(|s| s.span_context.trace_id() == trace));
        let find = |name: &str, parent: Option<opentelemetry::trace::SpanId>| {
            rpc.iter()
                .find(|s| s.name == name && parent.is_none_or(|p| s.parent_span_id == p))
                .unwrap_or_else(|| panic!("no {name} span with parent {parent:?}: {rpc:#?}"))
        };
        let consumer = rpc
            .iter()
            .find(|s| {
                s.name == "rpc.client" && s.parent_span_id == opentelemetry::trace::SpanId::INVALID
            })
            .expect("the consumer's root span");
        let a_server = find("rpc.server", Some(consumer.span_context.span_id()));
        let a_client = find("rpc.client", Some(a_server.span_context.span_id()));
        let b_server = find("rpc.server", Some(a_client.span_context.span_id()));
        // What the handlers saw is what was exported.
        assert_eq!(
            hops[0],
            (
                trace.to_string(),
                a_server.span_context.span_id().to_string()
            )
        );
        assert_eq!(
            hops[1],
            (
                trace.to_string(),
                b_server.span_context.span_id().to_string()
            )
        );
    })
    .await
    .expect("test took too long");
}

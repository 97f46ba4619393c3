//! Tracing across three hops (consumer, provider A that calls provider B) and the
//! access log, seen through a `tracing` subscriber installed for this whole test
//! binary (the server's workers run on threads of their own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rpc_core::filter::access_log::AccessLogLayer;
use rpc_core::filter::trace::{with_trace, TraceLayer};
use rpc_core::protocol::metadata::TraceContext;
use rpc_core::server::CallContext;
use rpc_core::{service, Client, Server};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A span or event the subscriber saw: its name and its fields.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    target: String,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

/// Records spans and events.
struct Recorder {
    spans: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
    /// Where each live span is in `spans`, for fields recorded later.
    index: Mutex<HashMap<tracing::span::Id, usize>>,
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let mut spans = self.spans.lock().unwrap();
        self.index.lock().unwrap().insert(id.clone(), spans.len());
        spans.push(Seen {
            name: attrs.metadata().name().to_owned(),
            target: attrs.metadata().target().to_owned(),
            fields: fields.0,
        });
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        let Some(&at) = self.index.lock().unwrap().get(id) else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.spans.lock().unwrap()[at].fields.extend(fields.0);
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.events.lock().unwrap().push(Seen {
            name: event.metadata().name().to_owned(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
        });
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The spans and events recorded by this binary's subscriber.
fn recorded() -> &'static (Log, Log) {
    static RECORDED: OnceLock<(Log, Log)> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let spans = Log::default();
        let events = Log::default();
        let subscriber = tracing_subscriber::registry().with(Recorder {
            spans: Arc::clone(&spans),
            events: Arc::clone(&events),
            index: Mutex::default(),
        });
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");
        (spans, events)
    })
}

/// What a hop saw of its call.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hop {
    /// Which provider.
    pub name: String,
    /// The caller's span, as received.
    pub parent: Option<String>,
    /// This call's span on the server.
    pub span: Option<String>,
    /// The trace.
    pub trace: Option<String>,
}

/// A provider that answers, or calls the next provider first.
#[service(name = "test.Relay")]
pub trait Relay {
    /// The hops from here to the end of the chain.
    async fn relay(&self) -> Vec<Hop>;
}

struct RelayImpl {
    name: String,
    next: Option<RelayClient>,
}

impl Relay for RelayImpl {
    async fn relay(&self) -> Vec<Hop> {
        let me = CallContext::with_current(|ctx| {
            let ctx = ctx.expect("inside a handler");
            Hop {
                name: self.name.clone(),
                parent: ctx.trace.map(|t| t.span_id_hex()),
                span: ctx.span.map(|t| t.span_id_hex()),
                trace: ctx.span.map(|t| t.trace_id_hex()),
            }
        });
        let mut hops = vec![me];
        if let Some(next) = &self.next {
            hops.extend(next.relay().await.expect("the next hop answers"));
        }
        hops
    }
}

/// A relay server with an access log and tracing: the tracing layer first (the
/// server runs it itself, without a chain) when `trace_first`, else behind the access
/// log (in the chain).
async fn relay_server(
    name: &str,
    next: Option<RelayClient>,
    trace_first: bool,
) -> rpc_core::ServerHandle {
    let relay = RelayServer::new(RelayImpl {
        name: name.to_owned(),
        next,
    });
    let builder = Server::builder().workers(1);
    let bound = if trace_first {
        builder
            .layer(TraceLayer::server())
            .layer(AccessLogLayer::new())
            .add_service(relay)
            .bind("127.0.0.1:0")
            .await
    } else {
        builder
            .layer(AccessLogLayer::new())
            .layer(TraceLayer::server())
            .add_service(relay)
            .bind("127.0.0.1:0")
            .await
    };
    bound.unwrap().spawn()
}

async fn traced_client(addr: std::net::SocketAddr) -> RelayClient {
    RelayClient::new(
        Client::builder()
            .layer(TraceLayer::client())
            .connect(addr)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_share_one_trace_with_correct_parent_links() {
    three_hops(false, "4bf92f3577b34da6a3ce929d0e0e4736").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_share_one_trace_when_the_servers_trace_without_a_chain() {
    three_hops(true, "0af7651916cd43dd8448eb211c80319c").await;
}

/// The three-hop check; the servers trace first (without a chain) if `trace_first`;
/// the incoming trace is `trace` (each test its own, as they share the recorder).
async fn three_hops(trace_first: bool, trace: &'static str) {
    let (spans, events) = recorded();
    tokio::time::timeout(Duration::from_secs(30), async {
        let b = relay_server("B", None, trace_first).await;
        let a = relay_server("A", Some(traced_client(b.local_addr()).await), trace_first).await;
        let consumer = traced_client(a.local_addr()).await;

        // The consumer continues a trace it got from elsewhere.
        let incoming =
            TraceContext::from_traceparent(&format!("00-{trace}-00f067aa0ba902b7-01")).unwrap();
        let hops = with_trace(incoming, consumer.relay()).await.unwrap();
        assert_eq!(hops.len(), 2);
        let (hop_a, hop_b) = (&hops[0], &hops[1]);
        assert_eq!(hop_a.trace.as_deref(), Some(trace));
        assert_eq!(hop_b.trace.as_deref(), Some(trace));

        let spans = spans.lock().unwrap().clone();
        let of_trace = |name: &str| -> Vec<Seen> {
            spans
                .iter()
                .filter(|s| {
                    s.name == name && s.fields.get("trace_id").map(String::as_str) == Some(trace)
                })
                .cloned()
                .collect()
        };
        let clients = of_trace("rpc.client");
        let servers = of_trace("rpc.server");
        assert_eq!((clients.len(), servers.len()), (2, 2), "{spans:#?}");
        let field = |s: &Seen, f: &str| s.fields.get(f).cloned().unwrap_or_default();
        // consumer's client span: child of the incoming trace's span.
        let consumer_span = clients
            .iter()
            .find(|s| field(s, "parent_id") == "00f067aa0ba902b7")
            .expect("the consumer's span");
        // A's server span: child of the consumer's client span; A saw it as its parent.
        let a_server = servers
            .iter()
            .find(|s| field(s, "parent_id") == field(consumer_span, "span_id"))
            .expect("A's span");
        assert_eq!(
            hop_a.parent.as_deref(),
            Some(field(consumer_span, "span_id").as_str())
        );
        assert_eq!(
            hop_a.span.as_deref(),
            Some(field(a_server, "span_id").as_str())
        );
        // A's call to B: a child of A's server span.
        let a_client = clients
            .iter()
            .find(|s| field(s, "parent_id") == field(a_server, "span_id"))
            .expect("A's outgoing span");
        // B's server span: child of A's outgoing span.
        let b_server = servers
            .iter()
            .find(|s| field(s, "parent_id") == field(a_client, "span_id"))
            .expect("B's span");
        assert_eq!(
            hop_b.parent.as_deref(),
            Some(field(a_client, "span_id").as_str())
        );
        assert_eq!(
            hop_b.span.as_deref(),
            Some(field(b_server, "span_id").as_str())
        );
        assert_eq!(field(a_server, "rpc.method"), "relay");

        // The access log saw both server calls.
        let lines: Vec<Seen> = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.target == "rpc::access")
            .cloned()
            .collect();
        assert!(lines.len() >= 2, "{lines:#?}");
        for line in &lines[..2] {
            assert_eq!(line.fields["side"], "server");
            assert_eq!(line.fields["service"], "test.Relay");
            assert_eq!(line.fields["method"], "relay");
            assert_eq!(line.fields["outcome"], "ok");
            assert!(line.fields["peer"].starts_with("127.0.0.1:"));
            assert!(line.fields["micros"].parse::<u64>().is_ok());
        }

        // A call with no trace anywhere starts one; the server's span is its child.
        let fresh = consumer.relay().await.unwrap();
        assert!(fresh[0].trace.is_some());
        assert_ne!(fresh[0].trace.as_deref(), Some(trace));
        assert_eq!(fresh[0].trace, fresh[1].trace);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await
    .expect("test took too long");
}

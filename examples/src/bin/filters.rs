//! The filter chain in one process: an inventory provider behind token auth, a
//! per-method rate limit, tracing, metrics served over HTTP and a tower layer of our own
//! (a tenant check); a consumer with its token, tracing, metrics and a layer of its own
//! (it stamps every call with the tenant). Prints what each side counted and the
//! provider's scrape.
//!
//! ```text
//! cargo run -p rpc-examples --bin filters
//! ```

use std::future::IntoFuture;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use rpc_core::filter::auth::TokenAuthLayer;
use rpc_core::filter::limit::LimitLayer;
use rpc_core::filter::metrics::Metrics;
use rpc_core::filter::trace::TraceLayer;
use rpc_core::filter::{BoxError, ClientRequest, Rejection, ServerRequest, ServerResponse};
use rpc_core::protocol::Status;
use rpc_core::{Client, RpcError, Server};
use rpc_examples::{InMemoryInventory, InventoryClient, InventoryServer, NewItem};

/// A user's own layer, on both sides: the client stamps calls with a tenant, the
/// server refuses calls without one (before decoding their arguments).
#[derive(Clone, Copy)]
struct Tenant;

impl<S> tower::Layer<S> for Tenant {
    type Service = TenantService<S>;
    fn layer(&self, inner: S) -> TenantService<S> {
        TenantService(inner)
    }
}

#[derive(Clone)]
struct TenantService<S>(S);

impl<S> tower::Service<ServerRequest> for TenantService<S>
where
    S: tower::Service<ServerRequest, Response = ServerResponse, Error = BoxError>,
{
    type Response = ServerResponse;
    type Error = BoxError;
    type Future = Either<std::future::Ready<Result<ServerResponse, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        if request.context().attachment("tenant").is_none() {
            let refusal = Rejection::new(Status::BadRequest, "calls must name a tenant");
            return Either::Left(std::future::ready(Err(refusal.into())));
        }
        Either::Right(self.0.call(request))
    }
}

impl<S: tower::Service<ClientRequest>> tower::Service<ClientRequest> for TenantService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: ClientRequest) -> S::Future {
        request
            .attachments_mut()
            .push(("tenant".to_owned(), b"acme".to_vec()));
        self.0.call(request)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider_metrics = Metrics::new();
    let server = Server::builder()
        .layer(provider_metrics.server_layer())
        .layer(TraceLayer::server())
        .layer(TokenAuthLayer::tokens(["example-token"]))
        .layer(Tenant)
        .layer(
            LimitLayer::builder()
                .rate_with_burst("example.Inventory", "list", 5.0, 5.0)
                .build()?,
        )
        .add_service(InventoryServer::new(InMemoryInventory::default()))
        .bind("127.0.0.1:0")
        .await?
        .spawn();
    let endpoint = provider_metrics.serve("127.0.0.1:0").await?;
    println!(
        "provider on {}, metrics at {}",
        server.local_addr(),
        endpoint.url()
    );

    let consumer_metrics = Metrics::new();
    let client = Client::builder()
        .auth_token("example-token")
        .layer(
            tower::ServiceBuilder::new()
                .layer(consumer_metrics.client_layer())
                .layer(TraceLayer::client())
                .layer(Tenant),
        )
        .connect(server.local_addr())
        .await?;
    let inventory = InventoryClient::new(client);
    inventory
        .add_item(NewItem {
            sku: "bolt-m4".into(),
            name: "M4 bolt".into(),
            quantity: 500,
            price_cents: 12,
        })
        .await?;
    for _ in 0..10 {
        inventory.reserve("bolt-m4".into(), 3).await?;
    }
    // Twenty `list` calls at once against a rate of 5/s in bursts of 5: the rest are
    // shed at once, never queued.
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(inventory.list().into_future()))
        .collect();
    let mut shed = 0;
    for call in calls {
        if let Err(RpcError::Overloaded(_)) = call.await? {
            shed += 1;
        }
    }
    println!("list: {shed} of 20 shed by the rate limit");

    // Without the token: refused before the arguments are decoded.
    let anonymous = InventoryClient::new(Client::connect(server.local_addr()).await?);
    match anonymous.list().timeout(Duration::from_secs(2)).await {
        Err(RpcError::Unauthenticated(message)) => println!("anonymous call refused: {message}"),
        other => println!("anonymous call: {other:?}"),
    }

    for side in [&consumer_metrics, &provider_metrics] {
        for m in side.snapshot() {
            let who = if m.server { "provider" } else { "consumer" };
            println!(
                "{who} {}.{}: {} calls, {} errors {:?}, p50 {:?}, p99 {:?}",
                m.service, m.method, m.calls, m.errors, m.outcomes, m.p50, m.p99
            );
        }
    }
    println!("--- scrape of {} ---", endpoint.url());
    print!("{}", provider_metrics.encode());
    server.shutdown().await?;
    Ok(())
}

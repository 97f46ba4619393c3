// The server deserializes arguments: `Order` lacks `Deserialize`.
use rpc_core::{service, Client, ServerBuilder};

#[derive(Debug, serde::Serialize)]
pub struct Order {
    pub id: u64,
}

#[service]
pub trait Shop {
    async fn place(&self, order: Order) -> u64;
}

struct Store;

impl Shop for Store {
    async fn place(&self, order: Order) -> u64 {
        order.id
    }
}

fn host(builder: ServerBuilder) -> ServerBuilder {
    builder.add_service(ShopServer::new(Store))
}

async fn caller(client: Client) -> u64 {
    ShopClient::new(client).place(Order { id: 1 }).await.unwrap()
}

fn main() {
    let _ = (host, caller);
}

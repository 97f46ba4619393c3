// The client serializes arguments: `Order` lacks `Serialize`.
use rpc_core::{service, Client};

#[derive(Debug, serde::Deserialize)]
pub struct Order {
    pub id: u64,
}

#[service]
pub trait Shop {
    async fn place(&self, order: Order) -> u64;
}

async fn caller(client: Client) -> u64 {
    ShopClient::new(client).place(Order { id: 1 }).await.unwrap()
}

fn main() {
    let _ = caller;
}

// The client deserializes a method's `Err`: `ShopError` lacks `Deserialize`.
use rpc_core::{service, Client};

#[derive(Debug, serde::Serialize)]
pub enum ShopError {
    SoldOut,
}

#[service]
pub trait Shop {
    async fn buy(&self, item: String) -> Result<u64, ShopError>;
}

async fn caller(client: Client) -> u64 {
    ShopClient::new(client).buy("tea".into()).await.unwrap()
}

fn main() {
    let _ = caller;
}

// The client deserializes results: `Summary` lacks `Deserialize`.
use rpc_core::{service, Client};

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub total: u64,
}

#[service]
pub trait Shop {
    async fn summary(&self) -> Summary;
}

fn caller(client: Client) -> u64 {
    ShopClient::new(client).summary().blocking().unwrap().total
}

fn main() {
    let _ = caller;
}

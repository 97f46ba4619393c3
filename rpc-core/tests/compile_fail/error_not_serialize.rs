// The server serializes a method's `Err`: `ShopError` lacks `Serialize`.
use rpc_core::{service, ServerBuilder};

#[derive(Debug, serde::Deserialize)]
pub enum ShopError {
    SoldOut,
}

#[service]
pub trait Shop {
    async fn buy(&self, item: String) -> Result<u64, ShopError>;
}

struct Store;

impl Shop for Store {
    async fn buy(&self, _item: String) -> Result<u64, ShopError> {
        Err(ShopError::SoldOut)
    }
}

fn host(builder: ServerBuilder) -> ServerBuilder {
    builder.add_service(ShopServer::new(Store))
}

fn main() {
    let _ = host;
}

// The server serializes results: `Summary` lacks `Serialize`.
use rpc_core::{service, ServerBuilder};

#[derive(Debug, serde::Deserialize)]
pub struct Summary {
    pub total: u64,
}

#[service]
pub trait Shop {
    async fn summary(&self, day: u32) -> Summary;
}

struct Store;

impl Shop for Store {
    async fn summary(&self, day: u32) -> Summary {
        Summary { total: day.into() }
    }
}

fn host(builder: ServerBuilder) -> ServerBuilder {
    builder.add_service(ShopServer::new(Store))
}

fn main() {
    let _ = host;
}

use rpc_core::service;

#[service]
trait Counter {
    async fn consume(self) -> u64;
    async fn bump(&mut self) -> u64;
    async fn free() -> u64;
}

fn main() {}

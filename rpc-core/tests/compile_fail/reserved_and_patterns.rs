use rpc_core::service;

#[service]
trait Maker {
    async fn new(&self) -> u8;
    async fn pair(&self, (a, b): (u8, u8)) -> u8;
}

fn main() {}

use rpc_core::service;

#[service]
trait Log {
    #[oneway]
    async fn write(&self, line: String) -> bool;
}

fn main() {}

use rpc_core::service;

#[service(version = "1")]
trait Greeter {
    async fn greet(&self, name: String) -> String;
}

fn main() {}

use rpc_core::service;

#[service]
trait Greeter {
    async fn greet(&self, name: &str) -> String;
    async fn first(&self, names: Vec<&'static str>) -> Box<dyn std::fmt::Debug>;
}

fn main() {}

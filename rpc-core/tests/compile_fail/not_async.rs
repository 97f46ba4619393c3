use rpc_core::service;

#[service]
trait Greeter {
    fn greet(&self, name: String) -> String;
}

fn main() {}

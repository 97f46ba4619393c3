use rpc_core::service;

#[service]
struct Greeter;

fn main() {}

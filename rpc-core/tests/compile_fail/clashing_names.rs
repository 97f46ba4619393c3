// `S` is the generated skeleton's type parameter, and `__rpc` starts the generated
// code's local names.
use rpc_core::service;

pub struct S;

#[service]
pub trait Shop {
    async fn place(&self, order: Vec<S>) -> u64;
    async fn size(&self, __rpc_args: u32) -> u64;
    async fn fine(&self, order: self::S) -> u64;
}

fn main() {}

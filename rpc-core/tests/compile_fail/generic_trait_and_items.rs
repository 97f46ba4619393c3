use rpc_core::service;

#[service]
trait Repo<T>: Clone {
    type Item;
    const LIMIT: usize;
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}

// `'static` is fine (`Cow<'static, str>` is owned); any other lifetime borrows.
use rpc_core::service;

#[service]
pub trait Names {
    async fn ok(&self, name: std::borrow::Cow<'static, str>) -> std::borrow::Cow<'static, str>;
    async fn elided(&self, name: std::borrow::Cow<'_, str>) -> u64;
}

fn main() {}

//! Generated code names everything by absolute path, so it compiles without the
//! prelude in scope.

#![no_implicit_prelude]
#![allow(unreachable_pub)]

mod service {
    #![no_implicit_prelude]

    /// A service written where nothing is imported.
    #[::rpc_core::service]
    pub trait Bare {
        /// Plain result.
        async fn a(&self, x: ::std::string::String) -> ::std::string::String;
        /// Typed error, no arguments.
        async fn b(&self) -> ::std::result::Result<u8, ::std::string::String>;
        /// Oneway.
        #[oneway]
        async fn c(&self, n: u64);
    }

    pub struct Impl;

    impl Bare for Impl {
        async fn a(&self, x: ::std::string::String) -> ::std::string::String {
            x
        }
        async fn b(&self) -> ::std::result::Result<u8, ::std::string::String> {
            ::std::result::Result::Ok(1)
        }
        async fn c(&self, _n: u64) {}
    }
}

#[test]
fn generated_items_exist() {
    let skeleton = service::BareServer::new(service::Impl);
    ::std::assert_eq!(::rpc_core::server::Service::name(&skeleton), "Bare");
    ::std::assert_eq!(
        ::rpc_core::server::Service::methods(&skeleton),
        &["a", "b", "c"]
    );
    ::std::assert_eq!(service::BareClient::SERVICE_NAME, "Bare");
}

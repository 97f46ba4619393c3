//! The reflection service every [`Server`](crate::Server) hosts: which services run on
//! this port, and what each one's methods take and return. Shared by both sides: the
//! server hosts it ([`ReflectionServer`], added at bind), clients read it
//! ([`ReflectionClient`], and `Client::call_json` for named arguments).
//!
//! It is an ordinary service named [`REFLECTION_SERVICE`] (`rpc.Reflection`), defined
//! with our own `#[service]` macro, so any client calls it like any other (its wire
//! shapes are in `docs/PROTOCOL.md`, section 14). A service's description comes from
//! [`Service::descriptor`], which `#[service]` generates from the trait: names, docs,
//! and the argument, result and error types as written in the source.
//!
//! ```
//! use rpc_core::reflection::ReflectionClient;
//! use rpc_core::{service, Client, Server};
//!
//! /// Greets people.
//! #[service(name = "example.Greeter")]
//! pub trait Greeter {
//!     /// Says hello to `name`.
//!     async fn greet(&self, name: String) -> String;
//! }
//! struct Hello;
//! impl Greeter for Hello {
//!     async fn greet(&self, name: String) -> String {
//!         format!("hello, {name}")
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .add_service(GreeterServer::new(Hello))
//!     .bind("127.0.0.1:0")
//!     .await?
//!     .spawn();
//! let reflection = ReflectionClient::new(Client::connect(server.local_addr()).await?);
//! assert_eq!(reflection.services().await?, ["example.Greeter", "rpc.Reflection"]);
//! let greeter = reflection.describe("example.Greeter".into()).await?;
//! let greet = greeter.method("greet").unwrap();
//! assert_eq!(greet.docs, "Says hello to `name`.");
//! assert_eq!((greet.args[0].name.as_str(), greet.args[0].ty.as_str()), ("name", "String"));
//! assert_eq!(greet.result, "String");
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::RpcError;
use crate::server::Service;

/// The reserved wire name of the reflection service. A server refuses (at
/// [`bind`](crate::ServerBuilder::bind)) a service of its own with this name.
pub const REFLECTION_SERVICE: &str = "rpc.Reflection";

/// What a service is: its wire name, its doc comment and its methods.
///
/// On the wire (MessagePack): a map `{name, docs, described, methods}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceDescriptor {
    /// The service's wire name.
    pub name: String,
    /// The trait's doc comment (`///` lines joined by newlines; empty if none).
    pub docs: String,
    /// `false` for a hand-written [`Service`] that gives only its method names: then
    /// each method's arguments, result and docs are unknown (empty).
    pub described: bool,
    /// The methods, in declaration order.
    pub methods: Vec<MethodDescriptor>,
}

impl ServiceDescriptor {
    /// The method with this wire name.
    pub fn method(&self, name: &str) -> Option<&MethodDescriptor> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The description of a service known only by its name and method names.
    pub fn undescribed(name: &str, methods: &[&str]) -> ServiceDescriptor {
        ServiceDescriptor {
            name: name.to_owned(),
            docs: String::new(),
            described: false,
            methods: methods
                .iter()
                .map(|m| MethodDescriptor {
                    name: (*m).to_owned(),
                    docs: String::new(),
                    args: Vec::new(),
                    result: String::new(),
                    error: None,
                    oneway: false,
                    idempotent: false,
                })
                .collect(),
        }
    }
}

/// One method of a service.
///
/// On the wire: a map `{name, docs, args, result, error, oneway, idempotent}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MethodDescriptor {
    /// The method's wire name.
    pub name: String,
    /// Its doc comment.
    pub docs: String,
    /// Its arguments after `&self`, in order: the order of the request's argument
    /// array.
    pub args: Vec<ArgDescriptor>,
    /// The result type as written (`T` of `Result<T, E>`; `()` for none).
    pub result: String,
    /// The error type `E` of a method returning `Result<T, E>`, as written; `None` for
    /// a method that cannot fail.
    pub error: Option<String>,
    /// Declared `#[oneway]`: the server sends no response.
    pub oneway: bool,
    /// Declared `#[idempotent]`: running it twice does no harm, so clients may retry,
    /// fork or hedge it (absent from descriptors of older servers: `false`).
    #[serde(default)]
    pub idempotent: bool,
}

impl MethodDescriptor {
    /// The signature, Rust-like: `reserve(sku: String, quantity: u32) -> Result<u32,
    /// InventoryError>`, with `[oneway]` after a oneway method and `[idempotent]`
    /// after an idempotent one.
    pub fn signature(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.ty))
            .collect();
        let mut text = format!("{}({})", self.name, args.join(", "));
        match (&self.error, self.result.as_str()) {
            (Some(e), ok) => text.push_str(&format!(" -> Result<{ok}, {e}>")),
            (None, "()" | "") => {}
            (None, ok) => text.push_str(&format!(" -> {ok}")),
        }
        if self.oneway {
            text.push_str("  [oneway]");
        }
        if self.idempotent {
            text.push_str("  [idempotent]");
        }
        text
    }
}

/// One argument of a method.
///
/// On the wire: a map `{name, type}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArgDescriptor {
    /// The argument's name (without `r#`).
    pub name: String,
    /// Its type as written in the trait (`Vec<String>`, `crate::Item`): a Rust
    /// spelling, for people; not resolved to a path.
    #[serde(rename = "type")]
    pub ty: String,
}

/// Why the reflection service could not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ReflectionError {
    /// No service with this name is hosted on this server.
    #[error("no service `{service}` here (hosted: {})", hosted.join(", "))]
    UnknownService {
        /// The name asked for.
        service: String,
        /// The services that are hosted.
        hosted: Vec<String>,
    },
}

/// The built-in reflection service of every server: lists the services on its port
/// and describes each.
#[crate::service(name = "rpc.Reflection")]
pub trait Reflection {
    /// The wire names of every service on this server, sorted (`rpc.Reflection`
    /// included).
    async fn services(&self) -> Vec<String>;
    /// The description of one service on this server.
    async fn describe(&self, service: String) -> Result<ServiceDescriptor, ReflectionError>;
    /// The descriptions of every service on this server, sorted by name.
    async fn describe_all(&self) -> Vec<ServiceDescriptor>;
}

/// The reflection service's state: the descriptions, taken once at bind (a server's
/// services never change after that).
struct Descriptions(BTreeMap<String, ServiceDescriptor>);

impl Reflection for Descriptions {
    async fn services(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    async fn describe(&self, service: String) -> Result<ServiceDescriptor, ReflectionError> {
        match self.0.get(&service) {
            Some(descriptor) => Ok(descriptor.clone()),
            None => Err(ReflectionError::UnknownService {
                service: service.chars().take(256).collect(),
                hosted: self.0.keys().cloned().collect(),
            }),
        }
    }

    async fn describe_all(&self) -> Vec<ServiceDescriptor> {
        self.0.values().cloned().collect()
    }
}

/// Adds the reflection service to the services a server is about to host.
///
/// # Errors
///
/// [`RpcError::InvalidConfig`] if a service of the user's already has its reserved
/// name.
pub(crate) fn install(services: &mut HashMap<String, Arc<dyn Service>>) -> Result<(), RpcError> {
    if services.contains_key(REFLECTION_SERVICE) {
        return Err(RpcError::InvalidConfig(format!(
            "the service name `{REFLECTION_SERVICE}` is reserved for the built-in reflection \
             service; rename your service"
        )));
    }
    let mut descriptions: BTreeMap<String, ServiceDescriptor> = services
        .iter()
        .map(|(name, service)| (name.clone(), service.descriptor()))
        .collect();
    // It describes itself too.
    let own = ReflectionServer::new(Descriptions(BTreeMap::new())).descriptor();
    descriptions.insert(REFLECTION_SERVICE.to_owned(), own);
    services.insert(
        REFLECTION_SERVICE.to_owned(),
        Arc::new(ReflectionServer::new(Descriptions(descriptions))),
    );
    Ok(())
}

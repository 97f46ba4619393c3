//! Where a command goes: one server (`--server`) or the providers a registry names
//! (`--registry`), and the clients that reach them.

use std::collections::BTreeMap;
use std::time::Duration;

use rpc_core::lb::Strategy;
use rpc_core::reflection::{ReflectionClient, ServiceDescriptor};
use rpc_core::{Client, ClientBuilder};
use rpc_registry::{Consumer, Instance, Registries};

use crate::Failure;

/// The registry used when neither `--server` nor `--registry` is given.
const DEFAULT_REGISTRY: &str = "rpc://127.0.0.1:7000";

/// The options that say where to look, shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TargetArgs {
    /// Talk straight to this server (`host:port`) instead of a registry.
    #[arg(long, global = true, conflicts_with = "registry")]
    pub(crate) server: Option<String>,
    /// The registries (`rpc://host:port[,host:port]`, `etcd://...`); default
    /// rpc://127.0.0.1:7000.
    #[arg(long, global = true)]
    pub(crate) registry: Option<String>,
    /// Timeout of each call and registry request (e.g. 500ms, 5s).
    #[arg(long, global = true, default_value = "5s", value_parser = rpc_registry::parse_duration)]
    pub(crate) timeout: Duration,
    /// Token sent with every call, for servers with token authentication (also from
    /// the `RPCCTL_TOKEN` environment variable, which keeps it out of `ps`).
    #[arg(long, global = true, env = "RPCCTL_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

impl TargetArgs {
    /// The registry URL to use: the one given, or the default.
    pub(crate) fn registry_url(&self) -> &str {
        self.registry.as_deref().unwrap_or(DEFAULT_REGISTRY)
    }

    /// The registries.
    ///
    /// # Errors
    ///
    /// A malformed URL, or `--server` given to a command that needs a registry.
    pub(crate) fn registries(&self, command: &str) -> Result<Registries, Failure> {
        if self.server.is_some() {
            return Err(Failure::Usage(format!(
                "`{command}` reads a registry; use --registry URL instead of --server"
            )));
        }
        let url = self.registry_url();
        rpc_registry::connect(url).map_err(|e| Failure::Usage(format!("--registry {url}: {e}")))
    }

    /// The settings of every client to a provider: timeouts, connections, token.
    fn client_builder(&self, connections: usize) -> ClientBuilder {
        let builder = Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .connections(connections);
        match &self.token {
            Some(token) => builder.auth_token(token.as_bytes()),
            None => builder,
        }
    }

    /// What to add to the message of a failure the server refused for its token
    /// (`unauthenticated`): how to pass one, or that the one given was wrong.
    pub(crate) fn token_hint(&self, unauthenticated: bool) -> &'static str {
        match (unauthenticated, &self.token) {
            (false, _) => "",
            (true, None) => "; the server wants a token: pass --token",
            (true, Some(_)) => "; the server refused the --token given",
        }
    }

    /// A client of one server.
    pub(crate) async fn server_client(
        &self,
        addr: &str,
        connections: usize,
    ) -> Result<Client, Failure> {
        self.client_builder(connections)
            .connect(addr)
            .await
            .map_err(|e| Failure::Failed(format!("cannot connect to {addr}: {e}")))
    }

    /// A client for calls of `service`: to `--server`, or balanced over the providers
    /// the registry names (returned too, to shut down when done).
    ///
    /// # Errors
    ///
    /// The server cannot be reached; the registry names no provider of the service.
    pub(crate) async fn calls(
        &self,
        service: &str,
        balancer: Option<Strategy>,
        connections: usize,
    ) -> Result<(Client, Option<Consumer>), Failure> {
        if let Some(addr) = &self.server {
            return Ok((self.server_client(addr, connections).await?, None));
        }
        let mut client = self.client_builder(connections);
        if let Some(strategy) = balancer {
            client = client.balancer(strategy);
        }
        let consumer = Consumer::builder(self.registries("call")?)
            .client(client)
            .client_name("rpcctl")
            .announce(false)
            .lookup_timeout(self.timeout)
            .connect(service)
            .await
            .map_err(|e| Failure::Failed(format!("cannot discover {service}: {e}")))?;
        if consumer.providers().is_empty() {
            consumer.shutdown().await;
            return Err(Failure::Failed(format!(
                "no provider of {service} in {}",
                self.registry_url()
            )));
        }
        Ok((consumer.client(), Some(consumer)))
    }
}

/// Every live instance of `service` the registries report, merged (one per identity),
/// sorted by address.
///
/// # Errors
///
/// No registry could be reached.
pub(crate) async fn instances(
    registries: &Registries,
    service: &str,
    timeout: Duration,
) -> Result<Vec<Instance>, Failure> {
    let mut merged = BTreeMap::new();
    let mut errors = Vec::new();
    for member in registries.members() {
        match tokio::time::timeout(timeout, member.lookup(service)).await {
            Ok(Ok(view)) => {
                for instance in view.instances {
                    merged.insert((instance.addr.clone(), instance.key()), instance);
                }
            }
            Ok(Err(e)) => errors.push(format!("{}: {e}", member.url())),
            Err(_) => errors.push(format!("{}: timed out after {timeout:?}", member.url())),
        }
    }
    if errors.len() == registries.members().len() {
        return Err(Failure::Failed(format!(
            "no registry answered: {}",
            errors.join("; ")
        )));
    }
    Ok(merged.into_values().collect())
}

/// Asks the server at `addr` to describe `service`.
pub(crate) async fn describe_at(
    target: &TargetArgs,
    addr: &str,
    service: &str,
) -> Result<ServiceDescriptor, Failure> {
    let client = target.server_client(addr, 1).await?;
    ReflectionClient::new(client)
        .describe(service.to_owned())
        .timeout(target.timeout)
        .await
        .map_err(|e| match e {
            rpc_core::RpcError::Application(e) => Failure::Failed(format!("{addr}: {e}")),
            other => Failure::Failed(format!(
                "{addr}: reflection failed: {other}{}",
                target.token_hint(matches!(other, rpc_core::RpcError::Unauthenticated(_)))
            )),
        })
}

/// Splits `SERVICE.METHOD` at its last dot.
///
/// # Errors
///
/// Text without a dot, or with an empty side.
pub(crate) fn split_target(text: &str) -> Result<(&str, &str), Failure> {
    match text.rsplit_once('.') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            Ok((service, method))
        }
        _ => Err(Failure::Usage(format!(
            "{text:?} is not SERVICE.METHOD (e.g. example.Inventory.reserve)"
        ))),
    }
}

/// Parses the JSON arguments of `call` and `bench`.
///
/// # Errors
///
/// Text that is not JSON.
pub(crate) fn parse_args(text: &str) -> Result<serde_json::Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        Failure::Usage(format!(
            "the arguments are not JSON ({e}): give an array of positional arguments \
             ('[\"espresso\", 2]'), an object keyed by argument name, or one value"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_last_dot() {
        assert_eq!(
            split_target("example.Inventory.get").unwrap(),
            ("example.Inventory", "get")
        );
        assert_eq!(split_target("Calc.add").unwrap(), ("Calc", "add"));
        for bad in ["add", "Calc.", ".add", ""] {
            assert!(matches!(split_target(bad), Err(Failure::Usage(_))), "{bad}");
        }
    }
}

//! The `rpc://` backend: our embedded registry, reached with our own client; and its
//! `rpcs://` form over TLS (the `tls` feature).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rpc_core::{Client, RpcError};
use tokio::sync::OnceCell;

use super::{Backend, Discovery, Error, Registry};
use crate::api::{
    ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, LeaseRequest, LoadReport,
    RegistryApiClient, RegistryError, Revision, ServiceSummary, ServiceView,
};

/// Timeout of every operation but `watch`: a registry on the same network answers in
/// well under a millisecond; two seconds leaves room for a loaded one while keeping a
/// heartbeat (2 s default interval) from overlapping the next.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a watch may outlive its requested wait before the client gives up on it:
/// the registry answers at `wait`, so this only covers the network.
const WATCH_SLACK: Duration = Duration::from_secs(2);

/// Splits `host:port[,host:port...]`, checking each has a host and a numeric port.
pub(super) fn parse_hosts(url: &str, rest: &str) -> Result<Vec<String>, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.chars().take(128).collect(),
        reason,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(invalid("no registry address".into()));
    }
    rest.split(',')
        .map(|host| {
            let host = host.trim();
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("{host:?} has no port (host:port)")))?;
            if name.is_empty() {
                return Err(invalid(format!("{host:?} has no host")));
            }
            match port.parse::<u16>() {
                Ok(0) | Err(_) => Err(invalid(format!("{host:?} has no valid port"))),
                Ok(_) => Ok(host.to_owned()),
            }
        })
        .collect()
}

/// The registries of an `rpcs://` URL, `rest` being what follows the scheme; the
/// query is [`tls::split`](super::tls::split)'s. Trust is the `ca` file's certificates,
/// or the operating system's trust store without it; each registry's
/// certificate must name `server_name`, or by default its host as written in the URL
/// (a DNS name or an IP address).
#[cfg(feature = "tls")]
pub(super) fn parse_tls(url: &str, rest: &str) -> Result<Vec<RpcBackend>, Error> {
    use super::tls;
    use rpc_core::ClientTls;

    let (hosts, query) = tls::split(url, "rpcs", rest)?;
    let config = match &query.ca {
        Some(pem) => ClientTls::with_ca_pem(pem),
        None => ClientTls::system_roots(),
    }
    .map_err(|e| tls::refused(url, e))?;
    let config = match &query.identity {
        Some((cert, key)) => config
            .identity_pem(cert, key)
            .map_err(|e| tls::refused(url, e))?,
        None => config,
    };
    parse_hosts(url, hosts)?
        .into_iter()
        .map(|addr| {
            let name = match &query.server_name {
                Some(name) => name.as_str(),
                // `host:port`, `[v6]:port`: the host as written.
                None => {
                    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                    host.trim_start_matches('[').trim_end_matches(']')
                }
            };
            let config = config
                .clone()
                .server_name(name)
                .map_err(|e| tls::invalid(url, format!("server name {name:?}: {e}")))?;
            Ok(RpcBackend::with_tls(addr, config))
        })
        .collect()
}

/// One embedded registry.
#[derive(Debug)]
pub(super) struct RpcBackend {
    /// `rpc://host:port` (`rpcs://` over TLS), for logs.
    url: String,
    /// `host:port`.
    addr: String,
    /// TLS settings; `None`: plaintext.
    #[cfg(feature = "tls")]
    tls: Option<rpc_core::ClientTls>,
    /// Made on first successful use; it reconnects by itself afterwards.
    client: OnceCell<RegistryApiClient>,
    /// Set once the registry answered that it has no `heartbeat_with_load` (it
    /// predates load reports): plain heartbeats from then on.
    no_load_reports: AtomicBool,
}

impl RpcBackend {
    /// A plaintext registry at `addr`.
    pub(super) fn new(addr: String) -> RpcBackend {
        RpcBackend {
            url: format!("rpc://{addr}"),
            addr,
            #[cfg(feature = "tls")]
            tls: None,
            client: OnceCell::new(),
            no_load_reports: AtomicBool::new(false),
        }
    }

    /// A TLS registry at `addr`.
    #[cfg(feature = "tls")]
    fn with_tls(addr: String, tls: rpc_core::ClientTls) -> RpcBackend {
        RpcBackend {
            url: format!("rpcs://{addr}"),
            addr,
            tls: Some(tls),
            client: OnceCell::new(),
            no_load_reports: AtomicBool::new(false),
        }
    }

    async fn api(&self) -> Result<&RegistryApiClient, Error> {
        self.client
            .get_or_try_init(|| async {
                let builder = Client::builder();
                #[cfg(feature = "tls")]
                let builder = match &self.tls {
                    Some(tls) => builder.tls(tls.clone()),
                    None => builder,
                };
                let client = builder
                    .timeout(CALL_TIMEOUT)
                    .connect_timeout(Duration::from_secs(1))
                    // A restarted registry is found again within half a second, so
                    // providers re-register well within one heartbeat.
                    .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                    // A registry host that vanishes (no FIN, no RST) is noticed in
                    // seconds, not the default 30 s.
                    .heartbeat(Duration::from_secs(1), Duration::from_secs(4))
                    .connect(self.addr.as_str())
                    .await
                    .map_err(|e| self.unreachable(e))?;
                Ok(RegistryApiClient::new(client))
            })
            .await
    }

    fn unreachable<E: std::fmt::Display>(&self, error: E) -> Error {
        Error::Unreachable {
            registry: self.url.clone(),
            reason: error.to_string(),
        }
    }

    fn answer<T>(&self, result: Result<T, RpcError<RegistryError>>) -> Result<T, Error> {
        result.map_err(|e| match e {
            RpcError::Application(source) => Error::Registry {
                registry: self.url.clone(),
                source,
            },
            // A TLS registry answers a plaintext client's first call so; say what
            // to do about it.
            RpcError::BadRequest(message) if message.contains("requires TLS") => {
                Error::Unreachable {
                    registry: self.url.clone(),
                    reason: format!(
                        "the registry serves TLS only: use rpcs://{} (it answered: {message})",
                        self.addr
                    ),
                }
            }
            other => self.unreachable(other),
        })
    }
}

#[async_trait]
impl Registry for RpcBackend {
    async fn grant(&self, owner: &str, ttl: Option<Duration>) -> Result<Lease, Error> {
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        let api = self.api().await?;
        self.answer(api.grant(LeaseRequest::new(owner, ttl_ms)).await)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), Error> {
        let api = self.api().await?;
        self.answer(api.heartbeat(lease).await)
    }

    async fn keep_alive_with_load(&self, lease: LeaseId, load: &LoadReport) -> Result<(), Error> {
        let api = self.api().await?;
        if !self.no_load_reports.load(Ordering::Relaxed) {
            match api.heartbeat_with_load(lease, load.clone()).await {
                Err(RpcError::MethodNotFound(message)) => {
                    tracing::info!(registry = %self.url, %message, "the registry takes no load reports (an older version): plain heartbeats");
                    self.no_load_reports.store(true, Ordering::Relaxed);
                }
                other => return self.answer(other),
            }
        }
        self.answer(api.heartbeat(lease).await)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), Error> {
        let api = self.api().await?;
        self.answer(api.revoke(lease).await)
    }

    async fn register(&self, lease: LeaseId, instance: &Instance) -> Result<(), Error> {
        let api = self.api().await?;
        self.answer(api.register(lease, instance.clone()).await)
            .map(drop)
    }

    async fn deregister(&self, lease: LeaseId, key: &InstanceKey) -> Result<(), Error> {
        let api = self.api().await?;
        self.answer(api.deregister(lease, key.clone()).await)
            .map(drop)
    }

    async fn register_consumer(
        &self,
        lease: LeaseId,
        consumer: &ConsumerInfo,
    ) -> Result<(), Error> {
        let api = self.api().await?;
        self.answer(api.register_consumer(lease, consumer.clone()).await)
    }
}

#[async_trait]
impl Discovery for RpcBackend {
    async fn lookup(&self, service: &str) -> Result<ServiceView, Error> {
        let api = self.api().await?;
        self.answer(api.lookup(service.to_owned()).await)
    }

    async fn watch(
        &self,
        service: &str,
        since: Revision,
        wait: Duration,
    ) -> Result<ServiceView, Error> {
        let api = self.api().await?;
        let wait_ms = wait.as_millis().min(u128::from(u64::MAX)) as u64;
        self.answer(
            api.watch(service.to_owned(), since, wait_ms)
                .timeout(wait + WATCH_SLACK)
                .await,
        )
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, Error> {
        let api = self.api().await?;
        self.answer(api.services().await.map_err(RpcError::widen))
    }

    async fn consumers(&self, service: &str) -> Result<Vec<ConsumerInfo>, Error> {
        let api = self.api().await?;
        self.answer(api.consumers(service.to_owned()).await)
    }
}

impl Backend for RpcBackend {
    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_hosts("u", "a:1,b:2/").unwrap(),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        for bad in ["", "a", ":1", "a:0", "a:x", "a:1,"] {
            assert!(parse_hosts("u", bad).is_err(), "{bad:?} accepted");
        }
    }
}

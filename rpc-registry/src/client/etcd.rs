//! The `etcd://` backend (feature `etcd`), and `etcds://` over TLS (features `etcd`
//! and `tls`): leases are etcd leases, records are keys
//! attached to them, watches are etcd watches from the revision of the last read.
//!
//! Layout, under a root (`/dubbo` unless the URL names another):
//!
//! - `/{root}/{service}/providers/{url-encoded instance URL}`: one provider instance,
//!   JSON (weight, metadata, start time), attached to the provider's lease;
//! - `/{root}/{service}/consumers/{url-encoded consumer URL}`: one consumer, attached to
//!   the consumer's lease;
//! - `/{root}/{service}/departed/{addr}`: written (with a short lease of its own) when
//!   an instance deregisters gracefully, so consumers can tell a graceful leave from
//!   an outage.
//!
//! The crate does not renew leases by itself: the [`Publisher`](super::Publisher)'s
//! heartbeat calls [`Registry::keep_alive`], which sends one keep-alive and reads its
//! answer (TTL 0 means the lease is gone, reported as `UnknownLease` so the publisher
//! takes a new one and registers again).

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, ResponseHeader, WatchOptions,
};
use tokio::sync::OnceCell;

use super::layout::{consumer_url, decode, encode, instance_url};
use super::{Backend, Discovery, Error, Registry};
use crate::api::{
    ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, RegistryError, Revision, ServiceSummary,
    ServiceView,
};
use crate::validate;

/// Timeout of every operation but `watch`.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Default lease TTL when the caller asks for none (etcd counts in whole seconds).
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// How long a graceful leave stays visible as `departed`.
const DEPARTED_TTL_SECS: i64 = 30;

/// One etcd cluster (several endpoints of one cluster are one registry).
pub(super) struct EtcdBackend {
    /// `etcd://h1:2379,h2:2379/root`, for logs.
    url: String,
    /// `host:port` of each member.
    endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. `/dubbo`.
    root: String,
    /// TLS settings (`etcds://`); `None`: plaintext.
    #[cfg(feature = "tls")]
    tls: Option<etcd_client::TlsOptions>,
    /// Made on first successful use; the channel reconnects by itself afterwards.
    client: OnceCell<Client>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("url", &self.url)
            .field("connected", &self.client.initialized())
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// A backend for `etcd://{rest}`: `h1:port[,h2:port]` then an optional `/root`.
    pub(super) fn parse(url: &str, rest: &str) -> Result<EtcdBackend, Error> {
        let (hosts, root) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let endpoints = super::rpc::parse_hosts(url, hosts)?;
        let root = if root.is_empty() { "/dubbo" } else { root };
        Ok(EtcdBackend {
            url: format!("etcd://{}{}", endpoints.join(","), root),
            endpoints,
            root: root.to_owned(),
            #[cfg(feature = "tls")]
            tls: None,
            client: OnceCell::new(),
        })
    }

    /// A backend for `etcds://{rest}`: as [`parse`](Self::parse), then the TLS query
    /// of [`tls::split`](super::tls::split). Trust is the `ca` file's certificates, or
    /// the web PKI's roots built in without it; the members' certificates must name
    /// `server_name`, or by default each endpoint's host as written.
    #[cfg(feature = "tls")]
    pub(super) fn parse_tls(url: &str, rest: &str) -> Result<EtcdBackend, Error> {
        use etcd_client::{Certificate, Identity, TlsOptions};

        let (rest, query) = super::tls::split(url, "etcds", rest)?;
        let mut tls = match query.ca {
            Some(pem) => TlsOptions::new().ca_certificate(Certificate::from_pem(pem)),
            None => TlsOptions::new().with_webpki_roots(),
        };
        if let Some((cert, key)) = query.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = query.server_name {
            tls = tls.domain_name(name);
        }
        let mut backend = EtcdBackend::parse(url, rest)?;
        backend.url = format!("etcds://{}", &backend.url["etcd://".len()..]);
        backend.tls = Some(tls);
        Ok(backend)
    }

    async fn client(&self) -> Result<Client, Error> {
        self.client
            .get_or_try_init(|| async {
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(CALL_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(1), Duration::from_secs(3))
                    .with_keep_alive_while_idle(true);
                let scheme = "http";
                #[cfg(feature = "tls")]
                let (options, scheme) = match &self.tls {
                    Some(tls) => (options.with_tls(tls.clone()), "https"),
                    None => (options, scheme),
                };
                let endpoints: Vec<String> = self
                    .endpoints
                    .iter()
                    .map(|e| format!("{scheme}://{e}"))
                    .collect();
                tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
                    .await
                    .map_err(|_| self.unreachable("connect timed out"))?
                    .map_err(|e| self.unreachable(e))
            })
            .await
            .cloned()
    }

    fn unreachable<E: std::fmt::Display>(&self, error: E) -> Error {
        let mut reason = error.to_string();
        // etcd drops a connection it cannot speak TLS with (plaintext on a TLS port, or
        // a client without the certificate it requires) with no word of why; the
        // client sees one of these, depending on timing.
        let tls = self.url.starts_with("etcds://");
        let dropped = [
            "connection closed",
            "broken pipe",
            "reset by peer",
            "Canceled",
        ];
        let refused_cert = ["BadCertificate", "CertificateRequired"];
        if tls
            && dropped
                .iter()
                .chain(&refused_cert)
                .any(|s| reason.contains(s))
        {
            reason.push_str(
                " (if etcd requires client certificates, give cert= and key= in the URL)",
            );
        } else if !tls && dropped.iter().any(|s| reason.contains(s)) {
            reason.push_str(" (if etcd serves TLS, use etcds:// with the `tls` feature)");
        }
        Error::Unreachable {
            registry: self.url.clone(),
            reason,
        }
    }

    /// Maps an etcd error; `lease` is the lease the operation used, if any, so that
    /// etcd's "lease not found" becomes `UnknownLease`.
    fn fail(&self, error: etcd_client::Error, lease: Option<LeaseId>) -> Error {
        if let (Some(lease), etcd_client::Error::GRpcStatus(status)) = (lease, &error) {
            if status.message().contains("lease not found") {
                return Error::Registry {
                    registry: self.url.clone(),
                    source: RegistryError::UnknownLease(lease),
                };
            }
        }
        self.unreachable(error)
    }

    fn service_prefix(&self, service: &str) -> String {
        format!("{}/{}/", self.root, service)
    }

    fn provider_key(&self, key: &InstanceKey) -> String {
        format!(
            "{}providers/{}",
            self.service_prefix(&key.service),
            encode(&instance_url(key))
        )
    }

    fn revision(header: Option<&ResponseHeader>) -> Revision {
        header.map_or_else(Revision::default, |h| {
            Revision::new(h.cluster_id(), h.revision().max(0) as u64)
        })
    }
}

fn ttl_secs(ttl: Option<Duration>) -> i64 {
    let ttl = ttl.unwrap_or(DEFAULT_TTL);
    // etcd counts whole seconds; round up so the lease never outlives less than asked.
    (ttl.as_millis().div_ceil(1000)).clamp(1, i64::MAX as u128) as i64
}

#[async_trait]
impl Registry for EtcdBackend {
    async fn grant(&self, owner: &str, ttl: Option<Duration>) -> Result<Lease, Error> {
        validate::short_field("owner", owner).map_err(Error::Invalid)?;
        let mut client = self.client().await?;
        let answer = client
            .lease_grant(ttl_secs(ttl), None)
            .await
            .map_err(|e| self.fail(e, None))?;
        let ttl_ms = answer.ttl().max(1) as u64 * 1000;
        Ok(Lease {
            id: LeaseId(answer.id() as u64),
            ttl_ms,
            heartbeat_ms: (ttl_ms / 3).max(100),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), Error> {
        let mut client = self.client().await?;
        let call = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease.0 as i64).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(self.unreachable("keep-alive timed out")),
            Ok(Err(e)) => Err(self.fail(e, Some(lease))),
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => Ok(()),
            Ok(Ok(_)) => Err(Error::Registry {
                registry: self.url.clone(),
                source: RegistryError::UnknownLease(lease),
            }),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), Error> {
        let mut client = self.client().await?;
        client
            .lease_revoke(lease.0 as i64)
            .await
            .map(drop)
            .map_err(|e| self.fail(e, Some(lease)))
    }

    async fn register(&self, lease: LeaseId, instance: &Instance) -> Result<(), Error> {
        validate::service_name(&instance.service).map_err(Error::Invalid)?;
        validate::provider_addr(&instance.addr).map_err(Error::Invalid)?;
        validate::short_field("group", &instance.group).map_err(Error::Invalid)?;
        validate::short_field("version", &instance.version).map_err(Error::Invalid)?;
        let value = serde_json::to_vec(instance).map_err(|e| self.unreachable(e))?;
        let mut client = self.client().await?;
        client
            .put(
                self.provider_key(&instance.key()),
                value,
                Some(PutOptions::new().with_lease(lease.0 as i64)),
            )
            .await
            .map_err(|e| self.fail(e, Some(lease)))?;
        // Back again: no longer a graceful leave.
        let departed = format!(
            "{}departed/{}",
            self.service_prefix(&instance.service),
            encode(&instance.addr)
        );
        client
            .delete(departed, None)
            .await
            .map(drop)
            .map_err(|e| self.fail(e, None))
    }

    async fn deregister(&self, lease: LeaseId, key: &InstanceKey) -> Result<(), Error> {
        let mut client = self.client().await?;
        let marker = client
            .lease_grant(DEPARTED_TTL_SECS, None)
            .await
            .map_err(|e| self.fail(e, None))?;
        client
            .put(
                format!(
                    "{}departed/{}",
                    self.service_prefix(&key.service),
                    encode(&key.addr)
                ),
                crate::api::unix_millis_now().to_string(),
                Some(PutOptions::new().with_lease(marker.id())),
            )
            .await
            .map_err(|e| self.fail(e, None))?;
        client
            .delete(self.provider_key(key), None)
            .await
            .map(drop)
            .map_err(|e| self.fail(e, Some(lease)))
    }

    async fn register_consumer(
        &self,
        lease: LeaseId,
        consumer: &ConsumerInfo,
    ) -> Result<(), Error> {
        validate::service_name(&consumer.service).map_err(Error::Invalid)?;
        validate::short_field("client name", &consumer.client_name).map_err(Error::Invalid)?;
        let value = serde_json::to_vec(consumer).map_err(|e| self.unreachable(e))?;
        let key = format!(
            "{}consumers/{}",
            self.service_prefix(&consumer.service),
            encode(&consumer_url(consumer, lease))
        );
        let mut client = self.client().await?;
        client
            .put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease.0 as i64)),
            )
            .await
            .map(drop)
            .map_err(|e| self.fail(e, Some(lease)))
    }
}

#[async_trait]
impl Discovery for EtcdBackend {
    async fn lookup(&self, service: &str) -> Result<ServiceView, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let prefix = self.service_prefix(service);
        let mut client = self.client().await?;
        let answer = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail(e, None))?;
        let mut instances = Vec::new();
        let mut departed = Vec::new();
        for kv in answer.kvs() {
            let Some(rest) = kv.key().strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            if rest.starts_with(b"providers/") {
                match serde_json::from_slice::<Instance>(kv.value()) {
                    Ok(instance) => instances.push(instance),
                    Err(e) => tracing::warn!(
                        registry = %self.url,
                        key = %String::from_utf8_lossy(kv.key()),
                        "skipping a provider record that is not ours: {e}"
                    ),
                }
            } else if let Some(addr) = rest.strip_prefix(b"departed/") {
                let at: u64 = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                departed.push((at, decode(addr)));
            }
        }
        departed.sort();
        Ok(ServiceView {
            service: service.to_owned(),
            revision: Self::revision(answer.header()),
            instances,
            departed: departed.into_iter().map(|(_, addr)| addr).collect(),
        })
    }

    async fn watch(
        &self,
        service: &str,
        since: Revision,
        wait: Duration,
    ) -> Result<ServiceView, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let current = self.lookup(service).await?;
        // Another cluster (or a first call): answer at once.
        if since.epoch != current.revision.epoch || since.index == 0 {
            return Ok(current);
        }
        let prefix = format!("{}providers/", self.service_prefix(service));
        let mut client = self.client().await?;
        let watched = async {
            let mut stream = client
                .watch(
                    prefix.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(since.index as i64 + 1),
                    ),
                )
                .await?;
            while let Some(answer) = stream.message().await? {
                // Compacted past `since`: our read above is the new base.
                if answer.compact_revision() > 0 || answer.canceled() {
                    return Ok(true);
                }
                if answer
                    .events()
                    .iter()
                    .any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete))
                {
                    return Ok(true);
                }
            }
            Ok::<bool, etcd_client::Error>(false)
        };
        // A timeout (nothing changed within `wait`) answers with a fresh read too.
        if let Ok(Err(e)) = tokio::time::timeout(wait, watched).await {
            return Err(self.fail(e, None));
        }
        self.lookup(service).await
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, Error> {
        let prefix = format!("{}/", self.root);
        let mut client = self.client().await?;
        let answer = client
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(|e| self.fail(e, None))?;
        let revision = Self::revision(answer.header());
        let mut summaries: std::collections::BTreeMap<String, (u32, u32)> =
            std::collections::BTreeMap::new();
        for kv in answer.kvs() {
            let Some(rest) = kv.key().strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            let rest = String::from_utf8_lossy(rest);
            let mut parts = rest.splitn(3, '/');
            let (Some(service), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let entry = summaries.entry(service.to_owned()).or_default();
            match kind {
                "providers" => entry.0 += 1,
                "consumers" => entry.1 += 1,
                _ => {}
            }
        }
        Ok(summaries
            .into_iter()
            .filter(|(_, (i, c))| i + c > 0)
            .map(|(service, (instances, consumers))| ServiceSummary {
                service,
                instances,
                consumers,
                revision,
            })
            .collect())
    }

    async fn consumers(&self, service: &str) -> Result<Vec<ConsumerInfo>, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let prefix = format!("{}consumers/", self.service_prefix(service));
        let mut client = self.client().await?;
        let answer = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail(e, None))?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }
}

impl Backend for EtcdBackend {
    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url() {
        let b = EtcdBackend::parse("etcd://a:1,b:2/reg", "a:1,b:2/reg").unwrap();
        assert_eq!(b.root, "/reg");
        assert_eq!(b.endpoints, vec!["a:1".to_owned(), "b:2".to_owned()]);
        let b = EtcdBackend::parse("etcd://a:1", "a:1").unwrap();
        assert_eq!(b.root, "/dubbo");
        assert!(EtcdBackend::parse("etcd://", "").is_err());
    }
}

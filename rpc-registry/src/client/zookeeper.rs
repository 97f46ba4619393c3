//! The `zookeeper://` backend (feature `zookeeper`): a lease is a ZooKeeper session,
//! records are ephemeral nodes of that session, and a watch is a persistent recursive
//! watch on the service's node (ZooKeeper 3.6+).
//!
//! `zookeeper://h1:2181[,h2:2181...][/chroot]` is one ensemble, whatever the number of
//! hosts (the client fails over between them). Nodes live under `{chroot}/dubbo`, in
//! Dubbo's layout, so a Dubbo operator finds them where they expect:
//!
//! - `/dubbo/{service}/providers/{url-encoded instance URL}`: ephemeral, owned by the
//!   provider's session, JSON data (weight, metadata, start time);
//! - `/dubbo/{service}/consumers/{url-encoded consumer URL}`: ephemeral, owned by the
//!   consumer's session;
//! - `/dubbo/{service}/departed/{url-encoded addr}`: persistent, written when an
//!   instance leaves gracefully (data: the time, in ms), so consumers can tell a
//!   graceful leave (which may empty a list) from an outage (which must not). Counted
//!   as departed for 30 s; readers delete older markers, and registering the address
//!   again deletes its marker at once.
//!
//! (`{service}` is percent-encoded into one node name, so a service name with `/`
//! stays one node.)
//!
//! `zookeepers://h1:2281[,h2:2281...][/chroot]?ca=PATH[&cert=PATH&key=PATH]` (features
//! `zookeeper` and `tls`) is the same over TLS, to the servers' `secureClientPort`
//! (which ZooKeeper serves with its Netty connection factory only). The query is
//! [`tls::split`](super::tls::split)'s, with two differences the client library
//! imposes: `ca` is required (it takes trust anchors as PEM text only, so neither the
//! system trust store `rpcs://` falls back on nor the built-in roots `etcds://` falls
//! back on can be handed to it), and `server_name` is refused (it checks each host as
//! written, or nothing at all).
//!
//! Sessions and failures, as Dubbo's ZooKeeper registry handles them:
//!
//! - The client library pings by itself. [`Registry::keep_alive`] only reports the
//!   session's state: connected is alive; disconnected is unreachable and nothing is
//!   dropped (the session and its nodes outlive a connection loss shorter than the
//!   session timeout, and the library reconnects with the same session); expired or
//!   closed is `UnknownLease`, on which the [`Publisher`](super::Publisher) opens a new
//!   session and registers everything again (Dubbo's `recover()`: the library does not
//!   do it).
//! - After such an expiry, the server may still hold the old session's node of the
//!   same instance (the client gives up on a session 1.4 session timeouts after it last
//!   heard from the server; a restarted server expires it one session timeout after it
//!   is back). Registering replaces a node of another session by ours (delete and
//!   create in one transaction, so subscribers never see the instance missing), as
//!   Dubbo does (in two steps).
//! - Lookups and watches use one reader session per backend, opened again when it
//!   ends. A watch that sees the connection drop reports the registry unreachable (the
//!   consumer keeps its list); the next watch reads everything again, since events
//!   during a disconnection are not replayed (ZOOKEEPER-4698).
//! - A service's revision is `(czxid of the root node, the largest of the providers
//!   and departed nodes' pzxid and the provider nodes' mzxid)`: it moves with every
//!   join, leave and update, and the epoch changes only when the root node is made
//!   anew (an ensemble whose data was wiped).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use zookeeper_client as zk;
use zookeeper_client::{Acls, AddWatchMode, CreateMode, CreateOptions, EventType, SessionState};

use super::layout::{consumer_url, decode, encode, instance_url};
use super::{Backend, Discovery, Error, Registry};
use crate::api::{
    unix_millis_now, ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, RegistryError, Revision,
    ServiceSummary, ServiceView,
};
use crate::validate;

/// Timeout of one ZooKeeper operation: an ensemble on the same network answers in a
/// millisecond or two; a request sent while the client reconnects waits in its queue,
/// and this bounds that wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long establishing a session may take (every host is tried once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Session timeout asked for when the caller asks for none (the server clamps it to
/// its `minSessionTimeout`..`maxSessionTimeout`, by default 2 to 20 ticks of 2 s).
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Session timeout of the reader session (lookups and watches): it owns no nodes, so
/// its expiry costs only a new session.
const READER_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful leave counts as departed.
const DEPARTED_FOR: Duration = Duration::from_secs(30);

/// Directories: persistent, open to everyone (as Dubbo creates them).
const PERSISTENT: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());

/// Records: ephemeral, owned by a session.
const EPHEMERAL: CreateOptions<'static> = CreateMode::Ephemeral.with_acls(Acls::anyone_all());

/// One ZooKeeper ensemble.
pub(super) struct ZooKeeperBackend {
    /// `zookeeper://h1:2181,h2:2181/chroot`, for logs.
    url: String,
    /// `h1:2181,h2:2181`: the connect string.
    hosts: String,
    /// TLS settings (`zookeepers://`), CA and identity parsed; `None`: plaintext.
    #[cfg(feature = "tls")]
    tls: Option<zk::TlsOptions>,
    /// `{chroot}/dubbo`: the root node everything lives under.
    root: String,
    /// The session lookups and watches use; opened on first use and again after it
    /// ends. A tokio mutex: opening a session is awaited while it is held, so callers
    /// wait for that one session instead of each opening their own.
    reader: tokio::sync::Mutex<Option<zk::Client>>,
    /// The sessions standing for leases, by lease id (the session id).
    leases: Mutex<HashMap<LeaseId, Arc<LeaseSession>>>,
}

/// One lease: a session and the instances registered under it.
struct LeaseSession {
    /// The session; dropping the last clone closes it (its ephemeral nodes go with it).
    client: zk::Client,
    /// Who took it, for logs.
    owner: String,
    /// Registered under it, so that revoking marks each as departed before the
    /// session closes.
    instances: Mutex<BTreeSet<InstanceKey>>,
}

impl std::fmt::Debug for ZooKeeperBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperBackend")
            .field("url", &self.url)
            .field("leases", &self.leases.lock().expect("leases lock").len())
            .finish_non_exhaustive()
    }
}

/// Runs one operation with [`CALL_TIMEOUT`]; running out of it is ZooKeeper's
/// `Timeout`.
async fn timed<T>(op: impl Future<Output = Result<T, zk::Error>>) -> Result<T, zk::Error> {
    tokio::time::timeout(CALL_TIMEOUT, op)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// Whether a session can take requests now.
fn connected(client: &zk::Client) -> bool {
    matches!(
        client.state(),
        SessionState::SyncConnected | SessionState::ConnectedReadOnly
    )
}

/// The parent of a node path (`/a/b` for `/a/b/c`).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(parent, _)| parent)
}

impl ZooKeeperBackend {
    /// A backend for `zookeeper://{rest}`: `h1:port[,h2:port]` then an optional
    /// `/chroot`.
    pub(super) fn parse(url: &str, rest: &str) -> Result<ZooKeeperBackend, Error> {
        let (hosts, chroot) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let hosts = super::rpc::parse_hosts(url, hosts)?;
        if let Some(bad) = chroot
            .split('/')
            .skip(1)
            .find(|part| part.is_empty() || *part == "." || *part == ".." || part.contains('\0'))
        {
            return Err(Error::InvalidUrl {
                url: url.chars().take(128).collect(),
                reason: format!("chroot {chroot:?} has an invalid node name {bad:?}"),
            });
        }
        let hosts = hosts.join(",");
        Ok(ZooKeeperBackend {
            url: format!("zookeeper://{hosts}{chroot}"),
            hosts,
            #[cfg(feature = "tls")]
            tls: None,
            root: format!("{chroot}/dubbo"),
            reader: tokio::sync::Mutex::new(None),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// A backend for `zookeepers://{rest}`: as [`parse`](Self::parse) before the `?`,
    /// then the TLS query of [`tls::split`](super::tls::split), whose `ca` is required
    /// here and whose `server_name` is refused (see the module's docs).
    #[cfg(feature = "tls")]
    pub(super) fn parse_tls(url: &str, rest: &str) -> Result<ZooKeeperBackend, Error> {
        use super::tls;

        let (rest, query) = tls::split(url, "zookeepers", rest)?;
        if query.server_name.is_some() {
            return Err(tls::invalid(
                url,
                "zookeepers:// takes no server_name: the ZooKeeper client checks each \
                 server's certificate against its host as written in the URL"
                    .into(),
            ));
        }
        let Some(ca) = query.ca else {
            return Err(tls::invalid(
                url,
                "zookeepers:// needs ca=PATH (a PEM file of the CA certificates that \
                 issued the servers' certificates): the ZooKeeper client has no built-in \
                 roots"
                    .into(),
            ));
        };
        let pem = |what: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes)
                .map_err(|_| tls::refused(url, format!("{what} is not PEM text")))
        };
        let mut options = zk::TlsOptions::new()
            .with_pem_ca(&pem("ca", ca)?)
            .map_err(|e| tls::refused(url, format!("ca: {e}")))?;
        if let Some((cert, key)) = query.identity {
            options = options
                .with_pem_identity(&pem("cert", cert)?, &pem("key", key)?)
                .map_err(|e| tls::refused(url, format!("cert and key: {e}")))?;
        }
        install_crypto_provider();
        let mut backend = ZooKeeperBackend::parse(url, rest)?;
        backend.url = format!("zookeepers://{}", &backend.url["zookeeper://".len()..]);
        backend.tls = Some(options);
        Ok(backend)
    }

    /// Opens a session asking for `timeout`.
    async fn open_session(&self, timeout: Duration) -> Result<zk::Client, Error> {
        let connector = zk::Client::connector()
            .with_session_timeout(timeout)
            // Fail after trying every host once instead of cycling for a whole session
            // timeout: the caller retries on its own schedule.
            .with_fail_eagerly();
        let connecting = async {
            #[cfg(feature = "tls")]
            if let Some(tls) = &self.tls {
                return connector
                    .with_tls(tls.clone())
                    .secure_connect(&self.hosts)
                    .await;
            }
            connector.connect(&self.hosts).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(self.unreachable("no session established in time")),
            Ok(Err(e)) => Err(self.unreachable(self.connect_failure(e).await)),
            Ok(Ok(client)) => Ok(client),
        }
    }

    /// Why a session could not be established, with a hint when the failure looks
    /// like the two sides disagreeing on TLS.
    ///
    /// The client library reports every failed host as "no available hosts" and keeps
    /// the cause (a refused TCP connection, a failed handshake, a connection closed
    /// unanswered) to its debug log. A server that takes TCP connections but gave no
    /// session is one that disagrees on TLS: a TLS port closes a plaintext client's
    /// connection at its first bytes, and a handshake fails on an untrusted
    /// certificate or a missing client certificate. So the hosts are tried once more,
    /// with a bare TCP connect, to tell these apart from servers that are down.
    async fn connect_failure(&self, error: zk::Error) -> String {
        let reason = error.to_string();
        if !matches!(error, zk::Error::NoHosts | zk::Error::ConnectionLoss) {
            return reason;
        }
        let listening = async {
            for host in self.hosts.split(',') {
                if tokio::net::TcpStream::connect(host).await.is_ok() {
                    return true;
                }
            }
            false
        };
        // Bounded: this runs after a failure the caller is waiting to hear about.
        let listening = tokio::time::timeout(Duration::from_secs(1), listening)
            .await
            .unwrap_or(false);
        match (listening, self.url.starts_with("zookeepers://")) {
            (false, _) => reason,
            (true, true) => format!(
                "{reason}: the servers take connections, but no TLS session was established \
                 (check that ca= issued their certificates and that these name each host as \
                 written in the URL; if the servers require client certificates, give cert= \
                 and key=; a plaintext port fails the handshake too)"
            ),
            (true, false) => format!(
                "{reason}: the servers take connections but closed them unanswered (if they \
                 serve TLS, as a secureClientPort does, use zookeepers://...?ca=PATH with \
                 the `tls` feature)"
            ),
        }
    }

    /// The reader session, opened (again) if there is none or it ended.
    ///
    /// # Errors
    ///
    /// Unreachable when no session can be established or it is disconnected now.
    async fn reader(&self) -> Result<zk::Client, Error> {
        let mut slot = self.reader.lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.state().is_terminated() {
                return if connected(client) {
                    Ok(client.clone())
                } else {
                    Err(self.unreachable("disconnected (reconnecting)"))
                };
            }
            tracing::info!(registry = %self.url, state = %client.state(), "reader session ended; opening a new one");
        }
        let client = self.open_session(READER_SESSION_TIMEOUT).await?;
        // The root's creation is the epoch of every revision: make sure it exists.
        if let Err(e) = timed(client.mkdir(&self.root, &PERSISTENT)).await {
            tracing::warn!(registry = %self.url, root = %self.root, error = %e, "cannot create the root node");
        }
        *slot = Some(client.clone());
        Ok(client)
    }

    fn unreachable<E: std::fmt::Display>(&self, error: E) -> Error {
        Error::Unreachable {
            registry: self.url.clone(),
            reason: error.to_string(),
        }
    }

    fn unknown_lease(&self, lease: LeaseId) -> Error {
        Error::Registry {
            registry: self.url.clone(),
            source: RegistryError::UnknownLease(lease),
        }
    }

    /// Maps a ZooKeeper error of an operation on `lease`'s session: an expired or
    /// closed session is an unknown lease (and is forgotten).
    fn fail(&self, error: zk::Error, lease: LeaseId) -> Error {
        match error {
            zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed => {
                self.leases.lock().expect("leases lock").remove(&lease);
                self.unknown_lease(lease)
            }
            other => self.unreachable(other),
        }
    }

    /// The live session of `lease`.
    ///
    /// # Errors
    ///
    /// `UnknownLease` when there is none or it ended; unreachable while it is
    /// disconnected.
    fn session(&self, lease: LeaseId) -> Result<Arc<LeaseSession>, Error> {
        let mut leases = self.leases.lock().expect("leases lock");
        let Some(session) = leases.get(&lease).cloned() else {
            return Err(self.unknown_lease(lease));
        };
        let state = session.client.state();
        if state.is_terminated() {
            tracing::warn!(registry = %self.url, lease = %lease, owner = %session.owner, %state, "session ended");
            leases.remove(&lease);
            return Err(self.unknown_lease(lease));
        }
        if !connected(&session.client) {
            return Err(self.unreachable(format!(
                "session {lease} disconnected (it lives on until its timeout)"
            )));
        }
        Ok(session)
    }

    /// `{root}/{service}`.
    fn service_dir(&self, service: &str) -> String {
        format!("{}/{}", self.root, encode(service))
    }

    fn provider_node(&self, key: &InstanceKey) -> String {
        format!(
            "{}/providers/{}",
            self.service_dir(&key.service),
            encode(&instance_url(key))
        )
    }

    fn departed_node(&self, service: &str, addr: &str) -> String {
        format!("{}/departed/{}", self.service_dir(service), encode(addr))
    }

    /// Creates `path` as an ephemeral node of `client`'s session holding `data`, or
    /// updates it when the session already owns it; a node another session owns (an
    /// expired session of this provider the server has not expired yet) is deleted
    /// and created again.
    async fn put_ephemeral(
        &self,
        client: &zk::Client,
        path: &str,
        data: &[u8],
    ) -> Result<(), zk::Error> {
        let ours = client.session_id().0;
        // Each round ends in success or a change someone else made meanwhile; a few
        // rounds settle any race.
        for _ in 0..4 {
            match timed(client.create(path, data, &EPHEMERAL)).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NoNode) => timed(client.mkdir(parent(path), &PERSISTENT)).await?,
                Err(zk::Error::NodeExists) => match timed(client.check_stat(path)).await? {
                    None => {}
                    Some(stat) if stat.ephemeral_owner == ours => {
                        match timed(client.set_data(path, data, Some(stat.version))).await {
                            Ok(_) => return Ok(()),
                            Err(zk::Error::BadVersion | zk::Error::NoNode) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Some(stat) => {
                        tracing::info!(
                            registry = %self.url,
                            node = %path,
                            owner = %format_args!("{:#x}", stat.ephemeral_owner),
                            "replacing a node left by an earlier session"
                        );
                        // In one transaction, so subscribers never see the instance
                        // missing in between.
                        let mut replace = client.new_multi_writer();
                        replace.add_delete(path, Some(stat.version))?;
                        replace.add_create(path, data, &EPHEMERAL)?;
                        match timed(async { replace.commit().await.map_err(zk::Error::from) }).await
                        {
                            Ok(_) => return Ok(()),
                            Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                            Err(e) => return Err(e),
                        }
                    }
                },
                Err(e) => return Err(e),
            }
        }
        Err(zk::Error::UnexpectedError(format!(
            "{path} kept changing while it was registered"
        )))
    }

    /// Marks `key`'s address as departed gracefully, then deletes its node.
    async fn depart(&self, client: &zk::Client, key: &InstanceKey) -> Result<(), zk::Error> {
        let marker = self.departed_node(&key.service, &key.addr);
        let now = unix_millis_now().to_string();
        let mut marked = false;
        // As in `put_ephemeral`: a few rounds settle any race.
        for _ in 0..4 {
            match timed(client.create(&marker, now.as_bytes(), &PERSISTENT)).await {
                Ok(_) => marked = true,
                Err(zk::Error::NoNode) => {
                    timed(client.mkdir(parent(&marker), &PERSISTENT)).await?;
                }
                Err(zk::Error::NodeExists) => {
                    match timed(client.set_data(&marker, now.as_bytes(), None)).await {
                        Ok(_) => marked = true,
                        Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            if marked {
                break;
            }
        }
        if !marked {
            return Err(zk::Error::UnexpectedError(format!(
                "{marker} kept changing while it was written"
            )));
        }
        match timed(client.delete(&self.provider_node(key), None)).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Children of `path` and its pzxid; a missing node has none.
    async fn children(client: &zk::Client, path: &str) -> Result<(Vec<String>, i64), zk::Error> {
        match timed(client.get_children(path)).await {
            Ok((children, stat)) => Ok((children, stat.pzxid)),
            Err(zk::Error::NoNode) => Ok((Vec::new(), 0)),
            Err(e) => Err(e),
        }
    }

    /// The data of each child of `dir` (children deleted meanwhile left out), with
    /// its stat.
    async fn child_data(
        client: &zk::Client,
        dir: &str,
        children: &[String],
    ) -> Result<Vec<(String, Vec<u8>, zk::Stat)>, zk::Error> {
        // The client sends requests as they are created: these go out pipelined.
        let reads = children.iter().map(|child| async move {
            let read = timed(client.get_data(&format!("{dir}/{child}"))).await;
            (child, read)
        });
        let mut out = Vec::with_capacity(children.len());
        for (child, read) in futures_util::future::join_all(reads).await {
            match read {
                Ok((data, stat)) => out.push((child.clone(), data, stat)),
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The service's instances, graceful leaves and revision, read through `client`.
    async fn read_view(
        &self,
        client: &zk::Client,
        service: &str,
    ) -> Result<ServiceView, zk::Error> {
        let dir = self.service_dir(service);
        let providers_dir = format!("{dir}/providers");
        let departed_dir = format!("{dir}/departed");
        let (root, providers, departed) = futures_util::future::join3(
            timed(client.check_stat(&self.root)),
            Self::children(client, &providers_dir),
            Self::children(client, &departed_dir),
        )
        .await;
        let epoch = root?.map_or(0, |stat| stat.czxid as u64);
        let ((providers, providers_pzxid), (departed, departed_pzxid)) = (providers?, departed?);
        let (providers, departed) = futures_util::future::join(
            Self::child_data(client, &providers_dir, &providers),
            Self::child_data(client, &departed_dir, &departed),
        )
        .await;
        // Never 0, which would mean "no revision yet" to a watcher.
        let mut index = providers_pzxid.max(departed_pzxid).max(1);
        let mut instances = Vec::new();
        for (child, data, stat) in providers? {
            index = index.max(stat.mzxid);
            match serde_json::from_slice::<Instance>(&data) {
                Ok(instance) => instances.push(instance),
                Err(e) => tracing::warn!(
                    registry = %self.url,
                    node = %format_args!("{providers_dir}/{child}"),
                    "skipping a provider node that is not ours: {e}"
                ),
            }
        }
        let now = unix_millis_now();
        let mut gone = Vec::new();
        for (child, data, stat) in departed? {
            let at = std::str::from_utf8(&data)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(stat.mtime.max(0) as u64);
            if now.saturating_sub(at) > DEPARTED_FOR.as_millis() as u64 {
                // Stale: delete it in the background (best effort; whoever reads next
                // tries again).
                let (client, node) = (client.clone(), format!("{departed_dir}/{child}"));
                tokio::spawn(async move {
                    let _ = timed(client.delete(&node, Some(stat.version))).await;
                });
            } else {
                gone.push((at, decode(child.as_bytes())));
            }
        }
        gone.sort();
        Ok(ServiceView {
            service: service.to_owned(),
            revision: Revision::new(epoch, index.max(1) as u64),
            instances,
            departed: gone.into_iter().map(|(_, addr)| addr).collect(),
        })
    }
}

#[async_trait]
impl Registry for ZooKeeperBackend {
    async fn grant(&self, owner: &str, ttl: Option<Duration>) -> Result<Lease, Error> {
        validate::short_field("owner", owner).map_err(Error::Invalid)?;
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        // The wire carries the timeout as an i32 of milliseconds.
        if ttl.is_zero() || ttl.as_millis() > i32::MAX as u128 {
            return Err(Error::Invalid(RegistryError::InvalidTtl {
                ttl_ms: ttl.as_millis().min(u64::MAX as u128) as u64,
                min_ms: 1,
                max_ms: i32::MAX as u64,
            }));
        }
        let client = self.open_session(ttl).await?;
        let id = LeaseId(client.session_id().0 as u64);
        // What the server granted (clamped to its bounds).
        let ttl_ms = client.session_timeout().as_millis().max(1) as u64;
        self.leases.lock().expect("leases lock").insert(
            id,
            Arc::new(LeaseSession {
                client,
                owner: owner.to_owned(),
                instances: Mutex::new(BTreeSet::new()),
            }),
        );
        Ok(Lease {
            id,
            ttl_ms,
            // Only the session's state is checked (the library pings by itself), so
            // checking often costs nothing and finds an expiry soon.
            heartbeat_ms: (ttl_ms / 3).max(100),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), Error> {
        self.session(lease).map(drop)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), Error> {
        let Some(session) = self.leases.lock().expect("leases lock").remove(&lease) else {
            return Err(self.unknown_lease(lease));
        };
        let mut state = session.client.state_watcher();
        if connected(&session.client) {
            let instances: Vec<InstanceKey> = session
                .instances
                .lock()
                .expect("instances lock")
                .iter()
                .cloned()
                .collect();
            for key in instances {
                if let Err(e) = self.depart(&session.client, &key).await {
                    tracing::warn!(registry = %self.url, instance = %key.addr, error = %e, "graceful deregistration failed; the session's end removes it");
                }
            }
        }
        // Dropping the last handle closes the session, which deletes its other nodes
        // (consumer announcements) at once.
        drop(session);
        let closed = async {
            while !state.peek_state().is_terminated() {
                state.changed().await;
            }
        };
        if tokio::time::timeout(CALL_TIMEOUT, closed).await.is_err() {
            return Err(self.unreachable("session close not confirmed in time"));
        }
        Ok(())
    }

    async fn register(&self, lease: LeaseId, instance: &Instance) -> Result<(), Error> {
        validate::service_name(&instance.service).map_err(Error::Invalid)?;
        validate::provider_addr(&instance.addr).map_err(Error::Invalid)?;
        validate::short_field("group", &instance.group).map_err(Error::Invalid)?;
        validate::short_field("version", &instance.version).map_err(Error::Invalid)?;
        let data = serde_json::to_vec(instance).map_err(|e| self.unreachable(e))?;
        let session = self.session(lease)?;
        let key = instance.key();
        self.put_ephemeral(&session.client, &self.provider_node(&key), &data)
            .await
            .map_err(|e| self.fail(e, lease))?;
        session
            .instances
            .lock()
            .expect("instances lock")
            .insert(key);
        // Back again: no longer a graceful leave.
        let marker = self.departed_node(&instance.service, &instance.addr);
        match timed(session.client.delete(&marker, None)).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(self.fail(e, lease)),
        }
    }

    async fn deregister(&self, lease: LeaseId, key: &InstanceKey) -> Result<(), Error> {
        let session = self.session(lease)?;
        self.depart(&session.client, key)
            .await
            .map_err(|e| self.fail(e, lease))?;
        session
            .instances
            .lock()
            .expect("instances lock")
            .remove(key);
        Ok(())
    }

    async fn register_consumer(
        &self,
        lease: LeaseId,
        consumer: &ConsumerInfo,
    ) -> Result<(), Error> {
        validate::service_name(&consumer.service).map_err(Error::Invalid)?;
        validate::short_field("client name", &consumer.client_name).map_err(Error::Invalid)?;
        let data = serde_json::to_vec(consumer).map_err(|e| self.unreachable(e))?;
        let session = self.session(lease)?;
        let node = format!(
            "{}/consumers/{}",
            self.service_dir(&consumer.service),
            encode(&consumer_url(consumer, lease))
        );
        self.put_ephemeral(&session.client, &node, &data)
            .await
            .map_err(|e| self.fail(e, lease))
    }
}

#[async_trait]
impl Discovery for ZooKeeperBackend {
    async fn lookup(&self, service: &str) -> Result<ServiceView, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let client = self.reader().await?;
        self.read_view(&client, service)
            .await
            .map_err(|e| self.unreachable(e))
    }

    async fn watch(
        &self,
        service: &str,
        since: Revision,
        wait: Duration,
    ) -> Result<ServiceView, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let client = self.reader().await?;
        // Watch first, then read: a change after the read fires the watch.
        let mut watcher = timed(client.watch(
            &self.service_dir(service),
            AddWatchMode::PersistentRecursive,
        ))
        .await
        .map_err(|e| self.unreachable(e))?;
        let current = self
            .read_view(&client, service)
            .await
            .map_err(|e| self.unreachable(e))?;
        // Moved on, another ensemble, or a first call: answer at once.
        if current.revision != since || since.index == 0 {
            return Ok(current);
        }
        // Called once only: the watcher must not be polled past a terminal event.
        if let Ok(event) = tokio::time::timeout(wait, watcher.changed()).await {
            if event.event_type == EventType::Session
                && !matches!(
                    event.session_state,
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly
                )
            {
                return Err(self.unreachable(format!("session {}", event.session_state)));
            }
        }
        // A change, a reconnection (whose missed events are not replayed) or `wait`
        // passed: read again. Dropping the watcher removes the watch.
        drop(watcher);
        self.read_view(&client, service)
            .await
            .map_err(|e| self.unreachable(e))
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, Error> {
        let client = self.reader().await?;
        let failed = |e: zk::Error| self.unreachable(e);
        let root = timed(client.check_stat(&self.root)).await.map_err(failed)?;
        let epoch = root.map_or(0, |stat| stat.czxid as u64);
        let (names, _) = Self::children(&client, &self.root).await.map_err(failed)?;
        let counts = names.iter().map(|name| {
            let dir = format!("{}/{name}", self.root);
            let client = &client;
            async move {
                let (providers, consumers) = futures_util::future::join(
                    Self::children(client, &format!("{dir}/providers")),
                    Self::children(client, &format!("{dir}/consumers")),
                )
                .await;
                Ok::<_, zk::Error>((name, providers?, consumers?))
            }
        });
        let mut summaries = Vec::new();
        for counted in futures_util::future::join_all(counts).await {
            let (name, (providers, p_zxid), (consumers, c_zxid)) = counted.map_err(failed)?;
            if providers.is_empty() && consumers.is_empty() {
                continue;
            }
            summaries.push(ServiceSummary {
                service: decode(name.as_bytes()),
                instances: providers.len() as u32,
                consumers: consumers.len() as u32,
                revision: Revision::new(epoch, p_zxid.max(c_zxid).max(1) as u64),
            });
        }
        summaries.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(summaries)
    }

    async fn consumers(&self, service: &str) -> Result<Vec<ConsumerInfo>, Error> {
        validate::service_name(service).map_err(Error::Invalid)?;
        let client = self.reader().await?;
        let dir = format!("{}/consumers", self.service_dir(service));
        let (children, _) = Self::children(&client, &dir)
            .await
            .map_err(|e| self.unreachable(e))?;
        let read = Self::child_data(&client, &dir, &children)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(read
            .iter()
            .filter_map(|(_, data, _)| serde_json::from_slice(data).ok())
            .collect())
    }
}

impl Backend for ZooKeeperBackend {
    fn url(&self) -> &str {
        &self.url
    }
}

/// Makes ring the process's default rustls crypto provider, unless one is set:
/// zookeeper-client builds its TLS configs with the default, and with both ring
/// (rpc-core's) and aws-lc-rs (zookeeper-client's rustls defaults) compiled in, rustls
/// cannot pick one itself and would panic at the first connect. An application that
/// installed its own default first keeps it.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another default is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url() {
        let b = ZooKeeperBackend::parse("zookeeper://a:1,b:2/reg/x", "a:1,b:2/reg/x").unwrap();
        assert_eq!(b.hosts, "a:1,b:2");
        assert_eq!(b.root, "/reg/x/dubbo");
        assert_eq!(b.url, "zookeeper://a:1,b:2/reg/x");
        let b = ZooKeeperBackend::parse("zookeeper://a:1/", "a:1/").unwrap();
        assert_eq!(b.root, "/dubbo");
        assert!(ZooKeeperBackend::parse("zookeeper://", "").is_err());
        assert!(ZooKeeperBackend::parse("zookeeper://a:1//x", "a:1//x").is_err());
        assert!(ZooKeeperBackend::parse("zookeeper://a:1/../x", "a:1/../x").is_err());
        assert!(ZooKeeperBackend::parse("zookeeper://a", "a").is_err());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_url() {
        let parse = |url: &str| ZooKeeperBackend::parse_tls(url, &url["zookeepers://".len()..]);
        let dir = std::env::temp_dir().join(format!("rpc-registry-zk-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        // A certificate only needs to parse here (rcgen is a dev-dependency).
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let ca = ca.display();

        let b = parse(&format!("zookeepers://a:1,b:2/reg?ca={ca}")).unwrap();
        assert_eq!(b.url, "zookeepers://a:1,b:2/reg");
        assert_eq!(b.hosts, "a:1,b:2");
        assert_eq!(b.root, "/reg/dubbo");
        assert!(b.tls.is_some());
        let message = |url: &str| parse(url).unwrap_err().to_string();
        assert!(message("zookeepers://a:1").contains("needs ca=PATH"));
        assert!(message(&format!("zookeepers://a:1?ca={ca}&server_name=x"))
            .contains("takes no server_name"));
        assert!(message(&format!("zookeepers://a:1?ca={ca}&cert={ca}")).contains("go together"));
        assert!(matches!(
            parse("zookeepers://a:1?ca=/nonexistent/ca.pem"),
            Err(Error::Tls { .. })
        ));
        // A file without a certificate is refused now, not at the first connect.
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            parse(&format!("zookeepers://a:1?ca={}", empty.display())),
            Err(Error::Tls { .. })
        ));
        assert!(matches!(
            parse(&format!("zookeepers://a:1/../x?ca={ca}")),
            Err(Error::InvalidUrl { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn node_names() {
        let b = ZooKeeperBackend::parse("zookeeper://a:1", "a:1").unwrap();
        let key = Instance::new("example.Inventory", "127.0.0.1:7001").key();
        assert_eq!(
            b.provider_node(&key),
            "/dubbo/example.Inventory/providers/\
             rpc%3A%2F%2F127.0.0.1%3A7001%2Fexample.Inventory%3Fgroup%3D%26version%3D"
        );
        assert_eq!(
            b.departed_node("a/b", "127.0.0.1:1"),
            "/dubbo/a%2Fb/departed/127.0.0.1%3A1"
        );
        assert_eq!(parent("/dubbo/s/providers/x"), "/dubbo/s/providers");
    }
}

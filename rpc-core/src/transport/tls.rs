//! TLS for both sides (rustls, the ring provider): the settings users build
//! ([`ServerTls`], [`ClientTls`]), the handshakes, and the server's TLS stream as a
//! [`ServerIo`].
//!
//! A server with TLS accepts only TLS. A plaintext client that reaches it is told so:
//! its first frame is answered with `BAD_REQUEST` ("this server requires TLS") and the
//! connection is closed. A TLS client that reaches a plaintext server fails its
//! connect with an error that says the handshake failed and asks whether the server
//! is plaintext (the server logs the ClientHello as a bad magic). Both handshakes are
//! bounded: the client's by its connect timeout, the server's by
//! [`ServerTls::handshake_timeout`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::RootCertStore;

use super::ServerIo;
use crate::error::RpcError;
use crate::protocol::{encode_response, Status, HEADER_LEN};
use crate::server::PeerIdentity;

/// The crypto provider: ring, chosen explicitly so that the process-wide default
/// (which another crate may have set differently) does not matter.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An `InvalidConfig` error about TLS.
fn invalid(what: &str, e: impl fmt::Display) -> RpcError {
    RpcError::InvalidConfig(format!("TLS: {what}: {e}"))
}

/// The certificates in `pem` (one or more `CERTIFICATE` blocks).
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, RpcError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, e))?;
    if certs.is_empty() {
        return Err(invalid(what, "no CERTIFICATE block in the PEM text"));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1).
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, RpcError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid("private key", e))
}

/// A root store holding the CA certificates in `pem`.
fn root_store(pem: &[u8]) -> Result<RootCertStore, RpcError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, "CA certificates")? {
        roots.add(cert).map_err(|e| invalid("CA certificate", e))?;
    }
    Ok(roots)
}

/// Whether and how a server asks clients for certificates.
#[derive(Clone)]
enum ClientAuth {
    /// Any client (the default).
    None,
    /// Clients must present a certificate issued by one of these CAs.
    Required(Arc<RootCertStore>),
    /// Clients may present one; if they do, it must be issued by one of these CAs.
    Optional(Arc<RootCertStore>),
}

/// A server's TLS settings: its certificate chain and key, and optionally the CAs
/// whose client certificates it accepts (mutual TLS). Set on a server with
/// [`ServerBuilder::tls`](crate::ServerBuilder::tls).
///
/// With mutual TLS, a handler sees the client's identity (certificate subject and
/// subject alternative names) as
/// [`CallContext::peer_identity`](crate::server::CallContext::peer_identity).
///
/// ```no_run
/// # fn run(cert_pem: &[u8], key_pem: &[u8], clients_ca_pem: &[u8]) -> Result<(), rpc_core::RpcError> {
/// use rpc_core::ServerTls;
/// let tls = ServerTls::from_pem(cert_pem, key_pem)?
///     .client_auth_required(clients_ca_pem)?
///     .handshake_timeout(std::time::Duration::from_secs(3));
/// let builder = rpc_core::Server::builder().tls(tls);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    /// The server's certificate chain, leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// The server's private key (shared: it cannot be cloned cheaply).
    key: Arc<PrivateKeyDer<'static>>,
    /// Client certificates.
    client_auth: ClientAuth,
    /// The rustls settings built from the above.
    config: Arc<rustls::ServerConfig>,
    /// How long a client gets to complete the handshake.
    handshake_timeout: Duration,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.client_auth {
            ClientAuth::None => "none",
            ClientAuth::Required(_) => "required",
            ClientAuth::Optional(_) => "optional",
        };
        f.debug_struct("ServerTls")
            .field("chain_len", &self.chain.len())
            .field("client_auth", &auth)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// The default [`ServerTls::handshake_timeout`].
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

impl ServerTls {
    /// A server identity from a PEM certificate chain (leaf first) and its PEM private
    /// key (PKCS#8, PKCS#1 or SEC1). No client certificates are asked for; the
    /// handshake timeout is 5 s.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if the PEM text holds no certificate or key, or
    /// the key does not fit the certificate.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, RpcError> {
        let chain = certificates(cert_chain_pem, "server certificate chain")?;
        let key = Arc::new(private_key(key_pem)?);
        ServerTls::build(chain, key, ClientAuth::None, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// Requires every client to present a certificate issued by one of the CAs in
    /// `ca_pem` (mutual TLS); a client without one fails the handshake.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if `ca_pem` holds no usable CA certificate.
    pub fn client_auth_required(self, ca_pem: &[u8]) -> Result<ServerTls, RpcError> {
        let roots = Arc::new(root_store(ca_pem)?);
        ServerTls::build(
            self.chain,
            self.key,
            ClientAuth::Required(roots),
            self.handshake_timeout,
        )
    }

    /// Lets clients present a certificate issued by one of the CAs in `ca_pem`;
    /// clients without one are served too, with no
    /// [`peer_identity`](crate::server::CallContext::peer_identity).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if `ca_pem` holds no usable CA certificate.
    pub fn client_auth_optional(self, ca_pem: &[u8]) -> Result<ServerTls, RpcError> {
        let roots = Arc::new(root_store(ca_pem)?);
        ServerTls::build(
            self.chain,
            self.key,
            ClientAuth::Optional(roots),
            self.handshake_timeout,
        )
    }

    /// Sets how long a client gets from connecting to completing the handshake;
    /// past it the connection is closed with a logged reason. Default: 5 s. Checked
    /// (more than zero) at [`bind`](crate::ServerBuilder::bind).
    pub fn handshake_timeout(mut self, timeout: Duration) -> ServerTls {
        self.handshake_timeout = timeout;
        self
    }

    /// Checks what [`bind`](crate::ServerBuilder::bind) checks.
    pub(crate) fn validate(&self) -> Result<(), RpcError> {
        if self.handshake_timeout.is_zero() {
            return Err(RpcError::InvalidConfig(
                "TLS: the handshake timeout must be more than zero".to_owned(),
            ));
        }
        Ok(())
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: Arc<PrivateKeyDer<'static>>,
        client_auth: ClientAuth,
        handshake_timeout: Duration,
    ) -> Result<ServerTls, RpcError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("protocol versions", e))?;
        let builder = match &client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required(roots) | ClientAuth::Optional(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(roots),
                    provider(),
                );
                let verifier = match client_auth {
                    ClientAuth::Optional(_) => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| invalid("client certificate verifier", e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| invalid("server certificate and key", e))?;
        Ok(ServerTls {
            chain,
            key,
            client_auth,
            config: Arc::new(config),
            handshake_timeout,
        })
    }
}

/// A client's TLS settings: whom it trusts to be the server, the name it expects the
/// server's certificate to carry, and optionally its own certificate (mutual TLS).
/// Set on a client with [`ClientBuilder::tls`](crate::ClientBuilder::tls).
///
/// Without [`server_name`](Self::server_name) the server's certificate must name the
/// IP address connected to (a subject alternative name of type IP); with it, the
/// certificate must name that host, for every provider the client connects to.
///
/// ```no_run
/// # fn run(ca_pem: &[u8]) -> Result<(), rpc_core::RpcError> {
/// use rpc_core::ClientTls;
/// let tls = ClientTls::with_ca_pem(ca_pem)?.server_name("inventory.internal")?;
/// let builder = rpc_core::Client::builder().tls(tls);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    /// The CAs trusted to issue server certificates.
    roots: Arc<RootCertStore>,
    /// The rustls settings built from the roots and the identity.
    config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry; `None`: the IP address.
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("server_name", &self.server_name)
            .field(
                "client_identity",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CAs of the web PKI (Mozilla's root program, built in: no system
    /// files are read).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if rustls refuses the settings (it does not with
    /// the built-in roots).
    pub fn mozilla_roots() -> Result<ClientTls, RpcError> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        ClientTls::build(Arc::new(roots), None, None)
    }

    /// Trusts the CAs of the operating system's trust store, read once, here: on
    /// Linux the bundle file or directory OpenSSL would read (`SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` first, then the distribution's usual places), on macOS and
    /// Windows the system keychain or certificate store. Certificates the store holds
    /// but rustls cannot parse are skipped.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if the store yields no usable certificate (a
    /// container without its `ca-certificates` package, say), naming what failed to
    /// load.
    pub fn system_roots() -> Result<ClientTls, RpcError> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = if loaded.errors.is_empty() {
                "no CA certificates found".to_owned()
            } else {
                loaded
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(invalid("system trust store", why));
        }
        ClientTls::build(Arc::new(roots), None, None)
    }

    /// Trusts only the CAs in `ca_pem` (a private CA, or the server's self-signed
    /// certificate).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if `ca_pem` holds no usable certificate.
    pub fn with_ca_pem(ca_pem: &[u8]) -> Result<ClientTls, RpcError> {
        ClientTls::build(Arc::new(root_store(ca_pem)?), None, None)
    }

    /// Presents this certificate chain (leaf first) and key to servers that ask for
    /// one (mutual TLS).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if the PEM text holds no certificate or key, or
    /// they do not fit.
    pub fn identity_pem(
        self,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<ClientTls, RpcError> {
        let chain = certificates(cert_chain_pem, "client certificate chain")?;
        let key = private_key(key_pem)?;
        ClientTls::build(self.roots, Some((chain, key)), self.server_name)
    }

    /// Expects the server's certificate to name `name` (a DNS name or an IP address).
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] if `name` is neither.
    pub fn server_name(mut self, name: &str) -> Result<ClientTls, RpcError> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| invalid("server name", e))?;
        self.server_name = Some(name);
        Ok(self)
    }

    fn build(
        roots: Arc<RootCertStore>,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        server_name: Option<ServerName<'static>>,
    ) -> Result<ClientTls, RpcError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("protocol versions", e))?
            .with_root_certificates(Arc::clone(&roots));
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("client certificate and key", e))?,
        };
        Ok(ClientTls {
            roots,
            config: Arc::new(config),
            server_name,
        })
    }

    /// Runs the client handshake over `stream`, connected to `addr`, within `timeout`.
    ///
    /// # Errors
    ///
    /// If the handshake fails or takes too long; the message names the server and
    /// suggests the usual cause.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!(
                    "TLS handshake with {addr} failed: {e} (a server that closes at once is \
                     usually serving plaintext)"
                ),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out after {timeout:?}"),
            )),
        }
    }
}

/// The first byte of every frame of our protocol (the magic's `R`); a TLS record
/// starts with its content type (22 for a ClientHello), never with this.
const PLAINTEXT_FIRST_BYTE: u8 = b'R';

/// Runs the server handshake on an accepted connection, within the handshake timeout.
/// A plaintext client is answered `BAD_REQUEST` on its first frame and closed.
///
/// # Errors
///
/// Why the connection is closed instead, for the log.
pub(crate) async fn accept(
    mut stream: TcpStream,
    tls: &ServerTls,
    max_frame_len: usize,
) -> Result<(TlsServerStream, Option<Arc<PeerIdentity>>), String> {
    let timeout = tls.handshake_timeout;
    let handshake = async {
        let mut first = [0u8; 1];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(|e| format!("read failed before the TLS handshake: {e}"))?;
        if n == 0 {
            return Err("closed before the TLS handshake".to_owned());
        }
        if first[0] == PLAINTEXT_FIRST_BYTE {
            refuse_plaintext(&mut stream, max_frame_len).await;
            return Err("plaintext client on a TLS port: answered BAD_REQUEST".to_owned());
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
        acceptor
            .accept(stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| format!("TLS handshake not completed within {timeout:?}"))??;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| Arc::new(PeerIdentity::from_der(leaf.as_ref())));
    Ok((
        TlsServerStream {
            inner: stream,
            // The handshake may have read (and rustls decrypted) the client's first
            // requests already: read before waiting for the socket.
            more: true,
        },
        identity,
    ))
}

/// Reads a plaintext client's first frame header and answers it `BAD_REQUEST`,
/// so it learns why it is being closed.
async fn refuse_plaintext(stream: &mut TcpStream, max_frame_len: usize) {
    let mut header = [0u8; HEADER_LEN];
    if stream.read_exact(&mut header).await.is_err() {
        return;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[8..16]);
    let mut reply = BytesMut::new();
    let message = "this server requires TLS: connect with TLS (ClientBuilder::tls)";
    if encode_response(
        &mut reply,
        u64::from_be_bytes(id),
        Status::BadRequest.code(),
        &message,
        max_frame_len,
    )
    .is_ok()
    {
        let _ = stream.write_all(&reply).await;
    }
    let _ = stream.shutdown().await;
}

/// A server-side TLS stream, driven by readiness like plain TCP.
#[derive(Debug)]
pub(crate) struct TlsServerStream {
    /// The TLS session over the socket.
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    /// The last read filled the buffer: rustls may hold more decrypted bytes that no
    /// socket readiness will announce, so read again without waiting.
    more: bool,
}

/// A context whose waker does nothing: the loop waits on the socket's readiness
/// itself, so the waker rustls's reads and writes register is never needed.
fn noop_context() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}

impl ServerIo for TlsServerStream {
    async fn readable(&self) -> io::Result<()> {
        if self.more {
            return Ok(());
        }
        self.inner.get_ref().0.readable().await
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.more = false;
        let mut cx = noop_context();
        let mut total = 0;
        loop {
            if buf.capacity() == buf.len() {
                self.more = true;
                return Ok(total);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), &mut cx, buf) {
                Poll::Ready(Ok(0)) => return Ok(total),
                Poll::Ready(Ok(n)) => total += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending if total == 0 => return Err(io::ErrorKind::WouldBlock.into()),
                Poll::Pending => return Ok(total),
            }
        }
    }

    async fn writable(&self) -> io::Result<()> {
        self.inner.get_ref().0.writable().await
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut self.inner).poll_write(&mut noop_context(), buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn wants_flush(&self) -> bool {
        self.inner.get_ref().1.wants_write()
    }

    fn try_flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut self.inner).poll_flush(&mut noop_context()) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl PeerIdentity {
    /// The identity in a DER certificate (the handshake verified it already). A
    /// certificate the parser cannot read keeps its DER and empty names.
    pub(crate) fn from_der(der: &[u8]) -> PeerIdentity {
        let mut identity = PeerIdentity {
            certificate: der.to_vec(),
            subject: String::new(),
            common_name: None,
            dns_names: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            ip_addresses: Vec::new(),
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return identity;
        };
        identity.subject = cert.subject().to_string();
        identity.common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            use x509_parser::extensions::GeneralName;
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::RFC822Name(email) => identity.emails.push((*email).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            identity.ip_addresses.push(v4.into());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            identity.ip_addresses.push(v6.into());
                        }
                    }
                    _ => {}
                }
            }
        }
        identity
    }
}

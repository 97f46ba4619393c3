//! The client side of the chain: the request and response every client filter sees,
//! the [`Transport`] at the end of the chain (sends the request over the client's
//! connections), and how a call runs through a chain.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tower::util::BoxCloneSyncService;

use super::{status_of, BoxError};
use crate::error::RpcError;
use crate::protocol::metadata::TraceContext;
use crate::protocol::{encode_raw_request, EncodeError, ProtocolError, RequestTarget, Status};
use crate::Client;

/// A call as a client filter sees it. The arguments are already encoded (a cheap
/// [`Bytes`] to clone), so a filter can send the same call again, to another provider
/// or several at once, without serializing it again: clone the request.
#[derive(Clone)]
pub struct ClientRequest {
    /// The service's wire name.
    service: Cow<'static, str>,
    /// The method's wire name.
    method: Cow<'static, str>,
    /// The encoded argument tuple (MessagePack).
    body: Bytes,
    /// How long the caller waits; sent to the server as the deadline.
    timeout: Duration,
    /// Sent with the oneway flag: no response is expected.
    oneway: bool,
    /// User attachments sent in the metadata.
    attachments: Vec<(String, Vec<u8>)>,
    /// Affinity key for the `ip-hash` balancer.
    hash_key: Option<u64>,
    /// Trace context sent in the metadata.
    trace: Option<TraceContext>,
    /// Token sent in the metadata, overriding the client's.
    auth_token: Option<Bytes>,
}

impl fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRequest")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .field("oneway", &self.oneway)
            .field("trace", &self.trace)
            .finish_non_exhaustive()
    }
}

impl ClientRequest {
    /// A request for `service.method` with an encoded argument tuple (see
    /// [`encode_args`](crate::protocol::encode_args)) and the caller's timeout.
    pub fn new(
        service: impl Into<Cow<'static, str>>,
        method: impl Into<Cow<'static, str>>,
        body: Bytes,
        timeout: Duration,
    ) -> ClientRequest {
        ClientRequest {
            service: service.into(),
            method: method.into(),
            body,
            timeout,
            oneway: false,
            attachments: Vec::new(),
            hash_key: None,
            trace: None,
            auth_token: None,
        }
    }

    /// The service's wire name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method's wire name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The encoded argument tuple.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// How long the caller waits for the reply (also the deadline the server is
    /// told).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the timeout (a retry sends what is left of the caller's).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the call is sent oneway.
    pub fn is_oneway(&self) -> bool {
        self.oneway
    }

    /// Sets the oneway flag.
    pub fn set_oneway(&mut self, oneway: bool) {
        self.oneway = oneway;
    }

    /// User attachments.
    pub fn attachments(&self) -> &[(String, Vec<u8>)] {
        &self.attachments
    }

    /// User attachments, to add or change.
    pub fn attachments_mut(&mut self) -> &mut Vec<(String, Vec<u8>)> {
        &mut self.attachments
    }

    /// The affinity key for the `ip-hash` balancer.
    pub fn hash_key(&self) -> Option<u64> {
        self.hash_key
    }

    /// Sets the affinity key.
    pub fn set_hash_key(&mut self, key: Option<u64>) {
        self.hash_key = key;
    }

    /// The trace context the call carries.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// Sets the trace context the call carries.
    pub fn set_trace(&mut self, trace: Option<TraceContext>) {
        self.trace = trace;
    }

    /// The token sent with the call, when a filter set one (else the client's own,
    /// [`ClientConfig::auth_token`](crate::ClientConfig::auth_token), is sent).
    pub fn auth_token(&self) -> Option<&[u8]> {
        self.auth_token.as_deref()
    }

    /// Sets the token sent with the call.
    pub fn set_auth_token(&mut self, token: Option<Bytes>) {
        self.auth_token = token;
    }
}

/// What a client chain returns for a call that the server ran: the status (OK, or
/// APPLICATION_ERROR for the method's own error) and the encoded body. Every other
/// outcome (a timeout, a lost connection, a server that refused the call) is an error
/// of the chain, an [`RpcError`] boxed.
#[derive(Clone)]
pub struct ClientResponse {
    /// OK or APPLICATION_ERROR.
    status: Status,
    /// The encoded result, or the method's error.
    body: Bytes,
}

impl fmt::Debug for ClientResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl ClientResponse {
    /// A response with `status` and an encoded `body`; a filter that answers by
    /// itself (a fallback) builds one.
    pub fn new(status: Status, body: Bytes) -> ClientResponse {
        ClientResponse { status, body }
    }

    /// A successful response carrying `value`, encoded as a method's result.
    ///
    /// # Errors
    ///
    /// If `value` cannot be encoded.
    pub fn ok<T: serde::Serialize + ?Sized>(value: &T) -> Result<ClientResponse, BoxError> {
        let mut body = BytesMut::new();
        rmp_serde::encode::write_named(&mut bytes::BufMut::writer(&mut body), value)?;
        Ok(ClientResponse::new(Status::Ok, body.freeze()))
    }

    /// OK, or APPLICATION_ERROR.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The encoded body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// The end of every client chain: sends the request over the client's connections
/// (to its server, or to the provider its balancer picks, failing over calls that
/// certainly did not run) and waits for the reply. Always ready.
#[derive(Clone)]
pub struct Transport {
    /// The client, without its chain.
    client: Client,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("client", &self.client)
            .finish()
    }
}

impl Transport {
    /// The transport of `client` (whose own chain, if any, it bypasses).
    pub fn new(client: &Client) -> Transport {
        Transport {
            client: client.without_chain(),
        }
    }
}

impl tower::Service<ClientRequest> for Transport {
    type Response = ClientResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ClientRequest) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move { send(&client, &request).await.map_err(BoxError::from) })
    }
}

/// Sends `request` over `client`'s connections; see [`Transport`].
async fn send(client: &Client, request: &ClientRequest) -> Result<ClientResponse, RpcError> {
    let config = client.config();
    let max = config.max_frame_len;
    let auth_token = request
        .auth_token
        .as_deref()
        .or(config.auth_token.as_deref());
    let encode = |buf: &mut BytesMut, id: u64| {
        let target = RequestTarget {
            service: &request.service,
            method: &request.method,
            timeout: Some(request.timeout),
            trace: request.trace.as_ref(),
            auth_token,
            attachments: &request.attachments,
        };
        encode_raw_request(buf, id, request.oneway, &target, &request.body, max).map_err(
            |e| match e {
                EncodeError::Protocol(ProtocolError::FrameTooLarge { declared, max }) => {
                    RpcError::RequestTooLarge {
                        len: usize::try_from(declared).unwrap_or(usize::MAX),
                        max,
                    }
                }
                EncodeError::Protocol(p) => RpcError::Protocol(p),
                EncodeError::Serialize(e) => RpcError::serialization("cannot encode a request", e),
            },
        )
    };
    let frame = client
        .call_frame(
            encode,
            request.oneway,
            request.timeout,
            request.hash_key,
            None,
        )
        .await?;
    let Some(frame) = frame else {
        return Ok(ClientResponse::new(Status::Ok, Bytes::new()));
    };
    match Status::from_code(frame.header.status) {
        status @ (Status::Ok | Status::ApplicationError) => {
            Ok(ClientResponse::new(status, frame.body))
        }
        status => {
            let message: String = rmp_serde::from_slice(&frame.body)
                .unwrap_or_else(|_| "(no readable message)".to_owned());
            Err(RpcError::from_status(status, message, request.timeout))
        }
    }
}

/// A whole client chain, boxed; each call works on a clone.
pub(crate) type ClientChain = BoxCloneSyncService<ClientRequest, ClientResponse, BoxError>;

/// A layer of a client chain, type-erased so that a [`ClientBuilder`](crate::ClientBuilder)
/// stays one type whatever layers it has.
pub(crate) type ErasedLayer = Arc<dyn Fn(ClientChain) -> ClientChain + Send + Sync>;

/// Runs `request` through `chain` and turns a failure into the call's error.
pub(crate) async fn run(
    chain: &ClientChain,
    request: ClientRequest,
) -> Result<ClientResponse, RpcError> {
    use tower::ServiceExt as _;
    let timeout = request.timeout;
    let chain = chain.clone();
    chain
        .oneshot(request)
        .await
        .map_err(|e| into_rpc_error(e, timeout))
}

/// The call's error for a chain's failure: an [`RpcError`] as it is, anything else by
/// the status it maps to (see the [module docs](super)).
pub fn into_rpc_error(error: BoxError, timeout: Duration) -> RpcError {
    match error.downcast::<RpcError>() {
        Ok(e) => *e,
        Err(other) => {
            let (status, message) = status_of(&*other);
            RpcError::from_status(status, message, timeout)
        }
    }
}

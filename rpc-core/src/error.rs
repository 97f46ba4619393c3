//! [`RpcError`]: the one error type callers see.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{ProtocolError, Status};

/// The application error type of methods that cannot fail: it has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NoError {}

impl std::fmt::Display for NoError {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// Why a call failed.
///
/// `E` is the service's own error type for methods declared as returning
/// `Result<T, E>`; such an error arrives typed as [`RpcError::Application`], apart from
/// every transport failure. Methods that cannot fail use the default [`NoError`].
///
/// ```
/// use rpc_core::RpcError;
///
/// fn retryable<E>(err: &RpcError<E>) -> bool {
///     matches!(
///         err,
///         RpcError::ConnectionLost { .. } | RpcError::Connect { .. } | RpcError::ShuttingDown
///     )
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError<E = NoError> {
    /// The service answered with its own error. Shown with `E`'s `Debug` form, so
    /// any error type a service can return (`Debug + Serialize + Deserialize`) makes
    /// `RpcError<E>` a [`std::error::Error`] that `?` turns into `Box<dyn Error>`.
    #[error("application error: {0:?}")]
    Application(E),
    /// No response arrived within the call's timeout (or the server, told the
    /// deadline, gave up on the call when it passed).
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// No provider is available for the service.
    #[error("no provider available for service `{service}`")]
    NoProvider {
        /// The service that has no provider.
        service: String,
    },
    /// Connecting to the server failed (or a recent attempt did, and the client is
    /// waiting out its reconnect backoff). The call was not sent.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address that could not be reached.
        addr: SocketAddr,
        /// Why (shared so the error can be cloned to every waiting caller).
        #[source]
        source: Arc<io::Error>,
    },
    /// A server address did not resolve to any socket address.
    #[error("cannot resolve `{addr}`: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// The connection ended before the request was written: the server never saw the
    /// call, so it is safe to retry elsewhere.
    #[error("request to {addr} not sent: {reason}")]
    NotSent {
        /// The server the request was queued for.
        addr: SocketAddr,
        /// Why the connection ended.
        reason: String,
    },
    /// The encoded request is longer than the maximum frame length; nothing was sent.
    #[error(
        "request too large: {len} bytes encoded, the maximum frame length is {max} \
         (raise it with max_frame_len on both client and server, or send less)"
    )]
    RequestTooLarge {
        /// The encoded frame's length, header included.
        len: usize,
        /// The client's maximum frame length.
        max: usize,
    },
    /// The connection broke (closed by the peer, reset, or silent past the idle
    /// timeout) before the response arrived. The call may or may not have run.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// What happened, in words.
        reason: String,
        /// The I/O error behind it, if there was one.
        #[source]
        source: Option<Arc<io::Error>>,
    },
    /// The server is shutting down and did not take the call; it is safe to retry
    /// elsewhere.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The server hosts no such service.
    #[error("service not found: {0}")]
    ServiceNotFound(String),
    /// The service has no such method.
    #[error("method not found: {0}")]
    MethodNotFound(String),
    /// The server could not understand the request (for example, arguments that do not
    /// match the method's parameter types).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The server refused the call because it is at a limit.
    #[error("server overloaded: {0}")]
    Overloaded(String),
    /// The server refused the call's credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The server failed while running the call (the handler panicked, or its result
    /// could not be encoded).
    #[error("internal server error: {0}")]
    Internal(String),
    /// The arguments could not be encoded, or the response could not be decoded into
    /// the expected type.
    #[error("serialization error: {message}")]
    Serialization {
        /// Which call, which type, what went wrong.
        message: String,
        /// The encoder's or decoder's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The peer broke the wire protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A sync call (`blocking()`) was made from inside an async runtime, where blocking
    /// would stall or deadlock the runtime. Use `.await` there instead.
    #[error(
        "blocking call made from inside an async runtime; `.await` the call instead \
         (or call from a thread without a runtime, e.g. std::thread::spawn)"
    )]
    BlockingInAsyncContext,
    /// The client can make no more calls: the tokio runtime its connections and
    /// callbacks ran on has shut down. Create clients on a runtime that outlives them,
    /// or with [`Client::connect_blocking`](crate::Client::connect_blocking), which
    /// owns its runtime.
    #[error(
        "client is closed: the tokio runtime it was created on has shut down (create \
         the client on a runtime that outlives it, or with Client::connect_blocking)"
    )]
    ClientClosed,
    /// A client or server was built outside a tokio runtime, where it has nothing to
    /// run its connections on. Build it from async code, or use the `_blocking`
    /// constructor, which starts a runtime of its own.
    #[error(
        "no tokio runtime: {0} must be called from async code running on a tokio runtime \
         (or use its _blocking variant, which owns a runtime)"
    )]
    NoRuntime(&'static str),
    /// A setting is invalid (zero where a positive value is needed, and so on).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The server could not listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// Serving failed: accepting connections hit an error it cannot recover from.
    #[error("server failed: {0}")]
    Serve(#[source] Arc<io::Error>),
}

impl RpcError {
    /// Turns a transport-level error into the error of a call whose service error type
    /// is `E`.
    pub fn widen<E>(self) -> RpcError<E> {
        match self {
            RpcError::Application(never) => match never {},
            RpcError::Timeout(d) => RpcError::Timeout(d),
            RpcError::NoProvider { service } => RpcError::NoProvider { service },
            RpcError::Connect { addr, source } => RpcError::Connect { addr, source },
            RpcError::Resolve { addr, source } => RpcError::Resolve { addr, source },
            RpcError::NotSent { addr, reason } => RpcError::NotSent { addr, reason },
            RpcError::RequestTooLarge { len, max } => RpcError::RequestTooLarge { len, max },
            RpcError::NoRuntime(what) => RpcError::NoRuntime(what),
            RpcError::InvalidConfig(m) => RpcError::InvalidConfig(m),
            RpcError::Bind { addr, source } => RpcError::Bind { addr, source },
            RpcError::Serve(e) => RpcError::Serve(e),
            RpcError::ConnectionLost { reason, source } => {
                RpcError::ConnectionLost { reason, source }
            }
            RpcError::ShuttingDown => RpcError::ShuttingDown,
            RpcError::ServiceNotFound(m) => RpcError::ServiceNotFound(m),
            RpcError::MethodNotFound(m) => RpcError::MethodNotFound(m),
            RpcError::BadRequest(m) => RpcError::BadRequest(m),
            RpcError::Overloaded(m) => RpcError::Overloaded(m),
            RpcError::Unauthenticated(m) => RpcError::Unauthenticated(m),
            RpcError::Internal(m) => RpcError::Internal(m),
            RpcError::Serialization { message, source } => {
                RpcError::Serialization { message, source }
            }
            RpcError::Protocol(p) => RpcError::Protocol(p),
            RpcError::BlockingInAsyncContext => RpcError::BlockingInAsyncContext,
            RpcError::ClientClosed => RpcError::ClientClosed,
        }
    }

    /// The error for a request that could not be encoded: too large for a frame, bad
    /// metadata, or arguments that do not serialize (`what` says which call).
    pub(crate) fn from_encode(
        error: crate::protocol::EncodeError,
        what: impl std::fmt::Display,
    ) -> RpcError {
        use crate::protocol::EncodeError;
        match error {
            EncodeError::Protocol(ProtocolError::FrameTooLarge { declared, max }) => {
                RpcError::RequestTooLarge {
                    len: usize::try_from(declared).unwrap_or(usize::MAX),
                    max,
                }
            }
            EncodeError::Protocol(p) => RpcError::Protocol(p),
            EncodeError::Serialize(e) => RpcError::serialization(what, e),
        }
    }

    /// The error for a non-OK, non-application status with the server's message.
    pub(crate) fn from_status(status: Status, message: String, timeout: Duration) -> RpcError {
        match status {
            Status::Timeout => RpcError::Timeout(timeout),
            Status::ServiceNotFound => RpcError::ServiceNotFound(message),
            Status::MethodNotFound => RpcError::MethodNotFound(message),
            Status::BadRequest => RpcError::BadRequest(message),
            Status::Overloaded => RpcError::Overloaded(message),
            Status::Unauthenticated => RpcError::Unauthenticated(message),
            Status::ShuttingDown => RpcError::ShuttingDown,
            Status::InternalError => RpcError::Internal(message),
            other => RpcError::Internal(format!("{other}: {message}")),
        }
    }
}

impl<E> RpcError<E> {
    /// A serialization error: `message` says which call and type, `source` is the
    /// encoder's or decoder's error (also quoted in the message).
    pub(crate) fn serialization(
        message: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> RpcError<E> {
        RpcError::Serialization {
            message: format!("{message}: {source}"),
            source: Arc::new(source),
        }
    }

    /// The service's own error, if this is one.
    pub fn application(&self) -> Option<&E> {
        match self {
            RpcError::Application(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the call certainly did not run on the server, so retrying it elsewhere
    /// cannot execute it twice.
    pub fn is_safe_to_retry(&self) -> bool {
        matches!(
            self,
            RpcError::Connect { .. }
                | RpcError::NotSent { .. }
                | RpcError::ShuttingDown
                | RpcError::NoProvider { .. }
                | RpcError::ServiceNotFound(_)
                | RpcError::Overloaded(_)
        )
    }
}

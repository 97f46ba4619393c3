//! The contract between the server and a hosted service: what `#[service]` generates.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::protocol::Status;

/// The future a dispatched call runs to produce its [`Reply`].
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// A service a [`Server`](crate::Server) can host.
///
/// The `#[service]` macro implements this for the generated `XxxServer` skeleton;
/// implement it by hand only for dynamic services (generic gateways and the like).
/// `call` runs on the connection's worker: it decodes the arguments and returns the
/// future that runs the method, and must not block.
pub trait Service: Send + Sync + 'static {
    /// The service name on the wire.
    fn name(&self) -> &str;

    /// The names of the service's methods, for listings.
    fn methods(&self) -> &'static [&'static str];

    /// Decodes `args` (the MessagePack argument tuple) for `method` and returns the
    /// future that runs it.
    ///
    /// # Errors
    ///
    /// [`DispatchError::MethodNotFound`] for an unknown method,
    /// [`DispatchError::BadRequest`] for arguments that do not decode.
    fn call(&self, method: &str, args: &[u8]) -> Result<ReplyFuture, DispatchError>;
}

/// Why a call could not be dispatched to a handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The service has no such method.
    #[error("service `{service}` has no method `{method}`")]
    MethodNotFound {
        /// The service asked for.
        service: String,
        /// The method asked for.
        method: String,
    },
    /// The arguments do not decode into the method's parameters.
    #[error("cannot decode arguments of `{method}`: {reason}")]
    BadRequest {
        /// The method whose arguments failed.
        method: String,
        /// The decoder's message.
        reason: String,
    },
}

impl DispatchError {
    /// The status this error is reported with.
    pub fn status(&self) -> Status {
        match self {
            DispatchError::MethodNotFound { .. } => Status::MethodNotFound,
            DispatchError::BadRequest { .. } => Status::BadRequest,
        }
    }
}

/// The outcome of a call, encoded and ready to be framed.
pub struct Reply {
    /// Status to put in the response header.
    pub(crate) status: Status,
    /// The encoded body.
    pub(crate) body: BytesMut,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Reply {
    /// A successful reply carrying `value`.
    pub fn ok<T: Serialize + ?Sized>(value: &T) -> Reply {
        Reply::encode(Status::Ok, value)
    }

    /// The reply for a method returning `Result<T, E>`: `Ok` as a success, `Err` as an
    /// application error carrying `E`.
    pub fn result<T: Serialize, E: Serialize>(value: &Result<T, E>) -> Reply {
        match value {
            Ok(v) => Reply::encode(Status::Ok, v),
            Err(e) => Reply::encode(Status::ApplicationError, e),
        }
    }

    /// An error reply with a human-readable message.
    pub fn error(status: Status, message: &str) -> Reply {
        Reply::encode(status, message)
    }

    /// The reply's status.
    pub fn status(&self) -> Status {
        self.status
    }

    fn encode<T: Serialize + ?Sized>(status: Status, value: &T) -> Reply {
        let encoded = crate::protocol::scratch::encode_with(|buf| {
            rmp_serde::encode::write_named(&mut buf.writer(), value)
        });
        match encoded {
            Ok(body) => Reply { status, body },
            Err(e) => {
                let message = format!("cannot encode the result: {e}");
                tracing::error!(%message);
                let mut body = BytesMut::new();
                rmp_serde::encode::write(&mut (&mut body).writer(), &message)
                    .expect("strings always encode");
                Reply {
                    status: Status::InternalError,
                    body,
                }
            }
        }
    }
}

//! The contract between the server and a hosted service: what `#[service]` generates.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::{maybe_done, MaybeDone};

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::protocol::Status;

/// A dispatched call: the running handler, and the way to encode its result once it
/// has finished. One allocation per call; the result is serialized straight into the
/// connection's write buffer.
pub type Dispatched = Pin<Box<dyn Handler>>;

/// A running call, as [`Service::call`] returns it. Implemented for
/// [`dispatched`]'s wrapper; implement it by hand only for dynamic services.
pub trait Handler: Send {
    /// Drives the handler; `Ready` once it has finished.
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;

    /// Encodes the finished handler's result as a response body into `out` and returns
    /// the status to send with it. Called once, after `poll_done` returned `Ready`.
    ///
    /// # Errors
    ///
    /// If the result cannot be serialized (or the handler had not finished).
    fn encode_result(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<Status, EncodeFailure>;

    /// The status the finished handler's result will be sent with, if it can tell
    /// without encoding it; `None` (the default) if it cannot. A filter chain uses it
    /// to pass a result through its filters still unencoded and encode it straight
    /// into the connection's write buffer at the end. Called only after `poll_done`
    /// returned `Ready`.
    fn result_status(self: Pin<&mut Self>) -> Option<Status> {
        None
    }
}

/// A handler's result could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the result: {0}")]
pub struct EncodeFailure(String);

impl EncodeFailure {
    /// A failure with this message.
    pub(crate) fn new(message: String) -> EncodeFailure {
        EncodeFailure(message)
    }
}

/// A method's result, ready to become a response body. The macro wraps every result in
/// [`Plain`] or [`Fallible`].
pub trait IntoReply: Send {
    /// Serializes the result into `out`; returns the response status.
    ///
    /// # Errors
    ///
    /// If serialization fails.
    fn encode_reply(&self, out: &mut BytesMut) -> Result<Status, EncodeFailure>;

    /// The status [`encode_reply`](IntoReply::encode_reply) returns when encoding
    /// succeeds.
    fn status(&self) -> Status;
}

/// The result of a method that cannot fail: always [`Status::Ok`].
#[derive(Debug)]
pub struct Plain<T>(pub T);

/// The result of a method returning `Result<T, E>`: `Err` goes out as
/// [`Status::ApplicationError`] carrying `E`.
#[derive(Debug)]
pub struct Fallible<T, E>(pub Result<T, E>);

fn serialize<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), EncodeFailure> {
    rmp_serde::encode::write_named(&mut out.writer(), value)
        .map_err(|e| EncodeFailure(e.to_string()))
}

impl<T: Serialize + Send> IntoReply for Plain<T> {
    fn encode_reply(&self, out: &mut BytesMut) -> Result<Status, EncodeFailure> {
        serialize(&self.0, out).map(|()| Status::Ok)
    }

    fn status(&self) -> Status {
        Status::Ok
    }
}

impl<T: Serialize + Send, E: Serialize + Send> IntoReply for Fallible<T, E> {
    fn encode_reply(&self, out: &mut BytesMut) -> Result<Status, EncodeFailure> {
        match &self.0 {
            Ok(v) => serialize(v, out).map(|()| Status::Ok),
            Err(e) => serialize(e, out).map(|()| Status::ApplicationError),
        }
    }

    fn status(&self) -> Status {
        match &self.0 {
            Ok(_) => Status::Ok,
            Err(_) => Status::ApplicationError,
        }
    }
}

impl<F> Handler for MaybeDone<F>
where
    F: Future + Send,
    F::Output: IntoReply,
{
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Future::poll(self, cx)
    }

    fn encode_result(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<Status, EncodeFailure> {
        match self.take_output() {
            Some(result) => result.encode_reply(out),
            None => Err(EncodeFailure("the handler has not finished".to_owned())),
        }
    }

    fn result_status(self: Pin<&mut Self>) -> Option<Status> {
        self.output_mut().map(|result| result.status())
    }
}

/// Wraps a handler future (whose output is [`Plain`] or [`Fallible`]) as a
/// [`Dispatched`] call.
pub fn dispatched<F>(handler: F) -> Dispatched
where
    F: Future + Send + 'static,
    F::Output: IntoReply + 'static,
{
    Box::pin(maybe_done(handler))
}

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

    /// The service's description, served by the built-in reflection service
    /// ([`Reflection`](crate::reflection::Reflection)). `#[service]` generates it from the trait
    /// (docs, argument names and types, result and error types, oneway); a hand-written
    /// service that does not override it is described by its method names alone.
    fn descriptor(&self) -> crate::reflection::ServiceDescriptor {
        crate::reflection::ServiceDescriptor::undescribed(self.name(), self.methods())
    }

    /// Decodes `args` (the MessagePack argument tuple) for `method` and returns the
    /// running call (see [`dispatched`]).
    ///
    /// # Errors
    ///
    /// [`DispatchError::MethodNotFound`] for an unknown method,
    /// [`DispatchError::BadRequest`] for arguments that do not decode.
    fn call(&self, method: &str, args: &[u8]) -> Result<Dispatched, DispatchError>;
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
    pub(crate) fn status(&self) -> Status {
        match self {
            DispatchError::MethodNotFound { .. } => Status::MethodNotFound,
            DispatchError::BadRequest { .. } => Status::BadRequest,
        }
    }
}

/// The outcome of a call, encoded and ready to be framed.
pub(crate) struct Reply {
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
    /// An error reply with a human-readable message.
    pub(crate) fn error(status: Status, message: &str) -> Reply {
        let mut body = BytesMut::new();
        rmp_serde::encode::write(&mut (&mut body).writer(), message)
            .expect("strings always encode");
        Reply { status, body }
    }

    /// The reply of a finished call, encoded into a buffer of its own (for handlers
    /// that ran away from the connection's worker).
    pub(crate) fn finished(mut call: Dispatched) -> Reply {
        Reply::finished_in_place(&mut call)
    }

    /// [`Reply::finished`], for a call that stays where it is.
    pub(crate) fn finished_in_place(call: &mut Dispatched) -> Reply {
        let mut status = Status::Ok;
        let encoded = crate::protocol::scratch::encode_with(|buf| {
            status = call.as_mut().encode_result(buf)?;
            Ok::<(), EncodeFailure>(())
        });
        match encoded {
            Ok(body) => Reply { status, body },
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a result");
                Reply::error(Status::InternalError, &e.to_string())
            }
        }
    }
}

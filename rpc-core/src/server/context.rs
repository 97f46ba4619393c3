//! [`CallContext`]: what a handler can learn about the call it is serving.
//!
//! The server makes the context current while it polls a handler, so handler code
//! reads it with [`CallContext::current`] (or [`CallContext::with_current`], which does
//! not clone) from anywhere in the handler's own future — also after `.await`s. Tasks
//! the handler spawns do not inherit it: pass what they need along.
//!
//! ```
//! # use rpc_core::server::CallContext;
//! # struct Store;
//! # impl Store {
//! async fn put(&self, key: String) -> Result<(), String> {
//!     let tenant = CallContext::with_current(|ctx| {
//!         ctx.and_then(|c| c.attachment("tenant")).map(<[u8]>::to_vec)
//!     });
//!     let tenant = tenant.ok_or("no tenant attachment")?;
//!     // ... store `key` for `tenant` ...
//!     Ok(())
//! }
//! # }
//! ```

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::protocol::metadata::{RequestMeta, TraceContext};

/// What the server knows about the call being served.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallContext {
    /// The client's address.
    pub peer: SocketAddr,
    /// When the caller stops waiting, if it said (from the request's timeout).
    pub deadline: Option<Instant>,
    /// Trace context, if the caller sent one.
    pub trace: Option<TraceContext>,
    /// The caller's authentication token, if any.
    pub auth_token: Option<Vec<u8>>,
    /// User attachments, in the order they were sent.
    pub attachments: Vec<(String, Vec<u8>)>,
    /// Who the client is, when it presented a certificate the server verified
    /// (mutual TLS, the `tls` feature); `None` on plaintext connections and for
    /// clients without a certificate. Shared by every call of the connection.
    pub peer_identity: Option<Arc<PeerIdentity>>,
}

/// The identity of a client that presented a verified certificate (mutual TLS): what
/// an authorization rule or an auth filter needs to know who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The client's leaf certificate, DER-encoded, for checks these fields do not
    /// cover.
    pub certificate: Vec<u8>,
    /// The certificate's subject distinguished name (`CN=alice, O=Example`); empty
    /// if it could not be read.
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// URIs among the subject alternative names (SPIFFE ids, for example).
    pub uris: Vec<String>,
    /// E-mail addresses among the subject alternative names.
    pub emails: Vec<String>,
    /// IP addresses among the subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
}

impl CallContext {
    /// A copy of the context of the call being served on this thread, or `None`
    /// outside a handler.
    pub fn current() -> Option<CallContext> {
        CallContext::with_current(|ctx| ctx.cloned())
    }

    /// Runs `f` with the context of the call being served on this thread (`None`
    /// outside a handler), without cloning it.
    pub fn with_current<R>(f: impl FnOnce(Option<&CallContext>) -> R) -> R {
        CURRENT.with(|current| f(current.borrow().as_ref()))
    }

    /// The value of the first attachment named `key`.
    pub fn attachment(&self, key: &str) -> Option<&[u8]> {
        self.attachments
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The context of a request read at `received` from `peer` (with its verified
    /// identity, if any), as the server builds it.
    pub(crate) fn from_request(
        (peer, peer_identity): (SocketAddr, &Option<Arc<PeerIdentity>>),
        received: Instant,
        meta: &RequestMeta<'_>,
    ) -> CallContext {
        CallContext {
            peer,
            peer_identity: peer_identity.clone(),
            deadline: meta.timeout.map(|t| received + t),
            trace: meta.trace,
            auth_token: meta.auth_token.map(<[u8]>::to_vec),
            attachments: meta
                .attachments()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

/// Makes `context` current while `f` runs (moving it in and back out, no clone), and
/// restores the previous one afterwards, also if `f` panics.
pub(crate) fn enter<R>(context: &mut Option<CallContext>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        /// Where the context goes back to.
        slot: &'a mut Option<CallContext>,
        /// What was current before.
        previous: Option<CallContext>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let previous = self.previous.take();
            *self.slot = CURRENT.with(|current| current.replace(previous));
        }
    }
    let previous = CURRENT.with(|current| current.replace(context.take()));
    let _restore = Restore {
        slot: context,
        previous,
    };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(tag: &str) -> CallContext {
        CallContext {
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            deadline: None,
            trace: None,
            auth_token: None,
            attachments: vec![("tag".to_owned(), tag.as_bytes().to_vec())],
            peer_identity: None,
        }
    }

    #[test]
    fn current_only_inside_enter_and_restored_after_panic() {
        assert!(CallContext::current().is_none());
        let mut outer = Some(context("outer"));
        enter(&mut outer, || {
            assert_eq!(
                CallContext::current().unwrap().attachment("tag"),
                Some(&b"outer"[..])
            );
            let mut inner = Some(context("inner"));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                enter(&mut inner, || panic!("handler panicked"));
            }));
            assert!(result.is_err());
            assert!(inner.is_some(), "the context went back to its owner");
            assert_eq!(
                CallContext::current().unwrap().attachment("tag"),
                Some(&b"outer"[..])
            );
        });
        assert!(outer.is_some());
        assert!(CallContext::current().is_none());
    }
}

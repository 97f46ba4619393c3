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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::protocol::metadata::{RequestMeta, TraceContext};

/// What the server knows about the call being served.
#[derive(Debug)]
#[non_exhaustive]
pub struct CallContext {
    /// The client's address.
    pub peer: SocketAddr,
    /// When the caller stops waiting, if it said (from the request's timeout).
    pub deadline: Option<Instant>,
    /// Trace context, if the caller sent one: the caller's span.
    pub trace: Option<TraceContext>,
    /// This call's own span on the server, when the server traces its calls
    /// ([`TraceLayer`](crate::filter::trace::TraceLayer)): the caller's trace (or a new
    /// one) with a span id of its own. Calls the handler makes are its children.
    pub span: Option<TraceContext>,
    /// The caller's authentication token, if any (its bytes: `auth_token.as_deref()`).
    pub auth_token: Option<AuthToken>,
    /// User attachments, in the order they were sent.
    pub attachments: Vec<(String, Vec<u8>)>,
    /// Who the client is, when it presented a certificate the server verified
    /// (mutual TLS, the `tls` feature); `None` on plaintext connections and for
    /// clients without a certificate. Shared by every call of the connection.
    pub peer_identity: Option<Arc<PeerIdentity>>,
    /// Set when the caller cancels the call; made only when someone asks for it (a
    /// handler, or the server once the call outlives its first poll), so a call that
    /// finishes at once costs no allocation for it.
    cancel: OnceLock<Arc<CancelSignal>>,
}

/// A caller's authentication token ([`CallContext::auth_token`]): its bytes, read
/// through `Deref<Target = [u8]>`. A short token (most are) is held inline, so a
/// call carrying one costs no allocation for it. Its `Debug` output shows its length,
/// never its bytes, so logging a context does not leak credentials.
///
/// ```
/// # use rpc_core::server::AuthToken;
/// let token = AuthToken::from(&b"s3cr3t"[..]);
/// assert_eq!(&*token, b"s3cr3t");
/// assert_eq!(format!("{token:?}"), "AuthToken(6 bytes)");
/// ```
#[derive(Clone)]
pub struct AuthToken(TokenBytes);

/// [`AuthToken`]'s storage.
#[derive(Clone)]
enum TokenBytes {
    /// Up to [`TokenBytes::INLINE`] bytes, the rest zero.
    Inline {
        len: u8,
        bytes: [u8; TokenBytes::INLINE],
    },
    /// A longer token.
    Heap(Box<[u8]>),
}

impl TokenBytes {
    /// The longest token held inline.
    const INLINE: usize = 38;
}

impl From<&[u8]> for AuthToken {
    fn from(token: &[u8]) -> Self {
        match u8::try_from(token.len()) {
            Ok(len) if token.len() <= TokenBytes::INLINE => {
                let mut bytes = [0; TokenBytes::INLINE];
                bytes[..token.len()].copy_from_slice(token);
                AuthToken(TokenBytes::Inline { len, bytes })
            }
            _ => AuthToken(TokenBytes::Heap(token.into())),
        }
    }
}

impl From<Vec<u8>> for AuthToken {
    fn from(token: Vec<u8>) -> Self {
        if token.len() <= TokenBytes::INLINE {
            AuthToken::from(token.as_slice())
        } else {
            AuthToken(TokenBytes::Heap(token.into_boxed_slice()))
        }
    }
}

impl std::ops::Deref for AuthToken {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            TokenBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            TokenBytes::Heap(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for AuthToken {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for AuthToken {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for AuthToken {}

impl PartialEq<[u8]> for AuthToken {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthToken({} bytes)", self.len())
    }
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

impl Clone for CallContext {
    /// A copy that shares the call's [`Cancellation`] with the original.
    fn clone(&self) -> Self {
        CallContext {
            peer: self.peer,
            peer_identity: self.peer_identity.clone(),
            deadline: self.deadline,
            trace: self.trace,
            span: self.span,
            auth_token: self.auth_token.clone(),
            attachments: self.attachments.clone(),
            cancel: OnceLock::from(Arc::clone(self.signal())),
        }
    }
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

    /// Whether the caller has cancelled this call, and a way to wait for it: for work
    /// the handler hands to tasks of its own, which the server does not stop. The
    /// handler's own future is simply dropped when the call is cancelled (its
    /// destructors run), so it needs this only to stop work it started elsewhere.
    ///
    /// ```
    /// # use rpc_core::server::CallContext;
    /// // Inside a handler:
    /// async fn export() -> u64 {
    ///     let cancel = CallContext::with_current(|ctx| ctx.map(CallContext::cancellation));
    ///     let worker = tokio::spawn(async move {
    ///         let mut rows = 0u64;
    ///         while rows < 1_000_000 {
    ///             if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
    ///                 break; // the caller gave up: stop early
    ///             }
    ///             rows += 1;
    ///         }
    ///         rows
    ///     });
    ///     worker.await.unwrap_or(0)
    /// }
    /// ```
    pub fn cancellation(&self) -> Cancellation {
        Cancellation(Arc::clone(self.signal()))
    }

    /// The call's cancel signal, made on first use.
    pub(crate) fn signal(&self) -> &Arc<CancelSignal> {
        self.cancel.get_or_init(Arc::default)
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
            span: None,
            auth_token: meta.auth_token.map(AuthToken::from),
            attachments: meta
                .attachments()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
            cancel: OnceLock::new(),
        }
    }
}

/// A running call's view of its cancellation: the caller dropped the call before it
/// finished, and told the server (see [`CallContext::cancellation`]). Cheap to clone;
/// `Send`, so it can go to tasks the handler spawns.
#[derive(Debug, Clone)]
pub struct Cancellation(Arc<CancelSignal>);

impl Cancellation {
    /// Whether the caller has cancelled the call.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once the caller has cancelled the call (never, if it does not).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.waiters.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The shared state behind [`Cancellation`], also held by the server for the call.
#[derive(Debug, Default)]
pub(crate) struct CancelSignal {
    /// Set once, when the cancel frame arrives.
    cancelled: AtomicBool,
    /// The server's task running the handler (the connection, or a pool task).
    task: AtomicWaker,
    /// Handlers' tasks waiting in [`Cancellation::cancelled`].
    waiters: Notify,
}

impl CancelSignal {
    /// Marks the call cancelled and wakes everyone watching it.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.task.wake();
        self.waiters.notify_waiters();
    }

    /// Whether the call was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Whether the call was cancelled; if not, `waker` is woken when it is.
    pub(crate) fn poll_cancelled(&self, waker: &std::task::Waker) -> bool {
        if self.is_cancelled() {
            return true;
        }
        self.task.register(waker);
        self.is_cancelled()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

/// Makes `context` current while `f` runs (moving it in and back out, no clone), and
/// restores the previous one afterwards, also if `f` panics.
pub(crate) fn enter<R>(context: &mut Option<CallContext>, f: impl FnOnce() -> R) -> R {
    if context.is_none() && CURRENT.with(|current| current.borrow().is_none()) {
        // Nothing to make current, nothing to hide: a call through a filter chain
        // (whose own context is entered further in) skips moving two contexts.
        return f();
    }
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
            span: None,
            auth_token: None,
            attachments: vec![("tag".to_owned(), tag.as_bytes().to_vec())],
            cancel: OnceLock::new(),
            peer_identity: None,
        }
    }

    #[test]
    fn a_token_reads_back_its_bytes_inline_or_not() {
        for len in [0, 1, TokenBytes::INLINE, TokenBytes::INLINE + 1, 300] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let from_slice = AuthToken::from(bytes.as_slice());
            let from_vec = AuthToken::from(bytes.clone());
            assert_eq!(&*from_slice, bytes.as_slice(), "{len} bytes");
            assert_eq!(from_slice, from_vec);
            assert_eq!(
                matches!(from_slice.0, TokenBytes::Inline { .. }),
                len <= TokenBytes::INLINE
            );
            assert_eq!(format!("{from_vec:?}"), format!("AuthToken({len} bytes)"));
        }
        assert_ne!(AuthToken::from(&b"ab"[..]), AuthToken::from(&b"abc"[..]));
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

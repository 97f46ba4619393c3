//! Token authentication on the server: a call without a valid token is answered
//! [`Status::Unauthenticated`] before its arguments are decoded.
//!
//! The token is the request's `AUTH_TOKEN` metadata entry (see `docs/PROTOCOL.md`),
//! which a client sends with [`ClientBuilder::auth_token`](crate::ClientBuilder::auth_token).
//! Two validators are provided: a static set of tokens ([`TokenAuthLayer::tokens`],
//! compared in constant time) and a closure ([`TokenAuthLayer::with`]) that sees the
//! token and the whole request (so it can also check the method, or the client's
//! certificate identity under mutual TLS). A call with no token at all is refused
//! without calling the validator.
//!
//! ```
//! use rpc_core::filter::auth::TokenAuthLayer;
//!
//! // Static tokens:
//! let layer = TokenAuthLayer::tokens(["token-a", "token-b"]);
//! // Or any rule; here the admin token may call anything, the user token all but
//! // the admin methods.
//! let layer = TokenAuthLayer::with(|token, request| {
//!     token == b"admin-token"
//!         || (token == b"user-token" && !request.method().starts_with("admin_"))
//! });
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::{Layer, Service};

use super::{BoxError, Rejection, ServerRequest, ServerResponse};
use crate::protocol::Status;

/// The rule a token is checked against.
type Validator = Arc<dyn Fn(&[u8], &ServerRequest) -> bool + Send + Sync>;

/// Adds token authentication to a server's chain; see the [module docs](self).
#[derive(Clone)]
pub struct TokenAuthLayer {
    /// Decides whether a token lets a call through.
    validator: Validator,
    /// The tokens of a [`TokenAuthLayer::tokens`] layer, which the server can check
    /// without a chain (the validator then needs no request).
    tokens: Option<Arc<[Vec<u8>]>>,
}

impl fmt::Debug for TokenAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthLayer").finish_non_exhaustive()
    }
}

impl TokenAuthLayer {
    /// Lets through calls carrying one of `tokens`. Comparisons take the same time
    /// whatever bytes match, so response times do not leak a token's prefix.
    pub fn tokens<I, T>(tokens: I) -> TokenAuthLayer
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let tokens: HashSet<Vec<u8>> = tokens.into_iter().map(|t| t.as_ref().to_vec()).collect();
        let tokens: Arc<[Vec<u8>]> = tokens.into_iter().collect();
        let set = Arc::clone(&tokens);
        let mut layer = TokenAuthLayer::with(move |token, _| accepts(&set, token));
        layer.tokens = Some(tokens);
        layer
    }

    /// The refusal of a call carrying `token` (`None`: it carried none) by a
    /// [`tokens`](Self::tokens) layer, or `Ok` if it may pass; `None` for a layer with
    /// a closure, which needs the whole request.
    pub(crate) fn check_token(&self, token: Option<&[u8]>) -> Option<Result<(), &'static str>> {
        let tokens = self.tokens.as_ref()?;
        Some(match token {
            None => Err(NO_TOKEN),
            Some(token) if !accepts(tokens, token) => Err(REFUSED),
            Some(_) => Ok(()),
        })
    }

    /// Lets through calls whose token `validator` accepts; it also sees the request
    /// (service, method, context), not its decoded arguments.
    pub fn with<F>(validator: F) -> TokenAuthLayer
    where
        F: Fn(&[u8], &ServerRequest) -> bool + Send + Sync + 'static,
    {
        TokenAuthLayer {
            validator: Arc::new(validator),
            tokens: None,
        }
    }
}

impl<S> Layer<S> for TokenAuthLayer {
    type Service = TokenAuth<S>;

    fn layer(&self, inner: S) -> TokenAuth<S> {
        TokenAuth {
            inner,
            validator: Arc::clone(&self.validator),
        }
    }
}

/// The service [`TokenAuthLayer`] makes.
#[derive(Clone)]
pub struct TokenAuth<S> {
    /// The rest of the chain.
    inner: S,
    /// Decides whether a token lets a call through.
    validator: Validator,
}

impl<S: fmt::Debug> fmt::Debug for TokenAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<ServerRequest> for TokenAuth<S>
where
    S: Service<ServerRequest, Response = ServerResponse, Error = BoxError>,
{
    type Response = ServerResponse;
    type Error = BoxError;
    type Future = Either<std::future::Ready<Result<ServerResponse, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        let refusal = match request.context().auth_token.as_deref() {
            None => Some(NO_TOKEN),
            Some(token) if !(self.validator)(token, &request) => Some(REFUSED),
            Some(_) => None,
        };
        match refusal {
            None => Either::Right(self.inner.call(request)),
            Some(message) => {
                tracing::debug!(
                    peer = %request.context().peer,
                    service = request.service(),
                    method = request.method(),
                    "call refused: {message}"
                );
                Either::Left(std::future::ready(Err(Rejection::new(
                    Status::Unauthenticated,
                    message,
                )
                .into())))
            }
        }
    }
}

/// Why a call without a token is refused.
pub(crate) const NO_TOKEN: &str =
    "this server needs an authentication token; the call carried none";

/// Why a call with a token the validator refused is refused.
pub(crate) const REFUSED: &str = "the call's authentication token was refused";

/// Whether `token` is one of `tokens`. Every candidate is compared, so the time does
/// not say which matched.
fn accepts(tokens: &[Vec<u8>], token: &[u8]) -> bool {
    tokens
        .iter()
        .fold(false, |found, t| found | constant_time_eq(t, token))
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn equal_tokens_compare_equal_and_others_do_not() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(constant_time_eq(b"", b""));
    }
}

//! Degradation: a local fallback per method, answering for a service that is failing
//! — its circuits are open, no provider is left, or every retry failed.
//!
//! ```no_run
//! use rpc_core::filter::fallback::FallbackLayer;
//! use rpc_core::filter::ClientResponse;
//! # async fn run(providers: Vec<rpc_core::lb::Provider>) -> Result<(), rpc_core::RpcError> {
//! let fallback = FallbackLayer::builder()
//!     // A typed value: the method's result type, encoded for the caller.
//!     .value("shop.Catalog", "recommended", |_request, _error| Vec::<String>::new())
//!     // Or a whole response, made from the request (its encoded arguments) and the error.
//!     .method("shop.Catalog", "price", |_request, error| {
//!         tracing::warn!(%error, "price unavailable, answering the list price");
//!         ClientResponse::ok(&0u64)
//!     })
//!     .build()?;
//! let client = rpc_core::Client::builder()
//!     .layer(fallback)
//!     .connect_providers("shop.Catalog", providers)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # When a fallback answers
//!
//! A method's fallback answers when the chain after it fails the call with:
//!
//! - [`RpcError::NoProvider`]: no provider is left, or every provider's circuit is
//!   open (see [`breaker`](crate::filter::breaker));
//! - a provider failure ([`is_provider_failure`]:
//!   a timeout, a connection failure, OVERLOADED, INTERNAL...). Put this layer before
//!   (outside) a [`cluster`](crate::filter::cluster) layer, and these are the errors
//!   left once every retry failed.
//!
//! [`FallbackBuilder::unavailable_only`] limits it to the first. Other errors (a bad
//! request, an authentication refusal, the method's own application error, which is
//! an answer) go to the caller unchanged, as do calls of methods without a fallback.
//! A fallback that fails (returns an error) fails the call with that error.
//!
//! # Errors
//!
//! [`FallbackBuilder::build`] refuses, with [`RpcError::InvalidConfig`], a layer with
//! no fallback, a fallback with an empty service or method name, and two fallbacks
//! for one method.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{
    into_rpc_error, is_provider_failure, rpc_error_of, BoxError, ClientRequest, ClientResponse,
};
use crate::error::RpcError;

/// A method's fallback: the request and the error it failed with, to the response
/// given to the caller instead.
type Handler =
    Arc<dyn Fn(&ClientRequest, &RpcError) -> Result<ClientResponse, BoxError> + Send + Sync>;

/// Builds a [`FallbackLayer`]; see the [module docs](self).
#[derive(Clone, Default)]
pub struct FallbackBuilder {
    /// (service, method, fallback), in the order given.
    rules: Vec<(String, String, Handler)>,
    /// Answer only for `NoProvider`.
    unavailable_only: bool,
}

impl fmt::Debug for FallbackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<String> = self
            .rules
            .iter()
            .map(|(s, m, _)| format!("{s}.{m}"))
            .collect();
        f.debug_struct("FallbackBuilder")
            .field("methods", &methods)
            .field("unavailable_only", &self.unavailable_only)
            .finish()
    }
}

impl FallbackBuilder {
    /// Sets `fallback` as `service.method`'s: it gets the request (with its encoded
    /// arguments) and the error, and returns the response for the caller (see
    /// [`ClientResponse::ok`]) or an error.
    ///
    /// ```
    /// use rpc_core::filter::{fallback::FallbackLayer, ClientResponse};
    /// let b = FallbackLayer::builder()
    ///     .method("shop.Catalog", "count", |_, _| ClientResponse::ok(&0u64));
    /// ```
    pub fn method<F>(
        mut self,
        service: impl Into<String>,
        method: impl Into<String>,
        fallback: F,
    ) -> Self
    where
        F: Fn(&ClientRequest, &RpcError) -> Result<ClientResponse, BoxError>
            + Send
            + Sync
            + 'static,
    {
        self.rules
            .push((service.into(), method.into(), Arc::new(fallback)));
        self
    }

    /// Sets a typed fallback for `service.method`: `value` returns the method's result
    /// (of the type the method returns), encoded for the caller.
    ///
    /// ```
    /// use rpc_core::filter::fallback::FallbackLayer;
    /// let b = FallbackLayer::builder()
    ///     .value("shop.Catalog", "names", |_, _| vec!["tea".to_owned()]);
    /// ```
    pub fn value<T, F>(
        self,
        service: impl Into<String>,
        method: impl Into<String>,
        value: F,
    ) -> Self
    where
        T: serde::Serialize,
        F: Fn(&ClientRequest, &RpcError) -> T + Send + Sync + 'static,
    {
        self.method(service, method, move |request, error| {
            ClientResponse::ok(&value(request, error))
        })
    }

    /// Answers only when no provider is available (every circuit open, none left),
    /// not after provider failures.
    ///
    /// ```
    /// let b = rpc_core::filter::fallback::FallbackLayer::builder().unavailable_only();
    /// ```
    pub fn unavailable_only(mut self) -> Self {
        self.unavailable_only = true;
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`]: see the [module docs](self#errors).
    pub fn build(self) -> Result<FallbackLayer, RpcError> {
        let invalid = |m: String| Err(RpcError::InvalidConfig(format!("fallback: {m}")));
        if self.rules.is_empty() {
            return invalid("the layer has no fallback (add one with method or value)".to_owned());
        }
        let mut services: HashMap<String, HashMap<String, Handler>> = HashMap::new();
        for (service, method, handler) in self.rules {
            if service.is_empty() || method.is_empty() {
                return invalid("a fallback needs a service and a method name".to_owned());
            }
            let methods = services.entry(service.clone()).or_default();
            if methods.insert(method.clone(), handler).is_some() {
                return invalid(format!("two fallbacks for {service}.{method}"));
            }
        }
        Ok(FallbackLayer {
            shared: Arc::new(Fallbacks {
                services,
                unavailable_only: self.unavailable_only,
                used: AtomicU64::new(0),
            }),
        })
    }
}

/// The fallbacks, shared by the layer and its services.
struct Fallbacks {
    /// Per service, per method.
    services: HashMap<String, HashMap<String, Handler>>,
    /// Answer only for `NoProvider`.
    unavailable_only: bool,
    /// Calls answered by a fallback.
    used: AtomicU64,
}

impl Fallbacks {
    /// Whether `error` calls for a fallback.
    fn triggers(&self, error: &RpcError) -> bool {
        matches!(error, RpcError::NoProvider { .. })
            || (!self.unavailable_only && is_provider_failure(error))
    }
}

/// The degradation layer; see the [module docs](self).
#[derive(Clone)]
pub struct FallbackLayer {
    /// The fallbacks.
    shared: Arc<Fallbacks>,
}

impl fmt::Debug for FallbackLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("services", &self.shared.services.len())
            .field("used", &self.used())
            .finish()
    }
}

impl FallbackLayer {
    /// A builder with no fallback yet.
    pub fn builder() -> FallbackBuilder {
        FallbackBuilder::default()
    }

    /// How many calls a fallback has answered.
    pub fn used(&self) -> u64 {
        self.shared.used.load(Ordering::Relaxed)
    }
}

impl<S> tower::Layer<S> for FallbackLayer {
    type Service = FallbackService<S>;

    fn layer(&self, inner: S) -> FallbackService<S> {
        FallbackService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of a [`FallbackLayer`]: ready when its inner service is.
#[derive(Clone)]
pub struct FallbackService<S> {
    /// The rest of the chain.
    inner: S,
    /// The fallbacks.
    shared: Arc<Fallbacks>,
}

impl<S> fmt::Debug for FallbackService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService").finish_non_exhaustive()
    }
}

impl<S> tower::Service<ClientRequest> for FallbackService<S>
where
    S: tower::Service<ClientRequest, Response = ClientResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ClientResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ClientRequest) -> Self::Future {
        let handler = self
            .shared
            .services
            .get(request.service())
            .and_then(|methods| methods.get(request.method()))
            .cloned();
        let Some(handler) = handler else {
            // No fallback for this method: nothing to keep.
            let future = self.inner.call(request);
            return Box::pin(future);
        };
        let shared = Arc::clone(&self.shared);
        let future = self.inner.call(request.clone());
        Box::pin(async move {
            let error = match future.await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let answer = |rpc: &RpcError| {
                shared.used.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    service = request.service(),
                    method = request.method(),
                    error = %rpc,
                    "answered by the fallback"
                );
                handler(&request, rpc)
            };
            match rpc_error_of(&error) {
                Some(rpc) if shared.triggers(rpc) => answer(rpc),
                Some(_) => Err(error),
                None => {
                    // A tower middleware's own error: judged by the status it maps to.
                    let rpc = into_rpc_error(error, request.timeout());
                    if shared.triggers(&rpc) {
                        answer(&rpc)
                    } else {
                        Err(Box::new(rpc))
                    }
                }
            }
        })
    }
}

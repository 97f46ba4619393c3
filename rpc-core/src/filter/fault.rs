//! Fault injection, for testing how callers cope: per method, delay calls or fail them
//! with a status, each with a probability. Works on either side: on a server it
//! delays or refuses calls before their handler; on a client before they are sent.
//!
//! Rules are set per method, or for every method of a service with `"*"`; a method's
//! own rule wins. [`FaultBuilder::build`] checks them (probabilities within 0 to 1).
//!
//! ```
//! use std::time::Duration;
//! use rpc_core::filter::fault::FaultLayer;
//! use rpc_core::protocol::Status;
//! let faults = FaultLayer::builder()
//!     .delay("example.Inventory", "list", 0.5, Duration::from_millis(200))
//!     .abort("example.Inventory", "*", 0.01, Status::Overloaded)
//!     .build()?;
//! # Ok::<(), rpc_core::RpcError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use rand::Rng;
use tower::{Layer, Service};

use super::{BoxError, CallInfo, Rejection};
use crate::error::RpcError;
use crate::protocol::Status;

/// What happens to the calls of one method.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Rule {
    /// Probability and length of a delay.
    delay: Option<(f64, Duration)>,
    /// Probability and status of a failure.
    abort: Option<(f64, Status)>,
}

/// Collects fault rules; [`build`](Self::build) checks them.
#[derive(Debug, Clone, Default)]
pub struct FaultBuilder {
    /// Rules by (service, method or `"*"`).
    rules: HashMap<(String, String), Rule>,
}

impl FaultBuilder {
    /// Delays calls of `service.method` (every method: `"*"`) by `delay`, with
    /// probability `probability`.
    pub fn delay(mut self, service: &str, method: &str, probability: f64, delay: Duration) -> Self {
        self.entry(service, method).delay = Some((probability, delay));
        self
    }

    /// Fails calls of `service.method` (every method: `"*"`) with `status`, with
    /// probability `probability`. A call both delayed and failed fails after its delay.
    pub fn abort(mut self, service: &str, method: &str, probability: f64, status: Status) -> Self {
        self.entry(service, method).abort = Some((probability, status));
        self
    }

    fn entry(&mut self, service: &str, method: &str) -> &mut Rule {
        self.rules
            .entry((service.to_owned(), method.to_owned()))
            .or_default()
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a probability outside 0 to 1, an abort with
    /// status OK, or no rule at all.
    pub fn build(self) -> Result<FaultLayer, RpcError> {
        if self.rules.is_empty() {
            return Err(RpcError::InvalidConfig(
                "a fault layer needs at least one rule".to_owned(),
            ));
        }
        for ((service, method), rule) in &self.rules {
            let probabilities = rule
                .delay
                .map(|d| d.0)
                .into_iter()
                .chain(rule.abort.map(|a| a.0));
            for p in probabilities {
                if !(0.0..=1.0).contains(&p) {
                    return Err(RpcError::InvalidConfig(format!(
                        "fault probability {p} for {service}.{method} is outside 0..=1"
                    )));
                }
            }
            if rule.abort.is_some_and(|(_, s)| matches!(s, Status::Ok)) {
                return Err(RpcError::InvalidConfig(format!(
                    "an injected failure of {service}.{method} needs a status other than OK"
                )));
            }
        }
        Ok(FaultLayer {
            rules: Arc::new(self.rules),
        })
    }
}

/// Injects faults; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct FaultLayer {
    /// Rules by (service, method or `"*"`).
    rules: Arc<HashMap<(String, String), Rule>>,
}

impl FaultLayer {
    /// Starts collecting rules.
    pub fn builder() -> FaultBuilder {
        FaultBuilder::default()
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            rules: Arc::clone(&self.rules),
        }
    }
}

/// The service [`FaultLayer`] makes.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    /// The rest of the chain.
    inner: S,
    /// Rules by (service, method or `"*"`).
    rules: Arc<HashMap<(String, String), Rule>>,
}

impl<S> Fault<S> {
    /// The rule for a call, if any.
    fn rule(&self, service: &str, method: &str) -> Option<Rule> {
        // Looked up by owned keys: fault injection is for tests, not hot paths.
        self.rules
            .get(&(service.to_owned(), method.to_owned()))
            .or_else(|| self.rules.get(&(service.to_owned(), "*".to_owned())))
            .copied()
    }
}

/// The future of a call through [`Fault`].
pub type FaultFuture<F, T> = Either<F, Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>>;

impl<S, R> Service<R> for Fault<S>
where
    S: Service<R, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    R: CallInfo + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FaultFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let Some(rule) = self.rule(request.service(), request.method()) else {
            return Either::Left(self.inner.call(request));
        };
        let mut rng = rand::thread_rng();
        let delay = rule.delay.filter(|(p, _)| rng.gen_bool(*p)).map(|(_, d)| d);
        let abort = rule.abort.filter(|(p, _)| rng.gen_bool(*p)).map(|(_, s)| s);
        let name = format!("{}.{}", request.service(), request.method());
        match (delay, abort) {
            (None, None) => Either::Left(self.inner.call(request)),
            (delay, Some(status)) => Either::Right(Box::pin(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                Err(Rejection::new(status, format!("injected fault in {name}")).into())
            })),
            (Some(delay), None) => {
                // The ready service goes with the call; this one waits for the next.
                let ready = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, ready);
                Either::Right(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    ready.call(request).await
                }))
            }
        }
    }
}

impl fmt::Display for FaultLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} fault rule(s)", self.rules.len())
    }
}

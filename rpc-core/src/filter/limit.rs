//! Per-method concurrency and rate limits on the server, with load shedding: a call
//! over a limit is answered [`Status::Overloaded`] at once, never queued.
//!
//! - A **concurrency limit** caps the calls of a method running at once (counted from
//!   when the call enters this filter until its reply is ready, or it is cancelled or
//!   times out).
//! - A **rate limit** is a token bucket: `per_second` calls a second on average, with
//!   bursts of up to `burst` calls (default: one second's worth). A bucket with tokens
//!   left is refilled at most once a millisecond, and always before it refuses a
//!   call: it never refuses a call an exact bucket would admit, and admits at most
//!   `per_second / 1000` more in a window.
//!
//! Limits are set per method, or for every method of a service with the method name
//! `"*"` (each method then has its own counters); a method's own setting wins over the
//! service-wide one. Methods without a setting are not limited. Every setting is
//! checked by [`LimitBuilder::build`]: a zero limit is an error there, not a server
//! that refuses every call.
//!
//! ```
//! use rpc_core::filter::limit::LimitLayer;
//! let limits = LimitLayer::builder()
//!     .concurrency("example.Inventory", "reserve", 64)
//!     .rate("example.Inventory", "*", 10_000.0)
//!     .build()?;
//! # Ok::<(), rpc_core::RpcError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use tower::{Layer, Service};

use super::{BoxError, Rejection, ServerRequest, ServerResponse};
use crate::error::RpcError;
use crate::protocol::Status;

/// The settings of one method (or one service's methods).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Setting {
    /// Calls running at once, at most.
    concurrency: Option<usize>,
    /// Calls per second on average, and the burst allowed.
    rate: Option<(f64, f64)>,
}

/// Collects limits; [`build`](Self::build) checks them.
#[derive(Debug, Clone, Default)]
pub struct LimitBuilder {
    /// Settings by (service, method or `"*"`).
    settings: HashMap<(String, String), Setting>,
}

impl LimitBuilder {
    /// At most `max` calls of `service.method` (or of each method of `service`, with
    /// `"*"`) run at once.
    pub fn concurrency(mut self, service: &str, method: &str, max: usize) -> Self {
        self.entry(service, method).concurrency = Some(max);
        self
    }

    /// At most `per_second` calls a second of `service.method` (or of each method,
    /// with `"*"`), in bursts of up to one second's worth.
    pub fn rate(self, service: &str, method: &str, per_second: f64) -> Self {
        self.rate_with_burst(service, method, per_second, per_second.max(1.0))
    }

    /// As [`rate`](Self::rate), with bursts of up to `burst` calls.
    pub fn rate_with_burst(
        mut self,
        service: &str,
        method: &str,
        per_second: f64,
        burst: f64,
    ) -> Self {
        self.entry(service, method).rate = Some((per_second, burst));
        self
    }

    fn entry(&mut self, service: &str, method: &str) -> &mut Setting {
        self.settings
            .entry((service.to_owned(), method.to_owned()))
            .or_default()
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a zero concurrency limit, a rate that is not a
    /// positive finite number, a burst below one call, or no limit at all.
    pub fn build(self) -> Result<LimitLayer, RpcError> {
        if self.settings.is_empty() {
            return Err(RpcError::InvalidConfig(
                "a limit layer needs at least one limit".to_owned(),
            ));
        }
        let mut services: HashMap<String, ServiceLimits> = HashMap::new();
        for ((service, method), setting) in self.settings {
            let name = format!("{service}.{method}");
            if setting.concurrency == Some(0) {
                return Err(RpcError::InvalidConfig(format!(
                    "the concurrency limit of {name} is 0: it would refuse every call"
                )));
            }
            if let Some((rate, burst)) = setting.rate {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(RpcError::InvalidConfig(format!(
                        "the rate limit of {name} is {rate} calls/s; it must be a positive number"
                    )));
                }
                if !(burst.is_finite() && burst >= 1.0) {
                    return Err(RpcError::InvalidConfig(format!(
                        "the burst of {name} is {burst} calls; it must be at least 1"
                    )));
                }
            }
            let limits = services.entry(service).or_default();
            if method == "*" {
                limits.every = Some(setting);
            } else {
                limits
                    .methods
                    .insert(method, Arc::new(MethodLimit::new(setting)));
            }
        }
        Ok(LimitLayer {
            services: Arc::new(
                services
                    .into_iter()
                    .map(|(name, limits)| (name, Arc::new(limits)))
                    .collect(),
            ),
        })
    }
}

/// Limits of one service.
#[derive(Debug, Default)]
struct ServiceLimits {
    /// Methods with their own setting.
    methods: HashMap<String, Arc<MethodLimit>>,
    /// The setting of every other method (`"*"`); their counters are made on first
    /// use.
    every: Option<Setting>,
    /// Counters of methods under `every`, by name.
    others: parking_lot::RwLock<HashMap<&'static str, Arc<MethodLimit>>>,
}

impl ServiceLimits {
    /// The counters of `method`, if it is limited.
    fn of(&self, method: &'static str) -> Option<Arc<MethodLimit>> {
        if let Some(limit) = self.methods.get(method) {
            return Some(Arc::clone(limit));
        }
        let every = self.every?;
        if let Some(limit) = self.others.read().get(method) {
            return Some(Arc::clone(limit));
        }
        let mut others = self.others.write();
        Some(Arc::clone(
            others
                .entry(method)
                .or_insert_with(|| Arc::new(MethodLimit::new(every))),
        ))
    }
}

/// The live counters of one limited method.
#[derive(Debug)]
pub(crate) struct MethodLimit {
    /// The concurrency cap.
    max_running: Option<usize>,
    /// Calls running now.
    running: AtomicUsize,
    /// The token bucket, if rate-limited.
    bucket: Option<parking_lot::Mutex<Bucket>>,
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    /// Tokens added per second.
    rate: f64,
    /// Tokens held at most.
    burst: f64,
    /// Tokens now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// When it is next brought up to date while it has tokens left
    /// ([`REFILL_EVERY`] after `updated`).
    next_refill: Instant,
}

/// How often a bucket that still has tokens is brought up to date (one that has none is
/// brought up to date before it refuses a call): a refill is a clock difference and
/// float arithmetic, which calls arriving microseconds apart need not each pay. A
/// bucket so refilled admits, over any window, at most `rate × 1 ms` calls more than
/// an exact one (its cap applied at refills only); it never refuses one that an exact
/// bucket would admit.
const REFILL_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

impl MethodLimit {
    fn new(setting: Setting) -> MethodLimit {
        let made = Instant::now();
        MethodLimit {
            max_running: setting.concurrency,
            running: AtomicUsize::new(0),
            bucket: setting.rate.map(|(rate, burst)| {
                parking_lot::Mutex::new(Bucket {
                    rate,
                    burst,
                    tokens: burst,
                    updated: made,
                    next_refill: made + REFILL_EVERY,
                })
            }),
        }
    }

    /// Admits a call, or says which limit refused it.
    fn admit(self: &Arc<Self>) -> Result<Option<Running>, &'static str> {
        self.admit_at(Instant::now())
    }

    /// Admits a call at `now` (a clock reading the caller shares with other work; a
    /// reading a little old refills the bucket a little late, never early), or says
    /// which limit refused it.
    pub(crate) fn admit_at(
        self: &Arc<Self>,
        now: Instant,
    ) -> Result<Option<Running>, &'static str> {
        if let Some(bucket) = &self.bucket {
            let mut bucket = bucket.lock();
            if (bucket.tokens < 1.0 || now >= bucket.next_refill) && now > bucket.updated {
                let refill = now.duration_since(bucket.updated).as_secs_f64() * bucket.rate;
                bucket.tokens = (bucket.tokens + refill).min(bucket.burst);
                bucket.updated = now;
                bucket.next_refill = now + REFILL_EVERY;
            }
            if bucket.tokens < 1.0 {
                return Err("the method is at its rate limit");
            }
            bucket.tokens -= 1.0;
        }
        let Some(max) = self.max_running else {
            return Ok(None);
        };
        let before = self.running.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err("the method is at its concurrency limit");
        }
        Ok(Some(Running(Arc::clone(self))))
    }
}

/// A call counted against a concurrency limit, until dropped.
#[derive(Debug)]
pub(crate) struct Running(Arc<MethodLimit>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds per-method limits to a server's chain; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LimitLayer {
    /// Limits by service name.
    services: Arc<HashMap<String, Arc<ServiceLimits>>>,
}

impl LimitLayer {
    /// Starts collecting limits.
    pub fn builder() -> LimitBuilder {
        LimitBuilder::default()
    }

    /// The counters of `service.method` (`method` one of the service's own names),
    /// if it is limited.
    pub(crate) fn limit_of(&self, service: &str, method: &'static str) -> Option<Arc<MethodLimit>> {
        self.services
            .get(service)
            .and_then(|limits| limits.of(method))
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            services: Arc::clone(&self.services),
            last: None,
        }
    }
}

/// The service [`LimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    /// The rest of the chain.
    inner: S,
    /// Limits by service name.
    services: Arc<HashMap<String, Arc<ServiceLimits>>>,
    /// The method this copy limited last and its counters (`None`: not limited), so
    /// that a connection calling one method over and over (each connection has its
    /// own copy of the chain) skips the two map lookups.
    last: Option<LastLimit>,
}

/// [`Limit::last`].
#[derive(Debug, Clone)]
struct LastLimit {
    /// The service's name.
    service: Box<str>,
    /// The method's name (the service's own `&'static str`).
    method: &'static str,
    /// Its counters, if it is limited.
    limit: Option<Arc<MethodLimit>>,
}

impl<S> Limit<S> {
    /// The counters of the method `request` calls, if it is limited.
    fn limit_of(&mut self, request: &ServerRequest) -> Option<&Arc<MethodLimit>> {
        let (service, method) = (request.service(), request.method());
        let hit = self
            .last
            .as_ref()
            .is_some_and(|last| std::ptr::eq(last.method, method) && &*last.service == service);
        if !hit {
            let limit = self
                .services
                .get(service)
                .and_then(|limits| limits.of(method));
            self.last = Some(LastLimit {
                service: service.into(),
                method,
                limit,
            });
        }
        self.last.as_ref().and_then(|last| last.limit.as_ref())
    }
}

impl<S> Service<ServerRequest> for Limit<S>
where
    S: Service<ServerRequest, Response = ServerResponse, Error = BoxError>,
{
    type Response = ServerResponse;
    type Error = BoxError;
    type Future = Either<std::future::Ready<Result<ServerResponse, BoxError>>, Counted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        let running = match self.limit_of(&request).map(MethodLimit::admit) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(running))) => Some(running),
            Some(Err(reason)) => {
                tracing::debug!(
                    service = request.service(),
                    method = request.method(),
                    "call shed: {reason}"
                );
                let message = format!("{}.{}: {reason}", request.service(), request.method());
                return Either::Left(std::future::ready(Err(Rejection::new(
                    Status::Overloaded,
                    message,
                )
                .into())));
            }
        };
        Either::Right(Counted {
            inner: self.inner.call(request),
            running,
        })
    }
}

pin_project_lite::pin_project! {
    /// A call's future, counted against its method's concurrency limit until it ends
    /// or is dropped.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        running: Option<Running>,
    }
}

impl<F> fmt::Debug for Counted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        // The call is over: it no longer counts, even if the reply is still to go.
        this.running.take();
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A rate-limited method's counters, and the instant `micros` after they were made.
    fn bucket(per_second: f64, burst: f64) -> (Arc<MethodLimit>, impl Fn(u64) -> Instant) {
        let limit = LimitLayer::builder()
            .rate_with_burst("s", "m", per_second, burst)
            .build()
            .unwrap()
            .limit_of("s", "m")
            .unwrap();
        let start = limit.bucket.as_ref().unwrap().lock().updated;
        (limit, move |micros| start + Duration::from_micros(micros))
    }

    #[test]
    fn a_bucket_refuses_only_after_an_up_to_date_refill() {
        let (limit, at) = bucket(1000.0, 2.0);
        // The burst, then a refusal: 0.5 ms has refilled half a token.
        assert!(limit.admit_at(at(0)).is_ok());
        assert!(limit.admit_at(at(0)).is_ok());
        assert!(limit.admit_at(at(500)).is_err());
        // Empty, so brought up to date at once: a whole token 1 ms in.
        assert!(limit.admit_at(at(1000)).is_ok());
        assert!(limit.admit_at(at(1000)).is_err());
    }

    #[test]
    fn a_bucket_with_tokens_left_refills_at_most_once_a_millisecond() {
        let (limit, at) = bucket(1000.0, 10.0);
        assert!(limit.admit_at(at(0)).is_ok());
        // 0.9 ms later, with tokens left: not refilled yet.
        assert!(limit.admit_at(at(900)).is_ok());
        let tokens = limit.bucket.as_ref().unwrap().lock().tokens;
        assert!((tokens - 8.0).abs() < 1e-9, "{tokens}");
        // Past the millisecond: the 1.1 ms since the last refill count, capped.
        assert!(limit.admit_at(at(1100)).is_ok());
        let tokens = limit.bucket.as_ref().unwrap().lock().tokens;
        assert!((tokens - 8.1).abs() < 1e-9, "{tokens}");
    }
}

//! [`PickContext`]: what a balancer may know about the call it places.

use std::net::IpAddr;
use std::time::Instant;

/// Per-call input to [`LoadBalancer::pick`](crate::LoadBalancer::pick).
///
/// Only `ip-hash` looks at the key; every strategy honours
/// [`at`](Self::at). It is `Copy` and costs nothing to build per call.
///
/// ```
/// use rpc_lb::PickContext;
///
/// // No affinity: the common case.
/// let ctx = PickContext::new();
/// // Stick a user to one provider regardless of which gateway they came through.
/// let user_id: u64 = 42;
/// let ctx = PickContext::new().hash_key(user_id);
/// // Stick a client IP to one provider.
/// let ctx = PickContext::new().client_ip("192.0.2.7".parse().unwrap());
/// # let _ = ctx;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PickContext {
    /// The address of the client on whose behalf the call is made; the
    /// `ip-hash` key when no [`hash_key`](Self::hash_key) is given. Only the
    /// IP is used, since a client's port changes with every connection.
    pub client_ip: Option<IpAddr>,
    /// A caller-chosen affinity key (a user or session id, the hash of a
    /// first argument); takes precedence over `client_ip` for `ip-hash`. Any
    /// `u64` works: it is mixed before use.
    pub hash_key: Option<u64>,
    /// The time to evaluate warm-up and unhealthy-until marks at; `None`
    /// (the default) reads the clock only if a provider needs it. Tests set it
    /// to step through time without sleeping.
    pub now: Option<Instant>,
}

impl PickContext {
    /// A context with no affinity key, evaluated at the current time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the client IP used as the `ip-hash` key.
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Sets an explicit affinity key, used by `ip-hash` instead of the client
    /// IP.
    pub fn hash_key(mut self, key: u64) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// Evaluates time-dependent state (warm-up, unhealthy-until marks) at
    /// `now` instead of the clock.
    ///
    /// ```
    /// use rpc_lb::PickContext;
    /// use std::time::{Duration, Instant};
    /// let in_a_minute = PickContext::new().at(Instant::now() + Duration::from_secs(60));
    /// # let _ = in_a_minute;
    /// ```
    pub fn at(mut self, now: Instant) -> Self {
        self.now = Some(now);
        self
    }
}

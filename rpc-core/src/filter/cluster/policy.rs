//! [`Policy`]: what a call does when its provider fails, or is slow.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::RpcError;

/// Most retries a failover policy may have: far past any use, low enough to catch a
/// mistyped value.
pub(crate) const MAX_RETRIES: u32 = 16;

/// Most copies a forking policy may send.
pub(crate) const MAX_FORKS: usize = 16;

/// A cluster fault-tolerance policy, set per client, per service or per method on
/// [`ClusterBuilder`](super::ClusterBuilder). Make one with a constructor, then adjust
/// it with the setters:
///
/// | policy | on a failure | for |
/// |---|---|---|
/// | [`failover(n)`](Self::failover) | retries on another provider, up to `n` times | idempotent methods (others: only calls that never reached a server) |
/// | [`failfast()`](Self::failfast) | fails at once | writes |
/// | [`failsafe()`](Self::failsafe) | answers a default (nil, or a value) and logs a warning | logging, auditing, best-effort calls |
/// | [`forking(k)`](Self::forking) | (sends to `k` providers at once; the first answer wins) | latency-critical reads |
/// | [`hedged()`](Self::hedged) | (sends a second copy to another provider once the first is slower than the method's p95) | tail latency of reads |
///
/// Forking and hedging run a call more than once, so they apply to idempotent methods
/// only; other methods under such a policy are sent once. Every policy keeps the
/// transport's own failover of calls that certainly did not run (a provider that
/// cannot be reached is skipped).
///
/// ```
/// use std::time::Duration;
/// use rpc_core::filter::cluster::Policy;
/// let reads = Policy::failover(2).attempt_timeout(Duration::from_millis(300));
/// let tail = Policy::hedged().hedge_min_delay(Duration::from_millis(10));
/// let audit = Policy::failsafe();
/// let fan_out = Policy::forking(2);
/// # let _ = (reads, tail, audit, fan_out);
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    /// What the policy does.
    pub(crate) mode: Mode,
    /// Timeout of each attempt (what is left of the caller's timeout when shorter);
    /// `None`: each attempt may use all that is left.
    pub(crate) attempt_timeout: Option<Duration>,
}

/// The kinds of policy.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Retry elsewhere.
    Failover {
        /// Retries after the first attempt.
        retries: u32,
        /// Retry only calls that certainly did not run, even for idempotent methods.
        unsent_only: bool,
    },
    /// One attempt.
    Failfast,
    /// One attempt; an error becomes this encoded result (or an encoding failure,
    /// reported when the layer is built).
    Failsafe {
        /// The encoded default result.
        default: Result<Bytes, String>,
    },
    /// `k` copies at once.
    Forking {
        /// Copies sent.
        k: usize,
    },
    /// A backup copy after a delay.
    Hedged(Hedge),
}

/// How a hedged policy picks the moment of its backup copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hedge {
    /// The latency quantile after which the copy is sent.
    pub(crate) quantile: f64,
    /// The copy is never sent sooner than this.
    pub(crate) min_delay: Duration,
    /// Below this many recent samples of the method, no copy is sent.
    pub(crate) min_samples: u64,
    /// How long latency samples count (between one and two of these).
    pub(crate) window: Duration,
}

impl Default for Hedge {
    fn default() -> Self {
        Hedge {
            quantile: 0.95,
            min_delay: Duration::from_millis(5),
            min_samples: 20,
            window: Duration::from_secs(10),
        }
    }
}

impl Policy {
    fn of(mode: Mode) -> Policy {
        Policy {
            mode,
            attempt_timeout: None,
        }
    }

    /// Failover: a failed call is retried on another provider, up to `retries` times,
    /// within the caller's timeout. An idempotent method is retried after any
    /// provider failure ([`is_provider_failure`](crate::filter::is_provider_failure):
    /// a timeout, a lost connection, OVERLOADED, INTERNAL...); any other method only
    /// when the request certainly never reached a server
    /// ([`RpcError::is_safe_to_retry`]). Each retry is paid for from the layer's
    /// [`RetryBudget`](super::RetryBudget). Dubbo's default has 2 retries.
    pub fn failover(retries: u32) -> Policy {
        Policy::of(Mode::Failover {
            retries,
            unsent_only: false,
        })
    }

    /// Failfast: one attempt; its error is the call's.
    pub fn failfast() -> Policy {
        Policy::of(Mode::Failfast)
    }

    /// Failsafe: one attempt; an error (not the method's own application error, which
    /// is an answer) becomes a nil result, logged as a `tracing` warning. Nil decodes
    /// as `()` and as `None` for an `Option` result; for other result types give a
    /// value with [`failsafe_value`](Self::failsafe_value).
    pub fn failsafe() -> Policy {
        Policy::of(Mode::Failsafe {
            default: Ok(Bytes::from_static(&[0xc0])),
        })
    }

    /// Failsafe with `value` as the default result (encoded now; a value that cannot
    /// be encoded is reported by [`ClusterBuilder::build`](super::ClusterBuilder::build)).
    ///
    /// ```
    /// let p = rpc_core::filter::cluster::Policy::failsafe_value(&0u64);
    /// ```
    pub fn failsafe_value<T: serde::Serialize + ?Sized>(value: &T) -> Policy {
        let mut body = BytesMut::new();
        let default = rmp_serde::encode::write_named(&mut bytes::BufMut::writer(&mut body), value)
            .map(|()| body.freeze())
            .map_err(|e| e.to_string());
        Policy::of(Mode::Failsafe { default })
    }

    /// Forking: the call goes to `k` different providers at once (fewer when fewer are
    /// available) and the first answer wins; the others are abandoned. It fails only
    /// when every copy fails, with the last error. `k` from 1 to 16; copies are not
    /// charged to the retry budget (they are a fixed cost, not a reaction to
    /// failures).
    pub fn forking(k: usize) -> Policy {
        Policy::of(Mode::Forking { k })
    }

    /// Hedged requests (brpc's backup request): the call goes to one provider; if no
    /// answer came within the method's observed p95 latency (see
    /// [`hedge_quantile`](Self::hedge_quantile), never sooner than
    /// [`hedge_min_delay`](Self::hedge_min_delay)), a second copy goes to another
    /// provider and the first answer wins. A first attempt that fails before that
    /// sends the copy at once. The copy is paid for from the retry budget; with too
    /// few recent samples of the method (see
    /// [`hedge_min_samples`](Self::hedge_min_samples)) none is sent.
    pub fn hedged() -> Policy {
        Policy::of(Mode::Hedged(Hedge::default()))
    }

    /// A failover policy retries only calls that certainly did not run, even for
    /// idempotent methods; the one way to have retries with no idempotent method
    /// marked.
    pub fn unsent_only(mut self) -> Policy {
        if let Mode::Failover { unsent_only, .. } = &mut self.mode {
            *unsent_only = true;
        }
        self
    }

    /// Sets the timeout of each attempt, so that an attempt stuck on a slow provider
    /// leaves time for a retry within the caller's timeout (an attempt never has more
    /// than what is left of it). Default: none (an attempt may use all that is left).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = rpc_core::filter::cluster::Policy::failover(2).attempt_timeout(Duration::from_millis(200));
    /// ```
    pub fn attempt_timeout(mut self, timeout: Duration) -> Policy {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// A hedged policy sends its copy after this quantile of the method's recent
    /// latencies, in `(0, 1)`. Default 0.95.
    pub fn hedge_quantile(mut self, quantile: f64) -> Policy {
        if let Mode::Hedged(hedge) = &mut self.mode {
            hedge.quantile = quantile;
        }
        self
    }

    /// A hedged policy never sends its copy sooner than this (so a method that is
    /// fast now does not hedge every call on a hiccup). Default 5 ms.
    pub fn hedge_min_delay(mut self, delay: Duration) -> Policy {
        if let Mode::Hedged(hedge) = &mut self.mode {
            hedge.min_delay = delay;
        }
        self
    }

    /// A hedged policy sends no copy while it has fewer recent latency samples of the
    /// method than this. Default 20.
    pub fn hedge_min_samples(mut self, samples: u64) -> Policy {
        if let Mode::Hedged(hedge) = &mut self.mode {
            hedge.min_samples = samples;
        }
        self
    }

    /// How long a hedged policy's latency samples count (between one and two of
    /// these). Default 10 s.
    pub fn hedge_window(mut self, window: Duration) -> Policy {
        if let Mode::Hedged(hedge) = &mut self.mode {
            hedge.window = window;
        }
        self
    }

    /// Whether the policy runs a call more than once even when it did run (and so
    /// needs idempotent methods).
    pub(crate) fn repeats_calls(&self) -> bool {
        match self.mode {
            Mode::Failover {
                retries,
                unsent_only,
            } => retries > 0 && !unsent_only,
            Mode::Forking { .. } | Mode::Hedged(_) => true,
            Mode::Failfast | Mode::Failsafe { .. } => false,
        }
    }

    /// Checks the settings; `scope` names where the policy applies, for the message.
    pub(crate) fn validate(&self, scope: &str) -> Result<(), RpcError> {
        let invalid = |message: String| Err(RpcError::InvalidConfig(format!("{scope}: {message}")));
        if self.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return invalid("the attempt timeout must be more than zero".to_owned());
        }
        match &self.mode {
            Mode::Failover { retries, .. } if *retries > MAX_RETRIES => invalid(format!(
                "failover retries must be at most {MAX_RETRIES}, not {retries}"
            )),
            Mode::Failsafe { default: Err(e) } => {
                invalid(format!("the failsafe default cannot be encoded: {e}"))
            }
            Mode::Forking { k } if *k == 0 || *k > MAX_FORKS => invalid(format!(
                "forking sends to between 1 and {MAX_FORKS} providers, not {k}"
            )),
            Mode::Hedged(hedge) => {
                if !(hedge.quantile > 0.0 && hedge.quantile < 1.0) {
                    return invalid(format!(
                        "the hedging quantile must be between 0 and 1 (exclusive), not {}",
                        hedge.quantile
                    ));
                }
                if hedge.min_delay.is_zero() {
                    return invalid("the hedging minimum delay must be more than zero".to_owned());
                }
                if hedge.window.is_zero() {
                    return invalid("the hedging window must be more than zero".to_owned());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

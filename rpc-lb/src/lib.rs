//! Client-side load balancing for the RPC framework.
//!
//! A consumer keeps one [`LoadBalancer`] per service. Discovery feeds it the
//! live provider list with [`LoadBalancer::update`]; every call asks it for a
//! provider with [`LoadBalancer::pick`] and holds the returned [`Picked`]
//! until the reply arrives, which counts the call as in flight and lets the
//! client report the latency, where the strategy reads them (see
//! [`ProviderStats`]: a strategy that reads neither keeps neither, and its
//! picks touch nothing shared). The crate knows nothing about transports or
//! registries: providers are socket addresses with a weight and some flags.
//! Each provider can carry a value of the owner's (a client carries its
//! connections to the provider), handed over with the pick from the same
//! snapshot ([`LoadBalancer::carrying`], [`LoadBalancer::pick_with`]), so that a
//! call needs no lookup of its own to find where to send.
//!
//! Strategies ([`Strategy`], chosen by name from configuration):
//! `round-robin`, `weighted-round-robin` (nginx's smooth variant),
//! `least-connection`, `weighted-least-connection`, `ip-hash` (consistent
//! hashing with virtual nodes), `random`, `weighted-random` (the default)
//! and `adaptive` (power of two choices over a peak-EWMA of latency).
//! Weighted strategies ramp a newly started provider up over a warm-up
//! period. A provider with weight 0, unhealthy, or draining is never picked;
//! the client can also take one out for a backoff period after failing to
//! reach it.
//!
//! # Layout
//!
//! - `balancer`: [`LoadBalancer`], the type users hold: pick, update, marks.
//! - `set`: the live provider set: snapshots (with what each provider
//!   carries) swapped atomically on update, and the per-pick view of
//!   availability and warmed-up weights.
//! - `algorithm/`: one file per algorithm behind a crate-private trait:
//!   `round_robin`, `smooth_weighted`, `least_connection`, `ip_hash`,
//!   `random`, `adaptive`.
//! - `strategy`: [`Strategy`], the algorithm names and their parsing.
//! - `provider`: [`Provider`], a provider as discovery describes it, and the
//!   warm-up formula.
//! - `stats`: [`ProviderStats`], calls in flight and latency per provider (kept
//!   where read, or all with [`Config::track_stats`]).
//! - `picked`: [`Picked`], the chosen provider and its in-flight guard.
//! - `context`: [`PickContext`], the per-call affinity key and time.
//! - `config`: [`Config`], warm-up period, ring size, latency decay.
//! - `error`: [`LbError`] and [`ParseStrategyError`].
//!
//! # Example
//!
//! ```
//! use rpc_lb::{LoadBalancer, PickContext, Provider, Strategy};
//! use std::time::{Duration, Instant};
//!
//! let strategy: Strategy = "weighted-round-robin".parse()?;
//! let lb = LoadBalancer::new("demo.Greeter", strategy);
//!
//! let a = "10.0.0.1:20880".parse()?;
//! let b = "10.0.0.2:20880".parse()?;
//! let c = "10.0.0.3:20880".parse()?;
//! lb.update([
//!     Provider::new(a).weight(5),
//!     Provider::new(b).weight(1),
//!     Provider::new(c).weight(1),
//! ]);
//!
//! let ctx = PickContext::new();
//! let mut order = Vec::new();
//! for _ in 0..7 {
//!     let picked = lb.pick(&ctx)?;
//!     let started = Instant::now();
//!     // ... call picked.addr() ...
//!     picked.record_success(started.elapsed());
//!     order.push(picked.addr());
//! }
//! assert_eq!(order, [a, a, b, a, c, a, a]);
//!
//! // `b` leaves; `a` and `c` keep their place in the sequence.
//! lb.update([Provider::new(a).weight(5), Provider::new(c).weight(1)]);
//! // `c` failed to answer: leave it alone for a second.
//! lb.mark_unhealthy_for(c, Duration::from_secs(1));
//! assert_eq!(lb.pick(&ctx)?.addr(), a);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod algorithm;
mod balancer;
mod clock;
mod config;
mod context;
mod error;
mod picked;
mod provider;
mod set;
mod stats;
mod strategy;

pub use balancer::LoadBalancer;
pub use clock::Timestamp;
pub use config::Config;
pub use context::PickContext;
pub use error::{LbError, ParseStrategyError};
pub use picked::Picked;
pub use provider::Provider;
pub use stats::ProviderStats;
pub use strategy::Strategy;

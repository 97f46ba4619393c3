//! [`Strategy`]: the names of the balancing algorithms.

use std::fmt;
use std::str::FromStr;

use crate::error::ParseStrategyError;

/// Which algorithm a [`LoadBalancer`](crate::LoadBalancer) uses.
///
/// Every strategy has a stable kebab-case name (its [`Display`](fmt::Display)
/// form, accepted back by [`FromStr`]) so it can be chosen from configuration:
///
/// ```
/// use rpc_lb::Strategy;
///
/// let s: Strategy = "least-connection".parse().unwrap();
/// assert_eq!(s, Strategy::LeastConnection);
/// assert_eq!(s.to_string(), "least-connection");
///
/// let err = "fastest".parse::<Strategy>().unwrap_err();
/// assert!(err.to_string().contains("round-robin"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// `round-robin`: each available provider in turn; weights are ignored
    /// (except that weight 0 is never picked).
    RoundRobin,
    /// `weighted-round-robin`: nginx's *smooth* weighted round-robin. Over
    /// any `sum(weights)` consecutive picks each provider is picked exactly
    /// `weight` times, interleaved rather than in bursts.
    WeightedRoundRobin,
    /// `least-connection`: the provider with the fewest calls in flight;
    /// ties go round-robin.
    LeastConnection,
    /// `weighted-least-connection`: the provider with the lowest
    /// `in_flight / weight`; ties go round-robin.
    WeightedLeastConnection,
    /// `ip-hash`: a consistent-hash ring with virtual nodes keyed by the
    /// caller's hash key or client IP, so a client sticks to one provider and
    /// only about `1/n` of clients move when a provider joins or leaves.
    IpHash,
    /// `random`: uniformly random among available providers.
    Random,
    /// `weighted-random`: random with probability proportional to weight
    /// (Dubbo's default, and ours).
    #[default]
    WeightedRandom,
    /// `adaptive`: power of two random choices, scored by calls in flight
    /// times a peak-EWMA of observed latency, divided by weight, so a
    /// provider that slows down sheds load at once.
    Adaptive,
}

impl Strategy {
    /// Every strategy, in the order the names are listed in errors.
    pub const ALL: [Strategy; 8] = [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnection,
        Strategy::WeightedLeastConnection,
        Strategy::IpHash,
        Strategy::Random,
        Strategy::WeightedRandom,
        Strategy::Adaptive,
    ];

    /// The strategy's configuration name, e.g. `"weighted-round-robin"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::WeightedRoundRobin => "weighted-round-robin",
            Strategy::LeastConnection => "least-connection",
            Strategy::WeightedLeastConnection => "weighted-least-connection",
            Strategy::IpHash => "ip-hash",
            Strategy::Random => "random",
            Strategy::WeightedRandom => "weighted-random",
            Strategy::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    /// Parses a strategy name. Matching is exact (lower-case, kebab-case).
    ///
    /// # Errors
    ///
    /// [`ParseStrategyError`] for any other input; its message lists the
    /// valid names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
                ParseStrategyError::new(s, valid.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.to_string().parse::<Strategy>(), Ok(strategy));
        }
    }

    #[test]
    fn unknown_name_lists_valid_ones() {
        let err = "Round-Robin".parse::<Strategy>().unwrap_err();
        assert_eq!(err.name(), "Round-Robin");
        let msg = err.to_string();
        assert!(msg.contains("`Round-Robin`"), "{msg}");
        for strategy in Strategy::ALL {
            assert!(msg.contains(strategy.as_str()), "{msg}");
        }
    }
}

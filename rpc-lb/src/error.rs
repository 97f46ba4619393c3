//! Errors returned by the balancers.

use thiserror::Error;

/// Why a balancer could not pick a provider.
///
/// Callers match on this (and map it into their own call error), so it is
/// `#[non_exhaustive]`: new reasons may be added without a breaking change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LbError {
    /// No provider of the service can take a call right now: the set is
    /// empty, or every provider has weight 0, is unhealthy (reported by
    /// discovery or marked by the client) or is draining.
    #[error("no provider available for service `{service}`")]
    NoProvider {
        /// The service the balancer was created for.
        service: String,
    },
}

/// The error returned when parsing an unknown [`Strategy`](crate::Strategy)
/// name.
///
/// Its message names the rejected input and lists every valid name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown load-balancing strategy `{name}`; expected one of: {valid}")]
pub struct ParseStrategyError {
    /// The rejected input, kept so the message can quote it.
    name: String,
    /// The valid names, comma separated, rendered once when the error is made.
    valid: String,
}

impl ParseStrategyError {
    pub(crate) fn new(name: &str, valid: String) -> Self {
        Self {
            name: name.to_owned(),
            valid,
        }
    }

    /// The name that was not recognised.
    pub fn name(&self) -> &str {
        &self.name
    }
}

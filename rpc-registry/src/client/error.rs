//! [`Error`]: what the client side of the registry reports.

use std::path::PathBuf;
use std::sync::Arc;

use crate::api::RegistryError;

/// Why a registry operation on the client side failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry URL is malformed.
    #[error("invalid registry url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (cut to 128 characters).
        url: String,
        /// Why.
        reason: String,
    },
    /// The URL's scheme has no backend.
    #[error(
        "unsupported registry scheme {scheme:?}: this build supports rpc://host:port[,host:port] \
         (and rpcs://host:port[,host:port][?ca=PATH] with the `tls` feature, \
         etcd://host:port[,host:port][/root] with the `etcd` feature, etcds://... with `etcd` \
         and `tls`, \
         zookeeper://host:port[,host:port][/chroot] with the `zookeeper` feature, \
         zookeepers://...?ca=PATH with `zookeeper` and `tls`)"
    )]
    UnsupportedScheme {
        /// The scheme given.
        scheme: String,
    },
    /// The URL's scheme is one this crate has a backend for, but this build was made
    /// without the cargo features the backend needs (`zookeepers://` without `tls`,
    /// say).
    #[error(
        "registry scheme {scheme}:// needs rpc-registry's {features} feature(s), \
         which this build lacks"
    )]
    FeatureOff {
        /// The scheme given.
        scheme: &'static str,
        /// The features it needs, as `` `zookeeper` and `tls` ``.
        features: &'static str,
    },
    /// The TLS settings an `rpcs://`, `etcds://` or `zookeepers://` URL names were
    /// refused: a file that cannot be read, or holds no usable certificate or key.
    #[error("registry url {url:?}: TLS settings refused: {reason}")]
    Tls {
        /// The URL (cut to 128 characters).
        url: String,
        /// Why.
        reason: String,
    },
    /// The registry answered with a refusal.
    #[error("registry {registry} refused: {source}")]
    Registry {
        /// Which registry.
        registry: String,
        /// Its answer.
        #[source]
        source: RegistryError,
    },
    /// The registry could not be reached, or did not answer in time.
    #[error("registry {registry} unreachable: {reason}")]
    Unreachable {
        /// Which registry.
        registry: String,
        /// The transport error.
        reason: String,
    },
    /// An argument was refused before anything was sent (same rules as the registry's).
    #[error("invalid argument: {0}")]
    Invalid(#[source] RegistryError),
    /// The registry-fed client could not be built (its settings were refused, or no
    /// runtime was running).
    #[error("cannot build the client: {0}")]
    Client(#[source] Arc<rpc_core::RpcError>),
    /// The consumer snapshot file could not be read or written.
    #[error("snapshot file {path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl Error {
    /// Whether this is the registry saying the lease is unknown, so the holder must
    /// take a new lease and register again.
    pub fn is_unknown_lease(&self) -> bool {
        matches!(
            self,
            Error::Registry {
                source: RegistryError::UnknownLease(_),
                ..
            }
        )
    }
}

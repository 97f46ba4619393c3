//! The admin dashboard (feature `dashboard`): an HTTP server (axum) on its own
//! address beside the registry, with
//!
//! - `page`: the dashboard itself, one static HTML file with vanilla JavaScript and
//!   an inline SVG chart, compiled into the binary (nothing is fetched from
//!   anywhere at run time);
//! - `api`: the JSON API the page polls and scripts use, and the operator actions
//!   (weight, disable, enable) behind the admin token;
//! - `metrics`: the registry's own metrics in Prometheus' text format.
//!
//! Reads are open; actions need `Authorization: Bearer <token>` matching the
//! configured token, and are refused altogether when none is configured.

mod api;
mod metrics;
mod page;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state::State;

/// Where the admin dashboard listens and who may act through it; see
/// [`RegistryConfig::admin`](crate::RegistryConfig::admin).
///
/// ```
/// let admin = rpc_registry::AdminConfig::new("127.0.0.1:7080").token("s3cret");
/// assert!(admin.has_token());
/// assert!(!format!("{admin:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// The token operator actions must present as `Authorization: Bearer <token>`;
    /// `None`: actions are refused (a read-only dashboard). Not printed by `Debug`.
    token: Option<Arc<str>>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminConfig {
    /// A read-only dashboard on `listen`.
    pub fn new(listen: impl Into<String>) -> AdminConfig {
        AdminConfig {
            listen: listen.into(),
            token: None,
        }
    }

    /// Allows operator actions to callers presenting `token`. An empty token is
    /// refused when the registry binds.
    ///
    /// ```
    /// let admin = rpc_registry::AdminConfig::new("127.0.0.1:0").token("s3cret");
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> AdminConfig {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// Whether operator actions are allowed (a token is set).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.token.as_deref() == Some("") {
            return Err("the admin token must not be empty".into());
        }
        Ok(())
    }
}

/// Binds the dashboard and serves it on the current runtime until `cancel`.
///
/// # Errors
///
/// The bind error, naming the address.
pub(crate) async fn serve(
    state: Arc<State>,
    config: &AdminConfig,
    registry_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(config.listen.as_str())
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("admin dashboard on {}: {e}", config.listen),
            )
        })?;
    let addr = listener.local_addr()?;
    let app = api::router(api::Admin {
        state,
        token: config.token.clone(),
        registry_addr,
    });
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the admin dashboard stopped");
        }
    });
    tracing::info!(%addr, "admin dashboard listening");
    Ok(addr)
}

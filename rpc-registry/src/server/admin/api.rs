//! The JSON API under `/api/` and the routes of the whole admin server.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the dashboard page |
//! | `GET /api/info` | the registry: address, settings, uptime, whether actions are allowed |
//! | `GET /api/services` | every service: instances, consumers, overrides, load |
//! | `GET /api/services/{service}` | one service |
//! | `PUT /api/services/{service}/instances/{addr}/weight` `{"weight": N}` | overrides the weight |
//! | `DELETE /api/services/{service}/instances/{addr}/weight` | back to the registered weight |
//! | `POST /api/services/{service}/instances/{addr}/disable` | leaves it out of consumers' lists |
//! | `POST /api/services/{service}/instances/{addr}/enable` | puts it back |
//! | `DELETE /api/services/{service}/instances/{addr}/override` | forgets every override of it |
//! | `GET /metrics` | the registry's own metrics, Prometheus text |
//!
//! Errors are JSON too: `{"error": "..."}` with 400 (a bad name or body), 401 (no or
//! a wrong token), 403 (actions are disabled: no token configured) or 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State as Extract};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::super::state::{OverrideError, State};
use super::super::status::Override;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(super) struct Admin {
    /// The registry's state.
    pub(super) state: Arc<State>,
    /// The token actions must present; `None`: actions are refused.
    pub(super) token: Option<Arc<str>>,
    /// Where the registry itself listens, for the page's heading.
    pub(super) registry_addr: SocketAddr,
}

/// Every route of the admin server.
pub(super) fn router(admin: Admin) -> Router {
    let instance = "/api/services/{service}/instances/{addr}";
    Router::new()
        .route("/", get(super::page::dashboard))
        .route("/api/info", get(info))
        .route("/api/services", get(services))
        .route("/api/services/{service}", get(service))
        .route(
            &format!("{instance}/weight"),
            put(set_weight).delete(clear_weight),
        )
        .route(&format!("{instance}/disable"), post(disable))
        .route(&format!("{instance}/enable"), post(enable))
        .route(&format!("{instance}/override"), delete(clear_override))
        .route("/metrics", get(super::metrics::scrape))
        .with_state(admin)
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    (
        status,
        Json(Body {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Live JSON must not be cached by a browser or a proxy.
fn fresh<T: Serialize>(value: T) -> Response {
    ([(CACHE_CONTROL, "no-store")], Json(value)).into_response()
}

/// What `GET /api/info` answers.
#[derive(Debug, Serialize)]
struct Info {
    /// `rpc://addr` of the registry.
    registry: String,
    /// This registry's epoch-independent start, milliseconds ago.
    uptime_ms: u64,
    /// Default lease TTL, milliseconds.
    ttl_ms: u64,
    /// Suggested heartbeat interval, milliseconds.
    heartbeat_interval_ms: u64,
    /// Live leases.
    leases: usize,
    /// Live instances.
    instances: usize,
    /// Whether operator actions are allowed (a token is configured).
    actions_enabled: bool,
    /// The crate version.
    version: &'static str,
}

async fn info(Extract(admin): Extract<Admin>) -> Response {
    let config = admin.state.config();
    fresh(Info {
        registry: format!("rpc://{}", admin.registry_addr),
        uptime_ms: admin.state.started().elapsed().as_millis() as u64,
        ttl_ms: config.ttl.as_millis() as u64,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        leases: admin.state.lease_count(),
        instances: admin.state.instance_count(),
        actions_enabled: admin.token.is_some(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn services(Extract(admin): Extract<Admin>) -> Response {
    fresh(admin.state.statuses(Instant::now()))
}

async fn service(Extract(admin): Extract<Admin>, Path(name): Path<String>) -> Response {
    match admin.state.status(&name, Instant::now()) {
        Some(status) => fresh(status),
        None => error(
            StatusCode::NOT_FOUND,
            format!("the registry has no record of service {name:?}"),
        ),
    }
}

/// The body of `PUT .../weight`.
#[derive(Debug, Deserialize)]
struct WeightBody {
    /// The weight consumers are to use.
    weight: u32,
}

/// What an action answers: the override now in force.
#[derive(Debug, Serialize)]
struct Changed {
    service: String,
    addr: String,
    #[serde(rename = "override")]
    operator_override: Override,
}

async fn set_weight(
    Extract(admin): Extract<Admin>,
    headers: HeaderMap,
    Path((service, addr)): Path<(String, String)>,
    Json(body): Json<WeightBody>,
) -> Response {
    act(&admin, &headers, service, addr, |o| {
        o.weight = Some(body.weight)
    })
}

async fn clear_weight(
    Extract(admin): Extract<Admin>,
    headers: HeaderMap,
    Path((service, addr)): Path<(String, String)>,
) -> Response {
    act(&admin, &headers, service, addr, |o| o.weight = None)
}

async fn disable(
    Extract(admin): Extract<Admin>,
    headers: HeaderMap,
    Path((service, addr)): Path<(String, String)>,
) -> Response {
    act(&admin, &headers, service, addr, |o| o.disabled = true)
}

async fn enable(
    Extract(admin): Extract<Admin>,
    headers: HeaderMap,
    Path((service, addr)): Path<(String, String)>,
) -> Response {
    act(&admin, &headers, service, addr, |o| o.disabled = false)
}

async fn clear_override(
    Extract(admin): Extract<Admin>,
    headers: HeaderMap,
    Path((service, addr)): Path<(String, String)>,
) -> Response {
    act(&admin, &headers, service, addr, |o| {
        *o = Override::default()
    })
}

/// Checks the token, then changes the override.
fn act(
    admin: &Admin,
    headers: &HeaderMap,
    service: String,
    addr: String,
    edit: impl FnOnce(&mut Override),
) -> Response {
    if let Err(refused) = authorize(admin.token.as_deref(), headers) {
        return refused.answer();
    }
    match admin.state.change_override(&service, &addr, edit) {
        Ok(operator_override) => fresh(Changed {
            service,
            addr,
            operator_override,
        }),
        Err(OverrideError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(OverrideError::NotFound) => error(
            StatusCode::NOT_FOUND,
            format!("no instance of {service:?} at {addr:?}"),
        ),
    }
}

/// Why an action was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No token is configured: the dashboard is read-only.
    Disabled,
    /// No token, or not the configured one, was presented.
    Unauthorized,
}

impl Refusal {
    /// 403 or 401 (with `WWW-Authenticate: Bearer`), saying what to do.
    fn answer(self) -> Response {
        match self {
            Refusal::Disabled => error(
                StatusCode::FORBIDDEN,
                "operator actions are disabled: start the registry with --admin-token \
                 (or RPC_REGISTRY_ADMIN_TOKEN)",
            ),
            Refusal::Unauthorized => {
                let mut answer = error(
                    StatusCode::UNAUTHORIZED,
                    "operator actions need Authorization: Bearer <admin token>",
                );
                answer
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("a header value"));
                answer
            }
        }
    }
}

/// `Ok` when `headers` carry `Authorization: Bearer <token>` with the configured
/// token.
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), Refusal> {
    let token = token.ok_or(Refusal::Disabled)?;
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(presented) if same(presented.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(Refusal::Unauthorized),
    }
}

/// Compares in time that depends on the length alone, so a caller cannot find the
/// token a byte at a time by timing refusals.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The page, as HTML that is never cached (it is tiny, and a stale copy after an
/// upgrade would call an API that changed).
pub(super) fn page(html: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn actions_need_the_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(authorize(None, &headers), Err(Refusal::Disabled));
        assert_eq!(Refusal::Disabled.answer().status(), StatusCode::FORBIDDEN);
        assert_eq!(authorize(Some("t0k"), &headers), Err(Refusal::Unauthorized));
        assert_eq!(
            Refusal::Unauthorized.answer().status(),
            StatusCode::UNAUTHORIZED
        );
        headers.insert(AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(authorize(Some("t0k"), &headers), Err(Refusal::Unauthorized));
        headers.insert(AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert!(authorize(Some("t0k"), &headers).is_ok());
    }
}

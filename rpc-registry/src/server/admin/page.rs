//! The dashboard page: `dashboard.html`, compiled in. Vanilla JavaScript polls
//! `/api/services` once a second, redraws the table and an inline SVG chart of
//! calls/s per service, and sends operator actions with the token typed into the
//! page (kept in the tab's `sessionStorage` only). No build step, no CDN: the file is
//! what the browser runs.

use axum::response::Response;

/// The page's source.
const DASHBOARD: &str = include_str!("dashboard.html");

/// `GET /`.
pub(super) async fn dashboard() -> Response {
    super::api::page(DASHBOARD)
}

//! The operator dashboard (`/`) and the consumer portal (`/portal`), served by the admin
//! listener.
//!
//! Pages are rendered on the server as plain HTML with SVG charts, from the same functions that
//! answer the admin API, so a page and the API cannot disagree. Everything a page needs (CSS,
//! one small script) is compiled into the binary: no CDN, no Node step in `cargo build`. Tables,
//! sorting, filters and the time-range picker work without JavaScript; the script only adds
//! auto-refresh and submits the picker when it changes.
//!
//! Sign-in gives a server-side session behind an `HttpOnly`, `SameSite=Strict` cookie. Every
//! POST carries the session's CSRF token (sign-in forms a double-submitted one) and is refused
//! when the browser says it came from another site. The portal's sessions are a separate table
//! under a separate cookie, bound to one consumer, and re-checked against the key store on every
//! request, so a revoked key's session stops at once.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clientele_api::{ApiError, AppState};

mod admin;
mod ai;
mod assets;
mod chart;
mod deprecations;
mod findings;
mod governance;
mod html;
mod page;
mod portal;
mod reports;
mod session;

pub use session::{ADMIN_COOKIE, PORTAL_COOKIE, SESSION_TTL_MS};

/// What the dashboard and portal handlers share.
#[derive(Clone)]
pub struct Ui {
    pub app: AppState,
    admin_sessions: Arc<session::SessionTable>,
    portal_sessions: Arc<session::SessionTable>,
    /// Failed sign-ins per address, dashboard and portal together.
    throttle: Arc<session::Throttle>,
}

/// The dashboard and portal routes, to be merged into the admin router (which owns the
/// fallback for unknown paths).
pub fn router(app: AppState) -> Router {
    let ui = Ui {
        app,
        admin_sessions: Arc::default(),
        portal_sessions: Arc::default(),
        throttle: Arc::default(),
    };
    Router::new()
        .route("/", get(admin::overview))
        .route("/login", get(admin::login_form).post(admin::login))
        .route("/logout", post(admin::logout))
        .route("/consumers", get(admin::consumers))
        .route("/consumers/{id}", get(admin::consumer))
        .route("/routes", get(admin::routes))
        .route("/findings", get(findings::page))
        .route("/deprecations", get(deprecations::page))
        .route("/ai", get(ai::page))
        .route("/governance", get(governance::page))
        .route("/portfolio", get(reports::portfolio))
        .route("/reports/outreach", get(reports::outreach))
        .route("/reports/pricing", get(reports::pricing))
        .route("/reports/sla", get(reports::sla))
        .route("/reports/agents", get(reports::agents))
        .route("/portal", get(portal::home))
        .route("/portal/", get(portal::home))
        .route("/portal/login", get(portal::login_form).post(portal::login))
        .route("/portal/logout", post(portal::logout))
        .route("/portal/api/usage", get(portal::api_usage))
        .route("/ui/style.css", get(assets::style))
        .route("/ui/app.js", get(assets::script))
        .with_state(ui)
}

/// An error shown to a person as an HTML page.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
}

impl UiError {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> UiError {
        UiError {
            status,
            title: title.to_string(),
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> UiError {
        UiError::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError {
            status: StatusCode::from_u16(e.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            title: e.0.title.clone(),
            detail: e.0.detail.clone(),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = page::error_page(self.status, &self.title, &self.detail);
        html_response(self.status, body)
    }
}

/// Headers every page carries: no caching of private numbers, no framing, no inline script or
/// style, nothing from another origin.
pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    resp
}

pub(crate) fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A `303 See Other` to a local path, optionally setting cookies.
pub(crate) fn redirect(to: &str, cookies: &[String]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    secure_headers(h);
    resp
}

/// Whether the browser says a POST came from this site. Browsers send `Sec-Fetch-Site` and
/// `Origin` on form posts; a cross-site post is refused before anything else is looked at.
/// Clients that send neither (scripts, curl) cannot be tricked into posting by a page, and
/// still need the CSRF token.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        if origin == "null" {
            return false;
        }
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        // Behind a proxy that rewrites Host, the browser's host arrives as X-Forwarded-Host.
        let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
            .iter()
            .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
            .collect();
        // Without any host header (HTTP/2 carries it in the URI) there is nothing to compare;
        // Sec-Fetch-Site above and the CSRF token still apply.
        return hosts.is_empty() || hosts.iter().any(|h| origin_host.eq_ignore_ascii_case(h));
    }
    true
}

/// Cookies get `Secure` when the browser reached us over HTTPS through a TLS-terminating proxy.
/// Believing the header is safe here: it can only make the cookie stricter.
pub(crate) fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        assert!(same_origin(&h(&[])));
        assert!(same_origin(&h(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://127.0.0.1:8081"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&h(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&h(&[("origin", "null")])));
        assert!(same_origin(&h(&[
            ("host", "127.0.0.1:8081"),
            ("x-forwarded-host", "dash.example.com"),
            ("origin", "https://dash.example.com"),
        ])));
    }
}

//! Wiring of the exports: `GET /metrics` on the admin listener, and its authentication.
//!
//! `/metrics` needs a token like the rest of the admin API, because per-consumer series name
//! customers and their traffic. A scraper may present the admin token, or (better) the
//! `[exports.prometheus].scrape_token`, which opens `/metrics` and nothing else.
//! `allow_unauthenticated = true` serves it to anyone who can reach the admin listener.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clientele_api::ApiError;
use clientele_core::exports_config::PrometheusConfig;
use clientele_core::keys::secret_eq;
use clientele_export::Metrics;

#[derive(Clone)]
struct MetricsState {
    metrics: Arc<Metrics>,
    admin_token: Arc<str>,
    scrape_token: Option<Arc<str>>,
    open: bool,
}

/// The `/metrics` route, to merge into the admin router.
pub fn metrics_router(metrics: Arc<Metrics>, admin_token: &str, cfg: &PrometheusConfig) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(MetricsState {
            metrics,
            admin_token: admin_token.into(),
            scrape_token: cfg.scrape_token.as_deref().map(Into::into),
            open: cfg.allow_unauthenticated,
        })
}

async fn metrics_handler(State(s): State<MetricsState>, headers: HeaderMap) -> Response {
    if !s.open {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(given) = given else {
            return ApiError::unauthorized(
                "send the admin token or [exports.prometheus].scrape_token as Authorization: Bearer <token>",
            )
            .into_response();
        };
        // Both comparisons always run, so timing does not tell which token was close.
        let admin = secret_eq(given, &s.admin_token);
        let scrape = s
            .scrape_token
            .as_deref()
            .is_some_and(|t| secret_eq(given, t));
        if !(admin | scrape) {
            return ApiError::unauthorized("the token is wrong").into_response();
        }
    }
    let metrics = s.metrics.clone();
    // Rendering walks at most top_k consumer series; still, keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

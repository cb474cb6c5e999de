//! The admin and query API, served on `[admin].listen`.
//!
//! Every route but `/healthz` and `/v1/openapi.json` needs the admin token. Errors are
//! `application/problem+json` through [`error::ApiError`]. The OpenAPI document is generated
//! from the handlers' annotations ([`openapi::ApiDoc`]), so it cannot drift from the code.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use clientele_analytics::Engine;
use clientele_core::keys::KeyIndex;
use clientele_store::{ControlStore, EventStore};

pub mod contract;
pub mod error;
pub mod findings;
pub mod governance;
pub mod handlers;
pub mod ingest;
pub mod limits;
pub mod openapi;
pub mod otlp;
mod otlp_decode;
pub mod reports;

pub use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub control: Arc<dyn ControlStore>,
    pub events: Arc<dyn EventStore>,
    pub keys: Arc<KeyIndex>,
    pub admin_token: Arc<str>,
    /// The one event path (store, rollups, contracts, exporters) ingest submits to; its
    /// counters are the pipeline's.
    pub pipeline: clientele_app::Pipeline,
    /// Plan names from the config; consumers may only be put on these.
    pub plans: Arc<BTreeSet<String>>,
    pub started: Instant,
    pub engine: Arc<Engine>,
    /// Ingested events are refused when dated further ahead than this.
    pub max_future_ms: i64,
    /// Ingested events are refused when older than this (the raw event retention).
    pub max_age_ms: i64,
    /// The rollup archive's watermark: buckets before it are archived and final, so ingest
    /// refuses events dated before it whatever the retention says (it may have been raised).
    pub archived_until: Arc<std::sync::atomic::AtomicI64>,
    /// Consumers known to exist, so ingest creates missing ones without asking the store for
    /// every batch. `None` until first loaded. Never held across an await.
    pub known_consumers: Arc<std::sync::Mutex<Option<std::collections::HashSet<String>>>>,
    /// The gateway limiter's counters, for `/v1/status`.
    pub limiter: Arc<clientele_core::limits::LimiterStats>,
    /// `"local"` or `"redis"`.
    pub limiter_mode: &'static str,
    /// The detectors, the findings store and the alert hand-off.
    pub findings: Arc<findings::FindingsService>,
    /// Every API's OpenAPI contract and the usage drift is judged from.
    pub contracts: Arc<clientele_contract::Contracts>,
    /// Behavioural features per consumer (governance), fed from every stored event.
    pub governance: Arc<clientele_governance::FeatureStore>,
    /// `[otlp_ingest]`: where OTLP spans carry the consumer.
    pub otlp: clientele_core::config::OtlpIngestConfig,
    /// The allocator's committed bytes, for `/v1/status` (the binary knows its allocator).
    pub allocator_committed: fn() -> Option<u64>,
}

impl AppState {
    /// Reloads one consumer's keys into the gateway's index after a change to that consumer or
    /// one of its keys: the change applies to the very next request, at the cost of that
    /// consumer's keys rather than every key (which made creating n consumers O(n²)).
    pub async fn reload_consumer_keys(&self, consumer: &str) -> Result<(), ApiError> {
        let entries = self.control.consumer_key_entries(consumer).await?;
        self.keys.replace_consumer(consumer, entries);
        Ok(())
    }
}

/// The admin router. `max_body_bytes` bounds every request body.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let protected = Router::new()
        .route(
            "/v1/consumers",
            get(handlers::list_consumers).post(handlers::create_consumer),
        )
        .route(
            "/v1/consumers/{id}",
            get(handlers::get_consumer)
                .patch(handlers::patch_consumer)
                .delete(handlers::delete_consumer),
        )
        .route(
            "/v1/consumers/{id}/keys",
            get(handlers::list_keys).post(handlers::create_key),
        )
        .route("/v1/consumers/{id}/events", get(handlers::consumer_events))
        .route(
            "/v1/consumers/{id}/limits",
            get(limits::get_limits)
                .put(limits::put_limits)
                .delete(limits::delete_limits),
        )
        .route("/v1/limits", get(limits::overview))
        .route("/v1/keys/{key_id}", delete(handlers::revoke_key))
        .route("/v1/stats/consumers", get(handlers::stats_consumers))
        .route("/v1/stats/models", get(handlers::stats_models))
        .route("/v1/sessions", get(handlers::sessions))
        .route("/v1/stats/consumers/{id}", get(handlers::stats_consumer))
        .route("/v1/stats/routes", get(handlers::stats_routes))
        .route("/v1/events", axum::routing::post(handlers::ingest_events))
        .route(
            "/v1/otlp/v1/traces",
            axum::routing::post(otlp::ingest_traces),
        )
        .route("/v1/otlp/v1/logs", axum::routing::post(otlp::ingest_logs))
        .route("/v1/status", get(handlers::status))
        .route("/v1/findings", get(findings::list))
        .route(
            "/v1/findings/evaluate",
            axum::routing::post(findings::evaluate),
        )
        .route("/v1/alerts/deliveries", get(findings::deliveries))
        .route("/v1/apis/{name}/spec", get(contract::spec))
        .route(
            "/v1/apis/{name}/spec/reload",
            axum::routing::post(contract::reload),
        )
        .route("/v1/deprecations", get(contract::deprecations))
        .route("/v1/governance/risk", get(governance::risk))
        .route("/v1/governance/consumers/{id}", get(governance::features))
        .route(
            "/v1/releases",
            get(reports::list_releases).post(reports::create_release),
        )
        .route("/v1/portfolio", get(reports::portfolio_handler))
        .route("/v1/reports/outreach", get(reports::outreach_handler))
        .route("/v1/reports/pricing", get(reports::pricing_handler))
        .route("/v1/reports/sla", get(reports::sla_handler))
        .route("/v1/reports/deprecation", get(reports::deprecation_handler))
        .route("/v1/reports/agents", get(reports::agents_handler))
        .route("/v1/reports/digest", get(reports::digest_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .merge(protected)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::map_response(plain_errors_as_problems))
        .with_state(state)
}

/// axum's own body-limit answer is plain text; every error of this API is problem+json.
async fn plain_errors_as_problems(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE && !is_problem {
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            "the body is larger than [admin].max_body_bytes; send less per request",
        )
        .into_response();
    }
    response
}

/// Checks `Authorization: Bearer <admin token>` in constant time.
async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        None => Err(ApiError::unauthorized(
            "send the admin token as Authorization: Bearer <token> (see [admin].token or CLIENTELE_ADMIN_TOKEN)",
        )),
        Some(token) if clientele_core::keys::secret_eq(token, &state.admin_token) => {
            Ok(next.run(req).await)
        }
        Some(_) => Err(ApiError::unauthorized("the admin token is wrong")),
    }
}

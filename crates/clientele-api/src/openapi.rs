//! The OpenAPI document, generated from the handlers' annotations.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{contract, findings, governance, handlers, limits};

#[derive(OpenApi)]
#[openapi(
    info(title = "Clientele admin and query API", description = "Consumers, keys, events, per-consumer statistics, findings and alerts, OpenAPI contracts and deprecations, governance risk."),
    paths(
        handlers::healthz,
        handlers::status,
        handlers::create_consumer,
        handlers::list_consumers,
        handlers::get_consumer,
        handlers::patch_consumer,
        handlers::delete_consumer,
        handlers::create_key,
        handlers::list_keys,
        handlers::revoke_key,
        handlers::consumer_events,
        handlers::stats_consumers,
        handlers::stats_consumer,
        handlers::stats_routes,
        handlers::ingest_events,
        limits::get_limits,
        limits::put_limits,
        limits::delete_limits,
        limits::overview,
        findings::list,
        findings::evaluate,
        findings::deliveries,
        contract::spec,
        contract::reload,
        contract::deprecations,
        governance::risk,
        governance::features,
    ),
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

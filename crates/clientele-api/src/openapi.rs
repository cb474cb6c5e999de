//! The OpenAPI document, generated from the handlers' annotations.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{contract, findings, governance, handlers, limits, otlp, reports};

#[derive(OpenApi)]
#[openapi(
    info(title = "Clientele admin and query API", description = "Consumers, keys, events, per-consumer statistics, findings and alerts, OpenAPI contracts and deprecations, governance risk, release markers and reports."),
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
        handlers::stats_models,
        handlers::sessions,
        handlers::ingest_events,
        otlp::ingest_traces,
        otlp::ingest_logs,
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
        reports::create_release,
        reports::list_releases,
        reports::portfolio_handler,
        reports::outreach_handler,
        reports::pricing_handler,
        reports::sla_handler,
        reports::deprecation_handler,
        reports::agents_handler,
        reports::digest_handler,
    ),
    modifiers(&AdminToken, &StandardErrors)
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

/// The error answers every operation can give, listed so that clients (and schemathesis) find
/// them documented: 401 where the admin token is required, 400 for a malformed query or path
/// parameter, and 413/415/422 where there is a request body. All are problem+json.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        let text = || ObjectBuilder::new().schema_type(Type::String);
        components.schemas.insert(
            "Problem".into(),
            ObjectBuilder::new()
                .description(Some("An RFC 9457 problem (application/problem+json)."))
                .property("type", text())
                .property("title", text())
                .property("status", ObjectBuilder::new().schema_type(Type::Integer))
                .property("detail", text())
                .property("instance", text())
                .required("type")
                .required("title")
                .required("status")
                .into(),
        );
        let problem = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    clientele_core::problem::CONTENT_TYPE,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for op in operations.into_iter().flatten() {
                let mut add = |code: &str, what: &str| {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| problem(what).into());
                };
                if path != "/healthz" {
                    add("400", "a malformed parameter");
                }
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                if secured {
                    add("401", "missing or wrong admin token");
                }
                if op.request_body.is_some() {
                    add("413", "body over [admin].max_body_bytes");
                    add("415", "the body's Content-Type is not the one documented");
                    add(
                        "422",
                        "the body is well-formed but its values are not acceptable",
                    );
                }
            }
        }
    }
}

pub async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

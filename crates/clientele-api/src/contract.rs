//! Contract endpoints: spec versions and reload, and the deprecation report.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
// The crate's own extractors, so that a malformed query or body is answered in
// problem+json like everywhere else.
use crate::error::{ApiError, Json, Query};

/// Saves an API's in-memory spec versions to the store (a version already there keeps its first
/// load time) and replaces the in-memory history with the stored one, so the history survives
/// restarts. A store error is logged; the in-memory history stays.
pub async fn persist_spec_versions(
    control: &dyn clientele_store::ControlStore,
    contract: &clientele_contract::ApiContract,
) {
    for v in contract.history() {
        let stored = clientele_store::StoredSpecVersion {
            api: contract.api.clone(),
            hash: v.hash,
            loaded_at_ms: v.loaded_at_ms,
            openapi: v.openapi,
            operations: v.operations as u64,
        };
        if let Err(e) = control.record_spec_version(stored).await {
            tracing::warn!(api = %contract.api, error = %e, "cannot store the spec version");
            return;
        }
    }
    match control.spec_versions(&contract.api).await {
        Ok(versions) => contract.set_history(
            versions
                .into_iter()
                .map(|v| clientele_contract::SpecVersion {
                    hash: v.hash,
                    loaded_at_ms: v.loaded_at_ms,
                    openapi: v.openapi,
                    operations: v.operations as usize,
                })
                .collect(),
        ),
        Err(e) => tracing::warn!(api = %contract.api, error = %e, "cannot read spec versions"),
    }
}

/// How far back a reload looks for consumers of removed or changed operations.
const IMPACT_DAYS: i64 = 30;

/// `POST /v1/apis/{name}/spec/reload`: re-reads the spec; a bad one keeps the last good spec
/// and answers 422 with the reason (file and place).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReloadQuery {
    /// How far back callers of removed or changed operations are looked for, in days
    /// (1-400; default 30).
    pub impact_days: Option<i64>,
}

#[utoipa::path(post, path = "/v1/apis/{name}/spec/reload", params(("name" = String, Path, description = "the API's name in the config"), ReloadQuery),
    responses(
        (status = 200, body = Object, description = "the change impact: `{api, changed, hash, removed, modified, impacted_consumers: {consumer: calls}, impact_days}`"),
        (status = 404, description = "the API has no openapi spec"),
        (status = 422, description = "the new spec is invalid (file and JSON pointer in `detail`); the last good spec keeps serving")),
    security(("admin_token" = [])))]
pub async fn reload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ReloadQuery>,
) -> Result<Json<Value>, ApiError> {
    let impact_days = q.impact_days.unwrap_or(IMPACT_DAYS);
    if !(1..=400).contains(&impact_days) {
        return Err(ApiError::bad_request(format!(
            "impact_days: {impact_days} must be between 1 and 400"
        )));
    }
    if state.contracts.api(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "api {name} has no openapi spec in the config"
        )));
    }
    let contracts = state.contracts.clone();
    let api = name.clone();
    // Reading and indexing a big spec is blocking work; keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || contracts.reload(&name, impact_days))
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                format!("reload task failed: {e}"),
            )
        })?;
    if let Some(contract) = state.contracts.api(&api) {
        persist_spec_versions(&*state.control, contract).await;
    }
    match result {
        Ok(report) => Ok(Json(json!(report))),
        Err(reason) => Err(ApiError::unprocessable(reason)),
    }
}

/// `GET /v1/apis/{name}/spec`: the current version, its history and the last reload error.
#[utoipa::path(get, path = "/v1/apis/{name}/spec", params(("name" = String, Path, description = "the API's name in the config")),
    responses(
        (status = 200, body = Object, description = "`{api, path, hash, openapi, title, operations, last_error, history: [{hash, loaded_at, openapi, operations}], validation: {checked, dropped, too_large, violations}}`; the history is kept in the store"),
        (status = 404, description = "the API has no openapi spec")),
    security(("admin_token" = [])))]
pub async fn spec(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(contract) = state.contracts.api(&name) else {
        return Err(ApiError::not_found(format!(
            "api {name} has no openapi spec in the config"
        )));
    };
    let current = contract.current();
    let history: Vec<Value> = contract
        .history()
        .into_iter()
        .map(|v| {
            json!({
                "hash": v.hash,
                "loaded_at": clientele_core::time::format_ts(v.loaded_at_ms),
                "openapi": v.openapi,
                "operations": v.operations,
            })
        })
        .collect();
    Ok(Json(json!({
        "api": name,
        "path": contract.path.display().to_string(),
        "hash": current.hash,
        "openapi": current.openapi_version,
        "title": current.title,
        "operations": current.operations.len(),
        "last_error": contract.last_error(),
        "history": history,
        // Schema-check pipeline counters (all APIs): samples checked, dropped on a full queue,
        // bodies over max_body_bytes, violations recorded.
        "validation": {
            "checked": state.contracts.validation.checked.load(Ordering::Relaxed),
            "dropped": state.contracts.validation.dropped.load(Ordering::Relaxed),
            "too_large": state.contracts.validation.too_large.load(Ordering::Relaxed),
            "violations": state.contracts.validation.violations.load(Ordering::Relaxed),
        },
    })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeprecationQuery {
    /// Only calls since this time (RFC 3339 or epoch ms); default: all usage seen.
    pub from: Option<String>,
}

/// `GET /v1/deprecations`: each deprecated operation, who still calls it, how much, when last,
/// and each caller's migration progress to the replacement.
#[utoipa::path(get, path = "/v1/deprecations", params(DeprecationQuery),
    responses(
        (status = 200, body = Object, description = "`{deprecations: [{api, route, operation_id, pointer, replaced_by, source: spec|config, sunset, consumers: [{consumer, calls, last_call, replacement_calls, migration_progress}]}]}`"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn deprecations(
    State(state): State<AppState>,
    Query(q): Query<DeprecationQuery>,
) -> Result<Json<Value>, ApiError> {
    let from_ms = match q.from.as_deref() {
        Some(s) => clientele_core::time::parse_ts(s).map_err(ApiError::bad_request)?,
        None => i64::MIN,
    };
    Ok(Json(
        json!({ "deprecations": state.contracts.deprecations(from_ms) }),
    ))
}

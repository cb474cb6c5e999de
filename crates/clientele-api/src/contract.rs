//! Contract endpoints: spec versions and reload, and the deprecation report.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// How far back a reload looks for consumers of removed or changed operations.
const IMPACT_DAYS: i64 = 30;

/// `POST /v1/apis/{name}/spec/reload`: re-reads the spec; a bad one keeps the last good spec
/// and answers 422 with the reason (file and place).
pub async fn reload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.contracts.api(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "api {name} has no openapi spec in the config"
        )));
    }
    let contracts = state.contracts.clone();
    // Reading and indexing a big spec is blocking work; keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || contracts.reload(&name, IMPACT_DAYS))
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                format!("reload task failed: {e}"),
            )
        })?;
    match result {
        Ok(report) => Ok(Json(json!(report))),
        Err(reason) => Err(ApiError::unprocessable(reason)),
    }
}

/// `GET /v1/apis/{name}/spec`: the current version, its history and the last reload error.
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
    })))
}

#[derive(Debug, Deserialize)]
pub struct DeprecationQuery {
    pub from: Option<String>,
}

/// `GET /v1/deprecations`: each deprecated operation, who still calls it, how much, when last,
/// and each caller's migration progress to the replacement.
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

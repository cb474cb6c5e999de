//! Request handlers. Each is annotated for the generated OpenAPI document.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use clientele_core::config::valid_name;
use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::event::Event;
use clientele_core::keys;
use clientele_core::limits::LimitOverride;
use clientele_core::time::{format_ts, now_ms, parse_ts, parse_ts_value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use clientele_analytics::{Query as AQuery, Rollup};
use clientele_store::{EventQuery, StoreError};

use crate::ingest::{Rejected, TimeBounds, parse_batch_with};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, Json, Query};

const DAY_MS: i64 = 86_400_000;

// ----- shapes -----

/// A consumer: whoever makes requests with one of its keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerOut {
    pub id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// RFC 3339.
    pub created_at: String,
    /// Limits set on this consumer on top of its plan's (`GET /v1/consumers/{id}/limits`
    /// shows the effective ones and the usage).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<LimitOverride>,
}

impl From<Consumer> for ConsumerOut {
    fn from(c: Consumer) -> Self {
        ConsumerOut {
            id: c.id,
            name: c.name,
            plan: c.plan,
            team: c.team,
            use_case: c.use_case,
            metadata: c.metadata,
            created_at: format_ts(c.created_at_ms),
            limits: c.limits,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsumer {
    /// 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.'.
    pub id: String,
    pub name: Option<String>,
    /// Must be a plan defined in the config.
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Limits on top of the plan's: `rate_per_second`, `burst`, `quota_per_day`,
    /// `quota_per_month`, `routes` (`{"GET /search": {"rate_per_second": 1, "burst": 5}}`).
    #[schema(value_type = Option<Object>)]
    pub limits: Option<LimitOverride>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerList {
    pub consumers: Vec<ConsumerOut>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: Option<String>,
    /// RFC 3339 or epoch milliseconds; must be in the future.
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Value>,
    /// An existing key to import (at least 16 characters), for teams migrating from another
    /// gateway. Leave out to generate one.
    pub key: Option<String>,
}

/// A new key. `key` is shown here and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    pub key_id: String,
    pub key: String,
    pub prefix: String,
    pub consumer: String,
    pub name: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub imported: bool,
}

/// A key as listed: no plaintext, no hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyOut {
    pub key_id: String,
    pub consumer: String,
    pub name: Option<String>,
    pub prefix: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub imported: bool,
}

impl KeyOut {
    fn from_key(k: ApiKey, now: i64) -> KeyOut {
        let status = if k.revoked_at_ms.is_some() {
            "revoked"
        } else if k.expires_at_ms.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        };
        KeyOut {
            key_id: k.key_id,
            consumer: k.consumer,
            name: k.name,
            prefix: k.prefix,
            status: status.to_string(),
            created_at: format_ts(k.created_at_ms),
            expires_at: k.expires_at_ms.map(format_ts),
            revoked_at: k.revoked_at_ms.map(format_ts),
            imported: k.imported,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyOut>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    /// RFC 3339 or epoch ms; default 24 h before `to`.
    pub from: Option<String>,
    /// RFC 3339 or epoch ms; default now.
    pub to: Option<String>,
    pub api: Option<String>,
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    /// `2xx`, `4xx`, `5xx`, or one status such as `429`.
    pub status: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<usize>,
}

/// One raw event, for drill-down.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    pub id: String,
    pub ts: String,
    pub consumer: Option<String>,
    pub key_id: Option<String>,
    pub api: Option<String>,
    pub method: String,
    pub path: String,
    pub route: String,
    pub status: u16,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    pub end_user: Option<String>,
    pub trace_id: Option<String>,
    pub outcome: String,
    /// WebSocket connections: the first Close frame's code (1000 normal, 1001 going away, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// For LLM traffic: the model that answered, the tokens it reported, and their cost
    /// (`null` when the model has no price).
    pub model: Option<String>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub cost_usd: Option<f64>,
    /// The parts of `tokens_in` read from (`tokens_cached`) and written to
    /// (`tokens_cache_write`) the provider's prompt cache, and of `tokens_out` spent reasoning;
    /// left out when the provider did not report them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_cached: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_cache_write: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_reasoning: Option<u64>,
    /// The call's fingerprint (16 hex digits): identical calls (method, path, query and body)
    /// share it, which is how `agent_loop` tells a loop from a refining query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_hash: Option<String>,
    /// The client's TLS ClientHello fingerprint, where the gateway terminated TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_fp: Option<String>,
}

impl From<Event> for EventOut {
    fn from(e: Event) -> Self {
        EventOut {
            id: e.id,
            ts: format_ts(e.ts_ms),
            consumer: e.consumer,
            key_id: e.key_id,
            api: e.api,
            method: e.method,
            path: e.path,
            route: e.route,
            status: e.status,
            latency_ms: e.latency_ms,
            upstream_latency_ms: e.upstream_latency_ms,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            client_ip: e.client_ip,
            user_agent: e.user_agent,
            session_id: e.session_id,
            end_user: e.end_user,
            trace_id: e.trace_id,
            outcome: e.outcome.as_str().to_string(),
            close_code: e.close_code,
            model: e.model,
            tokens_in: e.tokens_in,
            tokens_out: e.tokens_out,
            cost_usd: e.cost_usd,
            tokens_cached: e.tokens_cached,
            tokens_cache_write: e.tokens_cache_write,
            tokens_reasoning: e.tokens_reasoning,
            call_hash: e.call_hash.map(|h| format!("{h:016x}")),
            tls_fp: e.tls_fp,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventOut>,
}

/// One consumer's totals over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerStats {
    pub consumer: String,
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
    pub requests: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub rate_limited: u64,
    /// Responses with status >= 400 over requests.
    pub error_rate: f64,
    /// Latency percentiles within 1% relative error; null without requests.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// The cost of the priced requests; those of models without a price are counted in
    /// `unpriced_requests` instead of being taken as free.
    pub cost_usd: f64,
    pub unpriced_requests: u64,
    /// The parts of `tokens_in` read from (`tokens_cached`) and written to
    /// (`tokens_cache_write`) the providers' prompt caches, and of `tokens_out` spent
    /// reasoning, as the providers reported them. Counted by whole hours (the model table's).
    pub tokens_cached: u64,
    pub tokens_cache_write: u64,
    pub tokens_reasoning: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerStatsList {
    pub from: String,
    pub to: String,
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Pipeline and key-index state, for operators.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub uptime_s: u64,
    /// Keys in the gateway's in-memory index (revoked ones included).
    pub keys_loaded: usize,
    /// Events handed from the gateway to the pipeline.
    pub events_offered: u64,
    /// Events dropped because the pipeline fell behind. Traffic was never slowed for them.
    pub events_dropped: u64,
    pub events_stored: u64,
    pub events_store_errors: u64,
    /// Rollups held in memory by the analytics engine, all tiers.
    pub rollups_series: usize,
    pub rollups_consumer: usize,
    pub rollup_buckets: usize,
    /// `local` (per node) or `redis` (one limit across every node sharing the Redis).
    pub limiter_mode: String,
    pub limiter_allowed: u64,
    pub limiter_refused: u64,
    /// Calls to Redis that failed or timed out.
    pub limiter_redis_errors: u64,
    /// Requests allowed (open) or refused with 503 (closed) because Redis could not be asked.
    pub limiter_failed_open: u64,
    pub limiter_failed_closed: u64,
    pub limiter_redis_up: bool,
    pub memory: MemoryStatus,
}

/// What the process holds in memory and which parts hold it, so that an operator (and the
/// soak script) can tell live state from the allocator's retention.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryStatus {
    /// Resident set of the process (Linux; null elsewhere).
    pub rss_bytes: Option<u64>,
    /// Memory the allocator holds from the system (mimalloc's committed bytes; null with the
    /// system allocator of a `system-alloc` build). Above the parts below by what it keeps
    /// for reuse and by everything not counted there (connections, buffers in flight).
    pub allocator_committed_bytes: Option<u64>,
    /// Governance features: counters and sketches of every consumer kept (fixed per consumer).
    pub governance_bytes: u64,
    pub governance_consumers: u64,
    /// Encoded closed rollup buckets in the read cache, and its budget
    /// (`[analytics].rollup_cache_mib`); 0 without rollups on disk.
    pub rollup_cache_bytes: u64,
    pub rollup_cache_budget_bytes: u64,
    /// Sessions kept for `GET /v1/sessions` (at most 200,000).
    pub sessions: u64,
    /// LLM usage rows kept (per hour, consumer and model).
    pub model_rows: u64,
}

/// The resident set from `/proc/self/status` (`VmRSS`, in KiB).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

// ----- helpers -----

fn validate_optional_text(field: &str, v: &Option<String>) -> Result<(), ApiError> {
    if let Some(s) = v {
        if s.len() > 256 || s.chars().any(char::is_control) {
            return Err(ApiError::unprocessable(format!(
                "{field} must be at most 256 characters without control characters"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_limits(limits: &Option<LimitOverride>) -> Result<(), ApiError> {
    match limits.as_ref().map(LimitOverride::validate) {
        Some(Err(e)) => Err(ApiError::unprocessable(format!("limits: {e}"))),
        _ => Ok(()),
    }
}

fn check_plan(state: &AppState, plan: &Option<String>) -> Result<(), ApiError> {
    if let Some(p) = plan {
        if !state.plans.contains(p) {
            let known: Vec<&str> = state.plans.iter().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no plans are defined; add a [plans.NAME] section to the config".to_string()
            } else {
                format!("known plans: {}", known.join(", "))
            };
            return Err(ApiError::unprocessable(format!(
                "unknown plan {p:?}; {hint}"
            )));
        }
    }
    Ok(())
}

pub fn window(from: &Option<String>, to: &Option<String>) -> Result<(i64, i64), ApiError> {
    let to_ms = match to {
        Some(t) => parse_ts(t).map_err(|e| ApiError::bad_request(format!("to: {e}")))?,
        None => now_ms(),
    };
    let from_ms = match from {
        Some(f) => parse_ts(f).map_err(|e| ApiError::bad_request(format!("from: {e}")))?,
        None => to_ms - DAY_MS,
    };
    if from_ms >= to_ms {
        return Err(ApiError::bad_request("from must be before to"));
    }
    Ok((from_ms, to_ms))
}

fn parse_status_filter(s: &str) -> Result<(u16, u16), ApiError> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(class) = s.strip_suffix("xx") {
        if let Ok(c @ 1..=5) = class.parse::<u16>() {
            return Ok((c * 100, c * 100 + 99));
        }
    }
    match s.parse::<u16>() {
        Ok(code @ 100..=599) => Ok((code, code)),
        _ => Err(ApiError::bad_request(format!(
            "status {s:?}: use a class such as 5xx or a code such as 429"
        ))),
    }
}

pub(crate) async fn existing_consumer(state: &AppState, id: &str) -> Result<Consumer, ApiError> {
    state
        .control
        .get_consumer(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no consumer has id {id:?}")))
}

// ----- handlers -----

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)), security(("admin_token" = [])))]
pub async fn status(State(state): State<AppState>) -> Json<Status> {
    let p = state.pipeline.stats().snapshot();
    let e = state.engine.stats();
    let l = &state.limiter;
    Json(Status {
        uptime_s: state.started.elapsed().as_secs(),
        keys_loaded: state.keys.len(),
        events_offered: p.offered,
        events_dropped: p.dropped,
        events_stored: p.stored,
        events_store_errors: p.store_errors,
        rollups_series: e.series_rollups,
        rollups_consumer: e.consumer_rollups,
        rollup_buckets: e.buckets,
        limiter_mode: state.limiter_mode.to_string(),
        limiter_allowed: l.allowed.load(Ordering::Relaxed),
        limiter_refused: l.refused.load(Ordering::Relaxed),
        limiter_redis_errors: l.redis_errors.load(Ordering::Relaxed),
        limiter_failed_open: l.failed_open.load(Ordering::Relaxed),
        limiter_failed_closed: l.failed_closed.load(Ordering::Relaxed),
        limiter_redis_up: l.redis_up.load(Ordering::Relaxed),
        memory: memory_status(&state),
    })
}

fn memory_status(state: &AppState) -> MemoryStatus {
    let (governance_consumers, governance_bytes) = state.governance.memory();
    let (cache, budget) = state.engine.rollup_cache_bytes().unwrap_or((0, 0));
    MemoryStatus {
        rss_bytes: rss_bytes(),
        allocator_committed_bytes: (state.allocator_committed)(),
        governance_bytes: governance_bytes as u64,
        governance_consumers: governance_consumers as u64,
        rollup_cache_bytes: cache as u64,
        rollup_cache_budget_bytes: budget as u64,
        sessions: state.engine.sessions.held().0 as u64,
        model_rows: state.engine.models.rows_held() as u64,
    }
}

#[utoipa::path(post, path = "/v1/consumers", request_body = CreateConsumer,
    responses((status = 201, body = ConsumerOut), (status = 409, description = "duplicate id"), (status = 422, description = "invalid field or unknown plan")),
    security(("admin_token" = [])))]
pub async fn create_consumer(
    State(state): State<AppState>,
    Json(body): Json<CreateConsumer>,
) -> Result<(StatusCode, Json<ConsumerOut>), ApiError> {
    if !valid_name(&body.id) {
        return Err(ApiError::unprocessable(format!(
            "id {:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'",
            body.id
        )));
    }
    validate_optional_text("name", &body.name)?;
    validate_optional_text("team", &body.team)?;
    validate_optional_text("use_case", &body.use_case)?;
    check_plan(&state, &body.plan)?;
    check_limits(&body.limits)?;
    let consumer = Consumer {
        id: body.id,
        name: body.name,
        plan: body.plan,
        team: body.team,
        use_case: body.use_case,
        metadata: body.metadata.unwrap_or_default(),
        created_at_ms: now_ms(),
        limits: body.limits.filter(|l| !l.is_empty()),
    };
    let created = state.control.create_consumer(consumer).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

#[utoipa::path(get, path = "/v1/consumers", responses((status = 200, body = ConsumerList)), security(("admin_token" = [])))]
pub async fn list_consumers(State(state): State<AppState>) -> Result<Json<ConsumerList>, ApiError> {
    let consumers = state.control.list_consumers().await?;
    Ok(Json(ConsumerList {
        consumers: consumers.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/consumers/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ConsumerOut), (status = 404)), security(("admin_token" = [])))]
pub async fn get_consumer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConsumerOut>, ApiError> {
    Ok(Json(existing_consumer(&state, &id).await?.into()))
}

/// JSON merge patch (RFC 7396) of `name`, `plan`, `team`, `use_case` and `metadata`:
/// a field set to null is cleared; `metadata` keys set to null are removed.
#[utoipa::path(patch, path = "/v1/consumers/{id}", params(("id" = String, Path)), request_body = Object,
    responses((status = 200, body = ConsumerOut), (status = 404), (status = 422)), security(("admin_token" = [])))]
pub async fn patch_consumer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(patch): Json<Map<String, Value>>,
) -> Result<Json<ConsumerOut>, ApiError> {
    let mut consumer = existing_consumer(&state, &id).await?;
    for (field, value) in patch {
        let text = |v: &Value| -> Result<Option<String>, ApiError> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s.clone())),
                _ => Err(ApiError::unprocessable(format!(
                    "{field} must be a string or null"
                ))),
            }
        };
        match field.as_str() {
            "name" => consumer.name = text(&value)?,
            "plan" => consumer.plan = text(&value)?,
            "team" => consumer.team = text(&value)?,
            "use_case" => consumer.use_case = text(&value)?,
            "limits" => {
                // Replaced whole rather than merged: limits are read as one policy.
                consumer.limits = if value.is_null() {
                    None
                } else {
                    let l: LimitOverride = serde_json::from_value(value)
                        .map_err(|e| ApiError::unprocessable(format!("limits: {e}")))?;
                    check_limits(&Some(l.clone()))?;
                    Some(l).filter(|l| !l.is_empty())
                };
            }
            "metadata" => match value {
                Value::Null => consumer.metadata.clear(),
                Value::Object(m) => {
                    for (k, v) in m {
                        if v.is_null() {
                            consumer.metadata.remove(&k);
                        } else {
                            consumer.metadata.insert(k, v);
                        }
                    }
                }
                _ => {
                    return Err(ApiError::unprocessable(
                        "metadata must be an object or null",
                    ));
                }
            },
            "id" | "created_at" => {
                return Err(ApiError::unprocessable(format!(
                    "{field} cannot be changed"
                )));
            }
            other => {
                return Err(ApiError::unprocessable(format!(
                    "unknown field {other:?}; fields are name, plan, team, use_case, metadata and limits"
                )));
            }
        }
    }
    validate_optional_text("name", &consumer.name)?;
    validate_optional_text("team", &consumer.team)?;
    validate_optional_text("use_case", &consumer.use_case)?;
    check_plan(&state, &consumer.plan)?;
    let updated = state.control.update_consumer(consumer).await?;
    state.reload_consumer_keys(&updated.id).await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(delete, path = "/v1/consumers/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "deleted; its keys are revoked"), (status = 404)), security(("admin_token" = [])))]
pub async fn delete_consumer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_consumer(&id, now_ms()).await?;
    state.reload_consumer_keys(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/consumers/{id}/keys", params(("id" = String, Path)), request_body = CreateKey,
    responses((status = 201, body = KeyCreated), (status = 404), (status = 409, description = "key already registered"),
        (status = 422, description = "key too short or expiry in the past")),
    security(("admin_token" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    // The store refuses a key for an unknown consumer (404) in the same transaction that stores
    // it, so no separate lookup is needed here.
    validate_optional_text("name", &body.name)?;
    let now = now_ms();
    let expires_at_ms = match &body.expires_at {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t = parse_ts_value(v)
                .map_err(|e| ApiError::unprocessable(format!("expires_at: {e}")))?;
            if t <= now {
                return Err(ApiError::unprocessable(
                    "expires_at is in the past; give a future time",
                ));
            }
            Some(t)
        }
    };
    let (key, imported) = match body.key {
        Some(k) => {
            if k.len() < keys::MIN_IMPORTED_KEY_LEN {
                return Err(ApiError::unprocessable(format!(
                    "an imported key must be at least {} characters; short keys are guessable",
                    keys::MIN_IMPORTED_KEY_LEN
                )));
            }
            if !keys::key_syntax_ok(&k) {
                return Err(ApiError::unprocessable(format!(
                    "an imported key must be at most {} printable ASCII characters without spaces",
                    keys::MAX_KEY_LEN
                )));
            }
            (k, true)
        }
        None => (keys::generate_key(), false),
    };
    let hash = state.keys.hasher().hash(&key);
    let stored = ApiKey {
        key_id: keys::generate_key_id(),
        consumer: id,
        name: body.name,
        prefix: keys::visible_prefix(&key),
        hash: hex::encode(hash),
        created_at_ms: now,
        expires_at_ms,
        revoked_at_ms: None,
        imported,
    };
    let stored = state.control.create_key(stored).await?;
    state.reload_consumer_keys(&stored.consumer).await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            key_id: stored.key_id,
            key,
            prefix: stored.prefix,
            consumer: stored.consumer,
            name: stored.name,
            created_at: format_ts(stored.created_at_ms),
            expires_at: stored.expires_at_ms.map(format_ts),
            imported,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/consumers/{id}/keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyList), (status = 404)), security(("admin_token" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    existing_consumer(&state, &id).await?;
    let now = now_ms();
    let keys = state.control.list_keys(&id).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(|k| KeyOut::from_key(k, now)).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/keys/{key_id}", params(("key_id" = String, Path)),
    responses((status = 200, body = KeyOut, description = "revoked; refused by the gateway from now on"), (status = 404)),
    security(("admin_token" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyOut>, ApiError> {
    let now = now_ms();
    let key = state.control.revoke_key(&key_id, now).await?;
    state.reload_consumer_keys(&key.consumer).await?;
    Ok(Json(KeyOut::from_key(key, now)))
}

#[utoipa::path(get, path = "/v1/consumers/{id}/events", params(("id" = String, Path), EventsQuery),
    responses((status = 200, body = EventList), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn consumer_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    existing_consumer(&state, &id).await?;
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let status = q.status.as_deref().map(parse_status_filter).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let events = state
        .events
        .recent_events(&EventQuery {
            consumer: id,
            from_ms,
            to_ms,
            status,
            limit,
        })
        .await?;
    Ok(Json(EventList {
        events: events.into_iter().map(Into::into).collect(),
    }))
}

/// Consumers allowed by the plan/team/use_case filters, or `None` when no filter is set.
async fn filtered_consumers(
    state: &AppState,
    q: &WindowQuery,
) -> Result<(Option<HashSet<String>>, HashMap<String, Consumer>), ApiError> {
    let all = state.control.list_consumers().await?;
    let by_id: HashMap<String, Consumer> = all.into_iter().map(|c| (c.id.clone(), c)).collect();
    if q.plan.is_none() && q.team.is_none() && q.use_case.is_none() {
        return Ok((None, by_id));
    }
    let keep = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
    };
    let allowed = by_id
        .values()
        .filter(|c| {
            keep(&q.plan, &c.plan) && keep(&q.team, &c.team) && keep(&q.use_case, &c.use_case)
        })
        .map(|c| c.id.clone())
        .collect();
    Ok((Some(allowed), by_id))
}

fn percentiles(r: &Rollup) -> (Option<f64>, Option<f64>, Option<f64>) {
    let [p50, p95, p99] = r.quantiles([0.5, 0.95, 0.99]);
    (p50.map(round3), p95.map(round3), p99.map(round3))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn consumer_stats(
    id: String,
    c: Option<&Consumer>,
    r: &Rollup,
    parts: Option<&clientele_analytics::models::ModelUsage>,
) -> ConsumerStats {
    let (p50_ms, p95_ms, p99_ms) = percentiles(r);
    let k = &r.counters;
    ConsumerStats {
        plan: c.and_then(|c| c.plan.clone()),
        team: c.and_then(|c| c.team.clone()),
        use_case: c.and_then(|c| c.use_case.clone()),
        consumer: id,
        requests: k.requests,
        errors_4xx: k.s4xx,
        errors_5xx: k.s5xx,
        rate_limited: k.rate_limited,
        error_rate: k.error_rate(),
        p50_ms,
        p95_ms,
        p99_ms,
        request_bytes: k.request_bytes,
        response_bytes: k.response_bytes,
        tokens_in: k.tokens_in,
        tokens_out: k.tokens_out,
        cost_usd: k.cost_usd,
        unpriced_requests: k.unpriced,
        tokens_cached: parts.map_or(0, |p| p.tokens_cached),
        tokens_cache_write: parts.map_or(0, |p| p.tokens_cache_write),
        tokens_reasoning: parts.map_or(0, |p| p.tokens_reasoning),
    }
}

#[utoipa::path(get, path = "/v1/stats/consumers", params(WindowQuery),
    responses((status = 200, body = ConsumerStatsList), (status = 400)), security(("admin_token" = [])))]
pub async fn stats_consumers(
    State(state): State<AppState>,
    Query(q): Query<WindowQuery>,
) -> Result<Json<ConsumerStatsList>, ApiError> {
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let (allowed, by_id) = filtered_consumers(&state, &q).await?;
    let query = AQuery {
        from_ms,
        to_ms,
        api: q.api.clone(),
        consumers: allowed,
    };
    let engine = state.engine.clone();
    let (rows, parts) = tokio::task::spawn_blocking(move || {
        (
            engine.consumer_totals(&query),
            engine.models.per_consumer(from_ms, to_ms),
        )
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    let consumers = rows
        .into_iter()
        .map(|row| {
            let c = by_id.get(&row.consumer);
            let p = parts.get(&row.consumer);
            consumer_stats(row.consumer, c, &row.rollup, p)
        })
        .collect();
    Ok(Json(ConsumerStatsList {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        consumers,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ModelStatsQuery {
    /// RFC 3339 or epoch ms; default 24 h before `to`. Counted by whole hours.
    pub from: Option<String>,
    /// RFC 3339 or epoch ms; default now.
    pub to: Option<String>,
    /// Only this consumer's rows.
    pub consumer: Option<String>,
}

/// One model's use by one consumer in the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStats {
    pub model: String,
    pub consumer: String,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// The parts of `tokens_in` read from and written to the prompt cache, and of
    /// `tokens_out` spent reasoning (0 where the provider reported none); each is priced at
    /// the model's own rate for it when the price book has one.
    pub tokens_cached: u64,
    pub tokens_cache_write: u64,
    pub tokens_reasoning: u64,
    /// `null` when the model has no price (see `unpriced_requests`): unknown, not free.
    pub cost_usd: Option<f64>,
    /// Requests whose model had no price, so their cost is not in `cost_usd`.
    pub unpriced_requests: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatsList {
    pub from: String,
    pub to: String,
    pub models: Vec<ModelStats>,
}

#[utoipa::path(get, path = "/v1/stats/models", params(ModelStatsQuery),
    responses((status = 200, body = ModelStatsList), (status = 400)), security(("admin_token" = [])))]
pub async fn stats_models(
    State(state): State<AppState>,
    Query(q): Query<ModelStatsQuery>,
) -> Result<Json<ModelStatsList>, ApiError> {
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let engine = state.engine.clone();
    let consumer = q.consumer.clone();
    let rows = tokio::task::spawn_blocking(move || {
        engine.models.query(from_ms, to_ms, consumer.as_deref())
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    let models = rows
        .into_iter()
        .map(|(model, consumer, u)| ModelStats {
            model,
            consumer,
            requests: u.requests,
            tokens_in: u.tokens_in,
            tokens_out: u.tokens_out,
            tokens_cached: u.tokens_cached,
            tokens_cache_write: u.tokens_cache_write,
            tokens_reasoning: u.tokens_reasoning,
            cost_usd: u.cost_usd,
            unpriced_requests: u.unpriced_requests,
        })
        .collect();
    Ok(Json(ModelStatsList {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        models,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// RFC 3339 or epoch ms; default 24 h before `to`.
    pub from: Option<String>,
    /// RFC 3339 or epoch ms; default now.
    pub to: Option<String>,
    pub consumer: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<usize>,
}

/// One session: the client's session header, or inferred from 30-minute idle gaps.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionOut {
    pub session_id: String,
    pub consumer: String,
    pub started: String,
    pub ended: String,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// `null` while no request of the session had a price.
    pub cost_usd: Option<f64>,
    /// In a session the client declared (session header): distinct calls to the same method
    /// and path made 5 times or more. The query and body are not compared yet, so this is a
    /// hint of a loop, not proof.
    pub loops: u32,
    /// Whether the id was inferred from idle gaps.
    pub inferred: bool,
    /// The most consecutive calls to one endpoint (a recursive or refining chain); `null`
    /// for a session of no calls.
    pub longest_chain: Option<ChainOut>,
    /// `agent`, `service` or `interactive`, from the session's pattern and user agent: a
    /// browser is interactive, an agent framework an agent; bursts of 10-60 calls (at most
    /// 2 s apart) each followed by 30 s of silence, or LLM calls in bursts, an agent; a
    /// steady pace or an HTTP library a service; anything else interactive.
    pub class: String,
    /// Why the session has its class, in words.
    pub class_reason: String,
}

/// A run of consecutive calls to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainOut {
    /// `METHOD /route`.
    pub endpoint: String,
    pub calls: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionOut>,
}

#[utoipa::path(get, path = "/v1/sessions", params(SessionsQuery),
    responses((status = 200, body = SessionList), (status = 400)), security(("admin_token" = [])))]
pub async fn sessions(
    State(state): State<AppState>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let engine = state.engine.clone();
    let consumer = q.consumer.clone();
    let rows = tokio::task::spawn_blocking(move || {
        engine
            .sessions
            .query(from_ms, to_ms, consumer.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    let sessions = rows
        .into_iter()
        .map(|s| SessionOut {
            session_id: s.session_id,
            consumer: s.consumer,
            started: format_ts(s.started_ms),
            ended: format_ts(s.ended_ms),
            requests: s.requests,
            tokens_in: s.tokens_in,
            tokens_out: s.tokens_out,
            cost_usd: s.cost_usd,
            loops: s.loops,
            inferred: s.inferred,
            longest_chain: s
                .longest_chain
                .map(|(endpoint, calls)| ChainOut { endpoint, calls }),
            class: s.pattern.class().0.to_string(),
            class_reason: s.pattern.class().1,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsumerStatsQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub api: Option<String>,
    /// Series step such as `1m`, `5m`, `1h`, `1d`; default: the smallest giving at most 500 points.
    pub step: Option<String>,
}

/// One route's figures for one consumer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerRouteStats {
    pub api: String,
    pub method: String,
    pub route: String,
    pub requests: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One step of a consumer's time series.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub ts: String,
    pub requests: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One consumer: totals, routes and a time series.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerDetail {
    pub from: String,
    pub to: String,
    pub step: String,
    #[serde(flatten)]
    pub totals: ConsumerStats,
    pub routes: Vec<ConsumerRouteStats>,
    pub series: Vec<SeriesPoint>,
}

const STEPS: [(&str, i64); 7] = [
    ("1m", 60_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("1h", 3_600_000),
    ("6h", 21_600_000),
    ("1d", 86_400_000),
    ("7d", 604_800_000),
];

pub fn pick_step(
    step: &Option<String>,
    from_ms: i64,
    to_ms: i64,
) -> Result<(String, i64), ApiError> {
    let span = to_ms - from_ms;
    match step {
        Some(s) => {
            let ms = clientele_core::time::parse_step(s)
                .map_err(|e| ApiError::bad_request(format!("step: {e}")))?;
            if ms % 60_000 != 0 {
                return Err(ApiError::bad_request(
                    "step must be a whole number of minutes",
                ));
            }
            if span / ms > 10_000 {
                return Err(ApiError::bad_request(format!(
                    "step {s} gives more than 10000 points over this window; use a larger step"
                )));
            }
            Ok((s.clone(), ms))
        }
        None => {
            let (name, ms) = STEPS
                .iter()
                .find(|(_, ms)| span / ms <= 500)
                .copied()
                .unwrap_or(STEPS[STEPS.len() - 1]);
            Ok((name.to_string(), ms))
        }
    }
}

/// The body of `GET /v1/stats/consumers/{id}`, shared with the consumer portal.
pub async fn consumer_detail(
    state: &AppState,
    id: &str,
    q: ConsumerStatsQuery,
) -> Result<ConsumerDetail, ApiError> {
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let (step_name, step_ms) = pick_step(&q.step, from_ms, to_ms)?;
    let consumer = state.control.get_consumer(id).await?;
    let query = AQuery {
        from_ms,
        to_ms,
        api: q.api.clone(),
        consumers: Some([id.to_string()].into()),
    };
    let engine = state.engine.clone();
    let id_owned = id.to_string();
    let (totals, routes, series, parts) = tokio::task::spawn_blocking(move || {
        let totals = engine
            .consumer_totals(&query)
            .pop()
            .map(|r| r.rollup)
            .unwrap_or_default();
        let routes = engine.routes(&query, Some(&id_owned));
        let series = engine.consumer_series(&query, &id_owned, step_ms);
        let parts = engine
            .models
            .query(from_ms, to_ms, Some(&id_owned))
            .into_iter()
            .fold(
                clientele_analytics::models::ModelUsage::default(),
                |mut sum, (_, _, u)| {
                    sum.add(&u);
                    sum
                },
            );
        (totals, routes, series, parts)
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    if consumer.is_none() && totals.counters.requests == 0 {
        return Err(ApiError::not_found(format!("no consumer has id {id:?}")));
    }
    Ok(ConsumerDetail {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        step: step_name,
        totals: consumer_stats(id.to_string(), consumer.as_ref(), &totals, Some(&parts)),
        routes: routes
            .into_iter()
            .map(|r| {
                let (p50_ms, p95_ms, p99_ms) = percentiles(&r.rollup);
                let k = &r.rollup.counters;
                ConsumerRouteStats {
                    api: r.api,
                    method: r.method,
                    route: r.route,
                    requests: k.requests,
                    errors_4xx: k.s4xx,
                    errors_5xx: k.s5xx,
                    error_rate: k.error_rate(),
                    p50_ms,
                    p95_ms,
                    p99_ms,
                }
            })
            .collect(),
        series: series
            .into_iter()
            .map(|(ts, r)| {
                let (p50_ms, p95_ms, p99_ms) = percentiles(&r);
                SeriesPoint {
                    ts: format_ts(ts),
                    requests: r.counters.requests,
                    errors: r.counters.errors(),
                    rate_limited: r.counters.rate_limited,
                    p50_ms,
                    p95_ms,
                    p99_ms,
                }
            })
            .collect(),
    })
}

#[utoipa::path(get, path = "/v1/stats/consumers/{id}", params(("id" = String, Path), ConsumerStatsQuery),
    responses((status = 200, body = ConsumerDetail), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn stats_consumer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ConsumerStatsQuery>,
) -> Result<Json<ConsumerDetail>, ApiError> {
    Ok(Json(consumer_detail(&state, &id, q).await?))
}

/// One route across consumers.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteStats {
    pub api: String,
    pub method: String,
    pub route: String,
    pub requests: u64,
    /// Distinct consumers that called it.
    pub consumers: usize,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of the route's errors that come from its most erroring consumer (0 without errors).
    pub error_share_top_consumer: f64,
    pub top_error_consumer: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteStatsList {
    pub from: String,
    pub to: String,
    pub routes: Vec<RouteStats>,
}

#[utoipa::path(get, path = "/v1/stats/routes", params(WindowQuery),
    responses((status = 200, body = RouteStatsList), (status = 400)), security(("admin_token" = [])))]
pub async fn stats_routes(
    State(state): State<AppState>,
    Query(q): Query<WindowQuery>,
) -> Result<Json<RouteStatsList>, ApiError> {
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let (allowed, _) = filtered_consumers(&state, &q).await?;
    let query = AQuery {
        from_ms,
        to_ms,
        api: q.api.clone(),
        consumers: allowed,
    };
    let engine = state.engine.clone();
    let rows = tokio::task::spawn_blocking(move || engine.routes(&query, None))
        .await
        .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    let routes = rows
        .into_iter()
        .map(|r| {
            let (p50_ms, p95_ms, p99_ms) = percentiles(&r.rollup);
            let k = &r.rollup.counters;
            let errors = k.errors();
            RouteStats {
                api: r.api,
                method: r.method,
                route: r.route,
                requests: k.requests,
                consumers: r.consumers,
                errors_4xx: k.s4xx,
                errors_5xx: k.s5xx,
                error_rate: k.error_rate(),
                p50_ms,
                p95_ms,
                p99_ms,
                error_share_top_consumer: if errors == 0 {
                    0.0
                } else {
                    r.top_consumer_errors as f64 / errors as f64
                },
                top_error_consumer: r.top_consumer,
            }
        })
        .collect();
    Ok(Json(RouteStatsList {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        routes,
    }))
}

/// The answer to an accepted batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    /// Valid events in the batch, stored durably (duplicates included).
    pub accepted: usize,
    /// Accepted events whose id was already stored, and so were not counted again.
    pub duplicates: usize,
    pub rejected: Vec<Rejected>,
}

/// Events from a sidecar or a backfill: NDJSON (`application/x-ndjson`) or a JSON array.
/// Valid events are stored in one transaction before the answer; each invalid one is listed
/// with its reason. Unknown fields are ignored; events without `id` get one derived from their
/// content, so resending a batch never double-counts.
#[utoipa::path(post, path = "/v1/events", request_body(content((Vec<Object> = "application/json"), (String = "application/x-ndjson"))),
    responses((status = 202, body = IngestResult), (status = 400, description = "nothing valid in the batch"), (status = 413, description = "body over [admin].max_body_bytes")),
    security(("admin_token" = [])))]
pub async fn ingest_events(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<IngestResult>), ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ndjson = content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
        || content_type.starts_with("application/ndjson");
    if !ndjson && !content_type.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send events as application/x-ndjson (one per line) or application/json (an array)",
        ));
    }
    let contracts = state.contracts.clone();
    let templates = |api: &str, method: &str, path: &str| {
        contracts
            .api(api)
            .and_then(|c| c.route_template(method, path))
    };
    let (events, rejected) = parse_batch_with(&body, ndjson, ingest_bounds(&state), &templates)
        .map_err(ApiError::bad_request)?;
    if events.is_empty() {
        let mut err = ApiError::bad_request(if rejected.is_empty() {
            "the batch holds no events".to_string()
        } else {
            format!("none of the {} events is valid; see errors", rejected.len())
        });
        err.0.errors = rejected
            .iter()
            .take(1000)
            .map(|r| serde_json::json!({"index": r.index, "error": r.error}))
            .collect();
        return Err(err);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(submit_ingested(&state, events, rejected).await?),
    ))
}

/// The times an ingested event may carry: not past the clock skew allowed, not before the raw
/// retention or the rollup archive.
pub(crate) fn ingest_bounds(state: &AppState) -> TimeBounds {
    let now = now_ms();
    TimeBounds {
        min_ms: (now - state.max_age_ms.min(state.engine.retention().day_ms)).max(
            state
                .archived_until
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        max_ms: now + state.max_future_ms,
    }
}

/// Creates missing consumers and submits ingested events: the same path as the gateway's
/// events (stored, folded, exported), durable when it returns.
pub(crate) async fn submit_ingested(
    state: &AppState,
    events: Vec<Event>,
    rejected: Vec<Rejected>,
) -> Result<IngestResult, ApiError> {
    ensure_consumers(state, &events).await?;
    let accepted = events.len();
    let fresh = state.pipeline.submit(events).await?;
    Ok(IngestResult {
        accepted,
        duplicates: accepted - fresh,
        rejected,
    })
}

/// Creates the consumers a batch names that do not exist yet, with the plan, team and use
/// case their first event carries.
async fn ensure_consumers(state: &AppState, events: &[Event]) -> Result<(), ApiError> {
    let loaded = state
        .known_consumers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    if !loaded {
        let all: HashSet<String> = state
            .control
            .list_consumers()
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        *state
            .known_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(all);
    }
    let missing: Vec<&Event> = {
        let known = state
            .known_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        events
            .iter()
            .filter(|e| {
                let id = e.consumer.as_deref().unwrap_or("");
                !known.as_ref().is_some_and(|k| k.contains(id)) && seen.insert(id)
            })
            .collect()
    };
    for e in missing {
        let id = e.consumer.clone().unwrap_or_default();
        let consumer = Consumer {
            id: id.clone(),
            name: None,
            plan: e.plan.clone(),
            team: e.team.clone(),
            use_case: e.use_case.clone(),
            metadata: Map::from_iter([("created_by".to_string(), Value::String("ingest".into()))]),
            created_at_ms: now_ms(),
            limits: None,
        };
        match state.control.create_consumer(consumer).await {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(known) = state
            .known_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            known.insert(id);
        }
    }
    Ok(())
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see GET /v1/openapi.json for the API")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not accept that method; see GET /v1/openapi.json",
    )
}

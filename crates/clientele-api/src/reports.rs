//! Release markers and the reports: `POST`/`GET /v1/releases`, `GET /v1/portfolio` and
//! `GET /v1/reports/{outreach,pricing,sla}`, each as JSON or CSV (`?format=csv`). The numbers
//! come from `clientele_app::reports`; the typed functions here (`portfolio`, `outreach`, ...)
//! are what the dashboard calls in-process, the handlers wrap them for HTTP.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clientele_app::reports::{self, Table, agents, deprecation, outreach, portfolio, pricing, sla};
use clientele_core::consumer::Consumer;
use clientele_core::time::{DAY_MS, format_ts, now_ms, parse_ts, parse_ts_value};
use clientele_store::{FindingQuery, Release};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;

use crate::error::{ApiError, Json, Query};
/// The report types, for the dashboard (which reaches the application layer through here).
pub use clientele_app::reports::agents::AgentsReport;
pub use clientele_app::reports::deprecation::DeprecationReport;
pub use clientele_app::reports::outreach::OutreachReport;
pub use clientele_app::reports::portfolio::Portfolio;
pub use clientele_app::reports::pricing::PricingReport;
pub use clientele_app::reports::sla::SlaReport;

/// A release marker as the API shows it: one posted to `POST /v1/releases`, or a spec version
/// loaded at start-up or by a reload (`source: spec`, version `spec-` and the hash's first 12
/// hex digits).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleaseOut {
    pub api: String,
    pub version: String,
    /// RFC 3339.
    pub at: String,
    /// `api` (posted) or `spec` (a spec version).
    pub source: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseOut>,
}

/// `POST /v1/releases` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    /// The API's name, as in `[[apis]] name`.
    pub api: String,
    /// The version as the team calls it, e.g. `v2.3`.
    pub version: String,
    /// When it went live: RFC 3339 or epoch ms; default now.
    #[schema(value_type = Option<String>)]
    pub at: Option<Value>,
}

fn check_name(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "{field}: must be 1 to {max} characters without control characters, e.g. \"v2.3\""
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/releases", request_body = NewRelease,
    responses(
        (status = 201, body = ReleaseOut, description = "the marker, stored"),
        (status = 409, description = "this api already has a release of that version"),
        (status = 422, description = "a bad field, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn create_release(
    State(state): State<AppState>,
    Json(body): Json<NewRelease>,
) -> Result<(StatusCode, Json<ReleaseOut>), ApiError> {
    check_name("api", &body.api, 200)?;
    check_name("version", &body.version, 100)?;
    let now = now_ms();
    let at_ms = match &body.at {
        None | Some(Value::Null) => now,
        Some(v) => parse_ts_value(v).map_err(|e| ApiError::unprocessable(format!("at: {e}")))?,
    };
    // A marker far in the future is a typo; reports would attribute nothing to it.
    if at_ms > now + DAY_MS || at_ms < 0 {
        return Err(ApiError::unprocessable(
            "at: must be after 1970 and at most a day from now",
        ));
    }
    let r = state
        .control
        .record_release(Release {
            api: body.api.trim().to_string(),
            version: body.version.trim().to_string(),
            at_ms,
            recorded_at_ms: now,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ReleaseOut {
            api: r.api,
            version: r.version,
            at: format_ts(r.at_ms),
            source: "api",
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReleaseQuery {
    /// Only this API's markers.
    pub api: Option<String>,
}

/// Every marker, posted ones and spec versions, oldest first.
pub async fn all_releases(state: &AppState, api: Option<&str>) -> Result<Vec<Release>, ApiError> {
    Ok(tagged_releases(state, api)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// Every marker with where it came from: `api` (posted) or `spec` (a spec version).
async fn tagged_releases(
    state: &AppState,
    api: Option<&str>,
) -> Result<Vec<(Release, &'static str)>, ApiError> {
    let spec_apis: Vec<String> = state.contracts.apis().map(|c| c.api.clone()).collect();
    Ok(reports::digest::releases(&*state.control, &spec_apis, api).await?)
}

#[utoipa::path(get, path = "/v1/releases", params(ReleaseQuery),
    responses((status = 200, body = ReleaseList)),
    security(("admin_token" = [])))]
pub async fn list_releases(
    State(state): State<AppState>,
    Query(q): Query<ReleaseQuery>,
) -> Result<Json<ReleaseList>, ApiError> {
    let releases = tagged_releases(&state, q.api.as_deref()).await?;
    Ok(Json(ReleaseList {
        releases: releases
            .into_iter()
            .map(|(r, source)| ReleaseOut {
                source,
                api: r.api,
                version: r.version,
                at: format_ts(r.at_ms),
            })
            .collect(),
    }))
}

/// `json` (default) or `csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

fn format(v: &Option<String>) -> Result<Format, ApiError> {
    match v.as_deref() {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(ApiError::bad_request(format!(
            "format: {other:?} is not a format; use json or csv"
        ))),
    }
}

fn limit(v: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: {n} must be between 1 and {max}"
        ))),
    }
}

/// The latest `to` a report accepts (2100-01-01): beyond it windows are meaningless, and the
/// window arithmetic stays far from overflowing.
const MAX_TO_MS: i64 = 4_102_444_800_000;

fn time_param(name: &str, v: &Option<String>) -> Result<i64, ApiError> {
    match v.as_deref() {
        None => Ok(now_ms()),
        Some(s) => {
            let t = parse_ts(s).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
            if !(0..=MAX_TO_MS).contains(&t) {
                return Err(ApiError::bad_request(format!(
                    "{name}: must be between 1970 and 2100"
                )));
            }
            Ok(t)
        }
    }
}

/// A table as RFC 4180 CSV with a header row.
pub fn csv_bytes(table: &Table) -> Result<Vec<u8>, ApiError> {
    let internal = |e: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("cannot write CSV: {e}"),
        )
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&table.header)
        .map_err(|e| internal(e.to_string()))?;
    for row in &table.rows {
        w.write_record(row).map_err(|e| internal(e.to_string()))?;
    }
    w.into_inner().map_err(|e| internal(e.to_string()))
}

fn answer<T: Serialize>(
    report: &T,
    table: impl FnOnce() -> Table,
    f: Format,
    name: &str,
) -> Result<Response, ApiError> {
    match f {
        Format::Json => Ok(axum::Json(report).into_response()),
        Format::Csv => {
            let mut resp = csv_bytes(&table())?.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            Ok(resp)
        }
    }
}

/// Consumers by id, for plans and display names.
async fn consumers(state: &AppState) -> Result<Arc<HashMap<String, Consumer>>, ApiError> {
    Ok(Arc::new(
        state
            .control
            .list_consumers()
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect(),
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    // Reports walk weeks of rollups: CPU work, kept off the async workers.
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("report task failed: {e}"),
        )
    })
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PortfolioQuery {
    /// The calendar month (UTC), `YYYY-MM`; default the current month.
    pub month: Option<String>,
    /// The Apdex threshold T in ms (1-60000, default 500).
    pub satisfaction_t_ms: Option<f64>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// The portfolio of a month, typed: what the handler and the dashboard show.
pub async fn portfolio(
    state: &AppState,
    q: &PortfolioQuery,
) -> Result<portfolio::Portfolio, ApiError> {
    let now = now_ms();
    let month = match q.month.as_deref() {
        Some(m) => portfolio::Month::parse(m).map_err(ApiError::bad_request)?,
        None => portfolio::Month::containing(now)
            .ok_or_else(|| ApiError::bad_request("month: the clock is outside any month"))?,
    };
    let t = q.satisfaction_t_ms.unwrap_or(reports::APDEX_T_MS);
    if !(1.0..=60_000.0).contains(&t) {
        return Err(ApiError::bad_request(
            "satisfaction_t_ms: must be between 1 and 60000",
        ));
    }
    let list: Vec<Consumer> = state.control.list_consumers().await?;
    let releases = all_releases(state, None).await?;
    let engine = state.engine.clone();
    let plans = state.findings.plans().clone();
    blocking(move || portfolio::portfolio(&engine, &list, &plans, &releases, month, now, t)).await
}

#[utoipa::path(get, path = "/v1/portfolio", params(PortfolioQuery),
    responses(
        (status = 200, content((Object = "application/json"), (String = "text/csv")), description = "`{month, from, to, satisfaction_threshold_ms, consumers: {active, active_prev, new, churned, reactivated, stagnating}, lists: {new, churned, reactivated, stagnating}, apis: [{api, active_consumers, active_consumers_prev, requests, requests_prev, error_rate, error_rate_prev, p95_ms, p95_ms_prev, satisfaction, satisfaction_prev}], top_plan: {plan, consumers, satisfaction, satisfaction_prev, experience, ...}, releases, definitions}`; CSV: one row per API"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn portfolio_handler(
    State(state): State<AppState>,
    Query(q): Query<PortfolioQuery>,
) -> Result<Response, ApiError> {
    let f = format(&q.format)?;
    let p = portfolio(&state, &q).await?;
    answer(&p, || p.table(), f, &format!("portfolio-{}", p.month))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// The end of the report's window (RFC 3339 or epoch ms); default now.
    pub to: Option<String>,
    /// At most this many items (1-1000); default 10 for outreach, 20 for pricing, 100 for sla.
    pub limit: Option<usize>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

pub async fn outreach(
    state: &AppState,
    q: &ReportQuery,
) -> Result<outreach::OutreachReport, ApiError> {
    let at = time_param("to", &q.to)?;
    let limit = limit(q.limit, 10, 1000)?;
    let findings = state
        .findings
        .store()
        .list_findings(&FindingQuery {
            from_ms: Some(at - outreach::FINDINGS_WINDOW_MS),
            to_ms: None,
            kind: None,
            consumer: None,
            api: None,
            limit: 10_000,
        })
        .await?;
    let releases = all_releases(state, None).await?;
    let consumers = consumers(state).await?;
    let engine = state.engine.clone();
    let plans = state.findings.plans().clone();
    blocking(move || {
        let plan_of = |c: &str| consumers.get(c).and_then(|c| c.plan.clone());
        let display = |c: &str| {
            consumers
                .get(c)
                .and_then(|c| c.name.clone())
                .unwrap_or_else(|| c.to_string())
        };
        outreach::outreach(
            &engine, &plan_of, &display, &plans, &findings, &releases, at, limit,
        )
    })
    .await
}

#[utoipa::path(get, path = "/v1/reports/outreach", params(ReportQuery),
    responses(
        (status = 200, content((Object = "application/json"), (String = "text/csv")), description = "`{at, items: [{consumer, plan, reason, score, since, release: {api, version, at}|null, evidence, message}]}`, most urgent first"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn outreach_handler(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let f = format(&q.format)?;
    let r = outreach(&state, &q).await?;
    answer(&r, || r.table(), f, "outreach")
}

pub async fn pricing(
    state: &AppState,
    q: &ReportQuery,
) -> Result<pricing::PricingReport, ApiError> {
    let to = time_param("to", &q.to)?;
    let limit = limit(q.limit, 20, 1000)?;
    let consumers = consumers(state).await?;
    let engine = state.engine.clone();
    let plans = state.findings.plans().clone();
    blocking(move || {
        let plan_of = |c: &str| consumers.get(c).and_then(|c| c.plan.clone());
        pricing::pricing(&engine, &plan_of, &plans, to, limit)
    })
    .await
}

#[utoipa::path(get, path = "/v1/reports/pricing", params(ReportQuery),
    responses(
        (status = 200, content((Object = "application/json"), (String = "text/csv")), description = "`{from, to, items: [{consumer, plan, recommended_plan, kind: outgrown|large_share|oversized, reason, evidence}]}`; consumers that fit their plan are left out"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn pricing_handler(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let f = format(&q.format)?;
    let r = pricing(&state, &q).await?;
    answer(&r, || r.table(), f, "pricing")
}

pub async fn sla(state: &AppState, q: &ReportQuery) -> Result<sla::SlaReport, ApiError> {
    let to = time_param("to", &q.to)?;
    let limit = limit(q.limit, 100, 1000)?;
    let consumers = consumers(state).await?;
    let engine = state.engine.clone();
    blocking(move || {
        let plan_of = |c: &str| consumers.get(c).and_then(|c| c.plan.clone());
        sla::sla(&engine, &plan_of, to, limit)
    })
    .await
}

#[utoipa::path(get, path = "/v1/reports/sla", params(ReportQuery),
    responses(
        (status = 200, content((Object = "application/json"), (String = "text/csv")), description = "`{from, to, items: [{consumer, plan, requests, p50_ms, p95_ms, p99_ms, availability, proposed: {latency_p95_ms, availability}, budget_remaining, burn: [{window: 1h|6h|3d, requests, errors_5xx, burn_rate, threshold, alerting}]}]}` over the 28 days ending at `to`, busiest first"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn sla_handler(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let f = format(&q.format)?;
    let r = sla(&state, &q).await?;
    answer(&r, || r.table(), f, "sla")
}

pub async fn deprecation(
    state: &AppState,
    q: &ReportQuery,
) -> Result<deprecation::DeprecationReport, ApiError> {
    let at = time_param("to", &q.to)?;
    let engine = state.engine.clone();
    let contracts = state.contracts.clone();
    blocking(move || {
        let ops = contracts.deprecations(i64::MIN);
        deprecation::deprecation(&engine, &ops, at)
    })
    .await
}

#[utoipa::path(get, path = "/v1/reports/deprecation", params(ReportQuery),
    responses(
        (status = 200, content((Object = "application/json"), (String = "text/csv")), description = "`{at, items: [{api, route, replaced_by, sunset, proposed_sunset, sunset_at_risk, reason, blocked_by, consumers: [{consumer, calls_last_week, replacement_calls_last_week, progress, pace_per_week, projected_done}]}]}`: each deprecated operation with a sunset proposed from its callers' migration pace"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn deprecation_handler(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let f = format(&q.format)?;
    let r = deprecation(&state, &q).await?;
    answer(&r, || r.table(), f, "deprecation")
}

pub async fn agents(state: &AppState, q: &ReportQuery) -> Result<agents::AgentsReport, ApiError> {
    let to = time_param("to", &q.to)?;
    let limit = limit(q.limit, 20, 1000)?;
    let engine = state.engine.clone();
    blocking(move || agents::agents(&engine, to, limit)).await
}

#[utoipa::path(get, path = "/v1/reports/agents", params(ReportQuery),
    responses(
        (status = 200, content((Object = "application/json"), (String = "text/csv")), description = "`{from, to, items: [{consumer, sessions, looping_sessions, saved_round_trips, calls: [{call, sessions, calls, saved_round_trips, suggestion}]}]}` over the 7 days ending at `to`: sessions that repeat the same call"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn agents_handler(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let f = format(&q.format)?;
    let r = agents(&state, &q).await?;
    answer(&r, || r.table(), f, "agents")
}

#[utoipa::path(get, path = "/v1/reports/digest", params(ReportQuery),
    responses(
        (status = 200, body = Object, description = "the digest `[digest].interval_secs` sends through the alert webhooks, as of `to`: `{at, portfolio, outreach, pricing, sla_alerting}` (JSON only)"),
        (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn digest_handler(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    if format(&q.format)? == Format::Csv {
        return Err(ApiError::bad_request(
            "format: the digest is nested and answers JSON only; the reports it sums up have CSV",
        ));
    }
    let at = time_param("to", &q.to)?;
    let spec_apis: Vec<String> = state.contracts.apis().map(|c| c.api.clone()).collect();
    let digest = reports::digest::build(
        &state.engine,
        &*state.control,
        &**state.findings.store(),
        state.findings.plans(),
        &spec_apis,
        at,
    )
    .await?;
    Ok(axum::Json(digest).into_response())
}

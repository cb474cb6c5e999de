//! The findings endpoints: `POST /v1/findings/evaluate` (through the application layer's
//! `FindingsService`, which the detection loop also runs), `GET /v1/findings` and
//! `GET /v1/alerts/deliveries`.

use axum::extract::State;
use clientele_analytics::HOUR_MS;
use clientele_core::finding::FindingKind;
use clientele_core::time::{format_ts, now_ms, parse_step, parse_ts};
use clientele_store::{Change, DeliveryQuery, FindingQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, Json, Query};

/// The longest lookback an evaluation accepts: the hour tier's default retention.
const MAX_LOOKBACK_MS: i64 = 35 * 24 * HOUR_MS;

// The service lives in the application layer; these names stay here for callers of the API crate.
pub use clientele_app::findings::{
    EvalReport, FindingObserver, FindingOut, FindingsService, REOPEN_GAP_MS,
};

// ----- shapes -----

#[derive(Debug, Serialize, ToSchema)]
pub struct FindingList {
    pub findings: Vec<FindingOut>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindingsQuery {
    /// Findings seen at or after this time (RFC 3339 or epoch ms).
    pub from: Option<String>,
    /// Findings that started at or before this time.
    pub to: Option<String>,
    /// One finding kind.
    pub kind: Option<String>,
    pub consumer: Option<String>,
    pub api: Option<String>,
    /// At most this many, most recent first (1-10000, default 1000).
    pub limit: Option<String>,
}

fn param_ts(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| parse_ts(s).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))))
        .transpose()
}

fn param_limit(v: &Option<String>, max: usize) -> Result<usize, ApiError> {
    match v.as_deref() {
        None => Ok(0),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit: {s:?} must be a whole number between 1 and {max}"
            ))),
        },
    }
}

#[utoipa::path(get, path = "/v1/findings", params(FindingsQuery),
    responses((status = 200, body = FindingList), (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<FindingsQuery>,
) -> Result<Json<FindingList>, ApiError> {
    let from_ms = param_ts("from", &q.from)?;
    let to_ms = param_ts("to", &q.to)?;
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f > t {
            return Err(ApiError::bad_request("from: must not be after to"));
        }
    }
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(FindingKind::parse(k).ok_or_else(|| {
            ApiError::bad_request(format!(
                "kind: {k:?} is not a finding kind; use one of {}",
                FindingKind::ALL.map(FindingKind::as_str).join(", ")
            ))
        })?),
    };
    let limit = param_limit(&q.limit, 10_000)?;
    let findings = state
        .findings
        .store()
        .list_findings(&FindingQuery {
            from_ms,
            to_ms,
            kind,
            consumer: q.consumer,
            api: q.api,
            limit,
        })
        .await?;
    // "Since release v2.3": the release of the finding's API it began after, if marked.
    let releases = crate::reports::all_releases(&state, None).await?;
    Ok(Json(FindingList {
        findings: findings
            .into_iter()
            .map(|f| {
                let release = clientele_app::reports::release_before(
                    &releases,
                    f.api.as_deref(),
                    f.first_seen_ms,
                    clientele_app::reports::outreach::RELEASE_WINDOW_MS,
                )
                .map(|r| r.version.clone());
                let mut out = FindingOut::from(f);
                out.since_release = release;
                out
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EvaluateQuery {
    /// How far back to look for conditions, e.g. `24h` (default), `7d`; at most 35d.
    pub lookback: Option<String>,
    /// Evaluate as of this time instead of now (RFC 3339 or epoch ms), e.g. to replay history;
    /// a time more than an hour ago is rounded down to the hour.
    pub at: Option<String>,
}

/// A finding as an evaluation left it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluatedFinding {
    #[serde(flatten)]
    pub finding: FindingOut,
    /// `new`, or `updated` when the condition was already stored.
    pub change: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DetectorTiming {
    pub detector: String,
    pub elapsed_ms: f64,
    pub findings: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Evaluation {
    /// The evaluation's as-of time, RFC 3339.
    pub at: String,
    pub lookback_ms: f64,
    pub elapsed_ms: f64,
    pub new: usize,
    pub updated: usize,
    pub findings: Vec<EvaluatedFinding>,
    pub detectors: Vec<DetectorTiming>,
}

#[utoipa::path(post, path = "/v1/findings/evaluate", params(EvaluateQuery),
    responses((status = 200, body = Evaluation), (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn evaluate(
    State(state): State<AppState>,
    Query(q): Query<EvaluateQuery>,
) -> Result<Json<Evaluation>, ApiError> {
    let lookback_ms = match q.lookback.as_deref() {
        None => 24 * HOUR_MS,
        Some(s) => {
            let ms = parse_step(s).map_err(|e| ApiError::bad_request(format!("lookback: {e}")))?;
            if !(HOUR_MS..=MAX_LOOKBACK_MS).contains(&ms) {
                return Err(ApiError::bad_request(format!(
                    "lookback: {s:?} must be between 1h and 35d"
                )));
            }
            ms
        }
    };
    let now = now_ms();
    let at_ms = match param_ts("at", &q.at)? {
        // A replay in the past is judged on whole hours: the hour holding `at` also holds the
        // events after it, which a live evaluation at `at` could not have seen.
        Some(at) if at < now - HOUR_MS => at - at.rem_euclid(HOUR_MS),
        Some(at) => at.min(now),
        None => now,
    };
    let report = state.findings.evaluate(at_ms, lookback_ms).await?;
    let new = report
        .findings
        .iter()
        .filter(|u| u.change == Change::New)
        .count();
    Ok(Json(Evaluation {
        at: format_ts(report.at_ms),
        lookback_ms: report.lookback_ms as f64,
        elapsed_ms: (report.elapsed_ms * 1000.0).round() / 1000.0,
        new,
        updated: report.findings.len() - new,
        findings: report
            .findings
            .into_iter()
            .map(|u| EvaluatedFinding {
                change: match u.change {
                    Change::New => "new",
                    Change::Updated { .. } => "updated",
                }
                .to_string(),
                finding: u.finding.into(),
            })
            .collect(),
        detectors: report
            .timings
            .into_iter()
            .map(|t| DetectorTiming {
                detector: t.detector.to_string(),
                elapsed_ms: (t.elapsed_ms * 1000.0).round() / 1000.0,
                findings: t.findings,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    pub finding_id: Option<String>,
    pub rule: Option<String>,
    /// At most this many, newest first (1-10000, default 1000).
    pub limit: Option<String>,
}

/// One attempt to deliver an alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: i64,
    /// RFC 3339.
    pub ts: String,
    pub rule: String,
    pub finding_id: String,
    pub kind: String,
    pub consumer: Option<String>,
    pub severity: String,
    pub url: String,
    pub attempt: u32,
    /// `delivered`, `retrying` or `failed`.
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryOut>,
}

#[utoipa::path(get, path = "/v1/alerts/deliveries", params(DeliveriesQuery),
    responses((status = 200, body = DeliveryList), (status = 400)), security(("admin_token" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = param_limit(&q.limit, 10_000)?;
    let log = state
        .findings
        .store()
        .list_deliveries(&DeliveryQuery {
            finding_id: q.finding_id,
            rule: q.rule,
            limit,
        })
        .await?;
    Ok(Json(DeliveryList {
        deliveries: log
            .into_iter()
            .map(|d| DeliveryOut {
                id: d.id,
                ts: format_ts(d.ts_ms),
                rule: d.rule,
                finding_id: d.finding_id,
                kind: d.kind,
                consumer: d.consumer,
                severity: d.severity,
                url: d.url,
                attempt: d.attempt,
                outcome: d.outcome,
                http_status: d.http_status,
                error: d.error,
            })
            .collect(),
    }))
}

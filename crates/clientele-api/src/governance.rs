//! Governance endpoints: `GET /v1/governance/risk` (each consumer's 0-100 risk score and its
//! factors, riskiest first) and `GET /v1/governance/consumers/{id}` (the behavioural features
//! behind it). The dashboard calls [`risk_report`] and [`consumer_features`] in-process.

use axum::extract::{Path, State};
use clientele_core::finding::Finding;
use clientele_core::time::{format_ts, now_ms};
use clientele_governance::features::DAY_MS;
use clientele_governance::risk::GOVERNANCE_KINDS;
use clientele_store::FindingQuery;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, Json, Query};

/// The risk window when none is given: a week shows variance a day cannot.
const DEFAULT_WINDOW_MS: i64 = 7 * DAY_MS;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RiskQuery {
    /// RFC 3339 or epoch ms; default 7 days before `to`.
    pub from: Option<String>,
    /// RFC 3339 or epoch ms; default now.
    pub to: Option<String>,
    /// Only consumers on this plan.
    pub plan: Option<String>,
}

/// One part of a score.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskFactorOut {
    /// `volume_variance`, `rate_limited`, `errors`, `use_case_mismatch` or
    /// `governance_findings`.
    pub name: String,
    /// The points it adds to the score.
    pub value: f64,
    /// The numbers behind it, in a sentence.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskOut {
    pub consumer: String,
    pub plan: Option<String>,
    /// 0-100: the sum of the factors' values.
    pub score: f64,
    pub factors: Vec<RiskFactorOut>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskList {
    pub from: String,
    pub to: String,
    /// Riskiest first.
    pub consumers: Vec<RiskOut>,
}

/// Every consumer's risk in the window, riskiest first, with the governance findings that
/// count in it (for the dashboard).
pub async fn risk_report(
    state: &AppState,
    from_ms: i64,
    to_ms: i64,
    plan: Option<&str>,
) -> Result<(RiskList, Vec<Finding>), ApiError> {
    let consumers: Vec<_> = state
        .control
        .list_consumers()
        .await?
        .into_iter()
        .filter(|c| plan.is_none_or(|p| c.plan.as_deref() == Some(p)))
        .collect();
    let findings = governance_findings(state, from_ms, to_ms, None).await?;
    let features = state.governance.clone();
    let found = findings.clone();
    let scores = tokio::task::spawn_blocking(move || {
        clientele_governance::risk::scores(&features, from_ms, to_ms, &consumers, &found)
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("risk scoring failed: {e}")))?;
    let list = RiskList {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        consumers: scores
            .into_iter()
            .map(|r| RiskOut {
                consumer: r.consumer,
                plan: r.plan,
                score: r.score,
                factors: r
                    .factors
                    .into_iter()
                    .map(|f| RiskFactorOut {
                        name: f.name.to_string(),
                        value: f.value,
                        detail: f.detail,
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok((list, findings))
}

/// The governance findings of a window, optionally of one consumer, newest first.
pub async fn governance_findings(
    state: &AppState,
    from_ms: i64,
    to_ms: i64,
    consumer: Option<&str>,
) -> Result<Vec<Finding>, ApiError> {
    let mut out = Vec::new();
    for kind in GOVERNANCE_KINDS {
        out.extend(
            state
                .findings
                .store()
                .list_findings(&FindingQuery {
                    from_ms: Some(from_ms),
                    to_ms: Some(to_ms),
                    kind: Some(kind),
                    consumer: consumer.map(str::to_string),
                    api: None,
                    limit: 0,
                })
                .await?,
        );
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.last_seen_ms));
    Ok(out)
}

/// The window of a risk query: `to` defaults to now, `from` to a week before it.
pub fn risk_window(from: &Option<String>, to: &Option<String>) -> Result<(i64, i64), ApiError> {
    let to_ms = match to {
        Some(_) => crate::handlers::window(&None, to)?.1,
        None => now_ms(),
    };
    match from {
        Some(_) => crate::handlers::window(from, &Some(to_ms.to_string())),
        None => Ok((to_ms - DEFAULT_WINDOW_MS, to_ms)),
    }
}

#[utoipa::path(get, path = "/v1/governance/risk", params(RiskQuery),
    responses((status = 200, body = RiskList), (status = 400, description = "a bad parameter, named in `detail`")),
    security(("admin_token" = [])))]
pub async fn risk(
    State(state): State<AppState>,
    Query(q): Query<RiskQuery>,
) -> Result<Json<RiskList>, ApiError> {
    let (from_ms, to_ms) = risk_window(&q.from, &q.to)?;
    let (list, _) = risk_report(&state, from_ms, to_ms, q.plan.as_deref()).await?;
    Ok(Json(list))
}

/// One consumer-day of behaviour.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeatureDayOut {
    /// The UTC day, `2026-12-01`.
    pub day: String,
    pub requests: u64,
    /// Distinct client networks (IPv4 /24, IPv6 /48).
    pub networks: u32,
    /// Distinct autonomous systems of the client addresses (0 without `governance.ip_table`).
    pub asns: u32,
    /// Countries of the client addresses, ISO 3166 alpha-2 (empty without
    /// `governance.ip_table`; the first 16).
    pub countries: Vec<String>,
    /// The most countries within one hour of the day.
    pub max_countries_per_hour: u32,
    pub user_agents: u32,
    /// Distinct TLS clients (ClientHello fingerprints, where the gateway terminates TLS; 0
    /// otherwise).
    pub tls_clients: u32,
    /// The most TLS clients within one hour of the day.
    pub max_tls_clients_per_hour: u32,
    pub sessions: u32,
    pub end_users: u32,
    /// Distinct ids called on item routes.
    pub distinct_ids: u32,
    /// Share of item calls whose id followed the previous one by one.
    pub sequential_share: f64,
    /// Share of the observed id range that was called.
    pub id_range_coverage: f64,
    /// Share of item calls answered 404.
    pub not_found_share: f64,
    /// Coefficient of variation of the time between calls (null with too few calls).
    pub think_time_cv: Option<f64>,
    /// Hours of the day holding at least 2% of its calls.
    pub active_hours: u32,
    /// Calls per UTC hour of day.
    pub hour_profile: Vec<u32>,
    /// The most calls in one second.
    pub max_per_second: u32,
}

/// One consumer-hour of behaviour (the last 48 hours are kept).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeatureHourOut {
    /// The hour's start, RFC 3339.
    pub hour: String,
    pub requests: u64,
    /// Distinct client networks (IPv4 /24, IPv6 /48).
    pub networks: u32,
    /// Distinct TLS clients (ClientHello fingerprints, where the gateway terminates TLS).
    pub tls_clients: u32,
    /// The most calls in one second.
    pub max_per_second: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsumerFeatures {
    pub consumer: String,
    /// Oldest first, up to five weeks.
    pub days: Vec<FeatureDayOut>,
    /// Oldest first, the last 48 hours with calls.
    pub hours: Vec<FeatureHourOut>,
    /// The plan-policy rule blocking the consumer now, if any.
    pub blocked_by: Option<String>,
}

/// The behavioural features kept for one consumer, or `None` when it has no traffic.
pub fn consumer_features(state: &AppState, id: &str) -> Option<ConsumerFeatures> {
    let (days, hours) = state.governance.consumer(id)?;
    let r3 = clientele_governance::judge::round3;
    Some(ConsumerFeatures {
        consumer: id.to_string(),
        days: days
            .into_iter()
            .map(|d| FeatureDayOut {
                day: clientele_governance::judge::day_label(d.day),
                requests: d.counts.requests,
                networks: d.networks,
                asns: d.asns,
                countries: d.countries.codes().collect(),
                max_countries_per_hour: d.max_countries_per_hour,
                user_agents: d.user_agents,
                tls_clients: d.tls_clients,
                max_tls_clients_per_hour: d.max_tls_clients_per_hour,
                sessions: d.sessions,
                end_users: d.end_users,
                distinct_ids: d.distinct_ids,
                sequential_share: r3(d.counts.sequential_share()),
                id_range_coverage: r3(d.id_coverage()),
                not_found_share: r3(d.counts.not_found_share()),
                think_time_cv: d.counts.gap_cv().map(r3),
                active_hours: d.active_hours(),
                hour_profile: d.hour_requests.to_vec(),
                max_per_second: d.max_per_second,
            })
            .collect(),
        hours: hours
            .into_iter()
            .map(|h| FeatureHourOut {
                hour: format_ts(h.hour * clientele_governance::features::HOUR_MS),
                requests: h.counts.requests,
                networks: h.networks.count(),
                tls_clients: h.tls_clients.count(),
                max_per_second: h.max_per_second,
            })
            .collect(),
        blocked_by: state
            .governance
            .blocked()
            .into_iter()
            .find(|(c, _)| c == id)
            .map(|(_, r)| r.as_str().to_string()),
    })
}

#[utoipa::path(get, path = "/v1/governance/consumers/{id}", params(("id" = String, Path, description = "consumer id")),
    responses((status = 200, body = ConsumerFeatures), (status = 404, description = "no traffic from this consumer is kept")),
    security(("admin_token" = [])))]
pub async fn features(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConsumerFeatures>, ApiError> {
    consumer_features(&state, &id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no behaviour is kept for consumer {id:?}: it has made no calls in the last five weeks"
        ))
    })
}

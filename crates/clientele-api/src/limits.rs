//! Per-consumer limits: the overrides an operator sets, the effective policy, live quota usage
//! and each consumer's share of its limits over time.
//!
//! The share of the rate limit in a time step is the requests the consumer was allowed in that
//! step divided by what its sustained rate allows in it. A consumer that sits near 1.0 needs a
//! higher tier (or is a loop); one far below it is over-provisioned.

use std::sync::Arc;

use axum::extract::{Path, State};
use clientele_analytics::{MINUTE_MS, Query as AQuery};
use clientele_core::consumer::Consumer;
use clientele_core::limits::{LimitOverride, LimitPolicy, LimitSlot, Periods};
use clientele_core::time::{format_ts, now_ms};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, Json, Query};
use crate::handlers::{check_limits, existing_consumer, pick_step, window};

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteLimitOut {
    /// `"GET /search"` or `"/search"` (every method).
    pub route: String,
    pub rate_per_second: f64,
    pub burst: u32,
}

/// The limits a consumer is held to: its plan's with its own overrides on top.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectiveLimits {
    /// `null` when only quotas or route limits apply.
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub quota_per_day: Option<u64>,
    pub quota_per_month: Option<u64>,
    pub routes: Vec<RouteLimitOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUsageOut {
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// `used / limit`.
    pub share: f64,
    /// RFC 3339: when the period ends (UTC midnight, or the first of next month).
    pub resets_at: String,
}

/// One budget of AI traffic and its use (this node's count, which mirrors the cluster's in
/// Redis mode).
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetUsageOut {
    /// The config key: `budget_usd_per_day`, `budget_usd_per_month`, `tokens_per_day`,
    /// `tokens_per_month`.
    pub budget: String,
    /// `usd` or `tokens`.
    pub unit: String,
    pub limit: f64,
    pub used: f64,
    pub remaining: f64,
    pub share: f64,
    /// RFC 3339: when the period ends.
    pub resets_at: String,
}

/// One per-session budget that applies.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBudgetOut {
    /// The config key: `budget_usd_per_session` or `tokens_per_session`.
    pub budget: String,
    /// `usd` or `tokens`.
    pub unit: String,
    pub limit: f64,
}

fn session_budgets_of(policy: Option<&LimitPolicy>) -> Vec<SessionBudgetOut> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    policy
        .session_budgets
        .kinds()
        .into_iter()
        .filter_map(|(kind, limit)| {
            let limit = limit?;
            let usd = kind.is_usd();
            Some(SessionBudgetOut {
                budget: kind.budget_key()?.to_string(),
                unit: if usd { "usd" } else { "tokens" }.to_string(),
                limit: if usd {
                    limit as f64 / 1e6
                } else {
                    limit as f64
                },
            })
        })
        .collect()
}

fn budgets_of(
    policy: Option<&LimitPolicy>,
    slot: Option<&Arc<LimitSlot>>,
    now: i64,
) -> Vec<BudgetUsageOut> {
    use clientele_core::limits::BUDGET_KINDS;
    let Some(policy) = policy else {
        return Vec::new();
    };
    let p = Periods::at(now);
    let keys = [
        "budget_usd_per_day",
        "budget_usd_per_month",
        "tokens_per_day",
        "tokens_per_month",
    ];
    let mut out = Vec::new();
    for (i, kind) in BUDGET_KINDS.into_iter().enumerate() {
        let Some(limit) = policy.budgets.0[i] else {
            continue;
        };
        let (period, left) = if kind.is_monthly() {
            (p.month, p.month_left_ms)
        } else {
            (p.day, p.day_left_ms)
        };
        let used = slot.map_or(0, |s| s.budget[i].used(period));
        let scale = if i < 2 { 1e6 } else { 1.0 };
        out.push(BudgetUsageOut {
            budget: keys[i].to_string(),
            unit: if i < 2 { "usd" } else { "tokens" }.to_string(),
            limit: limit as f64 / scale,
            used: used as f64 / scale,
            remaining: limit.saturating_sub(used) as f64 / scale,
            share: used as f64 / limit.max(1) as f64,
            resets_at: format_ts(now + left),
        });
    }
    out
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LimitSharePoint {
    pub ts: String,
    pub requests: u64,
    pub rate_limited: u64,
    /// Allowed requests in the step over what the sustained rate allows in it; `null` when
    /// there is no rate limit.
    pub share_of_rate: Option<f64>,
    /// The busiest moment of the step: its busiest minute's share of the rate (while the
    /// minute tier holds the step), and at least 1 when requests were refused in it, since a
    /// refusal means the consumer had used all of its rate at that second. A burst that is
    /// refused many times shows here even when the step's mean is a fraction of a percent.
    pub peak_share_of_rate: Option<f64>,
}

/// `GET /v1/consumers/{id}/limits`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerLimits {
    pub consumer: String,
    pub plan: Option<String>,
    /// What is set on the consumer itself.
    #[schema(value_type = Option<Object>)]
    pub overrides: Option<LimitOverride>,
    /// `null` when the consumer is unlimited.
    pub effective: Option<EffectiveLimits>,
    /// `local` (each node enforces its own) or `redis` (one limit across the cluster).
    pub mode: String,
    pub day: Option<QuotaUsageOut>,
    pub month: Option<QuotaUsageOut>,
    /// The budgets of AI traffic that apply, with their use in the current period.
    pub budgets: Vec<BudgetUsageOut>,
    /// The budgets of each of the consumer's sessions (`budget_usd_per_session`,
    /// `tokens_per_session`): what one session named by the session header may spend. Their
    /// use is per session, so it is not shown here.
    pub session_budgets: Vec<SessionBudgetOut>,
    pub from: String,
    pub to: String,
    pub step: String,
    pub rate_limited: u64,
    /// The busiest moment's share of the rate limit over the window (the highest step
    /// `peak_share_of_rate`), and the mean of the steps' shares.
    pub peak_share_of_rate: Option<f64>,
    pub mean_share_of_rate: Option<f64>,
    pub series: Vec<LimitSharePoint>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitsQuery {
    /// RFC 3339 or epoch ms; default 24 h before `to`.
    pub from: Option<String>,
    /// RFC 3339 or epoch ms; default now.
    pub to: Option<String>,
    /// Series step, e.g. `1m`, `1h`; chosen from the window when absent.
    pub step: Option<String>,
    /// Only consumers on this plan (`GET /v1/limits`).
    pub plan: Option<String>,
}

/// One row of `GET /v1/limits`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsRow {
    pub consumer: String,
    pub plan: Option<String>,
    pub rate_per_second: Option<f64>,
    pub quota_per_day: Option<u64>,
    pub quota_per_month: Option<u64>,
    pub day_used: u64,
    pub month_used: u64,
    /// The larger of the day's and the month's quota share (0 without quotas).
    pub quota_share: f64,
    pub requests: u64,
    pub rate_limited: u64,
    pub peak_share_of_rate: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsOverview {
    pub from: String,
    pub to: String,
    pub mode: String,
    /// Consumers with any limit, the most constrained first.
    pub consumers: Vec<LimitsRow>,
}

fn policy_of(state: &AppState, c: &Consumer) -> Option<LimitPolicy> {
    LimitPolicy::for_consumer(c, state.keys.plans())
}

fn effective(p: &LimitPolicy) -> EffectiveLimits {
    EffectiveLimits {
        rate_per_second: p.has_rate().then_some(p.rate_per_second),
        burst: p.has_rate().then_some(p.burst),
        quota_per_day: p.quota_per_day,
        quota_per_month: p.quota_per_month,
        routes: p
            .routes
            .iter()
            .map(|(m, l)| RouteLimitOut {
                route: m.to_string(),
                rate_per_second: l.rate_per_second,
                burst: l.burst,
            })
            .collect(),
    }
}

fn quota(limit: Option<u64>, used: u64, left_ms: i64, now: i64) -> Option<QuotaUsageOut> {
    limit.map(|limit| QuotaUsageOut {
        limit,
        used,
        remaining: limit.saturating_sub(used),
        share: round4(used as f64 / limit as f64),
        resets_at: format_ts(now + left_ms),
    })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Quota usage from this node's slot for the consumer (mirrors the cluster's in Redis mode).
fn usage(slot: Option<&Arc<LimitSlot>>, now: i64) -> (u64, u64) {
    let p = Periods::at(now);
    slot.map_or((0, 0), |s| (s.day.used(p.day), s.month.used(p.month)))
}

/// Share-of-rate points for one consumer over a window.
fn share_series(
    state: &AppState,
    consumer: &str,
    policy: Option<&LimitPolicy>,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
) -> Vec<LimitSharePoint> {
    let q = AQuery {
        from_ms,
        to_ms,
        api: None,
        consumers: Some([consumer.to_string()].into()),
    };
    let rate = policy.filter(|p| p.has_rate()).map(|p| p.rate_per_second);
    let capacity = rate.map(|r| r * step_ms as f64 / 1000.0);
    // The busiest minute of each step, from the minute tier (empty past its retention).
    let mut busiest: std::collections::BTreeMap<i64, u64> = Default::default();
    if rate.is_some() && step_ms > MINUTE_MS {
        for (ts, r) in state.engine.consumer_series(&q, consumer, MINUTE_MS) {
            let allowed = r.counters.requests.saturating_sub(r.counters.rate_limited);
            let step = ts - ts.rem_euclid(step_ms);
            let e = busiest.entry(step).or_default();
            *e = (*e).max(allowed);
        }
    }
    state
        .engine
        .consumer_series(&q, consumer, step_ms)
        .into_iter()
        .map(|(ts, r)| {
            let k = &r.counters;
            let allowed = k.requests.saturating_sub(k.rate_limited);
            let share = capacity.map(|c| allowed as f64 / c);
            let peak = rate.map(|rate| {
                let minute = busiest.get(&ts).map_or(0.0, |m| *m as f64 / (rate * 60.0));
                let refused = if k.rate_limited > 0 { 1.0 } else { 0.0 };
                round4(minute.max(refused).max(share.unwrap_or(0.0)))
            });
            LimitSharePoint {
                ts: format_ts(ts),
                requests: k.requests,
                rate_limited: k.rate_limited,
                share_of_rate: share.map(round4),
                peak_share_of_rate: peak,
            }
        })
        .collect()
}

fn peak_and_mean(series: &[LimitSharePoint]) -> (Option<f64>, Option<f64>) {
    let shares: Vec<f64> = series.iter().filter_map(|p| p.share_of_rate).collect();
    if shares.is_empty() {
        return (None, None);
    }
    let peak = series
        .iter()
        .filter_map(|p| p.peak_share_of_rate.or(p.share_of_rate))
        .fold(0.0, f64::max);
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    (Some(peak), Some(round4(mean)))
}

async fn consumer_limits(
    state: &AppState,
    id: &str,
    q: &LimitsQuery,
) -> Result<ConsumerLimits, ApiError> {
    let consumer = existing_consumer(state, id).await?;
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    let (step, step_ms) = pick_step(&q.step, from_ms, to_ms)?;
    let policy = policy_of(state, &consumer);
    let now = now_ms();
    let periods = Periods::at(now);
    let slots = state.keys.slots();
    let (day_used, month_used) = usage(slots.get(id), now);
    let st = state.clone();
    let (cid, pol) = (id.to_string(), policy.clone());
    let series = tokio::task::spawn_blocking(move || {
        share_series(&st, &cid, pol.as_ref(), from_ms, to_ms, step_ms)
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    let (peak, mean) = peak_and_mean(&series);
    Ok(ConsumerLimits {
        consumer: consumer.id.clone(),
        plan: consumer.plan.clone(),
        overrides: consumer.limits.clone(),
        effective: policy.as_ref().map(effective),
        mode: state.limiter_mode.to_string(),
        day: quota(
            policy.as_ref().and_then(|p| p.quota_per_day),
            day_used,
            periods.day_left_ms,
            now,
        ),
        month: quota(
            policy.as_ref().and_then(|p| p.quota_per_month),
            month_used,
            periods.month_left_ms,
            now,
        ),
        budgets: budgets_of(policy.as_ref(), slots.get(id), now),
        session_budgets: session_budgets_of(policy.as_ref()),
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        step,
        rate_limited: series.iter().map(|p| p.rate_limited).sum(),
        peak_share_of_rate: peak,
        mean_share_of_rate: mean,
        series,
    })
}

#[utoipa::path(get, path = "/v1/consumers/{id}/limits", params(("id" = String, Path), LimitsQuery),
    responses((status = 200, body = ConsumerLimits), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn get_limits(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LimitsQuery>,
) -> Result<Json<ConsumerLimits>, ApiError> {
    Ok(Json(consumer_limits(&state, &id, &q).await?))
}

/// Replaces the consumer's own limits. Fields left out fall back to the plan's.
#[utoipa::path(put, path = "/v1/consumers/{id}/limits", params(("id" = String, Path)), request_body = Object,
    responses((status = 200, body = ConsumerLimits), (status = 404), (status = 422)), security(("admin_token" = [])))]
pub async fn put_limits(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<ConsumerLimits>, ApiError> {
    // An array would deserialize as an empty override and silently wipe every limit set.
    if !body.is_object() {
        return Err(ApiError::unprocessable(
            "the body must be a JSON object of limits, e.g. {\"rate_per_second\": 10}; to remove every override, send DELETE",
        ));
    }
    let body: LimitOverride = serde_json::from_value(body)
        .map_err(|e| ApiError::unprocessable(format!("limits: {e}")))?;
    check_limits(&Some(body.clone()))?;
    let mut consumer = existing_consumer(&state, &id).await?;
    consumer.limits = Some(body).filter(|l| !l.is_empty());
    state.control.update_consumer(consumer).await?;
    state.reload_consumer_keys(&id).await?;
    let q = LimitsQuery {
        from: None,
        to: None,
        step: None,
        plan: None,
    };
    Ok(Json(consumer_limits(&state, &id, &q).await?))
}

/// Removes the consumer's own limits: its plan's apply again.
#[utoipa::path(delete, path = "/v1/consumers/{id}/limits", params(("id" = String, Path)),
    responses((status = 204), (status = 404)), security(("admin_token" = [])))]
pub async fn delete_limits(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let mut consumer = existing_consumer(&state, &id).await?;
    consumer.limits = None;
    state.control.update_consumer(consumer).await?;
    state.reload_consumer_keys(&id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Every limited consumer with its quota usage, 429s and peak share of its rate limit over the
/// window, the most constrained first: who needs a higher tier, or help with backoff.
#[utoipa::path(get, path = "/v1/limits", params(LimitsQuery),
    responses((status = 200, body = LimitsOverview), (status = 400)), security(("admin_token" = [])))]
pub async fn overview(
    State(state): State<AppState>,
    Query(q): Query<LimitsQuery>,
) -> Result<Json<LimitsOverview>, ApiError> {
    let (from_ms, to_ms) = window(&q.from, &q.to)?;
    // The peak is judged per minute where the minute tier covers the window, else per hour.
    let (_, step_ms) = pick_step(&None, from_ms, to_ms)?;
    let consumers = state.control.list_consumers().await?;
    let now = now_ms();
    let slots = state.keys.slots();
    let st = state.clone();
    let plan = q.plan.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        for c in consumers {
            if plan.as_ref().is_some_and(|p| c.plan.as_ref() != Some(p)) {
                continue;
            }
            let Some(policy) = policy_of(&st, &c) else {
                continue;
            };
            let (day_used, month_used) = usage(slots.get(c.id.as_str()), now);
            let series = share_series(&st, &c.id, Some(&policy), from_ms, to_ms, step_ms);
            let (peak, _) = peak_and_mean(&series);
            let share =
                |used: u64, limit: Option<u64>| limit.map_or(0.0, |l| used as f64 / l as f64);
            rows.push(LimitsRow {
                quota_share: round4(
                    share(day_used, policy.quota_per_day)
                        .max(share(month_used, policy.quota_per_month)),
                ),
                consumer: c.id,
                plan: c.plan,
                rate_per_second: policy.has_rate().then_some(policy.rate_per_second),
                quota_per_day: policy.quota_per_day,
                quota_per_month: policy.quota_per_month,
                day_used,
                month_used,
                requests: series.iter().map(|p| p.requests).sum(),
                rate_limited: series.iter().map(|p| p.rate_limited).sum(),
                peak_share_of_rate: peak,
            });
        }
        let pressure = |r: &LimitsRow| r.quota_share.max(r.peak_share_of_rate.unwrap_or(0.0));
        rows.sort_by(|a, b| {
            pressure(b)
                .total_cmp(&pressure(a))
                .then(b.rate_limited.cmp(&a.rate_limited))
                .then(a.consumer.cmp(&b.consumer))
        });
        rows
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("query failed: {e}")))?;
    Ok(Json(LimitsOverview {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        mode: state.limiter_mode.to_string(),
        consumers: rows,
    }))
}

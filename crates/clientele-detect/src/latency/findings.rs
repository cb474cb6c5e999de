//! The findings of the latency detector: per consumer, one per run of regressed hours outside
//! the API's own regressions; and one per run of API-wide hours.

use clientele_analytics::{HOUR_MS, Rollup, Tier};
use clientele_core::finding::{Finding, FindingKind, Severity};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde_json::json;

use super::routes::RouteRun;
use super::{Baseline, LatencyDetector, Obs};
use crate::text::{count, millis, r3, times, ts, when};
use crate::{EvalContext, new_finding_id, runs};

/// A run of hours as a finding's first and last seen times (the last hour may be partial).
fn seen(ctx: &EvalContext<'_>, first_hour: i64, last_hour: i64) -> (i64, i64) {
    (
        first_hour * HOUR_MS,
        ((last_hour + 1) * HOUR_MS).min(ctx.now_ms),
    )
}

/// Five times slower than usual is critical.
fn severity(slowdown: f64) -> Severity {
    if slowdown >= 5.0 {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

/// The API's p95 per hour, every consumer's rollups of the hour merged: what the API as a whole
/// did. Memoised: hundreds of findings name the same few hours, and each hour is a scan of
/// every consumer.
#[derive(Default)]
struct ApiHours(HashMap<i64, f64>);

impl ApiHours {
    fn p95(&mut self, ctx: &EvalContext<'_>, hour: i64) -> f64 {
        *self.0.entry(hour).or_insert_with(|| {
            let mut all = Rollup::default();
            ctx.engine.scan_consumers(
                Tier::Hour,
                hour * HOUR_MS,
                (hour + 1) * HOUR_MS,
                |_, _, r| all.merge(r),
            );
            all.quantile(0.95).unwrap_or(0.0)
        })
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write(
    d: &LatencyDetector,
    ctx: &EvalContext<'_>,
    baselines: &HashMap<u32, Baseline>,
    global_base: &Rollup,
    regressed: HashMap<u32, Vec<Obs>>,
    route_runs: &[RouteRun],
    api_hours: &HashSet<i64>,
    judged: &HashMap<i64, usize>,
    bad: &HashMap<i64, HashSet<u32>>,
) -> Vec<Finding> {
    let global_p95 = global_base.quantile(0.95).unwrap_or(0.0);
    let mut api = ApiHours::default();
    let mut out = Vec::new();
    let mut consumers: Vec<_> = regressed.into_iter().collect();
    consumers.sort_by_key(|(c, _)| *c);
    for (c, list) in consumers {
        let Some(b) = baselines.get(&c) else { continue };
        let list: Vec<Obs> = list
            .into_iter()
            .filter(|o| !api_hours.contains(&o.hour))
            .collect();
        let hours: Vec<((), i64)> = list.iter().map(|o| ((), o.hour)).collect();
        for ((), run) in runs(hours) {
            let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
                continue;
            };
            let in_run: Vec<&Obs> = list
                .iter()
                .filter(|o| (first..=last).contains(&o.hour))
                .collect();
            let Some(worst) = in_run.iter().max_by(|a, b| a.p95.total_cmp(&b.p95)) else {
                continue;
            };
            let Some(peak) = in_run.iter().max_by(|a, b| a.z.total_cmp(&b.z)) else {
                continue;
            };
            let first_hour = in_run.iter().map(|o| o.onset_hour).min().unwrap_or(first);
            out.push(consumer_finding(
                d, ctx, &mut api, c, b, global_p95, first_hour, last, worst, peak,
            ));
        }
    }
    for run in route_runs {
        out.push(route_finding(d, ctx, run));
    }
    let mut hours: Vec<((), i64)> = api_hours.iter().map(|h| ((), *h)).collect();
    hours.sort();
    for ((), run) in runs(hours) {
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            continue;
        };
        let now_p95 = api.p95(ctx, last);
        let judged_n = judged.get(&last).copied().unwrap_or(0);
        let bad_n = bad.get(&last).map_or(0, HashSet::len);
        let (first_seen, last_seen) = seen(ctx, first, last);
        out.push(Finding {
            id: new_finding_id(),
            kind: FindingKind::LatencyRegression,
            consumer: None,
            api: None,
            route: None,
            severity: if now_p95 >= 5.0 * global_p95 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            first_seen_ms: first_seen,
            last_seen_ms: last_seen,
            summary: format!(
                "The API slowed down for {bad_n} of {} consumers since {}: p95 is {} against a usual {}; this is an API problem, not a customer's.",
                count(judged_n as f64),
                when(first_seen),
                millis(now_p95),
                millis(global_p95)
            ),
            evidence: json!({
                "window": {"from": ts(first_seen), "to": ts(last_seen)},
                "observed": {"p95_ms": r3(now_p95), "consumers_regressed": bad_n, "consumers_judged": judged_n},
                "baseline": {"p95_ms": r3(global_p95), "days": d.config.baseline_days},
            }),
        });
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn consumer_finding(
    d: &LatencyDetector,
    ctx: &EvalContext<'_>,
    api: &mut ApiHours,
    c: u32,
    b: &Baseline,
    global_p95: f64,
    first_hour: i64,
    last: i64,
    worst: &Obs,
    peak: &Obs,
) -> Finding {
    let (first_seen, last_seen) = seen(ctx, first_hour, last);
    let consumer = ctx.name(c);
    let ratio = worst.p95 / b.p95.max(1e-3);
    let others_now = api.p95(ctx, worst.hour);
    let window_from = (worst.hour + 1 - worst.window_hours) * HOUR_MS;
    Finding {
        id: new_finding_id(),
        kind: FindingKind::LatencyRegression,
        consumer: Some(consumer.to_string()),
        api: None,
        route: None,
        severity: severity(ratio),
        first_seen_ms: first_seen,
        last_seen_ms: last_seen,
        summary: format!(
            "{consumer}'s p95 latency rose from {} to {} ({}) since {}, while the API as a whole is at {}; look at what its requests do differently (heavier queries, larger payloads, a slow route it started using).",
            millis(b.p95),
            millis(worst.p95),
            times(ratio),
            when(first_seen),
            millis(others_now)
        ),
        evidence: json!({
            "window": {"from": ts(first_seen), "to": ts(last_seen)},
            "observed": {"p95_ms": r3(worst.p95), "requests": worst.n, "window_from": ts(window_from), "window_hours": worst.window_hours},
            "baseline": {"p95_ms": r3(b.p95), "worst_day_p95_ms": r3(b.worst), "days": d.config.baseline_days, "method": "median of daily p95"},
            "api_p95_ms": r3(others_now),
            "api_baseline_p95_ms": r3(global_p95),
            "test": {
                "method": "binomial likelihood ratio on the share slower than the baseline p95",
                "z": r3(peak.z),
                "window_hours": peak.window_hours,
                "significance_per_consumer_day": d.config.significance,
            },
        }),
    }
}

/// A route slowed down for most of its callers: one finding, consumer null, on the route.
fn route_finding(d: &LatencyDetector, ctx: &EvalContext<'_>, run: &RouteRun) -> Finding {
    let (api, method, route) = run.route;
    let op = format!("{} {}", ctx.name(method), ctx.name(route));
    let (first_seen, last_seen) = seen(ctx, run.first_hour, run.last_hour);
    let ratio = run.worst.p95 / run.base_p95.max(1e-3);
    Finding {
        id: new_finding_id(),
        kind: FindingKind::LatencyRegression,
        consumer: None,
        api: Some(ctx.name(api).to_string()).filter(|a| !a.is_empty()),
        route: Some(op.clone()),
        severity: severity(ratio),
        first_seen_ms: first_seen,
        last_seen_ms: last_seen,
        summary: format!(
            "{op} slowed down for {} of the {} consumers calling it since {}: p95 {} against a usual {} ({}); this is the API, not a customer's integration.",
            run.affected,
            run.calling,
            when(first_seen),
            millis(run.worst.p95),
            millis(run.base_p95),
            times(ratio)
        ),
        evidence: json!({
            "window": {"from": ts(first_seen), "to": ts(last_seen)},
            "observed": {"p95_ms": r3(run.worst.p95), "requests": run.worst.n, "window_hours": run.worst.window_hours},
            "baseline": {"p95_ms": r3(run.base_p95), "days": d.config.baseline_days, "method": "median of the route's daily p95"},
            "consumers": {"affected": run.affected, "calling": run.calling},
            "test": {
                "method": "binomial likelihood ratio on the share slower than the route's baseline p95, callers pooled",
                "z": r3(run.peak.z),
                "window_hours": run.peak.window_hours,
                "significance_per_route_day": d.config.significance,
            },
        }),
    }
}

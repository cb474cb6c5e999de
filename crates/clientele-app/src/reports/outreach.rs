//! The outreach report: whom to contact now and what to say. A ranked short list built from
//! the stored findings (error spikes, integration errors, schema violations, rate-limit retry
//! storms, deprecated calls) and, for paying consumers, volume drops read from the day rollups
//! (churn risk). One item per consumer: its strongest reason, with the others beside it. Each
//! draft message cites numbers read from the rollups since the condition started, and the
//! release it followed when one was marked in the two days before.

use std::collections::{BTreeMap, HashMap};

use clientele_analytics::{DAY_MS, Engine, Query, Tier};
use clientele_core::config::PlanConfig;
use clientele_core::finding::{Finding, FindingKind, Severity};
use clientele_core::time::format_ts;
use clientele_store::Release;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Table, pct, plans_by_value, release_before, round4};

/// A release this close before a condition started is named as its likely cause.
pub const RELEASE_WINDOW_MS: i64 = 2 * DAY_MS;
/// Findings last seen this long ago are no longer news.
pub const FINDINGS_WINDOW_MS: i64 = 14 * DAY_MS;
/// A paying consumer whose last 7 days carry less than this share of its usual week.
pub const CHURN_DROP: f64 = 0.5;
/// ...and whose usual week had at least this many requests.
pub const CHURN_MIN_WEEK: u64 = 100;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReleaseRef {
    pub api: String,
    pub version: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutreachItem {
    pub consumer: String,
    pub plan: Option<String>,
    /// `integration_errors`, `schema_violation`, `retry_storm`, `deprecated_usage`,
    /// `churn_risk`, ...
    pub reason: String,
    pub score: f64,
    pub since: String,
    /// The release the condition followed, if one was marked just before it.
    pub release: Option<ReleaseRef>,
    pub evidence: Value,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutreachReport {
    pub at: String,
    pub items: Vec<OutreachItem>,
}

fn kind_weight(kind: FindingKind) -> Option<(f64, &'static str)> {
    Some(match kind {
        FindingKind::IntegrationErrors => (5.0, "integration_errors"),
        FindingKind::ErrorSpike => (4.0, "error_spike"),
        FindingKind::SchemaViolation => (4.0, "schema_violation"),
        FindingKind::RateLimited => (3.0, "retry_storm"),
        FindingKind::QuotaPressure => (2.0, "quota_pressure"),
        FindingKind::DeprecatedUsage => (3.0, "deprecated_usage"),
        FindingKind::VolumeDrop => (3.0, "churn_risk"),
        FindingKind::LatencyRegression => (2.0, "latency_regression"),
        FindingKind::BudgetExceeded => (2.0, "budget_exceeded"),
        FindingKind::AgentLoop => (1.5, "agent_loop"),
        FindingKind::UndocumentedStatus => (1.0, "undocumented_status"),
        _ => return None,
    })
}

fn severity_weight(s: Severity) -> f64 {
    match s {
        Severity::Critical => 3.0,
        Severity::Warning => 2.0,
        Severity::Info => 1.0,
    }
}

struct Candidate {
    score: f64,
    reason: &'static str,
    since_ms: i64,
    api: Option<String>,
    route: Option<String>,
    summary: String,
    finding: Option<Value>,
    sunset: Option<String>,
    churn: Option<(u64, u64)>,
}

/// The outreach report as of `at_ms`, at most `limit` items, from `findings` (any order).
#[allow(clippy::too_many_arguments)]
pub fn outreach(
    engine: &Engine,
    plan_of: &dyn Fn(&str) -> Option<String>,
    display_name: &dyn Fn(&str) -> String,
    plans: &BTreeMap<String, PlanConfig>,
    findings: &[Finding],
    releases: &[Release],
    at_ms: i64,
    limit: usize,
) -> OutreachReport {
    let ranked = plans_by_value(plans);
    // Paying = above the entry plan. More valuable plans weigh more: losing them costs more.
    let plan_factor = |plan: Option<&str>| -> f64 {
        match plan.and_then(|p| ranked.iter().position(|(n, _)| *n == p)) {
            Some(i) => 1.0 + i as f64 / ranked.len().max(1) as f64,
            None => 1.0,
        }
    };
    let paying = |plan: Option<&str>| {
        plan.and_then(|p| ranked.iter().position(|(n, _)| *n == p))
            .is_some_and(|i| i > 0)
    };
    let mut by_consumer: HashMap<String, Vec<Candidate>> = HashMap::new();
    for f in findings {
        let Some(consumer) = &f.consumer else {
            continue;
        };
        if f.last_seen_ms < at_ms - FINDINGS_WINDOW_MS {
            continue;
        }
        let Some((w, reason)) = kind_weight(f.kind) else {
            continue;
        };
        let plan = plan_of(consumer);
        if f.kind == FindingKind::VolumeDrop && !paying(plan.as_deref()) {
            continue;
        }
        let after_release = release_before(
            releases,
            f.api.as_deref(),
            f.first_seen_ms,
            RELEASE_WINDOW_MS,
        );
        let score = w
            * severity_weight(f.severity)
            * plan_factor(plan.as_deref())
            * if after_release.is_some() { 1.5 } else { 1.0 };
        by_consumer.entry(consumer.clone()).or_default().push(Candidate {
            score,
            reason,
            since_ms: f.first_seen_ms,
            api: f.api.clone(),
            route: f.route.clone(),
            summary: f.summary.clone(),
            finding: Some(json!({"id": f.id, "kind": f.kind.as_str(), "severity": f.severity.as_str(), "summary": f.summary})),
            sunset: f.evidence.get("sunset").and_then(Value::as_str).map(str::to_string),
            churn: None,
        });
    }
    // Churn risk from the rollups: the last 7 whole days against the 21 before them.
    let today = at_ms.div_euclid(DAY_MS) * DAY_MS;
    let names = engine.names();
    let mut weeks: HashMap<u32, (u64, u64)> = HashMap::new();
    engine.scan_consumers(Tier::Day, today - 28 * DAY_MS, today, |day, c, r| {
        let e = weeks.entry(c).or_default();
        if day >= today - 7 * DAY_MS {
            e.1 += r.counters.requests;
        } else {
            e.0 += r.counters.requests;
        }
    });
    for (id, (before, last)) in weeks {
        let usual = before / 3;
        let Some(consumer) = names.get(id as usize).map(|n| n.to_string()) else {
            continue;
        };
        let plan = plan_of(&consumer);
        if !paying(plan.as_deref())
            || usual < CHURN_MIN_WEEK
            || last as f64 >= CHURN_DROP * usual as f64
        {
            continue;
        }
        let list = by_consumer.entry(consumer).or_default();
        if list.iter().any(|c| c.reason == "churn_risk") {
            continue;
        }
        list.push(Candidate {
            score: 3.0 * 2.0 * plan_factor(plan.as_deref()),
            reason: "churn_risk",
            since_ms: today - 7 * DAY_MS,
            api: None,
            route: None,
            summary: format!(
                "requests fell from about {usual} a week to {last} in the last 7 days"
            ),
            finding: None,
            sunset: None,
            churn: Some((usual, last)),
        });
    }

    let mut items: Vec<OutreachItem> = by_consumer
        .into_iter()
        .filter_map(|(consumer, mut cands)| {
            cands.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.since_ms.cmp(&b.since_ms)));
            let mut cands = cands.into_iter();
            let best = cands.next()?;
            let others: Vec<Value> = cands
                .map(|c| json!({"reason": c.reason, "since": format_ts(c.since_ms), "summary": c.summary}))
                .collect();
            Some(item(engine, plan_of(&consumer), &display_name(&consumer), consumer, best, others, releases, at_ms))
        })
        .collect();
    items.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.consumer.cmp(&b.consumer))
    });
    items.truncate(limit);
    OutreachReport {
        at: format_ts(at_ms),
        items,
    }
}

#[allow(clippy::too_many_arguments)]
fn item(
    engine: &Engine,
    plan: Option<String>,
    display: &str,
    consumer: String,
    best: Candidate,
    others: Vec<Value>,
    releases: &[Release],
    at_ms: i64,
) -> OutreachItem {
    let release = release_before(
        releases,
        best.api.as_deref(),
        best.since_ms,
        RELEASE_WINDOW_MS,
    );
    let after = match release {
        Some(r) => format!("after our {} release", r.version),
        None => format!("since {}", day(best.since_ms)),
    };
    // The numbers since the condition began, from the rollups of the route it is about.
    let mut evidence = json!({"summary": best.summary, "other_reasons": others});
    if let Some(f) = &best.finding {
        evidence["finding"] = f.clone();
    }
    let route_stats = best
        .route
        .as_deref()
        .and_then(|r| r.split_once(' '))
        .and_then(|(method, route)| {
            engine
                .routes(
                    &Query {
                        from_ms: best.since_ms,
                        to_ms: at_ms.max(best.since_ms + 1),
                        api: best.api.clone(),
                        ..Default::default()
                    },
                    Some(&consumer),
                )
                .into_iter()
                .find(|row| row.method == method && row.route == route)
        });
    if let Some(r) = &route_stats {
        let c = &r.rollup.counters;
        evidence["route"] = json!({
            "method": r.method, "route": r.route, "requests": c.requests,
            "errors_4xx": c.s4xx, "errors_5xx": c.s5xx, "rate_limited": c.rate_limited,
            "error_rate": round4(c.error_rate()),
        });
    }
    let hi = format!("Hi {display},");
    let since = day(best.since_ms);
    // Messages speak to the consumer: the finding's summary is written for the product team,
    // so it stays in the evidence and only numbers go into the message.
    let message = match (best.reason, &route_stats) {
        ("integration_errors" | "error_spike" | "schema_violation", Some(r)) => {
            let c = &r.rollup.counters;
            let class = if c.s5xx > c.s4xx.saturating_sub(c.rate_limited) {
                "5xx"
            } else {
                "4xx"
            };
            let what = if best.reason == "schema_violation" {
                "answers that do not match the documented schema".to_string()
            } else {
                format!("{class} errors")
            };
            let when = match release {
                Some(r) => format!("after our {} release ({})", r.version, day(r.at_ms)),
                None => format!("on {since}"),
            };
            format!(
                "{hi} your integration started receiving {what} on {} {} {when}: {} of your calls to it since {since} ({} of {}). Here is what changed, and how to adapt your requests.",
                r.method,
                r.route,
                pct(c.error_rate()),
                c.errors(),
                c.requests,
            )
        }
        ("retry_storm", _) => {
            // Rate-limit findings are about the consumer, not one route: count all its 429s.
            let limited = engine
                .consumer_totals(&Query {
                    from_ms: best.since_ms,
                    to_ms: at_ms.max(best.since_ms + 1),
                    consumers: Some(std::iter::once(consumer.clone()).collect()),
                    ..Default::default()
                })
                .first()
                .map_or(0, |r| r.rollup.counters.rate_limited);
            evidence["rate_limited"] = json!(limited);
            format!(
                "{hi} since {since} your client has been refused with 429{} and retries faster than its limit allows. Waiting for Retry-After before retrying would fix it; if you need more room, we can talk about a bigger plan.",
                if limited > 0 {
                    format!(" {limited} times")
                } else {
                    String::new()
                },
            )
        }
        ("quota_pressure", _) => format!(
            "{hi} your usage has been close to your plan's limits since {since}. So that you are never cut off with 429s, we can move you to a plan with more room."
        ),
        ("deprecated_usage", _) => format!(
            "{hi} you still call {}, which is deprecated{}. We can help you move to its replacement before then.",
            best.route.as_deref().unwrap_or("a deprecated operation"),
            best.sunset
                .as_deref()
                .map(|s| format!(" and goes away on {}", &s[..s.len().min(10)]))
                .unwrap_or_else(|| " and will go away".to_string()),
        ),
        ("churn_risk", _) => {
            let (usual, last) = best.churn.unwrap_or((0, 0));
            if usual > 0 {
                format!(
                    "{hi} your traffic fell from about {usual} requests a week to {last} in the last 7 days. Is anything wrong on our side, or is there something we can help with?"
                )
            } else {
                format!(
                    "{hi} your traffic dropped {after}. Is anything wrong on our side, or is there something we can help with?"
                )
            }
        }
        _ => format!(
            "{hi} we noticed a change in how your integration works with us {after}. Can we help?"
        ),
    };
    OutreachItem {
        consumer,
        plan,
        reason: best.reason.to_string(),
        score: (best.score * 100.0).round() / 100.0,
        since: format_ts(best.since_ms),
        release: release.map(|r| ReleaseRef {
            api: r.api.clone(),
            version: r.version.clone(),
            at: format_ts(r.at_ms),
        }),
        evidence,
        message,
    }
}

fn day(ms: i64) -> String {
    let s = format_ts(ms);
    s[..s.len().min(10)].to_string()
}

impl OutreachReport {
    pub fn table(&self) -> Table {
        Table {
            header: vec![
                "consumer", "plan", "reason", "score", "since", "release", "message",
            ],
            rows: self
                .items
                .iter()
                .map(|i| {
                    vec![
                        i.consumer.clone(),
                        i.plan.clone().unwrap_or_default(),
                        i.reason.clone(),
                        i.score.to_string(),
                        i.since.clone(),
                        i.release
                            .as_ref()
                            .map(|r| r.version.clone())
                            .unwrap_or_default(),
                        i.message.clone(),
                    ]
                })
                .collect(),
        }
    }
}

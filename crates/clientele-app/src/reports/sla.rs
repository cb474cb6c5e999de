//! The SLA report: per consumer, what it got over the last 28 days (p50/p95/p99 latency and
//! availability) and an SLO it would have met, never tighter than what it gets today, with its
//! error-budget burn over 1 hour, 6 hours and 3 days against the multi-window thresholds of
//! the SRE workbook (14.4, 6 and 1: 2%, 5% and 10% of a 30-day budget spent in the window).
//!
//! Availability counts only the API's failures: `1 - 5xx / requests`. A 4xx is the caller's
//! request being refused, which an SLO does not promise away.

use std::collections::HashSet;

use clientele_analytics::{DAY_MS, Engine, HOUR_MS, Query};
use clientele_core::time::format_ts;
use serde::Serialize;

use super::{Table, opt_num, round2};

pub const WINDOW_MS: i64 = 28 * DAY_MS;

/// Availability targets an SLO is chosen from, best first.
const TARGETS: [f64; 10] = [
    0.9999, 0.9995, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.5,
];

/// Latency targets (ms) an SLO is chosen from: the first at or above the observed p95.
const LATENCY_STEPS: [f64; 16] = [
    10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 1500.0,
    2000.0, 5000.0,
];

/// (name, length, burn-rate threshold).
pub const BURN_WINDOWS: [(&str, i64, f64); 3] = [
    ("1h", HOUR_MS, 14.4),
    ("6h", 6 * HOUR_MS, 6.0),
    ("3d", 3 * DAY_MS, 1.0),
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Proposed {
    pub latency_p95_ms: Option<f64>,
    pub availability: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Burn {
    pub window: &'static str,
    pub requests: u64,
    pub errors_5xx: u64,
    /// Error rate in the window / error budget (1 - proposed availability). 1 spends the
    /// budget exactly over the SLO period.
    pub burn_rate: f64,
    pub threshold: f64,
    pub alerting: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlaItem {
    pub consumer: String,
    pub plan: Option<String>,
    pub requests: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub availability: f64,
    pub proposed: Proposed,
    /// Share of the 28-day error budget left (at least 0 by construction of the proposal).
    pub budget_remaining: f64,
    pub burn: Vec<Burn>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlaReport {
    pub from: String,
    pub to: String,
    pub items: Vec<SlaItem>,
}

fn availability(requests: u64, s5xx: u64) -> f64 {
    if requests == 0 {
        1.0
    } else {
        1.0 - s5xx as f64 / requests as f64
    }
}

/// The best target at or below what was observed: one it would have met.
pub fn proposed_availability(observed: f64) -> f64 {
    TARGETS
        .iter()
        .copied()
        .find(|t| *t <= observed + 1e-12)
        .unwrap_or(0.0)
}

/// The first round latency at or above the observed p95; past the steps, the p95 rounded up to
/// a whole second.
pub fn proposed_latency(p95: f64) -> f64 {
    LATENCY_STEPS
        .iter()
        .copied()
        .find(|s| *s >= p95)
        .unwrap_or_else(|| (p95 / 1000.0).ceil() * 1000.0)
}

/// The SLA report over the 28 days ending at `to_ms`, busiest consumers first, at most `limit`.
pub fn sla(
    engine: &Engine,
    plan_of: &dyn Fn(&str) -> Option<String>,
    to_ms: i64,
    limit: usize,
) -> SlaReport {
    let from_ms = to_ms - WINDOW_MS;
    let rows = engine.consumer_totals(&Query {
        from_ms,
        to_ms,
        ..Default::default()
    });
    let rows: Vec<_> = rows.into_iter().take(limit).collect();
    let wanted: HashSet<String> = rows.iter().map(|r| r.consumer.clone()).collect();
    let windows: Vec<Vec<(String, u64, u64)>> = BURN_WINDOWS
        .iter()
        .map(|(_, len, _)| {
            engine
                .consumer_totals(&Query {
                    from_ms: to_ms - len,
                    to_ms,
                    consumers: Some(wanted.clone()),
                    ..Default::default()
                })
                .into_iter()
                .map(|r| {
                    (
                        r.consumer,
                        r.rollup.counters.requests,
                        r.rollup.counters.s5xx,
                    )
                })
                .collect()
        })
        .collect();
    let items = rows
        .into_iter()
        .map(|row| {
            let c = &row.rollup.counters;
            let [p50, p95, p99] = row.rollup.quantiles([0.5, 0.95, 0.99]);
            let avail = availability(c.requests, c.s5xx);
            let target = proposed_availability(avail);
            let budget = 1.0 - target;
            let budget_remaining = if budget <= 0.0 {
                0.0
            } else {
                ((budget - (1.0 - avail)) / budget).clamp(0.0, 1.0)
            };
            let burn = BURN_WINDOWS
                .iter()
                .zip(&windows)
                .map(|((name, _, threshold), rows)| {
                    let (requests, errors) = rows
                        .iter()
                        .find(|(c, _, _)| *c == row.consumer)
                        .map_or((0, 0), |(_, r, e)| (*r, *e));
                    let rate = if requests == 0 {
                        0.0
                    } else {
                        errors as f64 / requests as f64
                    };
                    let burn_rate = if budget > 0.0 {
                        round2(rate / budget)
                    } else {
                        0.0
                    };
                    Burn {
                        window: name,
                        requests,
                        errors_5xx: errors,
                        burn_rate,
                        threshold: *threshold,
                        alerting: burn_rate >= *threshold,
                    }
                })
                .collect();
            SlaItem {
                plan: plan_of(&row.consumer),
                consumer: row.consumer,
                requests: c.requests,
                p50_ms: p50.map(round2),
                p95_ms: p95.map(round2),
                p99_ms: p99.map(round2),
                availability: (avail * 1e6).round() / 1e6,
                proposed: Proposed {
                    latency_p95_ms: p95.map(proposed_latency),
                    availability: target,
                },
                budget_remaining: (budget_remaining * 1e4).round() / 1e4,
                burn,
            }
        })
        .collect();
    SlaReport {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        items,
    }
}

impl SlaReport {
    pub fn table(&self) -> Table {
        let mut header = vec![
            "consumer",
            "plan",
            "requests",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "availability",
            "proposed_latency_p95_ms",
            "proposed_availability",
            "budget_remaining",
        ];
        header.extend(["burn_1h", "burn_6h", "burn_3d"]);
        Table {
            header,
            rows: self
                .items
                .iter()
                .map(|i| {
                    let mut row = vec![
                        i.consumer.clone(),
                        i.plan.clone().unwrap_or_default(),
                        i.requests.to_string(),
                        opt_num(i.p50_ms),
                        opt_num(i.p95_ms),
                        opt_num(i.p99_ms),
                        i.availability.to_string(),
                        opt_num(i.proposed.latency_p95_ms),
                        i.proposed.availability.to_string(),
                        i.budget_remaining.to_string(),
                    ];
                    row.extend(i.burn.iter().map(|b| b.burn_rate.to_string()));
                    row
                })
                .collect(),
        }
    }
}

//! The pricing report: plan fit per consumer over the last 28 days, from the day and hour
//! rollups against the plan's limits and the plan's other consumers.
//!
//! A day's utilisation is the highest of: its requests / `quota_per_day`, and its busiest
//! hour's mean requests per second / `rate_per_second` (minute rollups are kept three days
//! only, so the hour is the finest grain over 28 days). Three findings, in this order:
//! - outgrown: utilisation at least 80% on at least half of its active days, or 429s on at
//!   least half of them: the next plan up.
//! - large share on the entry plan: the least valuable plan (or none) carrying at least 25% of
//!   all requests: the next plan up.
//! - oversized: above the entry plan, and never above 10% utilisation: the least valuable plan
//!   whose limits hold twice its busiest day and hour.
//!
//! Everything else fits its plan and is left out: the list is what to act on.

use std::collections::{BTreeMap, HashMap};

use clientele_analytics::{DAY_MS, Engine, Query, Tier};
use clientele_core::config::PlanConfig;
use clientele_core::time::format_ts;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Table, pct, plans_by_value, round2, round4};

pub const WINDOW_MS: i64 = 28 * DAY_MS;
pub const OUTGROWN_UTILISATION: f64 = 0.8;
pub const LARGE_SHARE: f64 = 0.25;
pub const OVERSIZED_UTILISATION: f64 = 0.1;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PricingItem {
    pub consumer: String,
    pub plan: Option<String>,
    pub recommended_plan: Option<String>,
    /// `outgrown`, `large_share` or `oversized`.
    pub kind: &'static str,
    pub reason: String,
    pub evidence: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PricingReport {
    pub from: String,
    pub to: String,
    pub items: Vec<PricingItem>,
}

#[derive(Default, Clone)]
struct Usage {
    days: BTreeMap<i64, u64>,
    /// Busiest hour's requests per day.
    peak_hour: BTreeMap<i64, u64>,
    limited_days: usize,
    requests: u64,
    rate_limited: u64,
}

fn utilisation(plan: &PlanConfig, day_requests: u64, peak_hour: u64) -> f64 {
    let mut u: f64 = 0.0;
    if let Some(q) = plan.quota_per_day.filter(|q| *q > 0) {
        u = u.max(day_requests as f64 / q as f64);
    }
    if plan.rate_per_second > 0.0 {
        u = u.max(peak_hour as f64 / 3600.0 / plan.rate_per_second);
    }
    u
}

fn holds(plan: &PlanConfig, day_requests: u64, peak_hour: u64) -> bool {
    plan.quota_per_day.is_none_or(|q| q >= 2 * day_requests)
        && plan
            .quota_per_month
            .is_none_or(|q| q >= 2 * 30 * day_requests)
        && plan.rate_per_second >= 2.0 * peak_hour as f64 / 3600.0
}

/// The pricing report over the 28 days ending at `to_ms`, at most `limit` items.
pub fn pricing(
    engine: &Engine,
    plan_of: &dyn Fn(&str) -> Option<String>,
    plans: &BTreeMap<String, PlanConfig>,
    to_ms: i64,
    limit: usize,
) -> PricingReport {
    let from_ms = (to_ms - WINDOW_MS).div_euclid(DAY_MS) * DAY_MS;
    let names = engine.names();
    let name = |id: u32| names.get(id as usize).map_or("", |n| &**n).to_string();
    let mut usage: HashMap<u32, Usage> = HashMap::new();
    // A day or hour not yet built is visited as its parts, so both scans add up per bucket
    // before judging one.
    let mut limited: HashMap<(u32, i64), u64> = HashMap::new();
    engine.scan_consumers(Tier::Day, from_ms, to_ms, |day, c, r| {
        let u = usage.entry(c).or_default();
        *u.days.entry(day).or_default() += r.counters.requests;
        u.requests += r.counters.requests;
        u.rate_limited += r.counters.rate_limited;
        *limited.entry((c, day)).or_default() += r.counters.rate_limited;
    });
    for ((c, _), n) in limited {
        if n > 0 {
            if let Some(u) = usage.get_mut(&c) {
                u.limited_days += 1;
            }
        }
    }
    let mut hours: HashMap<(u32, i64), u64> = HashMap::new();
    engine.scan_consumers(Tier::Hour, from_ms, to_ms, |hour, c, r| {
        *hours.entry((c, hour)).or_default() += r.counters.requests;
    });
    for ((c, hour), n) in hours {
        let u = usage.entry(c).or_default();
        let day = hour.div_euclid(DAY_MS) * DAY_MS;
        let peak = u.peak_hour.entry(day).or_default();
        *peak = (*peak).max(n);
    }
    let total: u64 = usage.values().map(|u| u.requests).sum();
    let ranked = plans_by_value(plans);
    let rank = |p: &str| ranked.iter().position(|(n, _)| *n == p);
    let entry_plan = ranked.first().map(|(n, _)| n.to_string());
    let next_up = |p: Option<&str>| -> Option<String> {
        match p.and_then(rank) {
            Some(i) => ranked.get(i + 1).map(|(n, _)| n.to_string()),
            None => ranked.get(1).or(ranked.first()).map(|(n, _)| n.to_string()),
        }
    };
    // Peers: the median daily requests of each plan's consumers.
    let mut per_plan: HashMap<String, Vec<f64>> = HashMap::new();
    let mut plan_cache: HashMap<u32, Option<String>> = HashMap::new();
    for (id, u) in &usage {
        let plan = plan_of(&name(*id));
        plan_cache.insert(*id, plan.clone());
        if let Some(p) = plan {
            per_plan
                .entry(p)
                .or_default()
                .push(u.requests as f64 / u.days.len().max(1) as f64);
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };

    let mut items: Vec<(u8, u64, PricingItem)> = Vec::new();
    for (id, u) in &usage {
        if u.requests == 0 {
            continue;
        }
        let consumer = name(*id);
        let plan = plan_cache.get(id).cloned().flatten();
        let cfg = plan.as_deref().and_then(|p| plans.get(p));
        let active_days = u.days.values().filter(|n| **n > 0).count().max(1);
        let utils: Vec<f64> = match cfg {
            Some(cfg) => u
                .days
                .iter()
                .map(|(d, n)| utilisation(cfg, *n, u.peak_hour.get(d).copied().unwrap_or(0)))
                .collect(),
            None => Vec::new(),
        };
        let busy_days = utils.iter().filter(|x| **x >= OUTGROWN_UTILISATION).count();
        let max_util = utils.iter().copied().fold(0.0, f64::max);
        let median_util = {
            let mut s = utils.clone();
            s.sort_by(f64::total_cmp);
            s.get(s.len() / 2).copied().unwrap_or(0.0)
        };
        let share = u.requests as f64 / total.max(1) as f64;
        let peak_day = u.days.values().copied().max().unwrap_or(0);
        let peak_hour = u.peak_hour.values().copied().max().unwrap_or(0);
        let peers = plan.as_ref().and_then(|p| per_plan.get(p)).map(median);
        let mut evidence = json!({
            "requests": u.requests,
            "share_of_traffic": round4(share),
            "active_days": active_days,
            "days_at_80pct": busy_days,
            "days_rate_limited": u.limited_days,
            "rate_limited": u.rate_limited,
            "utilisation_median": round4(median_util),
            "utilisation_max": round4(max_util),
            "peak_day_requests": peak_day,
            "peak_hour_rps": round2(peak_hour as f64 / 3600.0),
            "daily_requests_mean": round2(u.requests as f64 / active_days as f64),
            "plan_peers_median_daily_requests": peers.map(round2),
        });
        let is_entry = plan.is_none() || plan == entry_plan;
        let (order, kind, recommended, reason) = if cfg.is_some()
            && (busy_days * 2 >= active_days || u.limited_days * 2 >= active_days)
        {
            let next = next_up(plan.as_deref());
            let reason = format!(
                "at {} or more of its {} plan's limits on {busy_days} of {active_days} days, rate limited on {} days: it has outgrown the plan",
                pct(OUTGROWN_UTILISATION),
                plan.as_deref().unwrap_or("-"),
                u.limited_days
            );
            (0, "outgrown", next, reason)
        } else if is_entry && share >= LARGE_SHARE {
            let next = next_up(plan.as_deref());
            let reason = format!(
                "{} of all traffic on the {} plan: a heavy user of the entry plan",
                pct(share),
                plan.as_deref().unwrap_or("no")
            );
            (1, "large_share", next, reason)
        } else if !is_entry && cfg.is_some() && max_util < OVERSIZED_UTILISATION {
            let fits = ranked
                .iter()
                .find(|(_, p)| holds(p, peak_day, peak_hour))
                .map(|(n, _)| n.to_string());
            if fits.is_none()
                || fits == plan
                || fits.as_deref().and_then(rank) >= plan.as_deref().and_then(rank)
            {
                continue;
            }
            let reason = format!(
                "never above {} of its {} plan's limits (busiest day {peak_day} requests): {} holds twice its peak",
                pct(max_util.max(0.001)),
                plan.as_deref().unwrap_or("-"),
                fits.as_deref().unwrap_or("-")
            );
            (2, "oversized", fits, reason)
        } else {
            continue;
        };
        let routes = engine.routes(
            &Query {
                from_ms,
                to_ms,
                ..Default::default()
            },
            Some(&consumer),
        );
        evidence["top_routes"] = routes
            .iter()
            .take(3)
            .map(|r| {
                json!({
                    "api": r.api, "method": r.method, "route": r.route,
                    "requests": r.rollup.counters.requests,
                    "p95_ms": r.rollup.quantile(0.95).map(round2),
                })
            })
            .collect();
        items.push((
            order,
            u.requests,
            PricingItem {
                consumer,
                plan,
                recommended_plan: recommended,
                kind,
                reason,
                evidence,
            },
        ));
    }
    items.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.consumer.cmp(&b.2.consumer))
    });
    PricingReport {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        items: items.into_iter().take(limit).map(|(_, _, i)| i).collect(),
    }
}

impl PricingReport {
    pub fn table(&self) -> Table {
        Table {
            header: vec![
                "consumer",
                "plan",
                "recommended_plan",
                "kind",
                "reason",
                "requests",
                "share_of_traffic",
                "utilisation_median",
                "utilisation_max",
            ],
            rows: self
                .items
                .iter()
                .map(|i| {
                    let e = |k: &str| i.evidence.get(k).map(|v| v.to_string()).unwrap_or_default();
                    vec![
                        i.consumer.clone(),
                        i.plan.clone().unwrap_or_default(),
                        i.recommended_plan.clone().unwrap_or_default(),
                        i.kind.to_string(),
                        i.reason.clone(),
                        e("requests"),
                        e("share_of_traffic"),
                        e("utilisation_median"),
                        e("utilisation_max"),
                    ]
                })
                .collect(),
        }
    }
}

//! The deprecation report with a proposed sunset date: for each deprecated operation, each
//! caller's migration pace read from the day rollups (its last 7 days, today included, against
//! the 7 before), the date it would be done at that pace, and a sunset proposal two weeks after the
//! slowest caller, never sooner than 30 days away.
//!
//! Pace: with a known replacement, the change in the share of the caller's calls on the
//! replacement per week; without one, the fall of its calls to the old operation per week. A
//! caller with no progress (or growing use) has no date: the sunset waits for a conversation
//! with it, and the report names it in `blocked_by`.

use std::collections::HashMap;

use clientele_analytics::{DAY_MS, Engine, Tier};
use clientele_contract::DeprecatedOperation;
use clientele_core::time::format_ts;
use serde::Serialize;

use super::{Table, opt_num, round4};

/// Extra time after the slowest caller's projected finish.
pub const GRACE_MS: i64 = 14 * DAY_MS;
/// A proposal is at least this far from now.
pub const MIN_NOTICE_MS: i64 = 30 * DAY_MS;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallerPace {
    pub consumer: String,
    pub calls_last_week: u64,
    pub replacement_calls_last_week: u64,
    /// Share on the replacement in the last 7 days; null without a replacement or calls.
    pub progress: Option<f64>,
    /// Progress per week (with a replacement) or the fall of old calls per week as a share of
    /// the week before (without); null when there is nothing to compare.
    pub pace_per_week: Option<f64>,
    /// When it would be done at this pace; null when it is not moving.
    pub projected_done: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeprecationItem {
    pub api: String,
    pub route: String,
    pub replaced_by: Option<String>,
    /// The configured sunset, if any.
    pub sunset: Option<String>,
    pub proposed_sunset: Option<String>,
    /// True when a configured sunset comes before the proposal: callers will still be on it.
    pub sunset_at_risk: bool,
    pub reason: String,
    /// Callers with no pace, who need a conversation before any date.
    pub blocked_by: Vec<String>,
    pub consumers: Vec<CallerPace>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeprecationReport {
    pub at: String,
    pub items: Vec<DeprecationItem>,
}

fn split_route(r: &str) -> Option<(&str, &str)> {
    r.split_once(' ')
}

/// The report as of `at_ms` over the deprecated operations `ops` (from
/// `Contracts::deprecations`).
pub fn deprecation(engine: &Engine, ops: &[DeprecatedOperation], at_ms: i64) -> DeprecationReport {
    // Weeks end with the day that holds `at_ms`, so today's calls count.
    let today = at_ms.div_euclid(DAY_MS) * DAY_MS + DAY_MS;
    let week = 7 * DAY_MS;
    let names = engine.names();
    let name = |id: u32| names.get(id as usize).map_or("", |n| &**n);
    // (api, method, route, consumer) -> [calls the week before, calls last week].
    let mut weeks: HashMap<(String, String, String, String), [u64; 2]> = HashMap::new();
    let wanted: Vec<(String, String, String)> = ops
        .iter()
        .flat_map(|op| {
            std::iter::once(op.route.as_str())
                .chain(op.replaced_by.as_deref())
                .filter_map(split_route)
                .map(|(m, r)| (op.api.clone(), m.to_string(), r.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    if !wanted.is_empty() {
        engine.scan_series(Tier::Day, today - 2 * week, today, |day, ids, r| {
            let key = (name(ids.api), name(ids.method), name(ids.route));
            if !wanted
                .iter()
                .any(|(a, m, rt)| a == key.0 && m == key.1 && rt == key.2)
            {
                return;
            }
            let slot = usize::from(day >= today - week);
            weeks
                .entry((
                    key.0.to_string(),
                    key.1.to_string(),
                    key.2.to_string(),
                    name(ids.consumer).to_string(),
                ))
                .or_default()[slot] += r.counters.requests;
        });
    }
    let calls = |api: &str, route: &str, consumer: &str| -> [u64; 2] {
        split_route(route)
            .and_then(|(m, r)| {
                weeks
                    .get(&(
                        api.to_string(),
                        m.to_string(),
                        r.to_string(),
                        consumer.to_string(),
                    ))
                    .copied()
            })
            .unwrap_or_default()
    };
    let items = ops
        .iter()
        .map(|op| {
            let mut blocked = Vec::new();
            let mut latest_done: Option<i64> = None;
            let consumers: Vec<CallerPace> = op
                .consumers
                .iter()
                .map(|c| {
                    let old = calls(&op.api, &op.route, &c.consumer);
                    let new = op
                        .replaced_by
                        .as_deref()
                        .map_or([0, 0], |r| calls(&op.api, r, &c.consumer));
                    let share = |i: usize| {
                        let total = old[i] + new[i];
                        (total > 0).then(|| new[i] as f64 / total as f64)
                    };
                    let (progress, pace, weeks_left) = if op.replaced_by.is_some() {
                        let (prev, now) = (share(0), share(1));
                        let pace = prev.zip(now).map(|(p, n)| n - p);
                        let left = match (now, pace) {
                            // No call to the old operation last week: done.
                            _ if old[1] == 0 => Some(0.0),
                            (Some(n), _) if n >= 1.0 => Some(0.0),
                            (Some(n), Some(p)) if p > 0.0 => Some((1.0 - n) / p),
                            _ => None,
                        };
                        (now, pace, left)
                    } else {
                        let pace =
                            (old[0] > 0).then(|| (old[0] as f64 - old[1] as f64) / old[0] as f64);
                        let left = match pace {
                            _ if old[1] == 0 => Some(0.0),
                            Some(p) if p > 0.0 => Some(old[1] as f64 / (old[0] - old[1]) as f64),
                            _ => None,
                        };
                        (None, pace, left)
                    };
                    // Whole days, rounded up (less a hair, so 7.0000001 weeks of float noise is 49 days).
                    let done = weeks_left
                        .map(|w| today + ((w * 7.0 - 1e-6).ceil().max(0.0) as i64) * DAY_MS);
                    match done {
                        Some(d) => latest_done = Some(latest_done.map_or(d, |l| l.max(d))),
                        None => blocked.push(c.consumer.clone()),
                    }
                    CallerPace {
                        consumer: c.consumer.clone(),
                        calls_last_week: old[1],
                        replacement_calls_last_week: new[1],
                        progress: progress.map(round4),
                        pace_per_week: pace.map(round4),
                        projected_done: done.map(format_ts),
                    }
                })
                .collect();
            let (proposed, reason) = if op.consumers.is_empty() {
                (
                    Some(today + MIN_NOTICE_MS),
                    "nobody calls it any more: the shortest notice will do".to_string(),
                )
            } else if !blocked.is_empty() {
                (
                    None,
                    format!(
                        "{} not migrating at a measurable pace: talk to {} before setting a date",
                        if blocked.len() == 1 {
                            "one caller is"
                        } else {
                            "callers are"
                        },
                        blocked.join(", ")
                    ),
                )
            } else {
                let d = latest_done.unwrap_or(today) + GRACE_MS;
                (
                    Some(d.max(today + MIN_NOTICE_MS)),
                    "two weeks after the slowest caller's projected finish, at least 30 days away"
                        .to_string(),
                )
            };
            let sunset_ms = op
                .sunset
                .as_deref()
                .and_then(|s| clientele_core::time::parse_ts(s).ok());
            DeprecationItem {
                api: op.api.clone(),
                route: op.route.clone(),
                replaced_by: op.replaced_by.clone(),
                sunset: op.sunset.clone(),
                proposed_sunset: proposed.map(format_ts),
                sunset_at_risk: match (sunset_ms, proposed) {
                    (Some(s), Some(p)) => s < p,
                    (Some(_), None) => true,
                    _ => false,
                },
                reason,
                blocked_by: blocked,
                consumers,
            }
        })
        .collect();
    DeprecationReport {
        at: format_ts(at_ms),
        items,
    }
}

impl DeprecationReport {
    /// One row per (operation, caller); an operation without callers has one row of its own.
    pub fn table(&self) -> Table {
        let mut rows = Vec::new();
        for i in &self.items {
            let head = vec![
                i.api.clone(),
                i.route.clone(),
                i.replaced_by.clone().unwrap_or_default(),
                i.sunset.clone().unwrap_or_default(),
                i.proposed_sunset.clone().unwrap_or_default(),
            ];
            if i.consumers.is_empty() {
                let mut row = head.clone();
                row.extend([
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                rows.push(row);
            }
            for c in &i.consumers {
                let mut row = head.clone();
                row.extend([
                    c.consumer.clone(),
                    c.calls_last_week.to_string(),
                    opt_num(c.progress),
                    opt_num(c.pace_per_week),
                    c.projected_done.clone().unwrap_or_default(),
                ]);
                rows.push(row);
            }
        }
        Table {
            header: vec![
                "api",
                "route",
                "replaced_by",
                "sunset",
                "proposed_sunset",
                "consumer",
                "calls_last_week",
                "progress",
                "pace_per_week",
                "projected_done",
            ],
            rows,
        }
    }
}

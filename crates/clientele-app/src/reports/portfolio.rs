//! Portfolio health for one calendar month (UTC): who is active against the month before, who
//! is new, who left, who came back and who is stagnating, and per API the active consumers,
//! error rate, p95 and satisfaction, from the engine's day rollups.
//!
//! Definitions (also in the answer's `definitions`):
//! - active: at least one request in the month.
//! - new: active, and no request before the month (as far back as day rollups reach, 400 days
//!   by default).
//! - churned: active the month before, no request this month.
//! - reactivated: active, not active the month before, but active some time before that.
//! - stagnating: active, older than the stagnation window, and over its last three whole weeks
//!   (the 21 days ending at the month's end, or today for the current month) it called exactly
//!   the same set of (api, method, route) every week, and each week's requests are within ±10%
//!   of the three weeks' mean: no new endpoints and no growth.
//! - satisfaction: Apdex with threshold T (default 500 ms): (requests under 400 answered within
//!   T + half of those within 4T) / all requests.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{Datelike, NaiveDate};
use clientele_analytics::{DAY_MS, Engine, Rollup, Tier};
use clientele_core::config::PlanConfig;
use clientele_core::consumer::Consumer;
use clientele_core::time::format_ts;
use clientele_store::Release;
use serde::Serialize;

use super::{Table, opt_num, plans_by_value, round2, round4, satisfaction};

/// Weeks a consumer must look the same to count as stagnating.
pub const STAGNANT_WEEKS: usize = 3;
/// How far a week's volume may stray from the weeks' mean and still count as the same.
pub const STAGNANT_TOLERANCE: f64 = 0.10;
/// A change in satisfaction smaller than this is "unchanged".
const EXPERIENCE_EPSILON: f64 = 0.01;

/// A calendar month as `[start, end)` epoch milliseconds, with the month before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    pub year: i32,
    pub month: u32,
    pub prev_start_ms: i64,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Month {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Month, String> {
        let bad = || format!("month: {s:?} is not a month; use YYYY-MM, e.g. 2026-11");
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        Month::of(year, month).ok_or_else(bad)
    }

    pub fn of(year: i32, month: u32) -> Option<Month> {
        let start = NaiveDate::from_ymd_opt(year, month, 1)?;
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let (py, pm) = if month == 1 {
            (year - 1, 12)
        } else {
            (year, month - 1)
        };
        let ms = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
        };
        Some(Month {
            year,
            month,
            prev_start_ms: ms(NaiveDate::from_ymd_opt(py, pm, 1)?)?,
            start_ms: ms(start)?,
            end_ms: ms(NaiveDate::from_ymd_opt(ny, nm, 1)?)?,
        })
    }

    /// The month that holds `ms`.
    pub fn containing(ms: i64) -> Option<Month> {
        let d = chrono::DateTime::from_timestamp_millis(ms)?.date_naive();
        Month::of(d.year(), d.month())
    }

    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ConsumerCounts {
    pub active: usize,
    pub active_prev: usize,
    pub new: usize,
    pub churned: usize,
    pub reactivated: usize,
    pub stagnating: usize,
}

/// Who is behind each count, sorted by id.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ConsumerLists {
    pub new: Vec<String>,
    pub churned: Vec<String>,
    pub reactivated: Vec<String>,
    pub stagnating: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApiHealth {
    pub api: String,
    pub active_consumers: usize,
    pub active_consumers_prev: usize,
    pub requests: u64,
    pub requests_prev: u64,
    /// Responses with status >= 400 / requests.
    pub error_rate: f64,
    pub error_rate_prev: f64,
    pub p95_ms: Option<f64>,
    pub p95_ms_prev: Option<f64>,
    /// Apdex-style, 0-1; null without requests.
    pub satisfaction: Option<f64>,
    pub satisfaction_prev: Option<f64>,
}

/// How the consumers of the most valuable plan fare against the month before.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanExperience {
    pub plan: String,
    pub consumers: usize,
    pub consumers_prev: usize,
    pub error_rate: f64,
    pub error_rate_prev: f64,
    pub p95_ms: Option<f64>,
    pub p95_ms_prev: Option<f64>,
    pub satisfaction: Option<f64>,
    pub satisfaction_prev: Option<f64>,
    /// `better`, `worse` or `unchanged` (satisfaction within 0.01), or `no comparison` when
    /// either month has no traffic on the plan.
    pub experience: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReleaseOut {
    pub api: String,
    pub version: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Portfolio {
    pub month: String,
    pub from: String,
    pub to: String,
    pub satisfaction_threshold_ms: f64,
    pub consumers: ConsumerCounts,
    pub lists: ConsumerLists,
    pub apis: Vec<ApiHealth>,
    /// The most valuable plan (see `plans_by_value`) with traffic in either month.
    pub top_plan: Option<PlanExperience>,
    /// Release markers within the month, oldest first.
    pub releases: Vec<ReleaseOut>,
    pub definitions: BTreeMap<&'static str, &'static str>,
}

#[derive(Default)]
struct Health {
    consumers: HashSet<u32>,
    all: Rollup,
    ok: Rollup,
}

impl Health {
    fn add(&mut self, consumer: u32, class: u8, r: &Rollup) {
        self.consumers.insert(consumer);
        self.all.merge(r);
        if class < 4 {
            self.ok.merge(r);
        }
    }

    fn error_rate(&self) -> f64 {
        round4(self.all.counters.error_rate())
    }

    fn p95(&self) -> Option<f64> {
        self.all.quantile(0.95).map(round2)
    }

    fn satisfaction(&self, t_ms: f64) -> Option<f64> {
        satisfaction(&self.ok, self.all.counters.requests, t_ms)
    }
}

#[derive(Default)]
struct ConsumerState {
    first_day: i64,
    before_prev: bool,
    in_prev: bool,
    in_month: bool,
    weeks: [u64; STAGNANT_WEEKS],
    routes: [BTreeSet<(u32, u32, u32)>; STAGNANT_WEEKS],
}

/// Computes the portfolio of `month` as of `now_ms`.
pub fn portfolio(
    engine: &Engine,
    consumers: &[Consumer],
    plans: &BTreeMap<String, PlanConfig>,
    releases: &[Release],
    month: Month,
    now_ms: i64,
    t_ms: f64,
) -> Portfolio {
    let names = engine.names();
    let plan_of: HashMap<&str, &str> = consumers
        .iter()
        .filter_map(|c| Some((c.id.as_str(), c.plan.as_deref()?)))
        .collect();
    let top_plan = plans_by_value(plans)
        .last()
        .map(|(name, _)| name.to_string());
    // The stagnation window: whole days only, so a day still filling cannot look like a drop.
    let window_end = month.end_ms.min(now_ms.div_euclid(DAY_MS) * DAY_MS);
    let window_start = window_end - STAGNANT_WEEKS as i64 * 7 * DAY_MS;

    let mut state: HashMap<u32, ConsumerState> = HashMap::new();
    let mut apis: BTreeMap<u32, [Health; 2]> = BTreeMap::new();
    let mut plan_health: [Health; 2] = Default::default();
    let mut top_plan_ids: HashMap<u32, bool> = HashMap::new();
    // Before the month before, only whether (and since when) each consumer was active matters:
    // the per-consumer rollups answer that without touching every series.
    engine.scan_consumers(
        Tier::Day,
        i64::MIN / 2,
        month.prev_start_ms,
        |day, id, r| {
            if r.counters.requests == 0 {
                return;
            }
            let c = state.entry(id).or_insert_with(|| ConsumerState {
                first_day: day,
                ..Default::default()
            });
            c.first_day = c.first_day.min(day);
            c.before_prev = true;
        },
    );
    // The two months themselves, series by series (the stagnation window lies within them:
    // a month is at least 28 days, so its last 21 days start after the month before).
    engine.scan_series(
        Tier::Day,
        month.prev_start_ms,
        month.end_ms,
        |day, ids, r| {
            if r.counters.requests == 0 {
                return;
            }
            let c = state.entry(ids.consumer).or_insert_with(|| ConsumerState {
                first_day: day,
                ..Default::default()
            });
            c.first_day = c.first_day.min(day);
            let period = if day >= month.start_ms {
                c.in_month = true;
                0
            } else {
                c.in_prev = true;
                1
            };
            if (window_start..window_end).contains(&day) {
                let week = ((day - window_start) / (7 * DAY_MS)) as usize;
                if let (Some(v), Some(routes)) = (c.weeks.get_mut(week), c.routes.get_mut(week)) {
                    *v += r.counters.requests;
                    routes.insert((ids.api, ids.method, ids.route));
                }
            }
            let p = period;
            if !names.get(ids.api as usize).is_some_and(|a| a.is_empty()) {
                apis.entry(ids.api).or_default()[p].add(ids.consumer, ids.status_class, r);
            }
            let is_top = *top_plan_ids.entry(ids.consumer).or_insert_with(|| {
                let name = names.get(ids.consumer as usize).map_or("", |n| &**n);
                top_plan
                    .as_deref()
                    .is_some_and(|t| plan_of.get(name) == Some(&t))
            });
            if is_top {
                plan_health[p].add(ids.consumer, ids.status_class, r);
            }
        },
    );

    let name = |id: u32| {
        names
            .get(id as usize)
            .map_or(String::new(), |n| n.to_string())
    };
    let mut counts = ConsumerCounts::default();
    let mut lists = ConsumerLists::default();
    for (id, c) in &state {
        if c.in_month {
            counts.active += 1;
        }
        if c.in_prev {
            counts.active_prev += 1;
        }
        if c.in_month && !c.in_prev && !c.before_prev {
            lists.new.push(name(*id));
        }
        if c.in_prev && !c.in_month {
            lists.churned.push(name(*id));
        }
        if c.in_month && !c.in_prev && c.before_prev {
            lists.reactivated.push(name(*id));
        }
        if c.in_month && c.first_day < window_start && is_stagnant(c) {
            lists.stagnating.push(name(*id));
        }
    }
    for l in [
        &mut lists.new,
        &mut lists.churned,
        &mut lists.reactivated,
        &mut lists.stagnating,
    ] {
        l.sort();
    }
    counts.new = lists.new.len();
    counts.churned = lists.churned.len();
    counts.reactivated = lists.reactivated.len();
    counts.stagnating = lists.stagnating.len();

    let apis = apis
        .into_iter()
        .map(|(api, [now, prev])| ApiHealth {
            api: name(api),
            active_consumers: now.consumers.len(),
            active_consumers_prev: prev.consumers.len(),
            requests: now.all.counters.requests,
            requests_prev: prev.all.counters.requests,
            error_rate: now.error_rate(),
            error_rate_prev: prev.error_rate(),
            p95_ms: now.p95(),
            p95_ms_prev: prev.p95(),
            satisfaction: now.satisfaction(t_ms),
            satisfaction_prev: prev.satisfaction(t_ms),
        })
        .collect();

    let top_plan = top_plan.and_then(|plan| {
        let [now, prev] = &plan_health;
        if now.consumers.is_empty() && prev.consumers.is_empty() {
            return None;
        }
        let (s, sp) = (now.satisfaction(t_ms), prev.satisfaction(t_ms));
        let experience = match (s, sp) {
            (Some(a), Some(b)) if a - b > EXPERIENCE_EPSILON => "better",
            (Some(a), Some(b)) if b - a > EXPERIENCE_EPSILON => "worse",
            (Some(_), Some(_)) => "unchanged",
            _ => "no comparison",
        };
        Some(PlanExperience {
            plan,
            consumers: now.consumers.len(),
            consumers_prev: prev.consumers.len(),
            error_rate: now.error_rate(),
            error_rate_prev: prev.error_rate(),
            p95_ms: now.p95(),
            p95_ms_prev: prev.p95(),
            satisfaction: s,
            satisfaction_prev: sp,
            experience,
        })
    });

    Portfolio {
        month: month.label(),
        from: format_ts(month.start_ms),
        to: format_ts(month.end_ms),
        satisfaction_threshold_ms: t_ms,
        consumers: counts,
        lists,
        apis,
        top_plan,
        releases: releases
            .iter()
            .filter(|r| (month.start_ms..month.end_ms).contains(&r.at_ms))
            .map(|r| ReleaseOut {
                api: r.api.clone(),
                version: r.version.clone(),
                at: format_ts(r.at_ms),
            })
            .collect(),
        definitions: definitions(),
    }
}

fn is_stagnant(c: &ConsumerState) -> bool {
    if c.weeks.contains(&0) {
        return false;
    }
    let mean = c.weeks.iter().sum::<u64>() as f64 / STAGNANT_WEEKS as f64;
    let steady = c
        .weeks
        .iter()
        .all(|w| ((*w as f64 - mean) / mean).abs() <= STAGNANT_TOLERANCE);
    steady && c.routes.iter().all(|r| *r == c.routes[0])
}

fn definitions() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("active", "at least one request in the month"),
        (
            "new",
            "active, and no request before the month (as far back as day rollups reach)",
        ),
        ("churned", "active the month before, no request this month"),
        (
            "reactivated",
            "active, not active the month before, active some time before that",
        ),
        (
            "stagnating",
            "active and older than 3 weeks; over the last 3 whole weeks of the month (to today for the current month) the same set of (api, method, route) every week, each week's requests within 10% of the 3 weeks' mean",
        ),
        (
            "satisfaction",
            "Apdex: (requests with status < 400 answered within T + half of those within 4T) / all requests; T = satisfaction_threshold_ms",
        ),
        ("error_rate", "responses with status >= 400 / requests"),
        (
            "top_plan",
            "the plan with the highest rate_per_second (then quotas) among the configured plans",
        ),
    ])
}

impl Portfolio {
    /// One row per API, with the month's consumer counts repeated on each, so one CSV holds
    /// the whole report.
    pub fn table(&self) -> Table {
        let c = &self.consumers;
        Table {
            header: vec![
                "month",
                "api",
                "active_consumers",
                "active_consumers_prev",
                "requests",
                "error_rate",
                "p95_ms",
                "satisfaction",
                "consumers_active",
                "consumers_active_prev",
                "consumers_new",
                "consumers_churned",
                "consumers_reactivated",
                "consumers_stagnating",
            ],
            rows: self
                .apis
                .iter()
                .map(|a| {
                    vec![
                        self.month.clone(),
                        a.api.clone(),
                        a.active_consumers.to_string(),
                        a.active_consumers_prev.to_string(),
                        a.requests.to_string(),
                        a.error_rate.to_string(),
                        opt_num(a.p95_ms),
                        opt_num(a.satisfaction),
                        c.active.to_string(),
                        c.active_prev.to_string(),
                        c.new.to_string(),
                        c.churned.to_string(),
                        c.reactivated.to_string(),
                        c.stagnating.to_string(),
                    ]
                })
                .collect(),
        }
    }
}

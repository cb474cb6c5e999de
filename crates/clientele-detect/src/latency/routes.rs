//! API-wide latency per route: a route's callers pooled. Ten quiet consumers at a few requests
//! an hour on a route are each too few to judge alone, and together a clear signal.
//!
//! Each route has its own baseline (the median of its daily p95s over the baseline days, and
//! its worst day), from the day rollups of its series merged. A window of the route's hourly
//! rollups, all callers merged, is judged as a consumer's is ([`super::judge_window`]), with a
//! Bonferroni correction per route-day that may spend its callers' budgets together (as the
//! pooled error test does). It is the route's regression, not one integration's, when it is
//! spread: at least `api_min_consumers` of the window's callers, and half of them, have more
//! than half of their requests slower than the route's usual p95.
//!
//! Cost: the route baselines merge every series' day rollups once, and the window's hours every
//! series' hour rollups once per route. Only routes with an hour whose p95 passes the route's
//! threshold have their callers' rows copied.

use clientele_analytics::{DAY_MS, HOUR_MS, Rollup, Tier};
use clientele_core::detection_config::LatencyConfig;
use rustc_hash::FxHashMap as HashMap;

use super::{Obs, judge_window};
use crate::stats::{critical_z, median};
use crate::{EvalContext, runs};

/// (api, method, route) name ids.
pub(super) type Route = (u32, u32, u32);

/// A route's usual latency.
pub(super) struct RouteBaseline {
    pub p95: f64,
    pub threshold: f64,
}

/// One run of a route's regressed hours.
pub(super) struct RouteRun {
    pub route: Route,
    pub first_hour: i64,
    pub last_hour: i64,
    pub base_p95: f64,
    /// The window of the run with the highest p95, and the most significant one.
    pub worst: Obs,
    pub peak: Obs,
    pub affected: usize,
    pub calling: usize,
    /// The callers slowed down, per regressed window: their own findings fold into the route's.
    pub folded: Vec<(u32, i64, i64)>,
}

pub(super) fn regressions(
    cfg: &LatencyConfig,
    ctx: &EvalContext<'_>,
    windows: &[i64],
    from_hour: i64,
) -> Vec<RouteRun> {
    let baselines = baselines(cfg, ctx);
    if baselines.is_empty() {
        return Vec::new();
    }
    let slots = ctx.slots();
    let (from_ms, to_ms) = (from_hour * HOUR_MS, slots.end * HOUR_MS);
    let len = (slots.end - from_hour).max(0) as usize;
    // Each route's hours, all callers merged. A window's p95 is at most the largest p95 of its
    // hours, so only routes with an hour past their threshold can regress, and only their
    // callers' rows are copied.
    let mut pooled: HashMap<Route, Vec<Rollup>> = HashMap::default();
    ctx.engine
        .scan_series(Tier::Hour, from_ms, to_ms, |start, k, r| {
            let route = (k.api, k.method, k.route);
            if !baselines.contains_key(&route) {
                return;
            }
            let i = (start / HOUR_MS - from_hour) as usize;
            let row = pooled
                .entry(route)
                .or_insert_with(|| vec![Rollup::default(); len]);
            if let Some(slot) = row.get_mut(i) {
                slot.merge(r);
            }
        });
    let slow_hours: HashMap<Route, Vec<bool>> = pooled
        .iter()
        .filter_map(|(route, row)| {
            let t = baselines.get(route)?.threshold;
            let slow: Vec<bool> = row
                .iter()
                .map(|r| {
                    r.max_latency().is_some_and(|m| m >= t)
                        && r.quantile(0.95).is_some_and(|p| p >= t)
                })
                .collect();
            slow.iter().any(|s| *s).then_some((*route, slow))
        })
        .collect();
    if slow_hours.is_empty() {
        return Vec::new();
    }
    let mut callers: HashMap<Route, HashMap<u32, Vec<Rollup>>> = HashMap::default();
    ctx.engine
        .scan_series(Tier::Hour, from_ms, to_ms, |start, k, r| {
            let route = (k.api, k.method, k.route);
            if !slow_hours.contains_key(&route) {
                return;
            }
            let i = (start / HOUR_MS - from_hour) as usize;
            let row = callers
                .entry(route)
                .or_default()
                .entry(k.consumer)
                .or_insert_with(|| vec![Rollup::default(); len]);
            if let Some(slot) = row.get_mut(i) {
                slot.merge(r);
            }
        });
    let mut out = Vec::new();
    let mut routes: Vec<&Route> = slow_hours.keys().collect();
    routes.sort();
    for route in routes {
        let (Some(b), Some(row), Some(by_caller), Some(hour_slow)) = (
            baselines.get(route),
            pooled.get(route),
            callers.get(route),
            slow_hours.get(route),
        ) else {
            continue;
        };
        let budget = (cfg.significance * by_caller.len().max(1) as f64).min(0.01);
        let z_crit = critical_z(budget / (windows.len() * 24) as f64);
        // Per caller, prefix sums of its requests and of those in its hours slower than the
        // route's usual p95 (the hour's median past it): windows then cost no merges.
        let prefix: Vec<(u32, Vec<(u64, u64)>)> = by_caller
            .iter()
            .map(|(c, rows)| {
                let mut acc = vec![(0u64, 0u64); rows.len() + 1];
                for (i, r) in rows.iter().enumerate() {
                    let n = r.counters.requests;
                    let slow = if r.quantile(0.5).is_some_and(|p50| p50 > b.p95) {
                        n
                    } else {
                        0
                    };
                    acc[i + 1] = (acc[i].0 + n, acc[i].1 + slow);
                }
                (*c, acc)
            })
            .collect();
        let mut flagged: Vec<((), i64)> = Vec::new();
        let mut obs: Vec<(Obs, usize, usize, Vec<u32>)> = Vec::new();
        for hour in slots.clone() {
            if ctx.elapsed_fraction(hour) < 1.0 / 6.0 {
                continue;
            }
            let end = (hour - from_hour) as usize;
            for &w in windows {
                let start = (end + 1).saturating_sub(w as usize);
                if !hour_slow[start..=end].iter().any(|s| *s) {
                    continue;
                }
                let mut merged = Rollup::default();
                for r in &row[start..=end] {
                    merged.merge(r);
                }
                let Some(mut o) = judge_window(&merged, b.p95, b.threshold, z_crit, hour, w) else {
                    continue;
                };
                let first_slow = hour_slow[start..=end].iter().position(|s| *s);
                o.onset_hour = from_hour + (start + first_slow.unwrap_or(0)) as i64;
                // Spread: most of the window's callers had most of their requests in hours
                // slower than the route's usual.
                let mut calling = 0;
                let mut slowed = Vec::new();
                for (c, acc) in &prefix {
                    let n = acc[end + 1].0 - acc[start].0;
                    let slow = acc[end + 1].1 - acc[start].1;
                    if n == 0 {
                        continue;
                    }
                    calling += 1;
                    if 2 * slow > n {
                        slowed.push(*c);
                    }
                }
                let affected = slowed.len();
                if affected >= cfg.api_min_consumers as usize && 2 * affected >= calling {
                    flagged.push(((), hour));
                    obs.push((o, affected, calling, slowed));
                }
            }
        }
        for ((), run) in runs(flagged) {
            let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
                continue;
            };
            let in_run: Vec<&(Obs, usize, usize, Vec<u32>)> = obs
                .iter()
                .filter(|(o, ..)| (first..=last).contains(&o.hour))
                .collect();
            let (Some(worst), Some(peak)) = (
                in_run.iter().max_by(|a, b| a.0.p95.total_cmp(&b.0.p95)),
                in_run.iter().max_by(|a, b| a.0.z.total_cmp(&b.0.z)),
            ) else {
                continue;
            };
            let folded = in_run
                .iter()
                .flat_map(|(o, _, _, slowed)| {
                    let from = o.hour + 1 - o.window_hours;
                    slowed.iter().map(move |c| (*c, from, o.hour))
                })
                .collect();
            let first_hour = in_run
                .iter()
                .map(|(o, ..)| o.onset_hour)
                .min()
                .unwrap_or(first);
            // Long windows stay flagged after a short slowdown has ended; a later run whose
            // windows begin inside the previous one is the same slowdown.
            if let Some(prev) = out
                .last_mut()
                .filter(|p: &&mut RouteRun| p.route == *route && first_hour <= p.last_hour + 1)
            {
                prev.last_hour = prev.last_hour.max(last);
                prev.folded.extend(folded);
                continue;
            }
            out.push(RouteRun {
                route: *route,
                first_hour,
                last_hour: last,
                base_p95: b.p95,
                worst: worst.0,
                peak: peak.0,
                affected: worst.1,
                calling: worst.2,
                folded,
            });
        }
    }
    out
}

/// Every route's baseline: the median and the worst of its daily p95s (days with at least
/// `min_day_requests`, `min_baseline_days` of them), and the threshold a window must pass.
fn baselines(cfg: &LatencyConfig, ctx: &EvalContext<'_>) -> HashMap<Route, RouteBaseline> {
    let std::ops::Range {
        start: base_from,
        end: window_day,
    } = ctx.history_days(i64::from(cfg.baseline_days));
    let ndays = cfg.baseline_days.max(1) as usize;
    let mut days: HashMap<Route, Vec<Rollup>> = HashMap::default();
    ctx.engine
        .scan_series(Tier::Day, base_from, window_day, |day, k, r| {
            let d = ((day - base_from) / DAY_MS) as usize;
            let v = days
                .entry((k.api, k.method, k.route))
                .or_insert_with(|| vec![Rollup::default(); ndays]);
            if let Some(slot) = v.get_mut(d) {
                slot.merge(r);
            }
        });
    days.into_iter()
        .filter_map(|(route, v)| {
            let mut p95s: Vec<f64> = v
                .iter()
                .filter(|r| r.counters.requests >= cfg.min_day_requests)
                .filter_map(|r| r.quantile(0.95))
                .collect();
            if p95s.len() < cfg.min_baseline_days as usize {
                return None;
            }
            let worst = p95s.iter().copied().fold(0.0, f64::max);
            let p95 = median(&mut p95s)?;
            let threshold = (cfg.factor * p95)
                .max(p95 + cfg.margin_ms)
                .max(cfg.worst_day_factor * worst);
            Some((route, RouteBaseline { p95, threshold }))
        })
        .collect()
}

//! `latency_regression`: a consumer's latency against its own baseline (the median of its daily
//! p95s over the previous week, and its worst day), over the routes it already called then, so
//! a new slow endpoint in its mix is not mistaken for its requests getting slower.
//!
//! Windows of several lengths (`[detection.latency] windows_hours`) ending at every judged hour
//! are judged. A window regressed when its p95 is past the effect-size thresholds (`factor`,
//! `margin_ms`, `worst_day_factor`) and enough of its requests are slower than the baseline p95
//! to be significant: under the baseline, each request is slower with probability 5%, so the
//! share of the window above it is tested with a binomial likelihood ratio at `significance`
//! over the tests of a consumer-day. Twenty requests an hour five times slower than usual are
//! clear within the hour; no per-hour request floor applies.
//!
//! API-wide, two ways, each one finding with consumer null instead of one per consumer:
//! - a route's callers pooled (`routes`): a route slower for most of its callers, judged on
//!   all their requests together, so ten quiet consumers make a clear signal; the callers' own
//!   windows over those hours fold into it;
//! - when `api_share` of the consumers judged in an hour (at least `api_min_consumers`)
//!   regress together, the whole API regressed.

use clientele_analytics::{HOUR_MS, Rollup, Tier};
use clientele_core::detection_config::LatencyConfig;
use clientele_core::finding::Finding;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::stats::{binomial_z, critical_z, median};
use crate::{Detector, EvalContext};

mod findings;
mod routes;

#[derive(Debug, Clone, Default)]
pub struct LatencyDetector {
    pub config: LatencyConfig,
}

impl LatencyDetector {
    pub fn new(config: LatencyConfig) -> LatencyDetector {
        LatencyDetector { config }
    }
}

/// Under the baseline, the share of requests slower than its p95.
const TAIL: f64 = 0.05;

struct Baseline {
    p95: f64,
    worst: f64,
}

/// One regressed window.
#[derive(Debug, Clone, Copy)]
struct Obs {
    hour: i64,
    window_hours: i64,
    /// The first hour of the window slow on its own: when the regression began.
    onset_hour: i64,
    n: u64,
    p95: f64,
    z: f64,
}

/// Per consumer, the hourly rollups of its known routes from `from_hour` (only consumers that
/// may have regressed), and in which hours each judged consumer called at all.
struct Hourly {
    from_hour: i64,
    rows: HashMap<u32, Vec<Option<Rollup>>>,
    present: HashMap<u32, Vec<bool>>,
}

impl Detector for LatencyDetector {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let cfg = &self.config;
        let slots = ctx.slots();
        let windows: Vec<i64> = cfg.windows_hours.iter().map(|w| i64::from(*w)).collect();
        let longest = windows.iter().copied().max().unwrap_or(1);
        let (known, baselines, global_base) = self.baselines(ctx);
        let thresholds: HashMap<u32, f64> = baselines
            .iter()
            .map(|(c, b)| {
                let t = (cfg.factor * b.p95)
                    .max(b.p95 + cfg.margin_ms)
                    .max(cfg.worst_day_factor * b.worst);
                (*c, t)
            })
            .collect();
        let hourly = hourly(
            ctx,
            &known,
            &thresholds,
            slots.start + 1 - longest,
            slots.end,
        );
        let z_crit = critical_z(cfg.significance / (windows.len() * 24) as f64);
        let mut regressed: HashMap<u32, Vec<Obs>> = HashMap::default();
        let mut judged: HashMap<i64, usize> = HashMap::default();
        let mut bad: HashMap<i64, HashSet<u32>> = HashMap::default();
        for present in hourly.present.values() {
            for hour in slots.clone() {
                let end = (hour - hourly.from_hour) as usize;
                if ctx.elapsed_fraction(hour) >= 1.0 / 6.0
                    && present[end.saturating_sub(longest as usize - 1)..=end]
                        .iter()
                        .any(|p| *p)
                {
                    *judged.entry(hour).or_default() += 1;
                }
            }
        }
        for (c, row) in &hourly.rows {
            let (Some(b), Some(&threshold)) = (baselines.get(c), thresholds.get(c)) else {
                continue;
            };
            // The p95 of a merged window is at most the largest p95 of its hours, so a window
            // none of whose hours passes the threshold cannot, and is not merged at all.
            // The largest latency bounds the p95 and needs no sketch: most hours of most
            // consumers are settled by it.
            let hour_p95: Vec<f64> = row
                .iter()
                .map(|r| match r {
                    Some(r) if r.max_latency().is_some_and(|m| m >= threshold) => {
                        r.quantile(0.95).unwrap_or(0.0)
                    }
                    _ => 0.0,
                })
                .collect();
            for hour in slots.clone() {
                if ctx.elapsed_fraction(hour) < 1.0 / 6.0 {
                    continue;
                }
                let end = (hour - hourly.from_hour) as usize;
                for &w in &windows {
                    let start = (end + 1).saturating_sub(w as usize);
                    if !hour_p95[start..=end].iter().any(|p| *p >= threshold) {
                        continue;
                    }
                    let mut merged = Rollup::default();
                    for r in row[start..=end].iter().flatten() {
                        merged.merge(r);
                    }
                    if let Some(mut o) = judge_window(&merged, b.p95, threshold, z_crit, hour, w) {
                        let first_slow = hour_p95[start..=end].iter().position(|p| *p >= threshold);
                        o.onset_hour = hourly.from_hour + (start + first_slow.unwrap_or(0)) as i64;
                        regressed.entry(*c).or_default().push(o);
                        bad.entry(hour).or_default().insert(*c);
                    }
                }
            }
        }
        // A route that slowed down for most of its callers is one finding: its callers' own
        // windows over the same hours fold into it.
        let route_runs = routes::regressions(cfg, ctx, &windows, slots.start + 1 - longest);
        if !route_runs.is_empty() {
            let folded: HashMap<u32, Vec<(i64, i64)>> = route_runs
                .iter()
                .flat_map(|r| r.folded.iter())
                .fold(HashMap::default(), |mut m, (c, from, to)| {
                    m.entry(*c).or_default().push((*from, *to));
                    m
                });
            for (c, list) in regressed.iter_mut() {
                if let Some(spans) = folded.get(c) {
                    list.retain(|o| {
                        let from = o.hour + 1 - o.window_hours;
                        !spans.iter().any(|(f, t)| from <= *t && *f <= o.hour)
                    });
                }
            }
            regressed.retain(|_, l| !l.is_empty());
        }
        let api_hours: HashSet<i64> = bad
            .iter()
            .filter(|(h, set)| {
                let n = judged.get(h).copied().unwrap_or(0);
                set.len() >= cfg.api_min_consumers as usize
                    && set.len() as f64 >= cfg.api_share * n as f64
            })
            .map(|(h, _)| *h)
            .collect();
        findings::write(
            self,
            ctx,
            &baselines,
            &global_base,
            regressed,
            &route_runs,
            &api_hours,
            &judged,
            &bad,
        )
    }
}

/// Whether one window regressed: its p95 at or past `threshold`, and the share of its
/// requests slower than the baseline p95 significantly above 5%. That share is read off the
/// window's own quantiles: if its q-quantile is slower than the baseline p95, at least
/// (1 - q) of its requests are.
fn judge_window(
    merged: &Rollup,
    base_p95: f64,
    threshold: f64,
    z_crit: f64,
    hour: i64,
    w: i64,
) -> Option<Obs> {
    let [p50, p75, p90, p95] = merged.quantiles([0.5, 0.75, 0.9, 0.95]);
    let p95 = p95?;
    if p95 < threshold {
        return None;
    }
    let m = merged.latency_samples();
    let share = [(p50, 0.5), (p75, 0.25), (p90, 0.1), (Some(p95), 0.05)]
        .into_iter()
        .find(|(q, _)| q.is_some_and(|q| q > base_p95))
        .map_or(0.0, |(_, s)| s);
    let k = (share * m as f64).floor() as u64;
    let z = binomial_z(k, m, TAIL);
    (z >= z_crit).then_some(Obs {
        hour,
        window_hours: w,
        onset_hour: hour + 1 - w,
        n: merged.counters.requests,
        p95,
        z,
    })
}

impl LatencyDetector {
    /// The routes each consumer called in the baseline days, its baseline, and the API's.
    #[allow(clippy::type_complexity)]
    fn baselines(
        &self,
        ctx: &EvalContext<'_>,
    ) -> (
        HashSet<(u32, u32, u32, u32)>,
        HashMap<u32, Baseline>,
        Rollup,
    ) {
        let cfg = &self.config;
        let std::ops::Range {
            start: base_from,
            end: window_day,
        } = ctx.history_days(i64::from(cfg.baseline_days));
        // Only routes of the baseline days are compared later: a consumer that starts calling a
        // slow endpoint has a new mix of requests (a `new_endpoint`), not slower ones.
        let mut known: HashSet<(u32, u32, u32, u32)> = Default::default();
        ctx.engine
            .scan_series(Tier::Day, base_from, window_day, |_, k, _| {
                known.insert((k.consumer, k.api, k.method, k.route));
            });
        let mut daily: HashMap<u32, Vec<f64>> = HashMap::default();
        let mut global_base = Rollup::default();
        ctx.engine
            .scan_consumers(Tier::Day, base_from, window_day, |_, c, r| {
                global_base.merge(r);
                if r.counters.requests >= cfg.min_day_requests {
                    if let Some(p) = r.quantile(0.95) {
                        daily.entry(c).or_default().push(p);
                    }
                }
            });
        let baselines = daily
            .into_iter()
            .filter(|(_, v)| v.len() >= cfg.min_baseline_days as usize)
            .filter_map(|(c, mut v)| {
                let worst = v.iter().copied().fold(0.0, f64::max);
                median(&mut v).map(|p95| (c, Baseline { p95, worst }))
            })
            .collect();
        (known, baselines, global_base)
    }
}

/// The hourly rollups of each consumer with a baseline over its known routes. Hours in which it
/// also called routes new to it are merged route by route; every other hour is its consumer
/// rollup as it stands. Only consumers with an hour whose slowest request passes their
/// threshold can regress (a window's p95 is at most its slowest request), so only theirs are
/// copied; the others are recorded as present, for the API-wide share.
fn hourly(
    ctx: &EvalContext<'_>,
    known: &HashSet<(u32, u32, u32, u32)>,
    thresholds: &HashMap<u32, f64>,
    from_hour: i64,
    to_hour: i64,
) -> Hourly {
    let len = (to_hour - from_hour).max(0) as usize;
    let (from_ms, to_ms) = (from_hour * HOUR_MS, to_hour * HOUR_MS);
    let mut present: HashMap<u32, Vec<bool>> = HashMap::default();
    let mut suspicious: HashSet<u32> = HashSet::default();
    ctx.engine
        .scan_consumers(Tier::Hour, from_ms, to_ms, |start, c, r| {
            let Some(t) = thresholds.get(&c) else { return };
            let i = (start / HOUR_MS - from_hour) as usize;
            if let Some(p) = present
                .entry(c)
                .or_insert_with(|| vec![false; len])
                .get_mut(i)
            {
                *p = true;
            }
            if r.max_latency().is_some_and(|m| m >= *t) {
                suspicious.insert(c);
            }
        });
    let mut rows: HashMap<u32, Vec<Option<Rollup>>> = HashMap::default();
    if suspicious.is_empty() {
        return Hourly {
            from_hour,
            rows,
            present,
        };
    }
    let mut mixed: HashSet<(u32, i64)> = Default::default();
    ctx.engine
        .scan_series(Tier::Hour, from_ms, to_ms, |start, k, _| {
            if suspicious.contains(&k.consumer)
                && !known.contains(&(k.consumer, k.api, k.method, k.route))
            {
                mixed.insert((k.consumer, start / HOUR_MS));
            }
        });
    ctx.engine
        .scan_consumers(Tier::Hour, from_ms, to_ms, |start, c, r| {
            if suspicious.contains(&c) && !mixed.contains(&(c, start / HOUR_MS)) {
                let i = (start / HOUR_MS - from_hour) as usize;
                if let Some(s) = rows.entry(c).or_insert_with(|| vec![None; len]).get_mut(i) {
                    // An hour not yet built comes as its minutes: add them up.
                    s.get_or_insert_with(Rollup::default).merge(r);
                }
            }
        });
    if !mixed.is_empty() {
        ctx.engine
            .scan_series(Tier::Hour, from_ms, to_ms, |start, k, r| {
                let key = (k.consumer, start / HOUR_MS);
                if mixed.contains(&key) && known.contains(&(k.consumer, k.api, k.method, k.route)) {
                    let i = (key.1 - from_hour) as usize;
                    let row = rows.entry(k.consumer).or_insert_with(|| vec![None; len]);
                    if let Some(s) = row.get_mut(i) {
                        s.get_or_insert_with(Rollup::default).merge(r);
                    }
                }
            });
    }
    Hourly {
        from_hour,
        rows,
        present,
    }
}

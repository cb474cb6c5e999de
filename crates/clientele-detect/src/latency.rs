//! `latency_regression`: a consumer's p95 latency against its own baseline (the median of its
//! daily p95s over the previous week), over the routes it already called then, so a new slow
//! endpoint in its mix is not mistaken for its requests getting slower. When most consumers slow down in the same hour, it is
//! the API that regressed: one finding with consumer null, instead of one per consumer.

use clientele_analytics::{HOUR_MS, Rollup, Tier};
use clientele_core::finding::{Finding, FindingKind, Severity};
use rustc_hash::FxHashMap as HashMap;
use serde_json::json;

use crate::stats::median;
use crate::text::{count, millis, r3, times, ts, when};
use crate::{Detector, EvalContext, new_finding_id, runs};

/// An hour is judged by its p95 one value lower: the nearest-rank value of `0.95 - 1/n`, so a
/// regression needs one more slow request than the 5% tail holds, and a single request at the
/// edge of the tail (an hour whose mix puts a slow route's share right at 5%) never flips an
/// hour. The labelled scenario's false positives came from such hours. The p95 is what a finding
/// reports.
fn judged_and_p95(r: &Rollup) -> Option<(f64, f64)> {
    let n = r.latency_samples().max(1) as f64;
    match r.quantiles([(0.95 - 1.0 / n).max(0.0), 0.95]) {
        [Some(judged), Some(p95)] => Some((judged, p95)),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct LatencyDetector {
    pub baseline_days: i64,
    /// Days with at least `min_day_requests` needed for a baseline.
    pub min_baseline_days: usize,
    pub min_day_requests: u64,
    /// Requests in an hour before its p95 is judged.
    pub min_requests: u64,
    /// p95 must reach this multiple of the baseline...
    pub factor: f64,
    /// ...exceed it by this many milliseconds...
    pub margin_ms: f64,
    /// ...and exceed the worst daily p95 of the baseline week by this factor.
    pub worst_day_factor: f64,
    /// Share of judged consumers regressing together that makes it the API's regression.
    pub api_share: f64,
    pub api_min_consumers: usize,
}

impl Default for LatencyDetector {
    fn default() -> Self {
        LatencyDetector {
            baseline_days: 7,
            min_baseline_days: 3,
            min_day_requests: 50,
            min_requests: 100,
            factor: 2.0,
            margin_ms: 50.0,
            worst_day_factor: 1.25,
            api_share: 0.5,
            api_min_consumers: 3,
        }
    }
}

struct Baseline {
    p95: f64,
    worst: f64,
}

impl Detector for LatencyDetector {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let slots = ctx.slots();
        let std::ops::Range {
            start: base_from,
            end: window_day,
        } = ctx.history_days(self.baseline_days);
        // Daily rollups per consumer over the routes it called in the baseline week. Only those
        // routes are compared later: a consumer that starts calling a slow endpoint has a new
        // mix of requests (a `new_endpoint`), not slower ones.
        let mut known: rustc_hash::FxHashSet<(u32, u32, u32, u32)> = Default::default();
        ctx.engine
            .scan_series(Tier::Day, base_from, window_day, |_, k, _| {
                known.insert((k.consumer, k.api, k.method, k.route));
            });
        let mut daily: HashMap<u32, Vec<f64>> = HashMap::default();
        let mut global_base = Rollup::default();
        ctx.engine
            .scan_consumers(Tier::Day, base_from, window_day, |_, c, r| {
                global_base.merge(r);
                if r.counters.requests >= self.min_day_requests {
                    if let Some(p) = r.quantile(0.95) {
                        daily.entry(c).or_default().push(p);
                    }
                }
            });
        let baselines: HashMap<u32, Baseline> = daily
            .into_iter()
            .filter(|(_, v)| v.len() >= self.min_baseline_days)
            .filter_map(|(c, mut v)| {
                let worst = v.iter().copied().fold(0.0, f64::max);
                median(&mut v).map(|p95| (c, Baseline { p95, worst }))
            })
            .collect();
        // Per hour: each judged consumer's p95 and whether it regressed.
        struct Obs {
            consumer: u32,
            hour: i64,
            n: u64,
            p95: f64,
            regressed: bool,
        }
        let mut obs: Vec<Obs> = Vec::new();
        // Hours in which a consumer also called routes new to it: only those need their known
        // routes merged apart; every other hour is its consumer rollup as it stands.
        let mut mixed: rustc_hash::FxHashSet<(u32, i64)> = Default::default();
        ctx.engine.scan_series(
            Tier::Hour,
            slots.start * HOUR_MS,
            slots.end * HOUR_MS,
            |start, k, _| {
                if baselines.contains_key(&k.consumer)
                    && !known.contains(&(k.consumer, k.api, k.method, k.route))
                {
                    mixed.insert((k.consumer, start / HOUR_MS));
                }
            },
        );
        let mut global_hour: HashMap<i64, Rollup> = HashMap::default();
        let mut per_hour: HashMap<(u32, i64), Rollup> = HashMap::default();
        ctx.engine.scan_consumers(
            Tier::Hour,
            slots.start * HOUR_MS,
            slots.end * HOUR_MS,
            |start, c, r| {
                let hour = start / HOUR_MS;
                global_hour.entry(hour).or_default().merge(r);
                if r.counters.requests >= self.min_requests
                    && baselines.contains_key(&c)
                    && !mixed.contains(&(c, hour))
                {
                    per_hour.insert((c, hour), r.clone());
                }
            },
        );
        if !mixed.is_empty() {
            ctx.engine.scan_series(
                Tier::Hour,
                slots.start * HOUR_MS,
                slots.end * HOUR_MS,
                |start, k, r| {
                    let key = (k.consumer, start / HOUR_MS);
                    if mixed.contains(&key)
                        && known.contains(&(k.consumer, k.api, k.method, k.route))
                    {
                        per_hour.entry(key).or_default().merge(r);
                    }
                },
            );
        }
        for ((c, hour), r) in &per_hour {
            if r.counters.requests < self.min_requests {
                continue;
            }
            let Some(b) = baselines.get(c) else { continue };
            let Some((judged, p95)) = judged_and_p95(r) else {
                continue;
            };
            let threshold = (self.factor * b.p95)
                .max(b.p95 + self.margin_ms)
                .max(self.worst_day_factor * b.worst);
            obs.push(Obs {
                consumer: *c,
                hour: *hour,
                n: r.counters.requests,
                p95,
                regressed: judged >= threshold,
            });
        }
        let mut judged: HashMap<i64, (usize, usize)> = HashMap::default();
        for o in &obs {
            let e = judged.entry(o.hour).or_default();
            e.0 += 1;
            e.1 += usize::from(o.regressed);
        }
        let api_wide = |hour: i64| {
            judged.get(&hour).is_some_and(|(n, bad)| {
                *bad >= self.api_min_consumers && *bad as f64 >= self.api_share * *n as f64
            })
        };
        let mut per_consumer: Vec<(u32, i64)> = Vec::new();
        let mut api_hours: Vec<((), i64)> = Vec::new();
        let mut by_key: HashMap<(u32, i64), &Obs> = HashMap::default();
        for o in obs.iter().filter(|o| o.regressed) {
            if api_wide(o.hour) {
                api_hours.push(((), o.hour));
            } else {
                per_consumer.push((o.consumer, o.hour));
                by_key.insert((o.consumer, o.hour), o);
            }
        }
        let global_p95 = global_base.quantile(0.95).unwrap_or(0.0);
        let mut out = Vec::new();
        for (c, hours) in runs(per_consumer) {
            let Some(b) = baselines.get(&c) else { continue };
            let worst = hours
                .iter()
                .filter_map(|h| by_key.get(&(c, *h)))
                .max_by(|a, b| a.p95.total_cmp(&b.p95));
            let Some(worst) = worst else { continue };
            let n: u64 = hours
                .iter()
                .filter_map(|h| by_key.get(&(c, *h)))
                .map(|o| o.n)
                .sum();
            let first_seen = hours[0] * HOUR_MS;
            let last_seen = ((hours[hours.len() - 1] + 1) * HOUR_MS).min(ctx.now_ms);
            let consumer = ctx.name(c);
            let ratio = worst.p95 / b.p95.max(1e-3);
            let others_now = global_hour
                .get(&worst.hour)
                .and_then(|r| r.quantile(0.95))
                .unwrap_or(0.0);
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::LatencyRegression,
                consumer: Some(consumer.to_string()),
                api: None,
                route: None,
                severity: if ratio >= 5.0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
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
                    "observed": {"p95_ms": r3(worst.p95), "requests": n, "worst_hour": ts(worst.hour * HOUR_MS)},
                    "baseline": {"p95_ms": r3(b.p95), "worst_day_p95_ms": r3(b.worst), "days": self.baseline_days, "method": "median of daily p95"},
                    "api_p95_ms": r3(others_now),
                    "api_baseline_p95_ms": r3(global_p95),
                }),
            });
        }
        for ((), hours) in runs(api_hours) {
            let first_seen = hours[0] * HOUR_MS;
            let last = hours[hours.len() - 1];
            let last_seen = ((last + 1) * HOUR_MS).min(ctx.now_ms);
            let now_p95 = global_hour
                .get(&last)
                .and_then(|r| r.quantile(0.95))
                .unwrap_or(0.0);
            let (judged_n, bad) = judged.get(&last).copied().unwrap_or((0, 0));
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
                    "The API slowed down for {bad} of {} busy consumers since {}: p95 is {} against a usual {}; this is an API problem, not a customer's.",
                    count(judged_n as f64),
                    when(first_seen),
                    millis(now_p95),
                    millis(global_p95)
                ),
                evidence: json!({
                    "window": {"from": ts(first_seen), "to": ts(last_seen)},
                    "observed": {"p95_ms": r3(now_p95), "consumers_regressed": bad, "consumers_judged": judged_n},
                    "baseline": {"p95_ms": r3(global_p95), "days": self.baseline_days},
                }),
            });
        }
        out
    }
}

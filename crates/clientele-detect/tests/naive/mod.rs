//! The naive detector, for comparison only (it is not part of the product): what Treblle-style
//! anomaly alerts do, the last 15 minutes of each consumer against its 7-day mean, with fixed
//! factors. Our reading of that design, applied once an hour over the judged window:
//!
//! - `volume_spike`: requests in the last 15 minutes at least 3× the 7-day mean per 15 minutes;
//! - `volume_drop`: at most 15% of that mean (only when the mean is at least one request);
//! - `error_spike`: the error rate of the last 15 minutes at least 3× the 7-day rate and 5%;
//! - `latency_regression`: p95 at least 2× the 7-day mean of hourly p95s;
//! - `api_errors`: the same error rule on a route, all consumers pooled.
//!
//! The world holds hourly rollups, so the last quarter of an hour is drawn from its hour
//! (each request in it with probability 1/4, seeded), and its p95 is the hour's: a quieter
//! sample than a real 15 minutes, which is generous to this detector. Consecutive flagged hours
//! are one finding, as ours are.

use std::collections::BTreeMap;

use clientele_analytics::{HOUR_MS, Tier, detector_errors};
use clientele_core::finding::{Finding, FindingKind, Severity};

use crate::synth::{Rng, World};

#[derive(Default, Clone, Copy)]
struct Hour {
    n: u64,
    e: u64,
    p95: f64,
}

fn finding(
    kind: FindingKind,
    consumer: Option<&str>,
    route: Option<String>,
    hours: &[i64],
) -> Finding {
    Finding {
        id: String::new(),
        kind,
        consumer: consumer.map(str::to_string),
        api: None,
        route,
        severity: Severity::Warning,
        first_seen_ms: hours[0] * HOUR_MS,
        last_seen_ms: (hours[hours.len() - 1] + 1) * HOUR_MS,
        summary: String::new(),
        evidence: serde_json::Value::Null,
    }
}

/// Runs of consecutive hours per key, as findings.
fn merge(flags: BTreeMap<(FindingKind, String, String), Vec<i64>>) -> Vec<Finding> {
    let mut out = Vec::new();
    for ((kind, consumer, route), mut hours) in flags {
        hours.sort();
        hours.dedup();
        let mut run: Vec<i64> = Vec::new();
        for h in hours {
            if run.last().is_some_and(|l| l + 1 != h) {
                out.push(finding(
                    kind,
                    Some(&consumer)
                        .filter(|c| !c.is_empty())
                        .map(|c| c.as_str()),
                    Some(route.clone()).filter(|r| !r.is_empty()),
                    &run,
                ));
                run.clear();
            }
            run.push(h);
        }
        if !run.is_empty() {
            out.push(finding(
                kind,
                Some(&consumer)
                    .filter(|c| !c.is_empty())
                    .map(|c| c.as_str()),
                Some(route.clone()).filter(|r| !r.is_empty()),
                &run,
            ));
        }
    }
    out
}

pub fn detect(world: &World, seed: u64) -> Vec<Finding> {
    let mut rng = Rng::new(seed ^ 0x07AE_8B1E);
    let now_hour = world.now_ms.div_euclid(HOUR_MS);
    let first_judged = now_hour - world.judged_days * 24;
    let from = (first_judged - 7 * 24) * HOUR_MS;
    let names = world.engine.names();
    // Per consumer and hour; per route and hour.
    let mut consumers: BTreeMap<u32, BTreeMap<i64, Hour>> = BTreeMap::new();
    world
        .engine
        .scan_consumers(Tier::Hour, from, world.now_ms, |start, c, r| {
            consumers.entry(c).or_default().insert(
                start / HOUR_MS,
                Hour {
                    n: r.counters.requests,
                    e: detector_errors(&r.counters),
                    p95: r.quantile(0.95).unwrap_or(0.0),
                },
            );
        });
    let mut routes: BTreeMap<String, BTreeMap<i64, Hour>> = BTreeMap::new();
    world
        .engine
        .scan_series(Tier::Hour, from, world.now_ms, |start, k, r| {
            let op = format!("{} {}", names[k.method as usize], names[k.route as usize]);
            let h = routes
                .entry(op)
                .or_default()
                .entry(start / HOUR_MS)
                .or_default();
            h.n += r.counters.requests;
            h.e += detector_errors(&r.counters);
        });
    let mut flags: BTreeMap<(FindingKind, String, String), Vec<i64>> = BTreeMap::new();
    let mut flag = |kind, consumer: &str, route: &str, hour| {
        flags
            .entry((kind, consumer.to_string(), route.to_string()))
            .or_default()
            .push(hour);
    };
    for (c, hours) in &consumers {
        let name = &*names[*c as usize];
        for hour in first_judged..now_hour {
            let (mut n7, mut e7, mut p7, mut np) = (0u64, 0u64, 0.0, 0usize);
            for (_, h) in hours.range(hour - 7 * 24..hour) {
                n7 += h.n;
                e7 += h.e;
                if h.n > 0 {
                    p7 += h.p95;
                    np += 1;
                }
            }
            let mean15 = n7 as f64 / (7.0 * 96.0);
            let rate7 = e7 as f64 / n7.max(1) as f64;
            let now = hours.get(&hour).copied().unwrap_or_default();
            let n15 = rng.binomial(now.n, 0.25);
            let e15 = rng.binomial(now.e, 0.25).min(n15);
            if n7 == 0 {
                continue;
            }
            if n15 as f64 >= 3.0 * mean15 && n15 > 0 {
                flag(FindingKind::VolumeSpike, name, "", hour);
            }
            if mean15 >= 1.0 && (n15 as f64) <= 0.15 * mean15 {
                flag(FindingKind::VolumeDrop, name, "", hour);
            }
            let rate15 = e15 as f64 / n15.max(1) as f64;
            if n15 > 0 && rate15 >= (3.0 * rate7).max(0.05) {
                flag(FindingKind::ErrorSpike, name, "", hour);
            }
            if np > 0 && now.n > 0 && now.p95 >= 2.0 * p7 / np as f64 {
                flag(FindingKind::LatencyRegression, name, "", hour);
            }
        }
    }
    for (op, hours) in &routes {
        for hour in first_judged..now_hour {
            let (n7, e7) = hours
                .range(hour - 7 * 24..hour)
                .fold((0u64, 0u64), |(n, e), (_, h)| (n + h.n, e + h.e));
            let now = hours.get(&hour).copied().unwrap_or_default();
            let n15 = rng.binomial(now.n, 0.25);
            let e15 = rng.binomial(now.e, 0.25).min(n15);
            let rate7 = e7 as f64 / n7.max(1) as f64;
            if n7 > 0 && n15 > 0 && e15 as f64 / n15 as f64 >= (3.0 * rate7).max(0.05) {
                flag(FindingKind::ApiErrors, "", op, hour);
            }
        }
    }
    merge(flags)
}

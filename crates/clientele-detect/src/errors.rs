//! Errors, per consumer and per route: `error_spike`, `integration_errors` and `api_errors`.
//!
//! For each judged hour and each route, every consumer's error rate on that route is compared
//! with its own baseline on that route: the median of its daily error rates over the previous
//! week (pooled when it has few days, the route's own baseline when it is new to the route).
//! Then the route is classified:
//!
//! - the route's errors clearly above what its consumers' baselines predict, elevated for three
//!   or more consumers, with no one consumer owning most of the net excess: `api_errors`,
//!   consumer null. An API-wide incident is never blamed on one
//!   integration, and the per-consumer `error_spike`s of that hour are folded into it.
//! - one consumer with the largest excess while the others, pooled, are at their usual rates:
//!   `integration_errors` for that consumer, beside its `error_spike`.
//!
//! 429s are not errors here: they are the gateway enforcing limits, a finding of their own.
//! The onset is refined to the minute when the minute tier still holds the first hour, so a
//! summary can say "since 14:05".

use clientele_analytics::{DAY_MS, HOUR_MS, MINUTE_MS, Tier, detector_errors};
use clientele_core::finding::{Finding, FindingKind, Severity};
use rustc_hash::FxHashMap as HashMap;
use serde_json::json;

use crate::stats::median;
use crate::text::{count, pct, r3, ts, when};
use crate::{Detector, EvalContext, new_finding_id, runs};

#[derive(Debug, Clone)]
pub struct ErrorDetector {
    /// Days of history in the baseline.
    pub baseline_days: i64,
    /// Requests of one consumer on one route in an hour before its error rate is judged.
    pub min_requests: u64,
    /// Errors in that hour before it is judged.
    pub min_errors: u64,
    /// An error rate below this is never a spike.
    pub min_rate: f64,
    /// The rate must reach this multiple of the baseline...
    pub spike_factor: f64,
    /// ...and exceed the baseline by this much (absolute).
    pub spike_margin: f64,
    /// Binomial z-score the excess errors must reach.
    pub min_z: f64,
    /// Consumers with elevated errors on a route, at least, for an API-wide incident.
    pub api_min_consumers: usize,
    /// Share of the route's excess errors from one consumer that makes them its own.
    pub concentration: f64,
    /// Requests from the other consumers on the route needed to call them unaffected.
    pub min_other_requests: u64,
}

impl Default for ErrorDetector {
    fn default() -> Self {
        ErrorDetector {
            baseline_days: 7,
            min_requests: 20,
            min_errors: 10,
            min_rate: 0.08,
            spike_factor: 3.0,
            spike_margin: 0.05,
            min_z: 5.0,
            api_min_consumers: 3,
            concentration: 0.6,
            min_other_requests: 20,
        }
    }
}

/// When neither the consumer nor the route has history, assume a 1% error rate.
const DEFAULT_BASELINE: f64 = 0.01;

/// (api, method, route) as engine ids.
type Route = (u32, u32, u32);

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    n: u64,
    e: u64,
    e5: u64,
}

impl Count {
    fn add(&mut self, o: Count) {
        self.n += o.n;
        self.e += o.e;
        self.e5 += o.e5;
    }
    fn rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.e as f64 / self.n as f64
        }
    }
}

/// How far `errors` out of `n` are above a baseline `p`, in binomial standard deviations.
/// The baseline is floored at 0.5%, so a consumer that never erred is not flagged for a few.
fn binomial_z(errors: u64, n: u64, p: f64) -> f64 {
    let p = p.clamp(0.005, 0.999);
    (errors as f64 - n as f64 * p) / (n as f64 * p * (1.0 - p)).sqrt().max(1e-9)
}

/// Whether a pool of requests (a route, or the other consumers on it) has clearly more errors
/// than its consumers' baselines predict: at least `min_errors`, at least double and two points
/// above the expected rate, and `min_z` Poisson deviations above it.
fn elevated_pool(errors: u64, n: u64, expected: f64, min_errors: u64, min_z: f64) -> bool {
    if n == 0 || errors < min_errors {
        return false;
    }
    let expected_rate = expected / n as f64;
    let rate = errors as f64 / n as f64;
    let z = (errors as f64 - expected) / expected.max(1.0).sqrt();
    rate >= (2.0 * expected_rate).max(expected_rate + 0.02) && z >= min_z
}

/// Median of daily rates over days with enough requests, else the pooled rate.
fn baseline_of(days: &[Count]) -> Option<f64> {
    let mut rates: Vec<f64> = days.iter().filter(|d| d.n >= 5).map(Count::rate).collect();
    if rates.len() >= 2 {
        return median(&mut rates);
    }
    let mut pooled = Count::default();
    for d in days {
        pooled.add(*d);
    }
    (pooled.n >= 20).then(|| pooled.rate())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Others on the route are at their usual rates (apart from this many consumers failing
    /// at the same time).
    Isolated(usize),
    /// Nobody else called the route enough to compare.
    Alone,
    /// Some others see more errors too, not enough for an API-wide finding.
    Shared(usize),
}

impl Detector for ErrorDetector {
    fn name(&self) -> &'static str {
        "errors"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let slots = ctx.slots();
        let std::ops::Range {
            start: base_from,
            end: window_day,
        } = ctx.history_days(self.baseline_days);
        let ndays = self.baseline_days.max(1) as usize;
        let mut pair_days: HashMap<(u32, Route), Vec<Count>> = HashMap::default();
        let mut route_days: HashMap<Route, Vec<Count>> = HashMap::default();
        ctx.engine
            .scan_series(Tier::Day, base_from, window_day, |day, k, r| {
                let d = ((day - base_from) / DAY_MS) as usize;
                let c = Count {
                    n: r.counters.requests,
                    e: detector_errors(&r.counters),
                    e5: r.counters.s5xx,
                };
                let route = (k.api, k.method, k.route);
                for v in [
                    pair_days
                        .entry((k.consumer, route))
                        .or_insert_with(|| vec![Count::default(); ndays]),
                    route_days
                        .entry(route)
                        .or_insert_with(|| vec![Count::default(); ndays]),
                ] {
                    if let Some(slot) = v.get_mut(d) {
                        slot.add(c);
                    }
                }
            });
        let route_base: HashMap<Route, f64> = route_days
            .iter()
            .filter_map(|(r, days)| baseline_of(days).map(|b| (*r, b)))
            .collect();
        let pair_base: HashMap<(u32, Route), f64> = pair_days
            .iter()
            .filter_map(|(p, days)| baseline_of(days).map(|b| (*p, b)))
            .collect();
        let base = |c: u32, r: Route| -> (f64, &'static str) {
            if let Some(b) = pair_base.get(&(c, r)) {
                (*b, "consumer_on_route")
            } else if let Some(b) = route_base.get(&r) {
                (*b, "route")
            } else {
                (DEFAULT_BASELINE, "default")
            }
        };

        // Observed, per route and hour, per consumer.
        let mut observed: HashMap<(Route, i64), HashMap<u32, Count>> = HashMap::default();
        ctx.engine.scan_series(
            Tier::Hour,
            slots.start * HOUR_MS,
            slots.end * HOUR_MS,
            |start, k, r| {
                let c = Count {
                    n: r.counters.requests,
                    e: detector_errors(&r.counters),
                    e5: r.counters.s5xx,
                };
                observed
                    .entry(((k.api, k.method, k.route), start / HOUR_MS))
                    .or_default()
                    .entry(k.consumer)
                    .or_default()
                    .add(c);
            },
        );

        let mut spike_flags: Vec<((u32, Route), i64)> = Vec::new();
        let mut spike_ctx: HashMap<((u32, Route), i64), Context> = HashMap::default();
        let mut integration_flags: Vec<((Route, u32), i64)> = Vec::new();
        let mut api_flags: Vec<(Route, i64)> = Vec::new();
        let mut api_affected: HashMap<(Route, i64), (usize, usize)> = HashMap::default();
        for ((route, hour), consumers) in &observed {
            let total: u64 = consumers.values().map(|c| c.e).sum();
            if total < self.min_errors {
                continue;
            }
            // Expected errors at each consumer's own baseline, and who is above it.
            let mut expected_total = 0.0;
            let mut requests_total = 0u64;
            let mut elevated = Vec::new();
            let mut strict = Vec::new();
            let mut top: Option<(u32, f64)> = None;
            for (&c, cnt) in consumers {
                let (b, _) = base(c, *route);
                let rate = cnt.rate();
                expected_total += cnt.n as f64 * b;
                requests_total += cnt.n;
                let excess = cnt.e as f64 - cnt.n as f64 * b;
                if top.is_none_or(|(tc, te)| excess > te || (excess == te && c < tc)) {
                    top = Some((c, excess));
                }
                if cnt.n >= 5 && cnt.e >= 3 && rate >= (2.0 * b).max(b + self.spike_margin) {
                    elevated.push(c);
                }
                if cnt.n >= self.min_requests
                    && cnt.e >= self.min_errors
                    && rate >= self.min_rate
                    && rate >= self.spike_factor * b
                    && rate >= b + self.spike_margin
                    && binomial_z(cnt.e, cnt.n, b) >= self.min_z
                {
                    strict.push(c);
                }
            }
            // Net excess: noise above and below the baselines cancels out across consumers.
            let net_excess = total as f64 - expected_total;
            let share = match top {
                Some((_, te)) if net_excess > 0.0 => (te / net_excess).clamp(0.0, 1.0),
                _ => 0.0,
            };
            let route_elevated = elevated_pool(
                total,
                requests_total,
                expected_total,
                self.min_errors,
                self.min_z,
            );
            if route_elevated
                && elevated.len() >= self.api_min_consumers
                && share < self.concentration
            {
                api_flags.push((*route, *hour));
                api_affected.insert((*route, *hour), (elevated.len(), consumers.len()));
                continue;
            }
            // The others: everyone but the consumers whose own rates spiked. Two integrations
            // can break in the same hour; each is still an integration problem when the rest
            // of the route's callers are fine.
            let mut others_n = requests_total;
            let mut others_e = total;
            let mut others_expected = expected_total;
            for c in &strict {
                if let Some(own) = consumers.get(c) {
                    others_n -= own.n;
                    others_e -= own.e;
                    others_expected -= own.n as f64 * base(*c, *route).0;
                }
            }
            let peers = strict.len() - usize::min(strict.len(), 1);
            let context = if others_n < self.min_other_requests {
                Context::Alone
            } else if !elevated_pool(others_e, others_n, others_expected, 5, 3.0) {
                Context::Isolated(peers)
            } else {
                Context::Shared(elevated.len().saturating_sub(strict.len()).max(1))
            };
            for &c in &strict {
                spike_flags.push(((c, *route), *hour));
                spike_ctx.insert(((c, *route), *hour), context);
                if matches!(context, Context::Isolated(_)) {
                    integration_flags.push(((*route, c), *hour));
                }
            }
        }

        let sum_run = |route: Route, only: Option<u32>, hours: &[i64]| -> Count {
            let mut acc = Count::default();
            for h in hours {
                if let Some(cs) = observed.get(&(route, *h)) {
                    for (c, cnt) in cs {
                        if only.is_none_or(|o| o == *c) {
                            acc.add(*cnt);
                        }
                    }
                }
            }
            acc
        };
        let others_run = |route: Route, except: u32, hours: &[i64]| -> Count {
            let mut acc = Count::default();
            for h in hours {
                if let Some(cs) = observed.get(&(route, *h)) {
                    for (c, cnt) in cs {
                        if *c != except {
                            acc.add(*cnt);
                        }
                    }
                }
            }
            acc
        };
        let others_base = |route: Route, except: u32| -> f64 {
            // The usual rate of the others: their pooled daily history on this route.
            let mut acc = vec![Count::default(); ndays];
            for ((c, r), days) in &pair_days {
                if *r == route && *c != except {
                    for (a, d) in acc.iter_mut().zip(days) {
                        a.add(*d);
                    }
                }
            }
            baseline_of(&acc).unwrap_or_else(|| base(except, route).0)
        };

        let mut onset = Onset::new(ctx);
        let mut out = Vec::new();
        for ((c, route), hours) in runs(spike_flags) {
            let obs = sum_run(route, Some(c), &hours);
            let (b, basis) = base(c, route);
            let last = hours.last().copied().unwrap_or(slots.start);
            let context = spike_ctx
                .get(&((c, route), last))
                .copied()
                .unwrap_or(Context::Alone);
            let first_seen = onset.refine(hours[0], route, Some(c), b, obs.rate());
            let last_seen = ((last + 1) * HOUR_MS).min(ctx.now_ms);
            let consumer = ctx.name(c);
            let op = format!("{} {}", ctx.name(route.1), ctx.name(route.2));
            let tail = match context {
                Context::Isolated(peers) => {
                    let ob = others_run(route, c, &hours);
                    format!(
                        "other consumers are unaffected ({} errors on it{}), so this is likely an integration problem",
                        pct(ob.rate()),
                        if peers > 0 {
                            format!("; {peers} other integration(s) broke at the same time")
                        } else {
                            String::new()
                        }
                    )
                }
                Context::Alone => format!(
                    "no other consumer called {op} enough to compare, so check both {consumer}'s integration and the endpoint"
                ),
                Context::Shared(n) => format!(
                    "{n} other consumer(s) see more errors on it too, so check the API as well as {consumer}'s integration"
                ),
            };
            let severity = if obs.rate() >= 0.25 && obs.e >= 50 {
                Severity::Critical
            } else {
                Severity::Warning
            };
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::ErrorSpike,
                consumer: Some(consumer.to_string()),
                api: Some(ctx.name(route.0).to_string()).filter(|a| !a.is_empty()),
                route: Some(op.clone()),
                severity,
                first_seen_ms: first_seen,
                last_seen_ms: last_seen,
                summary: format!(
                    "{consumer}'s error rate on {op} rose from {} to {} since {}; {tail}.",
                    pct(b),
                    pct(obs.rate()),
                    when(first_seen)
                ),
                evidence: json!({
                    "window": {"from": ts(first_seen), "to": ts(last_seen)},
                    "observed": {"requests": obs.n, "errors": obs.e, "errors_5xx": obs.e5, "error_rate": r3(obs.rate())},
                    "baseline": {"error_rate": r3(b), "basis": basis, "days": self.baseline_days, "method": "median of daily error rates"},
                    "others": match context {
                        Context::Isolated(_) => "unaffected",
                        Context::Alone => "no comparable traffic",
                        Context::Shared(_) => "some affected",
                    },
                }),
            });
        }
        for ((route, c), hours) in runs(integration_flags) {
            let obs = sum_run(route, Some(c), &hours);
            let all = sum_run(route, None, &hours);
            let others = others_run(route, c, &hours);
            let ob = others_base(route, c);
            let (b, _) = base(c, route);
            let first_seen = onset.refine(hours[0], route, Some(c), b, obs.rate());
            let last_seen = ((hours[hours.len() - 1] + 1) * HOUR_MS).min(ctx.now_ms);
            let consumer = ctx.name(c);
            let op = format!("{} {}", ctx.name(route.1), ctx.name(route.2));
            let share = obs.e as f64 / all.e.max(1) as f64;
            let extra = obs.e as f64 - obs.n as f64 * b;
            let all_extra = all.e as f64 - (obs.n as f64 * b + others.n as f64 * ob);
            let excess_share = (extra / all_extra.max(extra).max(1.0)).clamp(0.0, 1.0);
            let cause = if obs.e5 * 2 > obs.e {
                "its requests trigger server errors that others' do not, so compare what it sends"
            } else {
                "the API rejects its requests (4xx), so its integration is likely sending bad or unauthorised requests"
            };
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::IntegrationErrors,
                consumer: Some(consumer.to_string()),
                api: Some(ctx.name(route.0).to_string()).filter(|a| !a.is_empty()),
                route: Some(op.clone()),
                severity: if excess_share >= 0.9 && obs.e >= 50 {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                first_seen_ms: first_seen,
                last_seen_ms: last_seen,
                summary: format!(
                    "{consumer} is behind {} of the extra errors on {op} since {} ({} errors, a {} error rate, while the other consumers stay at their usual {}); {cause}.",
                    pct(excess_share),
                    when(first_seen),
                    count(obs.e as f64),
                    pct(obs.rate()),
                    pct(others.rate())
                ),
                evidence: json!({
                    "window": {"from": ts(first_seen), "to": ts(last_seen)},
                    "observed": {"requests": obs.n, "errors": obs.e, "errors_5xx": obs.e5, "error_rate": r3(obs.rate()), "share_of_route_errors": r3(share), "share_of_extra_errors": r3(excess_share)},
                    "others": {"requests": others.n, "errors": others.e, "error_rate": r3(others.rate()), "baseline_error_rate": r3(ob)},
                    "baseline": {"error_rate": r3(b), "days": self.baseline_days},
                }),
            });
        }
        for (route, hours) in runs(api_flags) {
            let all = sum_run(route, None, &hours);
            let b = route_base.get(&route).copied().unwrap_or(DEFAULT_BASELINE);
            let first_seen = onset.refine(hours[0], route, None, b, all.rate());
            let last = hours[hours.len() - 1];
            let last_seen = ((last + 1) * HOUR_MS).min(ctx.now_ms);
            let (affected, callers) = api_affected.get(&(route, last)).copied().unwrap_or((0, 0));
            let op = format!("{} {}", ctx.name(route.1), ctx.name(route.2));
            let kind_of = if all.e5 * 2 > all.e {
                "server errors"
            } else {
                "client errors"
            };
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::ApiErrors,
                consumer: None,
                api: Some(ctx.name(route.0).to_string()).filter(|a| !a.is_empty()),
                route: Some(op.clone()),
                severity: if all.rate() >= 0.2 {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                first_seen_ms: first_seen,
                last_seen_ms: last_seen,
                summary: format!(
                    "Errors on {op} rose from {} to {} since {}, for {affected} of the {callers} consumers calling it and with no single integration behind most of them; this is likely an API problem ({kind_of}), not a customer's.",
                    pct(b),
                    pct(all.rate()),
                    when(first_seen)
                ),
                evidence: json!({
                    "window": {"from": ts(first_seen), "to": ts(last_seen)},
                    "observed": {"requests": all.n, "errors": all.e, "errors_5xx": all.e5, "error_rate": r3(all.rate())},
                    "baseline": {"error_rate": r3(b), "days": self.baseline_days, "method": "median of the route's daily error rates"},
                    "consumers": {"affected": affected, "calling": callers},
                }),
            });
        }
        out
    }
}

/// One hour's minute counts per (route, consumer).
type MinuteSeries = HashMap<(Route, u32), Vec<(i64, Count)>>;

/// Refines the start of an error condition to the minute, from the minute tier when it still
/// holds the first hour. One scan per distinct hour, shared by every finding starting in it.
struct Onset<'c, 'a> {
    ctx: &'c EvalContext<'a>,
    minutes: HashMap<i64, MinuteSeries>,
}

impl<'c, 'a> Onset<'c, 'a> {
    fn new(ctx: &'c EvalContext<'a>) -> Self {
        Onset {
            ctx,
            minutes: HashMap::default(),
        }
    }

    /// The first minute of `hour` whose error rate is past halfway from `baseline` to
    /// `observed`, or the hour's start.
    fn refine(
        &mut self,
        hour: i64,
        route: Route,
        consumer: Option<u32>,
        baseline: f64,
        observed: f64,
    ) -> i64 {
        let engine = self.ctx.engine;
        let by_series = self.minutes.entry(hour).or_insert_with(|| {
            let mut m: MinuteSeries = HashMap::default();
            engine.scan_series(
                Tier::Minute,
                hour * HOUR_MS,
                (hour + 1) * HOUR_MS,
                |start, k, r| {
                    m.entry(((k.api, k.method, k.route), k.consumer))
                        .or_default()
                        .push((
                            start,
                            Count {
                                n: r.counters.requests,
                                e: detector_errors(&r.counters),
                                e5: r.counters.s5xx,
                            },
                        ));
                },
            );
            m
        });
        let mut per_minute: std::collections::BTreeMap<i64, Count> = Default::default();
        for ((r, c), mins) in by_series.iter() {
            if *r == route && consumer.is_none_or(|x| x == *c) {
                for (t, cnt) in mins {
                    per_minute.entry(*t).or_default().add(*cnt);
                }
            }
        }
        let halfway = (baseline + observed) / 2.0;
        per_minute
            .iter()
            .find(|(_, c)| c.e >= 1 && c.rate() >= halfway)
            .map_or(hour * HOUR_MS, |(t, _)| *t - t.rem_euclid(MINUTE_MS))
    }
}

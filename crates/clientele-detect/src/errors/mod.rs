//! Errors, per consumer and per route: `error_spike`, `integration_errors` and `api_errors`.
//!
//! Every consumer's errors on every route are judged over sliding windows (`[detection.errors]
//! windows_hours`, by default 1, 2, 6 and 24 hours) against its own baseline on that route: the
//! median of its daily error rates over the previous week (pooled when it has few days, the
//! route's own baseline when it is new to the route). A window is flagged when its rate is
//! clearly above the baseline (`min_rate`, `spike_factor`, `spike_margin`) and a binomial
//! likelihood-ratio test is significant at `significance` divided by the tests of that
//! consumer-day (windows × hours × routes). So 15 errors in 100 calls over six hours is found on
//! a consumer at 20 requests an hour, and no volume floor hides it.
//!
//! Then the route is classified, pooling its consumers over the same windows:
//!
//! - the route's errors clearly above what its callers' baselines predict (a Poisson
//!   likelihood-ratio test on the pool), spread over `api_min_consumers` or more consumers (and
//!   at least half of the route's callers) with
//!   no one of them owning `concentration` of the excess: `api_errors`, consumer null. Ten quiet
//!   consumers together are a clear signal even when none of them is alone. An API-wide
//!   incident is never blamed on one integration: per-consumer flags overlapping it are folded
//!   into it.
//! - a consumer's flagged window while the others, pooled, are at their usual rates:
//!   `integration_errors` for that consumer, beside its `error_spike`.
//!
//! Routes and consumers without any history are not judged: a rate is only unusual against a
//! usual one, and a new API's ordinary 404s are not an incident. 429s are not errors here: they
//! are the gateway enforcing limits, a finding of their own.

use clientele_analytics::{DAY_MS, HOUR_MS, Tier, detector_errors};
use clientele_core::detection_config::ErrorsConfig;
use clientele_core::finding::Finding;
use rustc_hash::FxHashMap as HashMap;

use crate::stats::{binomial_z, critical_z, median, poisson_z};
use crate::{Detector, EvalContext};

mod findings;
mod onset;

#[derive(Debug, Clone, Default)]
pub struct ErrorDetector {
    pub config: ErrorsConfig,
}

impl ErrorDetector {
    pub fn new(config: ErrorsConfig) -> ErrorDetector {
        ErrorDetector { config }
    }
}

/// The others on a route are compared only when they made this many requests in the window.
const MIN_OTHER_REQUESTS: u64 = 20;
/// A baseline rate is floored at 0.5%, so a consumer that never erred is not flagged for a few.
const MIN_BASELINE: f64 = 0.005;

/// (api, method, route) as engine ids.
type Route = (u32, u32, u32);

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    n: u64,
    e: u64,
    e5: u64,
}

impl Count {
    fn of(c: &clientele_analytics::Counters) -> Count {
        Count {
            n: c.requests,
            e: detector_errors(c),
            e5: c.s5xx,
        }
    }
    fn add(&mut self, o: Count) {
        self.n += o.n;
        self.e += o.e;
        self.e5 += o.e5;
    }
    fn sub(&mut self, o: Count) {
        self.n -= o.n.min(self.n);
        self.e -= o.e.min(self.e);
        self.e5 -= o.e5.min(self.e5);
    }
    fn rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.e as f64 / self.n as f64
        }
    }
}

/// Pseudo-requests at the route's rate that a consumer's own history is blended with: a quiet
/// consumer's few requests say little about its usual rate, so its baseline leans on the
/// route's until its own history is rich.
const PRIOR_REQUESTS: f64 = 50.0;

/// How far above its own baseline a caller's window must be (binomial deviance, about a
/// one-sided 12% test) to count among the consumers an API-wide incident affects: loose,
/// because the pool carries the evidence, yet above what a handful of ordinary calls gives.
const AFFECTED_Z: f64 = 1.2;

/// A consumer's (or a route's) usual error rate from its daily counts. With enough errors a
/// day, the median of daily rates (robust to an incident day); otherwise the pooled rate,
/// blended with `prior` (the route's rate) when there is one.
fn baseline_of(days: &[Count], prior: Option<f64>) -> Option<f64> {
    let mut pooled = Count::default();
    for d in days {
        pooled.add(*d);
    }
    let active: Vec<&Count> = days.iter().filter(|d| d.n > 0).collect();
    let rich = active.len() >= 2 && active.iter().all(|d| d.e >= 5);
    if rich {
        let mut rates: Vec<f64> = active.iter().map(|d| d.rate()).collect();
        return median(&mut rates);
    }
    // Pooled over the days, an incident day is diluted rather than dropped, and blended with
    // the route's rate; one standard error is added, since the test is against the highest
    // rate this little history is consistent with.
    match prior {
        Some(p) => {
            let n = pooled.n as f64 + PRIOR_REQUESTS;
            let b = (pooled.e as f64 + PRIOR_REQUESTS * p) / n;
            Some(b + (b / n).sqrt())
        }
        None => (pooled.n >= 20).then(|| pooled.rate()),
    }
}

/// The history: daily counts per (consumer, route) and per route, and the baselines of each.
struct Baselines {
    /// Day-to-day relative variance of consumers' error rates beyond binomial noise: an hour of
    /// a bad day is not evidence of a broken integration.
    rate_variance: f64,
    pair_days: HashMap<(u32, Route), Vec<Count>>,
    pair: HashMap<(u32, Route), f64>,
    route: HashMap<Route, f64>,
}

impl Baselines {
    fn scan(ctx: &EvalContext<'_>, days: i64) -> Baselines {
        let std::ops::Range {
            start: base_from,
            end: window_day,
        } = ctx.history_days(days);
        let ndays = days.max(1) as usize;
        let mut pair_days: HashMap<(u32, Route), Vec<Count>> = HashMap::default();
        let mut route_days: HashMap<Route, Vec<Count>> = HashMap::default();
        ctx.engine
            .scan_series(Tier::Day, base_from, window_day, |day, k, r| {
                let d = ((day - base_from) / DAY_MS) as usize;
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
                        slot.add(Count::of(&r.counters));
                    }
                }
            });
        let route: HashMap<Route, f64> = route_days
            .iter()
            .filter_map(|(r, days)| baseline_of(days, None).map(|b| (*r, b)))
            .collect();
        let pair: HashMap<(u32, Route), f64> = pair_days
            .iter()
            .filter_map(|(p, days)| baseline_of(days, route.get(&p.1).copied()).map(|b| (*p, b)))
            .collect();
        Baselines {
            rate_variance: rate_variance(&pair_days, &pair),
            pair,
            route,
            pair_days,
        }
    }
}

/// The relative variance of daily error rates beyond binomial noise, over every consumer-day
/// with enough expected errors to tell. A day's squared excess over its expected count is
/// about `(1 + expected × variance) × χ²₁`; each day gives one estimate, and their median is
/// robust to the incident days in the history.
fn rate_variance(
    days: &HashMap<(u32, Route), Vec<Count>>,
    base: &HashMap<(u32, Route), f64>,
) -> f64 {
    let mut v = Vec::new();
    for (p, list) in days {
        let Some(b) = base.get(p) else { continue };
        for d in list {
            let expected = d.n as f64 * b;
            if expected >= 5.0 {
                let excess = d.e as f64 - expected;
                v.push((excess * excess / expected / 0.455 - 1.0) / expected);
            }
        }
    }
    crate::stats::select_quantile(&mut v, 0.5).map_or(0.0, |m| m.max(0.0))
}

impl Baselines {
    /// A consumer's usual rate on a route and what it is based on; `None` when neither it nor
    /// the route has history.
    fn of(&self, c: u32, r: Route) -> Option<(f64, &'static str)> {
        if let Some(b) = self.pair.get(&(c, r)) {
            Some((*b, "consumer_on_route"))
        } else {
            self.route.get(&r).map(|b| (*b, "route"))
        }
    }

    /// The usual rate of everyone but `except` on a route: their pooled daily history.
    fn others(&self, route: Route, except: u32) -> Option<f64> {
        let prior = self.route.get(&route).copied();
        let mut acc: Vec<Count> = Vec::new();
        for ((c, r), days) in &self.pair_days {
            if *r == route && *c != except {
                acc.resize(days.len(), Count::default());
                for (a, d) in acc.iter_mut().zip(days) {
                    a.add(*d);
                }
            }
        }
        baseline_of(&acc, prior)
    }
}

/// Hourly counts of every (route, consumer) from `from_hour`, with prefix sums for windows.
struct Observed {
    from_hour: i64,
    len: usize,
    /// Per route, per consumer: cumulative counts, `cum[i]` = hours before `from_hour + i`.
    pairs: HashMap<Route, HashMap<u32, Vec<Count>>>,
}

impl Observed {
    fn scan(ctx: &EvalContext<'_>, from_hour: i64, to_hour: i64) -> Observed {
        let len = (to_hour - from_hour).max(0) as usize;
        let mut hourly: HashMap<Route, HashMap<u32, Vec<Count>>> = HashMap::default();
        ctx.engine.scan_series(
            Tier::Hour,
            from_hour * HOUR_MS,
            to_hour * HOUR_MS,
            |start, k, r| {
                let i = (start / HOUR_MS - from_hour) as usize;
                let v = hourly
                    .entry((k.api, k.method, k.route))
                    .or_default()
                    .entry(k.consumer)
                    .or_insert_with(|| vec![Count::default(); len]);
                if let Some(slot) = v.get_mut(i) {
                    slot.add(Count::of(&r.counters));
                }
            },
        );
        for consumers in hourly.values_mut() {
            for v in consumers.values_mut() {
                let mut acc = Count::default();
                let mut cum = Vec::with_capacity(len + 1);
                cum.push(acc);
                for c in v.iter() {
                    acc.add(*c);
                    cum.push(acc);
                }
                *v = cum;
            }
        }
        Observed {
            from_hour,
            len,
            pairs: hourly,
        }
    }

    /// Counts over hours `[from, to]` (hour numbers, inclusive) from a cumulative series.
    fn window(&self, cum: &[Count], from: i64, to: i64) -> Count {
        let a = (from - self.from_hour).clamp(0, self.len as i64) as usize;
        let b = (to + 1 - self.from_hour).clamp(0, self.len as i64) as usize;
        let mut c = cum[b.max(a)];
        c.sub(cum[a]);
        c
    }
}

/// Whether the others on a route were at their usual rates in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Others on the route are at their usual rates (apart from this many consumers failing
    /// at the same time).
    Isolated(usize),
    /// Nobody else called the route enough to compare.
    Alone,
    /// Some others see more errors too, not enough for an API-wide finding.
    Shared,
}

/// One flagged window.
#[derive(Debug, Clone, Copy)]
struct Flag {
    hour: i64,
    window_hours: i64,
    z: f64,
    context: Context,
}

impl Flag {
    fn first_hour(&self) -> i64 {
        self.hour + 1 - self.window_hours
    }
}

/// What the judging found, before findings are written.
#[derive(Default)]
struct Flags {
    spikes: HashMap<(u32, Route), Vec<Flag>>,
    /// Per route: flagged windows and (affected, calling) consumers for each.
    api: HashMap<Route, Vec<(Flag, usize, usize)>>,
}

impl Detector for ErrorDetector {
    fn name(&self) -> &'static str {
        "errors"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let cfg = &self.config;
        let slots = ctx.slots();
        let windows: Vec<i64> = cfg.windows_hours.iter().map(|w| i64::from(*w)).collect();
        let longest = windows.iter().copied().max().unwrap_or(1);
        let base = Baselines::scan(ctx, i64::from(cfg.baseline_days));
        let observed = Observed::scan(ctx, slots.start + 1 - longest, slots.end);
        let mut flags = Flags::default();
        for (route, consumers) in &observed.pairs {
            self.judge_route(
                ctx, &base, &observed, *route, consumers, &windows, &mut flags,
            );
        }
        self.fold_into_api(&mut flags);
        findings::write(self, ctx, &base, &observed, flags)
    }
}

impl ErrorDetector {
    /// Judges one route's windows, per consumer and pooled.
    #[allow(clippy::too_many_arguments)]
    fn judge_route(
        &self,
        ctx: &EvalContext<'_>,
        base: &Baselines,
        observed: &Observed,
        route: Route,
        consumers: &HashMap<u32, Vec<Count>>,
        windows: &[i64],
        flags: &mut Flags,
    ) {
        let cfg = &self.config;
        // Bonferroni per route-day for the pool; per consumer-day (over its routes) for each
        // consumer, which calls few routes in the window. The budget is per consumer-day, and
        // one false API-wide finding is one false finding for all the route's callers: so the
        // route's pool may spend its callers' budgets together (capped, so a route with
        // thousands of callers still needs clear evidence). That is what lets ten quiet
        // consumers' two-hour incident be found at all.
        let route_budget = (cfg.significance * consumers.len().max(1) as f64).min(0.01);
        let route_z = critical_z(route_budget / (windows.len() * 24) as f64);
        let routes_of = |c: u32| -> usize {
            observed
                .pairs
                .values()
                .filter(|m| m.contains_key(&c))
                .count()
                .max(1)
        };
        let mut pair_z: HashMap<u32, f64> = HashMap::default();
        // Callers with a baseline; one without any (a new route of a new API) is not judged.
        let callers: Vec<(u32, &Vec<Count>, f64)> = consumers
            .iter()
            .filter_map(|(&c, cum)| {
                base.of(c, route)
                    .map(|(b, _)| (c, cum, b.max(MIN_BASELINE)))
            })
            .collect();
        for hour in ctx.slots() {
            if ctx.elapsed_fraction(hour) < 1.0 / 6.0 {
                continue;
            }
            for &w in windows {
                let from = hour + 1 - w;
                let mut pool = Count::default();
                let mut expected = 0.0;
                let mut per: Vec<(u32, Count, f64)> = Vec::with_capacity(callers.len());
                for &(c, cum, b) in &callers {
                    let cnt = observed.window(cum, from, hour);
                    if cnt.n == 0 {
                        continue;
                    }
                    pool.add(cnt);
                    expected += cnt.n as f64 * b;
                    per.push((c, cnt, b));
                }
                if pool.e == 0 {
                    continue;
                }
                if let Some((affected, calling)) = self.api_wide(pool, expected, &per, route_z) {
                    let z = poisson_z(pool.e as f64, expected);
                    flags.api.entry(route).or_default().push((
                        Flag {
                            hour,
                            window_hours: w,
                            z,
                            context: Context::Shared,
                        },
                        affected,
                        calling,
                    ));
                    continue;
                }
                let mut strict = Vec::new();
                for &(c, cnt, b) in &per {
                    let rate = cnt.rate();
                    if cnt.e == 0
                        || rate < cfg.min_rate
                        || rate < cfg.spike_factor * b
                        || rate < b + cfg.spike_margin
                    {
                        continue;
                    }
                    let z_crit = *pair_z.entry(c).or_insert_with(|| {
                        critical_z(cfg.significance / (windows.len() * 24 * routes_of(c)) as f64)
                    });
                    // Day-to-day variation of the rate widens the test for larger windows.
                    let dispersion = 1.0 + cnt.n as f64 * b * base.rate_variance;
                    let z = binomial_z(cnt.e, cnt.n, b) / dispersion.sqrt();
                    if z >= z_crit {
                        strict.push((c, z));
                    }
                }
                if strict.is_empty() {
                    continue;
                }
                // The others: everyone but the consumers whose own rates spiked. Two
                // integrations can break in the same hour; each is still an integration problem
                // when the rest of the route's callers are fine.
                let mut others = pool;
                let mut others_expected = expected;
                for (c, _) in &strict {
                    if let Some((_, cnt, b)) = per.iter().find(|p| p.0 == *c) {
                        others.sub(*cnt);
                        others_expected -= cnt.n as f64 * b;
                    }
                }
                let context = if others.n < MIN_OTHER_REQUESTS {
                    Context::Alone
                } else if !self.elevated(others, others_expected.max(0.0), 3.0) {
                    Context::Isolated(strict.len() - 1)
                } else {
                    Context::Shared
                };
                for (c, z) in strict {
                    flags.spikes.entry((c, route)).or_default().push(Flag {
                        hour,
                        window_hours: w,
                        z,
                        context,
                    });
                }
            }
        }
    }

    /// Whether a pool of requests has clearly more errors than its callers' baselines predict:
    /// the API-wide effect sizes, and a Poisson likelihood-ratio test reaching `z_crit`.
    fn elevated(&self, pool: Count, expected: f64, z_crit: f64) -> bool {
        if pool.n == 0 || pool.e == 0 {
            return false;
        }
        let expected_rate = expected / pool.n as f64;
        let rate = pool.rate();
        rate >= (self.config.api_factor * expected_rate).max(expected_rate + self.config.api_margin)
            && poisson_z(pool.e as f64, expected.max(1e-3)) >= z_crit
    }

    /// `Some((affected, calling))` when a route's window is an API-wide incident: the pool is
    /// elevated and the excess is spread over several consumers, none owning most of it.
    fn api_wide(
        &self,
        pool: Count,
        expected: f64,
        per: &[(u32, Count, f64)],
        z_crit: f64,
    ) -> Option<(usize, usize)> {
        if !self.elevated(pool, expected, z_crit) {
            return None;
        }
        let net_excess = pool.e as f64 - expected;
        let mut affected = 0;
        let mut top: Option<&(u32, Count, f64)> = None;
        for p in per {
            let (_, cnt, b) = p;
            let excess = cnt.e as f64 - cnt.n as f64 * b;
            if top.is_none_or(|t| excess > t.1.e as f64 - t.1.n as f64 * t.2) {
                top = Some(p);
            }
            // Affected means its own window leans clearly above its baseline, not one error
            // in a handful of calls: at a 10% baseline, 1 in 4 is 25% but happens a third of
            // the time (z 0.9), and a few such callers must not make two consumers' doing (a
            // scraper's 404s, a blocked key's 403s) look spread over the route. One 503 in 12
            // calls against 1% (z 1.6) is a quiet caller seeing the incident and counts.
            if cnt.e >= 1 && cnt.rate() >= 2.0 * b && binomial_z(cnt.e, cnt.n, *b) >= AFFECTED_Z {
                affected += 1;
            }
        }
        let (_, top_count, top_b) = top?;
        let top_excess = top_count.e as f64 - top_count.n as f64 * top_b;
        let share = if net_excess > 0.0 {
            (top_excess / net_excess).clamp(0.0, 1.0)
        } else {
            1.0
        };
        // No single integration behind it: either no one owns most of the excess, or the
        // others, without the largest, still show it (callers of unequal size see the same
        // incident in proportion to their traffic).
        let mut rest = pool;
        rest.sub(*top_count);
        let rest_elevated =
            self.elevated(rest, (expected - top_count.n as f64 * top_b).max(0.0), 3.0);
        // And spread means most callers see it: a scraper's 404s and a blocked key's 403s are
        // two consumers' doing, not the API's, even on a route nine consumers call.
        let spread = 2 * affected >= per.len();
        (affected >= self.config.api_min_consumers as usize
            && spread
            && (share < self.config.concentration || rest_elevated))
            .then_some((affected, per.len()))
    }

    /// Drops per-consumer flags whose window overlaps an API-wide window on the same route.
    fn fold_into_api(&self, flags: &mut Flags) {
        for ((_, route), list) in flags.spikes.iter_mut() {
            let Some(api) = flags.api.get(route) else {
                continue;
            };
            // An API-wide window explains a consumer's window of about its length. A 24-hour
            // window of the route stays elevated for a day after a two-hour incident, and must
            // not swallow an integration's own three-hour spike hours later.
            list.retain(|f| {
                !api.iter().any(|(a, ..)| {
                    f.first_hour() <= a.hour
                        && a.first_hour() <= f.hour
                        && a.window_hours <= 2 * f.window_hours
                })
            });
        }
        flags.spikes.retain(|_, l| !l.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_come_from_prefix_sums() {
        let o = Observed {
            from_hour: 10,
            len: 3,
            pairs: HashMap::default(),
        };
        let c = |n, e| Count { n, e, e5: 0 };
        let cum = [c(0, 0), c(5, 1), c(12, 3), c(20, 3)];
        assert_eq!(o.window(&cum, 10, 12).n, 20);
        assert_eq!(o.window(&cum, 11, 11).e, 2);
        // Hours outside what was scanned count as nothing.
        assert_eq!(o.window(&cum, 5, 10).n, 5);
        assert_eq!(o.window(&cum, 13, 14).n, 0);
    }

    #[test]
    fn a_spread_excess_is_api_wide_and_a_concentrated_one_is_not() {
        let d = ErrorDetector::default();
        let c = |n, e| Count { n, e, e5: e };
        // Ten quiet consumers, 12 calls each, one or two 503s each against a 1% baseline.
        let spread: Vec<(u32, Count, f64)> = (0..10u32)
            .map(|i| (i, c(12, 1 + u64::from(i % 2)), 0.01))
            .collect();
        let mut pool = Count::default();
        for p in &spread {
            pool.add(p.1);
        }
        let expected = 120.0 * 0.01;
        assert_eq!(d.api_wide(pool, expected, &spread, 4.0), Some((10, 10)));
        let mut one = vec![(0, c(100, 30), 0.01)];
        one.extend((1..10).map(|i| (i, c(12, 0), 0.01)));
        assert_eq!(d.api_wide(c(208, 30), 2.08, &one, 4.0), None);
        // Two loud consumers (a scraper's 404s, a blocked key's 403s) and eight ordinary ones
        // at a 10% baseline, a few of which saw one 404 in their handful of calls: not spread.
        let mut two = vec![(0, c(600, 500), 0.1), (1, c(120, 120), 0.1)];
        two.extend((2..6).map(|i| (i, c(4, 1), 0.1)));
        two.extend((6..10).map(|i| (i, c(5, 0), 0.1)));
        let mut pool = Count::default();
        for p in &two {
            pool.add(p.1);
        }
        assert_eq!(d.api_wide(pool, pool.n as f64 * 0.1, &two, 4.0), None);
    }
}

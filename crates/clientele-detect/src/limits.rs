//! `rate_limited` and `quota_pressure`: what the limits say about each consumer.
//!
//! - `rate_limited`: hours in the judged window where a consumer was refused (429) often, both
//!   in number and as a share of its requests. A client that honours `Retry-After` and backs off
//!   collects a handful of 429s; one that retries at once collects as many refusals as it makes
//!   requests, which the summary calls out.
//! - `quota_pressure`: a consumer consistently at 80% or more of a limit: its rate limit (the
//!   busiest minute of each hour against what the sustained rate allows in a minute), its daily
//!   quota (day by day over the last week) or its monthly quota (used so far, and the pace).
//!   Such a consumer needs a higher tier before it starts being refused; one finding per
//!   consumer, about its most pressing limit, with every pressed limit in the evidence.
//!
//! Limits come from the consumer's plan and overrides ([`LimitPolicy::for_consumer`]), so a finding
//! states the limit the consumer is actually held to. Usage is allowed requests (429s excluded),
//! read from the rollups in event time, so backfilled history gives the same findings.

use std::collections::BTreeMap;

use clientele_analytics::{HOUR_MS, Tier};
use clientele_core::finding::{Finding, FindingKind, Severity};
use clientele_core::limits::{LimitPolicy, Periods};
use rustc_hash::FxHashMap as HashMap;
use serde_json::{Value, json};

use crate::text::{count, pct, r3, ts, when};
use crate::{Detector, EvalContext, new_finding_id, runs};

const DAY_MS: i64 = 86_400_000;

/// Tunables.
#[derive(Debug, Clone)]
pub struct LimitDetector {
    /// An hour with fewer refusals is not "keeps hitting its limit".
    pub min_refused_per_hour: u64,
    /// ... nor one where refusals are a smaller share of the requests.
    pub min_refused_share: f64,
    /// A refused share from which the integration is judged not to back off.
    pub no_backoff_share: f64,
    /// "At its limit" means at least this share of it.
    pub pressure: f64,
    /// Rate pressure is judged over this many hours before the evaluation time...
    pub pressure_window_hours: i64,
    /// ...and needs this many pressed hours, making up this share of the active ones.
    pub min_pressed_hours: usize,
    pub min_pressed_share: f64,
    /// Daily quotas are judged over this many days (today included)...
    pub quota_days: i64,
    /// ...and need this many days at `pressure` or more.
    pub min_pressed_days: usize,
}

impl Default for LimitDetector {
    fn default() -> Self {
        LimitDetector {
            min_refused_per_hour: 30,
            min_refused_share: 0.05,
            no_backoff_share: 0.3,
            pressure: 0.8,
            pressure_window_hours: 24,
            min_pressed_hours: 3,
            min_pressed_share: 0.5,
            quota_days: 7,
            min_pressed_days: 3,
        }
    }
}

impl Detector for LimitDetector {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let mut out = self.rate_limited(ctx);
        out.extend(self.quota_pressure(ctx));
        out
    }
}

/// A consumer's limits, by engine name id.
fn policies(ctx: &EvalContext<'_>) -> HashMap<u32, (String, Option<String>, LimitPolicy)> {
    let mut out = HashMap::default();
    for c in ctx.consumers {
        let Some(policy) = LimitPolicy::for_consumer(c, ctx.plans) else {
            continue;
        };
        if let Some(id) = ctx.engine.name_id(&c.id) {
            out.insert(id, (c.id.clone(), c.plan.clone(), policy));
        }
    }
    out
}

fn rate_text(p: &LimitPolicy) -> String {
    let r = p.rate_per_second;
    if r >= 1.0 {
        format!("{}/s", count(r))
    } else {
        format!("{}/min", count(r * 60.0))
    }
}

fn plan_text(plan: &Option<String>) -> String {
    plan.as_ref()
        .map_or_else(|| "its".to_string(), |p| format!("its {p} plan's"))
}

/// One limit under pressure, for the evidence and to pick the most pressing.
struct Pressed {
    limit: &'static str,
    /// Usage over the limit at its highest.
    level: f64,
    first_ms: i64,
    last_ms: i64,
    evidence: Value,
    summary: String,
}

impl LimitDetector {
    fn rate_limited(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let slots = ctx.slots();
        let (from, to) = (slots.start * HOUR_MS, slots.end * HOUR_MS);
        // (consumer, hour) -> (requests, refused)
        let mut hours: HashMap<(u32, i64), (u64, u64)> = HashMap::default();
        ctx.engine
            .scan_consumers(Tier::Hour, from, to, |start, c, r| {
                let e = hours.entry((c, start / HOUR_MS)).or_default();
                e.0 += r.counters.requests;
                e.1 += r.counters.rate_limited;
            });
        let flagged: Vec<(u32, i64)> = hours
            .iter()
            .filter(|(_, (req, refused))| {
                *refused >= self.min_refused_per_hour
                    && *refused as f64 >= self.min_refused_share * *req as f64
            })
            .map(|(k, _)| *k)
            .collect();
        let policies = policies(ctx);
        let mut out = Vec::new();
        for (c, run) in runs(flagged) {
            let (req, refused) = run.iter().fold((0, 0), |acc, h| {
                let (r, x) = hours.get(&(c, *h)).copied().unwrap_or_default();
                (acc.0 + r, acc.1 + x)
            });
            let share = refused as f64 / req.max(1) as f64;
            let consumer = ctx.name(c).to_string();
            let first_seen = run[0] * HOUR_MS;
            let last_seen = ((run[run.len() - 1] + 1) * HOUR_MS).min(ctx.now_ms);
            let policy = policies.get(&c);
            let limit = policy.map(|(_, plan, p)| {
                json!({"plan": plan, "rate_per_second": p.has_rate().then_some(p.rate_per_second),
                       "burst": p.has_rate().then_some(p.burst), "quota_per_day": p.quota_per_day,
                       "quota_per_month": p.quota_per_month})
            });
            let limit_text = policy
                .filter(|(_, _, p)| p.has_rate())
                .map(|(_, plan, p)| format!(" ({} limit of {})", plan_text(plan), rate_text(p)))
                .unwrap_or_default();
            let summary = if share >= self.no_backoff_share {
                format!(
                    "{consumer} was refused {} times by its rate limit{limit_text} since {} ({} of its requests), so its integration is likely retrying without exponential backoff; ask them to honour Retry-After, or raise the limit if the traffic is legitimate.",
                    count(refused as f64),
                    when(first_seen),
                    pct(share)
                )
            } else {
                format!(
                    "{consumer} hit its rate limit{limit_text} {} times since {} ({} of its requests); it is outgrowing its limit and is a candidate for a higher tier.",
                    count(refused as f64),
                    when(first_seen),
                    pct(share)
                )
            };
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::RateLimited,
                consumer: Some(consumer),
                api: None,
                route: None,
                severity: if share >= self.no_backoff_share {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                first_seen_ms: first_seen,
                last_seen_ms: last_seen,
                summary,
                evidence: json!({
                    "window": {"from": ts(first_seen), "to": ts(last_seen)},
                    "hours": run.len(),
                    "requests": req,
                    "rate_limited": refused,
                    "refused_share": r3(share),
                    "limit": limit,
                    "thresholds": {"min_refused_per_hour": self.min_refused_per_hour,
                                   "min_refused_share": self.min_refused_share,
                                   "no_backoff_share": self.no_backoff_share},
                }),
            });
        }
        out
    }

    fn quota_pressure(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let policies = policies(ctx);
        if policies.is_empty() {
            return Vec::new();
        }
        let mut pressed: BTreeMap<u32, Vec<Pressed>> = BTreeMap::new();
        self.rate_pressure(ctx, &policies, &mut pressed);
        self.daily_pressure(ctx, &policies, &mut pressed);
        self.monthly_pressure(ctx, &policies, &mut pressed);

        let mut out = Vec::new();
        for (c, mut limits) in pressed {
            let Some((consumer, plan, _)) = policies.get(&c) else {
                continue;
            };
            limits.sort_by(|a, b| b.level.total_cmp(&a.level));
            let top = &limits[0];
            let first_seen = limits
                .iter()
                .map(|p| p.first_ms)
                .min()
                .unwrap_or(top.first_ms);
            let last_seen = limits
                .iter()
                .map(|p| p.last_ms)
                .max()
                .unwrap_or(top.last_ms);
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::QuotaPressure,
                consumer: Some(consumer.clone()),
                api: None,
                route: None,
                severity: if top.level >= 0.95 {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                first_seen_ms: first_seen,
                last_seen_ms: last_seen,
                summary: top.summary.clone(),
                evidence: json!({
                    "plan": plan,
                    "most_pressed": top.limit,
                    "limits": limits.iter().map(|p| {
                        let mut e = p.evidence.clone();
                        if let Some(o) = e.as_object_mut() {
                            o.insert("limit".into(), json!(p.limit));
                            o.insert("level".into(), json!(r3(p.level)));
                        }
                        e
                    }).collect::<Vec<_>>(),
                    "threshold": self.pressure,
                }),
            });
        }
        out
    }

    /// The busiest minute of each hour against what the rate allows in a minute.
    fn rate_pressure(
        &self,
        ctx: &EvalContext<'_>,
        policies: &HashMap<u32, (String, Option<String>, LimitPolicy)>,
        pressed: &mut BTreeMap<u32, Vec<Pressed>>,
    ) {
        let to = ctx.now_ms;
        let from = (to - self.pressure_window_hours * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
        // (consumer, hour) -> (requests in the hour, allowed in its busiest minute, minutes seen)
        let mut hours: HashMap<(u32, i64), (u64, u64, u32)> = HashMap::default();
        ctx.engine
            .scan_consumers(Tier::Minute, from, to, |start, c, r| {
                if !policies.get(&c).is_some_and(|(_, _, p)| p.has_rate()) {
                    return;
                }
                let allowed = r.counters.requests.saturating_sub(r.counters.rate_limited);
                let e = hours.entry((c, start / HOUR_MS)).or_default();
                e.0 += r.counters.requests;
                e.1 = e.1.max(allowed);
                e.2 += 1;
            });
        // Hours whose minutes were pruned (or back-dated past the minute tier's retention) are
        // judged on their hourly average instead: less sensitive, never more.
        ctx.engine
            .scan_consumers(Tier::Hour, from, to, |start, c, r| {
                if !policies.get(&c).is_some_and(|(_, _, p)| p.has_rate()) {
                    return;
                }
                let e = hours.entry((c, start / HOUR_MS)).or_default();
                if e.2 == 0 {
                    e.0 = r.counters.requests;
                    e.1 = r.counters.requests.saturating_sub(r.counters.rate_limited) / 60;
                }
            });
        let mut per: BTreeMap<u32, Vec<(i64, f64)>> = BTreeMap::new();
        for ((c, h), (req, peak, _)) in &hours {
            if *req == 0 {
                continue;
            }
            let Some((_, _, p)) = policies.get(c) else {
                continue;
            };
            let per_minute = p.rate_per_second * 60.0;
            per.entry(*c)
                .or_default()
                .push((*h, *peak as f64 / per_minute));
        }
        for (c, mut hs) in per {
            hs.sort_by_key(|(h, _)| *h);
            let active = hs.len();
            let hot: Vec<&(i64, f64)> = hs.iter().filter(|(_, s)| *s >= self.pressure).collect();
            if hot.len() < self.min_pressed_hours
                || (hot.len() as f64) < self.min_pressed_share * active as f64
            {
                continue;
            }
            let Some((consumer, plan, p)) = policies.get(&c) else {
                continue;
            };
            let peak = hot.iter().map(|(_, s)| *s).fold(0.0, f64::max);
            let mut shares: Vec<f64> = hot.iter().map(|(_, s)| *s).collect();
            shares.sort_by(f64::total_cmp);
            let median = shares[shares.len() / 2];
            pressed.entry(c).or_default().push(Pressed {
                limit: "rate",
                level: median,
                first_ms: hot[0].0 * HOUR_MS,
                last_ms: ((hot[hot.len() - 1].0 + 1) * HOUR_MS).min(ctx.now_ms),
                evidence: json!({
                    "rate_per_second": p.rate_per_second,
                    "burst": p.burst,
                    "window_hours": self.pressure_window_hours,
                    "active_hours": active,
                    "pressed_hours": hot.len(),
                    "median_peak_minute_share": r3(median),
                    "max_peak_minute_share": r3(peak),
                }),
                summary: format!(
                    "{consumer} ran at {} or more of {} rate limit of {} in {} of its {} active hours since {} (busiest minutes at {} of it); move it to a higher tier or help it smooth its traffic before it starts getting 429s.",
                    pct(self.pressure),
                    plan_text(plan),
                    rate_text(p),
                    hot.len(),
                    active,
                    when(hot[0].0 * HOUR_MS),
                    pct(peak.min(9.99)),
                ),
            });
        }
    }

    /// Allowed requests per UTC day against the daily quota, over the last `quota_days`.
    fn daily_pressure(
        &self,
        ctx: &EvalContext<'_>,
        policies: &HashMap<u32, (String, Option<String>, LimitPolicy)>,
        pressed: &mut BTreeMap<u32, Vec<Pressed>>,
    ) {
        let today = ctx.now_ms.div_euclid(DAY_MS);
        let from = (today - self.quota_days + 1) * DAY_MS;
        let mut days: HashMap<(u32, i64), u64> = HashMap::default();
        // Hour buckets, not day buckets: the day tier is the last to be filled by back-dated
        // events, and hours sum to the day exactly.
        ctx.engine
            .scan_consumers(Tier::Hour, from, ctx.now_ms, |start, c, r| {
                if policies
                    .get(&c)
                    .is_some_and(|(_, _, p)| p.quota_per_day.is_some())
                {
                    *days.entry((c, start.div_euclid(DAY_MS))).or_default() +=
                        r.counters.requests.saturating_sub(r.counters.rate_limited);
                }
            });
        let mut per: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
        for ((c, d), n) in days {
            per.entry(c).or_default().push((d, n));
        }
        for (c, mut ds) in per {
            let Some((consumer, plan, p)) = policies.get(&c) else {
                continue;
            };
            let Some(quota) = p.quota_per_day else {
                continue;
            };
            ds.sort_by_key(|(d, _)| *d);
            let hot: Vec<&(i64, u64)> = ds
                .iter()
                .filter(|(_, n)| *n as f64 >= self.pressure * quota as f64)
                .collect();
            if hot.len() < self.min_pressed_days {
                continue;
            }
            let top = hot.iter().map(|(_, n)| *n).max().unwrap_or(0);
            let level = top as f64 / quota as f64;
            pressed.entry(c).or_default().push(Pressed {
                limit: "day",
                level,
                first_ms: hot[0].0 * DAY_MS,
                last_ms: ((hot[hot.len() - 1].0 + 1) * DAY_MS).min(ctx.now_ms),
                evidence: json!({
                    "quota_per_day": quota,
                    "days_judged": self.quota_days,
                    "pressed_days": hot.len(),
                    "daily_allowed": ds.iter().map(|(d, n)| json!({"day": ts(d * DAY_MS), "allowed": n})).collect::<Vec<_>>(),
                }),
                summary: format!(
                    "{consumer} used {} or more of {} daily quota of {} on {} of the last {} days (up to {}); offer it a plan with a higher quota before it runs out and gets 429s.",
                    pct(self.pressure),
                    plan_text(plan),
                    count(quota as f64),
                    hot.len(),
                    self.quota_days,
                    pct(level),
                ),
            });
        }
    }

    /// This month's allowed requests against the monthly quota: used so far, and the pace.
    fn monthly_pressure(
        &self,
        ctx: &EvalContext<'_>,
        policies: &HashMap<u32, (String, Option<String>, LimitPolicy)>,
        pressed: &mut BTreeMap<u32, Vec<Pressed>>,
    ) {
        let Some((start_ms, end_ms)) = Periods::month_bounds(ctx.now_ms) else {
            return;
        };
        let elapsed = (ctx.now_ms - start_ms) as f64 / (end_ms - start_ms) as f64;
        let mut used: HashMap<u32, u64> = HashMap::default();
        ctx.engine
            .scan_consumers(Tier::Hour, start_ms, ctx.now_ms, |_, c, r| {
                if policies
                    .get(&c)
                    .is_some_and(|(_, _, p)| p.quota_per_month.is_some())
                {
                    *used.entry(c).or_default() +=
                        r.counters.requests.saturating_sub(r.counters.rate_limited);
                }
            });
        for (c, n) in used {
            let Some((consumer, plan, p)) = policies.get(&c) else {
                continue;
            };
            let Some(quota) = p.quota_per_month else {
                continue;
            };
            let share = n as f64 / quota as f64;
            // Too early in the month, a pace says little.
            let pace = if elapsed >= 0.2 {
                share / elapsed
            } else {
                share
            };
            if share < self.pressure && pace < 1.0 {
                continue;
            }
            let days_left = ((end_ms - ctx.now_ms) as f64 / DAY_MS as f64).ceil();
            let summary = if share >= self.pressure {
                format!(
                    "{consumer} has used {} of {} monthly quota of {} with {} days of the month left; offer it a higher quota before it runs out and gets 429s.",
                    pct(share),
                    plan_text(plan),
                    count(quota as f64),
                    days_left
                )
            } else {
                format!(
                    "{consumer} has used {} of {} monthly quota of {} and is on pace for {} by the end of the month; offer it a higher quota before it runs out and gets 429s.",
                    pct(share),
                    plan_text(plan),
                    count(quota as f64),
                    pct(pace)
                )
            };
            pressed.entry(c).or_default().push(Pressed {
                limit: "month",
                level: share.max(pace.min(1.0) * self.pressure),
                first_ms: start_ms,
                last_ms: ctx.now_ms,
                evidence: json!({
                    "quota_per_month": quota,
                    "used": n,
                    "share": r3(share),
                    "month_elapsed": r3(elapsed),
                    "projected_share": r3(pace),
                    "month": {"from": ts(start_ms), "to": ts(end_ms)},
                }),
                summary,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_analytics::{Engine, EventRef, Sample};
    use clientele_core::config::PlanConfig;
    use clientele_core::consumer::Consumer;

    fn consumer(id: &str, plan: &str) -> Consumer {
        Consumer {
            id: id.into(),
            name: None,
            plan: Some(plan.into()),
            team: None,
            use_case: None,
            metadata: Default::default(),
            created_at_ms: 0,
            limits: None,
        }
    }

    fn plans() -> BTreeMap<String, PlanConfig> {
        BTreeMap::from([(
            "free".to_string(),
            PlanConfig {
                rate_per_second: 1.0,
                burst: 10,
                quota_per_day: Some(1000),
                quota_per_month: None,
                budget_usd_per_day: None,
                budget_usd_per_month: None,
                tokens_per_day: None,
                tokens_per_month: None,
                budget_usd_per_session: None,
                tokens_per_session: None,
                routes: BTreeMap::new(),
                policy: None,
            },
        )])
    }

    /// `n` requests in the minute starting at `ts_ms`.
    fn feed(engine: &Engine, consumer: &str, ts_ms: i64, status: u16, n: usize) {
        let sample = Sample {
            status,
            latency_ms: 10.0,
            request_bytes: 0,
            response_bytes: 0,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            unpriced: false,
        };
        engine.ingest((0..n).map(|i| EventRef {
            ts_ms: ts_ms + (i as i64 * 997) % 60_000,
            consumer,
            api: "api",
            method: "GET",
            route: "/x",
            sample,
        }));
    }

    /// The start of the current hour: the engine keeps recent tiers only.
    fn this_hour() -> i64 {
        clientele_core::time::now_ms().div_euclid(HOUR_MS) * HOUR_MS
    }

    #[test]
    fn a_consumer_retrying_without_backoff_is_rate_limited_and_critical() {
        let base = this_hour() - 4 * HOUR_MS;
        let engine = Engine::default();
        for h in 0..3 {
            feed(&engine, "loop", base + h * HOUR_MS, 200, 60);
            feed(&engine, "loop", base + h * HOUR_MS, 429, 500);
            // A well-behaved neighbour with the odd 429.
            feed(&engine, "calm", base + h * HOUR_MS, 200, 60);
            feed(&engine, "calm", base + h * HOUR_MS, 429, 2);
        }
        let consumers = [consumer("loop", "free"), consumer("calm", "free")];
        let plans = plans();
        let ctx = EvalContext::new(&engine, base + 3 * HOUR_MS, 6 * HOUR_MS, &consumers, &plans);
        let found = LimitDetector::default().rate_limited(&ctx);
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(f.consumer.as_deref(), Some("loop"));
        assert_eq!(f.severity, Severity::Critical);
        assert!(
            f.summary.contains("without exponential backoff"),
            "{}",
            f.summary
        );
        assert_eq!(f.evidence["rate_limited"], 1500);
        assert_eq!(f.first_seen_ms, base);
    }

    #[test]
    fn a_consumer_at_80_percent_of_its_daily_quota_on_most_days_is_under_pressure() {
        let now = clientele_core::time::now_ms();
        let today = now.div_euclid(DAY_MS);
        let engine = Engine::default();
        for d in 0..7 {
            let n = if d == 2 { 300 } else { 900 };
            let t = (today - d) * DAY_MS;
            feed(&engine, "heavy", t, 200, n);
            feed(&engine, "light", t, 200, 300);
        }
        let consumers = [consumer("heavy", "free"), consumer("light", "free")];
        let plans = plans();
        let ctx = EvalContext::new(
            &engine,
            now.max(today * DAY_MS + 60_000),
            3 * HOUR_MS,
            &consumers,
            &plans,
        );
        let found = LimitDetector::default().quota_pressure(&ctx);
        let heavy: Vec<_> = found
            .iter()
            .filter(|f| f.consumer.as_deref() == Some("heavy"))
            .collect();
        assert_eq!(heavy.len(), 1, "{found:#?}");
        assert!(
            found.iter().all(|f| f.consumer.as_deref() != Some("light")),
            "{found:#?}"
        );
        let f = heavy[0];
        assert_eq!(f.kind, FindingKind::QuotaPressure);
        let day = f.evidence["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["limit"] == "day")
            .unwrap();
        assert_eq!(day["pressed_days"], 6);
        assert!(
            f.summary.contains("quota of 1,000") || f.summary.contains("rate limit"),
            "{}",
            f.summary
        );
    }

    #[test]
    fn busy_minutes_near_the_rate_limit_are_pressure() {
        let base = this_hour() - 6 * HOUR_MS;
        let engine = Engine::default();
        // 1/s allows 60 a minute; "near" sends 55 in one minute of each hour, "far" 10.
        for h in 0..6 {
            feed(&engine, "near", base + h * HOUR_MS, 200, 55);
            feed(&engine, "far", base + h * HOUR_MS, 200, 10);
        }
        let consumers = [consumer("near", "free"), consumer("far", "free")];
        let plans = plans();
        let ctx = EvalContext::new(&engine, base + 6 * HOUR_MS, 3 * HOUR_MS, &consumers, &plans);
        let found = LimitDetector::default().quota_pressure(&ctx);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].consumer.as_deref(), Some("near"));
        assert_eq!(found[0].evidence["most_pressed"], "rate");
        assert!(
            found[0].summary.contains("rate limit of 1/s"),
            "{}",
            found[0].summary
        );
    }
}

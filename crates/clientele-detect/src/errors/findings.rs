//! The findings the error detector's flags become: one per run of consecutive flagged hours,
//! with the counts over the whole run and the onset refined to the minute.

use clientele_analytics::HOUR_MS;
use clientele_core::finding::{Finding, FindingKind, Severity};
use rustc_hash::FxHashMap as HashMap;
use serde_json::json;

use super::onset::Onset;
use super::{Baselines, Context, Count, ErrorDetector, Flag, Flags, Observed, Route};
use crate::text::{count, pct, r3, ts, when};
use crate::{EvalContext, new_finding_id, runs};

/// A run of flags: its hours, the strongest window, and the counts over the run.
struct Run {
    first_hour: i64,
    last_hour: i64,
    peak: Flag,
}

fn runs_of(flags: &[Flag]) -> Vec<Run> {
    let mut by_hour: HashMap<i64, Flag> = HashMap::default();
    for f in flags {
        let e = by_hour.entry(f.hour).or_insert(*f);
        if f.z > e.z {
            *e = *f;
        }
    }
    runs(by_hour.keys().map(|h| ((), *h)).collect())
        .into_iter()
        .filter_map(|((), hours)| {
            let flags: Vec<Flag> = hours
                .iter()
                .filter_map(|h| by_hour.get(h).copied())
                .collect();
            Some(Run {
                first_hour: flags.iter().map(Flag::first_hour).min()?,
                last_hour: *hours.last()?,
                peak: flags.iter().copied().max_by(|a, b| a.z.total_cmp(&b.z))?,
            })
        })
        .collect()
}

struct Writer<'w, 'c, 'a> {
    d: &'w ErrorDetector,
    ctx: &'c EvalContext<'a>,
    base: &'w Baselines,
    observed: &'w Observed,
    onset: Onset<'c, 'a>,
}

pub(super) fn write(
    d: &ErrorDetector,
    ctx: &EvalContext<'_>,
    base: &Baselines,
    observed: &Observed,
    flags: Flags,
) -> Vec<Finding> {
    let mut w = Writer {
        d,
        ctx,
        base,
        observed,
        onset: Onset::new(ctx),
    };
    let mut out = Vec::new();
    let mut spikes: Vec<_> = flags.spikes.into_iter().collect();
    spikes.sort_by_key(|(k, _)| *k);
    for ((c, route), list) in spikes {
        for run in runs_of(&list) {
            out.extend(w.spike(c, route, &run));
        }
    }
    let mut api: Vec<_> = flags.api.into_iter().collect();
    api.sort_by_key(|(k, _)| *k);
    for (route, list) in api {
        let plain: Vec<Flag> = list.iter().map(|(f, ..)| *f).collect();
        for run in runs_of(&plain) {
            let (affected, calling) = list
                .iter()
                .find(|(f, ..)| f.hour == run.peak.hour && f.window_hours == run.peak.window_hours)
                .map_or((0, 0), |(_, a, c)| (*a, *c));
            out.extend(w.api(route, &run, affected, calling));
        }
    }
    out
}

impl Writer<'_, '_, '_> {
    /// Counts on `route` over hours `[from, to]`, of `only` or of everyone but `except`.
    fn counts(
        &self,
        route: Route,
        only: Option<u32>,
        except: Option<u32>,
        from: i64,
        to: i64,
    ) -> Count {
        let mut acc = Count::default();
        if let Some(consumers) = self.observed.pairs.get(&route) {
            for (c, cum) in consumers {
                if only.is_none_or(|o| o == *c) && except != Some(*c) {
                    acc.add(self.observed.window(cum, from, to));
                }
            }
        }
        acc
    }

    /// The condition's start: the first hour of the run whose own rate is past halfway from
    /// the baseline to the run's rate, refined to the minute.
    fn first_seen(&mut self, route: Route, only: Option<u32>, run: &Run, b: f64, rate: f64) -> i64 {
        let halfway = (b + rate) / 2.0;
        let start = (run.first_hour..=run.last_hour)
            .find(|h| {
                let c = self.counts(route, only, None, *h, *h);
                c.e >= 1 && c.rate() >= halfway
            })
            .unwrap_or(run.first_hour);
        self.onset.refine(start, route, only, b, rate)
    }

    fn op(&self, route: Route) -> String {
        format!("{} {}", self.ctx.name(route.1), self.ctx.name(route.2))
    }

    fn api_name(&self, route: Route) -> Option<String> {
        Some(self.ctx.name(route.0).to_string()).filter(|a| !a.is_empty())
    }

    fn spike(&mut self, c: u32, route: Route, run: &Run) -> Vec<Finding> {
        let Some((b, basis)) = self.base.of(c, route) else {
            return Vec::new();
        };
        let obs = self.counts(route, Some(c), None, run.first_hour, run.last_hour);
        let others = self.counts(route, None, Some(c), run.first_hour, run.last_hour);
        let first_seen = self.first_seen(route, Some(c), run, b, obs.rate());
        let last_seen = ((run.last_hour + 1) * HOUR_MS).min(self.ctx.now_ms);
        let consumer = self.ctx.name(c).to_string();
        let op = self.op(route);
        let days = self.d.config.baseline_days;
        let tail = match run.peak.context {
            Context::Isolated(peers) => format!(
                "other consumers are unaffected ({} errors on it{}), so this is likely an integration problem",
                pct(others.rate()),
                if peers > 0 {
                    format!("; {peers} other integration(s) broke at the same time")
                } else {
                    String::new()
                }
            ),
            Context::Alone => format!(
                "no other consumer called {op} enough to compare, so check both {consumer}'s integration and the endpoint"
            ),
            Context::Shared => format!(
                "other consumers see more errors on it too, so check the API as well as {consumer}'s integration"
            ),
        };
        let severity = if obs.rate() >= 0.25 && obs.e >= 50 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let window = json!({"from": ts(first_seen), "to": ts(last_seen)});
        let test = json!({
            "method": "binomial likelihood ratio",
            "z": r3(run.peak.z),
            "window_hours": run.peak.window_hours,
            "significance_per_consumer_day": self.d.config.significance,
        });
        let mut out = vec![Finding {
            id: new_finding_id(),
            kind: FindingKind::ErrorSpike,
            consumer: Some(consumer.clone()),
            api: self.api_name(route),
            route: Some(op.clone()),
            severity,
            first_seen_ms: first_seen,
            last_seen_ms: last_seen,
            summary: format!(
                "{consumer}'s error rate on {op} rose from {} to {} since {} ({} errors in {} calls); {tail}.",
                pct(b),
                pct(obs.rate()),
                when(first_seen),
                count(obs.e as f64),
                count(obs.n as f64),
            ),
            evidence: json!({
                "window": window,
                "observed": {"requests": obs.n, "errors": obs.e, "errors_5xx": obs.e5, "error_rate": r3(obs.rate())},
                "baseline": {"error_rate": r3(b), "basis": basis, "days": days, "method": "median of daily error rates"},
                "others": match run.peak.context {
                    Context::Isolated(_) => "unaffected",
                    Context::Alone => "no comparable traffic",
                    Context::Shared => "some affected",
                },
                "test": test,
            }),
        }];
        if matches!(run.peak.context, Context::Isolated(_)) {
            let ob = self.base.others(route, c).unwrap_or(b);
            let extra = obs.e as f64 - obs.n as f64 * b;
            let all_extra = (obs.e + others.e) as f64 - (obs.n as f64 * b + others.n as f64 * ob);
            let excess_share = (extra / all_extra.max(extra).max(1.0)).clamp(0.0, 1.0);
            let share = obs.e as f64 / (obs.e + others.e).max(1) as f64;
            let cause = if obs.e5 * 2 > obs.e {
                "its requests trigger server errors that others' do not, so compare what it sends"
            } else {
                "the API rejects its requests (4xx), so its integration is likely sending bad or unauthorised requests"
            };
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::IntegrationErrors,
                consumer: Some(consumer.clone()),
                api: self.api_name(route),
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
                    "window": window,
                    "observed": {"requests": obs.n, "errors": obs.e, "errors_5xx": obs.e5, "error_rate": r3(obs.rate()), "share_of_route_errors": r3(share), "share_of_extra_errors": r3(excess_share)},
                    "others": {"requests": others.n, "errors": others.e, "error_rate": r3(others.rate()), "baseline_error_rate": r3(ob)},
                    "baseline": {"error_rate": r3(b), "days": days},
                    "test": test,
                }),
            });
        }
        out
    }

    fn api(&mut self, route: Route, run: &Run, affected: usize, calling: usize) -> Option<Finding> {
        let b = *self.base.route.get(&route)?;
        let all = self.counts(route, None, None, run.first_hour, run.last_hour);
        let first_seen = self.first_seen(route, None, run, b, all.rate());
        let last_seen = ((run.last_hour + 1) * HOUR_MS).min(self.ctx.now_ms);
        let op = self.op(route);
        let kind_of = if all.e5 * 2 > all.e {
            "server errors"
        } else {
            "client errors"
        };
        Some(Finding {
            id: new_finding_id(),
            kind: FindingKind::ApiErrors,
            consumer: None,
            api: self.api_name(route),
            route: Some(op.clone()),
            severity: if all.rate() >= 0.2 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            first_seen_ms: first_seen,
            last_seen_ms: last_seen,
            summary: format!(
                "Errors on {op} rose from {} to {} since {}, for {affected} of the {calling} consumers calling it and with no single integration behind most of them; this is likely an API problem ({kind_of}), not a customer's.",
                pct(b),
                pct(all.rate()),
                when(first_seen)
            ),
            evidence: json!({
                "window": {"from": ts(first_seen), "to": ts(last_seen)},
                "observed": {"requests": all.n, "errors": all.e, "errors_5xx": all.e5, "error_rate": r3(all.rate())},
                "baseline": {"error_rate": r3(b), "days": self.d.config.baseline_days, "method": "median of the route's daily error rates"},
                "consumers": {"affected": affected, "calling": calling},
                "test": {
                    "method": "Poisson likelihood ratio over the route's callers, pooled",
                    "z": r3(run.peak.z),
                    "window_hours": run.peak.window_hours,
                    "significance_per_route_day": self.d.config.significance,
                },
            }),
        })
    }
}

//! `new_endpoint`: a consumer calls an operation it has not called in the history kept.
//!
//! A consumer expanding its integration is good news for an account manager; a key calling a
//! spread of endpoints it never used may be compromised. Young consumers (everything is new to
//! them) are not judged, a route needs a few requests before it counts, and a route new to the whole API
//! is reported as the adoption of a new feature, not as a possible compromise.

use clientele_analytics::{DAY_MS, HOUR_MS, SeriesIds, Tier, detector_errors};
use clientele_core::detection_config::NewEndpointConfig;
use clientele_core::finding::{Finding, FindingKind, Severity};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde_json::json;

use crate::text::{count, pct, ts, when};
use crate::{Detector, EvalContext, new_finding_id};

/// Thresholds from `[detection.new_endpoint]` (`history_days` is bounded by the day tier's
/// retention).
#[derive(Debug, Clone)]
pub struct NewEndpointDetector {
    history_days: i64,
    min_consumer_age_days: i64,
    min_requests: u64,
    warn_new_routes: usize,
}

impl Default for NewEndpointDetector {
    fn default() -> Self {
        NewEndpointDetector::new(NewEndpointConfig::default())
    }
}

impl NewEndpointDetector {
    pub fn new(c: NewEndpointConfig) -> NewEndpointDetector {
        NewEndpointDetector {
            history_days: i64::from(c.history_days),
            min_consumer_age_days: i64::from(c.min_consumer_age_days),
            min_requests: c.min_requests,
            warn_new_routes: c.warn_new_routes as usize,
        }
    }
}

type Pair = (u32, u32, u32, u32);
type Route = (u32, u32, u32);

fn pair(k: &SeriesIds) -> Pair {
    (k.consumer, k.api, k.method, k.route)
}

#[derive(Default)]
struct Seen {
    first_hour: i64,
    last_hour: i64,
    requests: u64,
    errors: u64,
}

impl Detector for NewEndpointDetector {
    fn name(&self) -> &'static str {
        "new_endpoint"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let slots = ctx.slots();
        let std::ops::Range {
            start: hist_from,
            end: window_day,
        } = ctx.history_days(self.history_days);
        // Known before the window's day, at day resolution; then the window's day by the hour.
        let mut known: HashSet<Pair> = HashSet::default();
        let mut known_routes: HashSet<Route> = HashSet::default();
        let mut first_active: HashMap<u32, i64> = HashMap::default();
        ctx.engine
            .scan_series(Tier::Day, hist_from, window_day, |day, k, _| {
                known.insert(pair(&k));
                known_routes.insert((k.api, k.method, k.route));
                first_active
                    .entry(k.consumer)
                    .and_modify(|d| *d = (*d).min(day))
                    .or_insert(day);
            });
        let mut seen: HashMap<Pair, Seen> = HashMap::default();
        let mut route_first: HashMap<Route, i64> = HashMap::default();
        ctx.engine.scan_series(
            Tier::Hour,
            window_day,
            slots.end * HOUR_MS,
            |start, k, r| {
                let hour = start / HOUR_MS;
                first_active
                    .entry(k.consumer)
                    .and_modify(|d| *d = (*d).min(start))
                    .or_insert(start);
                route_first
                    .entry((k.api, k.method, k.route))
                    .and_modify(|h| *h = (*h).min(hour))
                    .or_insert(hour);
                let p = pair(&k);
                if known.contains(&p) {
                    return;
                }
                let s = seen.entry(p).or_insert(Seen {
                    first_hour: hour,
                    last_hour: hour,
                    ..Default::default()
                });
                s.first_hour = s.first_hour.min(hour);
                s.last_hour = s.last_hour.max(hour);
                if hour >= slots.start {
                    s.requests += r.counters.requests;
                    s.errors += detector_errors(&r.counters);
                }
            },
        );
        // New pairs: first seen inside the judged window, with enough requests.
        let mut candidates: Vec<(Pair, &Seen)> = seen
            .iter()
            .filter(|(_, s)| s.first_hour >= slots.start && s.requests >= self.min_requests)
            .filter(|((c, ..), s)| {
                first_active.get(c).is_some_and(|first| {
                    *first <= s.first_hour * HOUR_MS - self.min_consumer_age_days * DAY_MS
                })
            })
            .map(|(p, s)| (*p, s))
            .collect();
        // Launches: routes the API never served before the window. Adoption of a new feature
        // is still news about each consumer, but the summary should say it is new to the API.
        let mut adopters: HashMap<Route, usize> = HashMap::default();
        for ((_, a, m, r), _) in &candidates {
            *adopters.entry((*a, *m, *r)).or_default() += 1;
        }
        let new_to_api = |route: Route| {
            !known_routes.contains(&route)
                && route_first.get(&route).is_some_and(|h| *h >= slots.start)
        };
        let mut per_consumer: HashMap<u32, usize> = HashMap::default();
        for ((c, ..), _) in &candidates {
            *per_consumer.entry(*c).or_default() += 1;
        }
        candidates.sort_by_key(|(p, s)| (p.0, s.first_hour, *p));
        candidates
            .into_iter()
            .map(|((c, a, m, r), s)| {
                let consumer = ctx.name(c);
                let api = ctx.name(a);
                let operation = format!("{} {}", ctx.name(m), ctx.name(r));
                let new_routes = per_consumer.get(&c).copied().unwrap_or(1);
                let error_rate = s.errors as f64 / s.requests.max(1) as f64;
                let probing = error_rate >= 0.5;
                let launch = new_to_api((a, m, r));
                let severity = if !launch && (new_routes >= self.warn_new_routes || probing) {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let first_seen = s.first_hour * HOUR_MS;
                let last_seen = ((s.last_hour + 1) * HOUR_MS).min(ctx.now_ms);
                let advice = if launch {
                    let n = adopters.get(&(a, m, r)).copied().unwrap_or(1);
                    format!(
                        "the endpoint is new to the API as well ({n} consumer(s) started using it), so this is adoption of a new feature"
                    )
                } else if severity == Severity::Warning {
                    format!(
                        "with {new_routes} new endpoint(s) at once{}, confirm with the customer that this is them: the key may be used by someone else",
                        if probing {
                            format!(" and {} of these calls failing", pct(error_rate))
                        } else {
                            String::new()
                        }
                    )
                } else {
                    "the customer may be adopting a new feature; worth a note to its account owner"
                        .to_string()
                };
                Finding {
                    id: new_finding_id(),
                    kind: FindingKind::NewEndpoint,
                    consumer: Some(consumer.to_string()),
                    api: Some(api.to_string()).filter(|a| !a.is_empty()),
                    route: Some(operation.clone()),
                    severity,
                    first_seen_ms: first_seen,
                    last_seen_ms: last_seen,
                    summary: format!(
                        "{consumer} started calling {operation} at {} ({} requests), which it had not called in the previous {} days; {advice}.",
                        when(first_seen),
                        count(s.requests as f64),
                        self.history_days
                    ),
                    evidence: json!({
                        "window": {"from": ts(first_seen), "to": ts(last_seen)},
                        "observed": {"requests": s.requests, "errors": s.errors, "error_rate": crate::text::r3(error_rate)},
                        "baseline": {"requests": 0, "history_days": self.history_days},
                        "new_routes_for_consumer": new_routes,
                        "new_to_api": launch,
                    }),
                }
            })
            .collect()
    }
}

//! A synthetic but realistic world for detector tests and the benchmark: weeks of seasonal
//! multi-consumer traffic, with labelled behaviours injected into some consumers.
//!
//! Rollups are built directly (hour and day tiers, as the engine would hold them) rather than
//! through millions of events, so the scenario runs in seconds even unoptimised. Each series
//! rollup carries its true counters and up to twelve latency samples drawn from its distribution, which is what percentiles are computed from.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use clientele_analytics::{
    Counters, DAY_MS, Engine, ExportedRollup, HOUR_MS, Retention, Rollup, Sample, Tier,
};
use clientele_core::consumer::Consumer;
use clientele_core::finding::FindingKind;

/// A deterministic generator (splitmix64), so every run sees the same world.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(1e-12);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let l = (-lambda).exp();
            let mut k = 0;
            let mut p = 1.0;
            loop {
                p *= self.f64();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
    }
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n <= 60 {
            return (0..n).filter(|_| self.f64() < p).count() as u64;
        }
        let mean = n as f64 * p;
        let sd = (mean * (1.0 - p)).sqrt();
        (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// Weekday office hours, quiet nights and weekends.
    Business,
    /// Around the clock with a gentle daily wave.
    Global,
    /// A nightly batch job at 02:00 and a trickle otherwise.
    Nightly,
    /// An AI agent: silent hours, then bursts of dozens of calls.
    Agent,
    /// A few requests an hour at most.
    Small,
}

pub struct Route {
    pub method: &'static str,
    pub template: &'static str,
    pub latency_ms: f64,
    pub error_factor: f64,
}

pub const ROUTES: [Route; 13] = [
    Route {
        method: "GET",
        template: "/pets/{id}",
        latency_ms: 25.0,
        error_factor: 1.0,
    },
    Route {
        method: "GET",
        template: "/pets",
        latency_ms: 60.0,
        error_factor: 0.5,
    },
    Route {
        method: "POST",
        template: "/orders",
        latency_ms: 120.0,
        error_factor: 1.5,
    },
    Route {
        method: "GET",
        template: "/orders/{id}",
        latency_ms: 30.0,
        error_factor: 1.0,
    },
    Route {
        method: "GET",
        template: "/inventory",
        latency_ms: 80.0,
        error_factor: 0.5,
    },
    Route {
        method: "POST",
        template: "/pets",
        latency_ms: 90.0,
        error_factor: 2.0,
    },
    Route {
        method: "GET",
        template: "/users/{id}",
        latency_ms: 20.0,
        error_factor: 1.0,
    },
    Route {
        method: "PUT",
        template: "/pets/{id}",
        latency_ms: 70.0,
        error_factor: 1.5,
    },
    // Rarely used: where new endpoints come from.
    Route {
        method: "POST",
        template: "/refunds",
        latency_ms: 150.0,
        error_factor: 1.0,
    },
    Route {
        method: "DELETE",
        template: "/pets/{id}",
        latency_ms: 40.0,
        error_factor: 1.0,
    },
    Route {
        method: "GET",
        template: "/exports/{id}",
        latency_ms: 400.0,
        error_factor: 1.0,
    },
    Route {
        method: "PUT",
        template: "/orders/{id}",
        latency_ms: 90.0,
        error_factor: 1.0,
    },
    // Called only by a handful of quiet consumers: where a quiet API-wide incident happens.
    Route {
        method: "GET",
        template: "/quotes/{id}",
        latency_ms: 45.0,
        error_factor: 1.0,
    },
];
/// The route only quiet consumers call.
const QUIET_ROUTE: usize = 12;
const COMMON_ROUTES: usize = 8;
/// Routes new endpoints are drawn from.
const NEW_ROUTES: std::ops::Range<usize> = 8..12;
/// The route every consumer calls, so errors on it can be compared across consumers.
const SHARED_ROUTE: usize = 2;

/// An injected behaviour and what a detector should report for it.
#[derive(Debug, Clone)]
pub struct Label {
    pub kind: FindingKind,
    /// `None` for API-wide findings.
    pub consumer: Option<String>,
    /// `METHOD /template` when the finding names one.
    pub route: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub note: String,
}

#[derive(Debug, Clone)]
enum Injection {
    /// Multiply volume by `factor` over `[from, to)` hours.
    Volume { from: i64, to: i64, factor: f64 },
    /// Error rate on `route` to `rate` over `[from, to)`.
    Errors {
        route: usize,
        from: i64,
        to: i64,
        rate: f64,
        /// Share of the injected errors that are 5xx.
        share_5xx: f64,
    },
    /// Latency times `factor` over `[from, to)`.
    Latency { from: i64, to: i64, factor: f64 },
    /// Latency on `route` only, times `factor` over `[from, to)`.
    RouteLatency {
        route: usize,
        from: i64,
        to: i64,
        factor: f64,
    },
    /// Starts calling `route` at `from`, `per_hour` requests an hour.
    NewRoute {
        route: usize,
        from: i64,
        per_hour: f64,
    },
}

struct Spec {
    id: String,
    shape: Shape,
    /// Requests per hour at the busiest time of a normal day.
    level: f64,
    routes: Vec<(usize, f64)>,
    error_rate: f64,
    latency_factor: f64,
    /// First hour of traffic (young consumers start late).
    start_hour: i64,
    injections: Vec<Injection>,
    /// One of the quiet consumers (10-100 requests an hour).
    quiet: bool,
}

pub struct World {
    pub engine: Engine,
    pub now_ms: i64,
    pub consumers: Vec<Consumer>,
    pub labels: Vec<Label>,
    /// Consumers that are bursty agents (controls unless labelled).
    pub agents: Vec<String>,
    pub judged_days: i64,
    pub series_rollups: usize,
}

fn hod(hour: i64) -> i64 {
    hour.rem_euclid(24)
}
fn weekend(hour: i64) -> bool {
    (hour.div_euclid(24) + 3).rem_euclid(7) >= 5
}

/// Relative intensity of a shape at an absolute hour; the busiest normal hour is about 1.
fn intensity(shape: Shape, hour: i64) -> f64 {
    let h = hod(hour);
    match shape {
        Shape::Business => {
            let day = match h {
                8..=10 => 0.6,
                11..=15 => 1.0,
                16..=18 => 0.7,
                7 | 19 | 20 => 0.25,
                _ => 0.05,
            };
            if weekend(hour) { day * 0.2 } else { day }
        }
        Shape::Global | Shape::Small => {
            let wave = 0.7 + 0.3 * ((h as f64 - 8.0) / 24.0 * std::f64::consts::TAU).sin();
            if weekend(hour) { wave * 0.8 } else { wave }
        }
        Shape::Nightly => {
            if h == 2 {
                1.0
            } else {
                0.06
            }
        }
        Shape::Agent => 1.0,
    }
}

/// Builds the world. `now_ms` is the evaluation time; history covers `history_days + judged_days`
/// before it, and behaviours are injected into the last `judged_days`.
/// Knobs for the size of the world.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Latency samples kept per series rollup.
    pub latency_samples: u64,
    /// Share of consumers that are occasional: traffic in about one hour in seven.
    pub occasional: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latency_samples: 12,
            occasional: 0.0,
        }
    }
}

pub fn build(
    consumers: usize,
    seed: u64,
    now_ms: i64,
    history_days: i64,
    judged_days: i64,
) -> World {
    build_with(
        consumers,
        seed,
        now_ms,
        history_days,
        judged_days,
        Options::default(),
    )
}

pub fn build_with(
    consumers: usize,
    seed: u64,
    now_ms: i64,
    history_days: i64,
    judged_days: i64,
    options: Options,
) -> World {
    let mut rng = Rng::new(seed);
    let now_hour = now_ms.div_euclid(HOUR_MS);
    let first_hour = now_hour - (history_days + judged_days) * 24;
    let window_hour = now_hour - judged_days * 24;
    let mut specs: Vec<Spec> = (0..consumers)
        .map(|i| {
            let r = rng.f64();
            let shape = if r < 0.08 {
                Shape::Agent
            } else if r < 0.18 {
                Shape::Small
            } else if r < 0.30 {
                Shape::Nightly
            } else if r < 0.65 {
                Shape::Business
            } else {
                Shape::Global
            };
            let level = match shape {
                Shape::Small => rng.range(0.5, 4.0),
                Shape::Agent => rng.range(20.0, 60.0),
                _ => (rng.range(5f64.ln(), 1500f64.ln())).exp(),
            };
            // Everyone calls the shared route, plus one to three others.
            let mut routes = vec![(SHARED_ROUTE, rng.range(0.2, 0.5))];
            for _ in 0..1 + rng.below(3) {
                let r = rng.below(COMMON_ROUTES);
                if routes.iter().all(|(x, _)| *x != r) {
                    routes.push((r, rng.range(0.1, 1.0)));
                }
            }
            let total: f64 = routes.iter().map(|r| r.1).sum();
            for r in &mut routes {
                r.1 /= total;
            }
            let young = rng.f64();
            let start_hour = if young < 0.03 {
                // Started two days before the judged window: judged on a short history.
                window_hour - 48 - rng.below(12) as i64
            } else if young < 0.05 {
                // Started inside the judged window: too new to judge.
                window_hour + 24 + rng.below(72) as i64
            } else {
                first_hour
            };
            Spec {
                id: format!("c{i:05}"),
                shape,
                level,
                routes,
                error_rate: rng.range(0.002, 0.02),
                latency_factor: rng.range(0.8, 1.5),
                start_hour,
                injections: Vec::new(),
                quiet: false,
            }
        })
        .collect();

    // Quiet consumers: 10-100 requests an hour, most of it on one main route, as small B2B
    // integrations are. Ten of them also call a route nobody else calls.
    let quiet = (consumers / 4).max(40);
    for q in 0..quiet {
        let i = specs.len();
        let shape = if rng.f64() < 0.6 {
            Shape::Global
        } else {
            Shape::Business
        };
        let level = (rng.range(14f64.ln(), 140f64.ln())).exp();
        let main = rng.below(COMMON_ROUTES);
        let mut routes = vec![(main, rng.range(0.6, 0.85))];
        if main != SHARED_ROUTE {
            routes.push((SHARED_ROUTE, 1.0 - routes[0].1));
        } else {
            routes[0].1 = 1.0;
        }
        if q < 10 {
            routes.push((QUIET_ROUTE, 0.3));
        }
        let total: f64 = routes.iter().map(|r| r.1).sum();
        for r in &mut routes {
            r.1 /= total;
        }
        specs.push(Spec {
            id: format!("c{i:05}"),
            shape,
            level,
            routes,
            error_rate: rng.range(0.002, 0.02),
            latency_factor: rng.range(0.8, 1.5),
            start_hour: first_hour,
            injections: Vec::new(),
            quiet: true,
        });
    }
    let quiet_route_callers: Vec<usize> = (0..specs.len())
        .filter(|i| specs[*i].routes.iter().any(|r| r.0 == QUIET_ROUTE))
        .collect();

    // Injections, into distinct consumers old enough to have a full history.
    let mut labels = Vec::new();
    let mut taken = std::collections::HashSet::new();
    let mut pick = |rng: &mut Rng, ok: &dyn Fn(&Spec) -> bool, specs: &[Spec]| -> Option<usize> {
        let eligible: Vec<usize> = (0..specs.len())
            .filter(|i| !taken.contains(i) && specs[*i].start_hour == first_hour && ok(&specs[*i]))
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let i = eligible[rng.below(eligible.len())];
        taken.insert(i);
        Some(i)
    };
    let scale = (consumers as f64 / 300.0).max(1.0);
    let n_of = |base: usize| ((base as f64 * scale).round() as usize).max(1);
    let weekday_at = |rng: &mut Rng, h: i64| -> i64 {
        // A weekday inside the judged window, at hour of day `h`; a short window may have
        // none, then any hour of it.
        for _ in 0..200 {
            let day = rng.below(judged_days.max(1) as usize) as i64;
            let hour = window_hour - hod(window_hour) + day * 24 + h;
            if hour >= window_hour && !weekend(hour) && hour + 3 < now_hour {
                return hour;
            }
        }
        window_hour
    };
    let op = |r: usize| format!("{} {}", ROUTES[r].method, ROUTES[r].template);
    let hour_ms = |h: i64| h * HOUR_MS;
    for _ in 0..n_of(6) {
        let busy = |s: &Spec| matches!(s.shape, Shape::Business | Shape::Global) && s.level >= 30.0;
        let Some(i) = pick(&mut rng, &busy, &specs) else {
            break;
        };
        let from = weekday_at(&mut rng, 13);
        let factor = rng.range(6.0, 12.0);
        specs[i].injections.push(Injection::Volume {
            from,
            to: from + 2,
            factor,
        });
        labels.push(Label {
            kind: FindingKind::VolumeSpike,
            consumer: Some(specs[i].id.clone()),
            route: None,
            from_ms: hour_ms(from),
            to_ms: hour_ms(from + 2),
            note: format!("runaway loop, {factor:.1}× for 2 h"),
        });
    }
    {
        let agent = |s: &Spec| s.shape == Shape::Agent;
        if let Some(i) = pick(&mut rng, &agent, &specs) {
            let from = weekday_at(&mut rng, 10);
            specs[i].injections.push(Injection::Volume {
                from,
                to: from + 3,
                factor: 40.0,
            });
            labels.push(Label {
                kind: FindingKind::VolumeSpike,
                consumer: Some(specs[i].id.clone()),
                route: None,
                from_ms: hour_ms(from),
                to_ms: hour_ms(from + 3),
                note: "agent stuck in a loop: a steady 40× its usual hourly calls for 3 h".into(),
            });
        }
    }
    for _ in 0..n_of(5) {
        let busy = |s: &Spec| matches!(s.shape, Shape::Business | Shape::Global) && s.level >= 40.0;
        let Some(i) = pick(&mut rng, &busy, &specs) else {
            break;
        };
        // A drop is confirmed over three complete hours; leave it a few more to be seen.
        let mut from = weekday_at(&mut rng, 10);
        for _ in 0..50 {
            if from + 6 < now_hour {
                break;
            }
            from = weekday_at(&mut rng, 10);
        }
        let factor = if rng.f64() < 0.5 { 0.0 } else { 0.08 };
        specs[i].injections.push(Injection::Volume {
            from,
            to: now_hour + 1,
            factor,
        });
        labels.push(Label {
            kind: FindingKind::VolumeDrop,
            consumer: Some(specs[i].id.clone()),
            route: None,
            from_ms: hour_ms(from),
            to_ms: now_ms,
            note: format!(
                "traffic fell to {:.0}% (churn or broken integration)",
                factor * 100.0
            ),
        });
    }
    for _ in 0..n_of(5) {
        let busy = |s: &Spec| s.shape != Shape::Agent && s.shape != Shape::Small && s.level >= 10.0;
        let Some(i) = pick(&mut rng, &busy, &specs) else {
            break;
        };
        let from = weekday_at(&mut rng, 15);
        let route = NEW_ROUTES.start + rng.below(NEW_ROUTES.len());
        specs[i].injections.push(Injection::NewRoute {
            route,
            from,
            per_hour: 10.0,
        });
        labels.push(Label {
            kind: FindingKind::NewEndpoint,
            consumer: Some(specs[i].id.clone()),
            route: Some(op(route)),
            from_ms: hour_ms(from),
            to_ms: now_ms,
            note: "started calling an endpoint it never used".into(),
        });
    }
    // The API-wide incident, on the shared route, on a day of its own.
    let incident = weekday_at(&mut rng, 16);
    labels.push(Label {
        kind: FindingKind::ApiErrors,
        consumer: None,
        route: Some(op(SHARED_ROUTE)),
        from_ms: hour_ms(incident),
        to_ms: hour_ms(incident + 2),
        note: "API bug: 30% errors for everyone for 2 h".into(),
    });
    for s in specs.iter_mut() {
        s.injections.push(Injection::Errors {
            route: SHARED_ROUTE,
            from: incident,
            to: incident + 2,
            rate: 0.3,
            share_5xx: 0.25,
        });
    }
    for k in 0..n_of(5) {
        // Enough calls on the shared route for the minimum-volume guards (20 requests and 10
        // errors in an hour): injecting below them would test the guard, not the detector.
        let busy = |s: &Spec| {
            let share = s
                .routes
                .iter()
                .find(|r| r.0 == SHARED_ROUTE)
                .map_or(0.0, |r| r.1);
            matches!(s.shape, Shape::Business | Shape::Global) && s.level * share >= 120.0
        };
        let Some(i) = pick(&mut rng, &busy, &specs) else {
            break;
        };
        let at = 10 + (k % 6) as i64;
        let mut from = weekday_at(&mut rng, at);
        for _ in 0..50 {
            if from.div_euclid(24) != incident.div_euclid(24) {
                break;
            }
            from = weekday_at(&mut rng, at);
        }
        let rate = rng.range(0.15, 0.3);
        specs[i].injections.push(Injection::Errors {
            route: SHARED_ROUTE,
            from,
            to: from + 3,
            rate,
            share_5xx: 0.25,
        });
        for kind in [FindingKind::ErrorSpike, FindingKind::IntegrationErrors] {
            labels.push(Label {
                kind,
                consumer: Some(specs[i].id.clone()),
                route: Some(op(SHARED_ROUTE)),
                from_ms: hour_ms(from),
                to_ms: hour_ms(from + 3),
                note: format!("integration bug: {:.0}% errors for 3 h", rate * 100.0),
            });
        }
    }
    for _ in 0..n_of(4) {
        let busy =
            |s: &Spec| matches!(s.shape, Shape::Business | Shape::Global) && s.level >= 300.0;
        let Some(i) = pick(&mut rng, &busy, &specs) else {
            break;
        };
        let from = weekday_at(&mut rng, 12);
        specs[i].injections.push(Injection::Latency {
            from,
            to: from + 3,
            factor: 4.0,
        });
        labels.push(Label {
            kind: FindingKind::LatencyRegression,
            consumer: Some(specs[i].id.clone()),
            route: None,
            from_ms: hour_ms(from),
            to_ms: hour_ms(from + 3),
            note: "heavier requests: 4× latency for 3 h".into(),
        });
    }

    // Sustained anomalies of every kind on quiet consumers averaging about 20 requests an hour
    // (a Global consumer's mean is 0.7 of its peak level), none of which any per-hour volume
    // floor would let through.
    let about_20 =
        |s: &Spec| s.quiet && s.shape == Shape::Global && (22.0..36.0).contains(&s.level);
    let not_quiet_route = |s: &Spec| about_20(s) && s.routes.iter().all(|r| r.0 != QUIET_ROUTE);
    for _ in 0..n_of(3) {
        let Some(i) = pick(&mut rng, &not_quiet_route, &specs) else {
            break;
        };
        let mut from = weekday_at(&mut rng, 6);
        for _ in 0..50 {
            if from + 24 <= now_hour {
                break;
            }
            from = weekday_at(&mut rng, 6);
        }
        specs[i].injections.push(Injection::Volume {
            from,
            to: from + 24,
            factor: 0.15,
        });
        labels.push(Label {
            kind: FindingKind::VolumeDrop,
            consumer: Some(specs[i].id.clone()),
            route: None,
            from_ms: hour_ms(from),
            to_ms: hour_ms(from + 24),
            note: format!(
                "quiet ({:.0}/h): traffic fell 85% for a day",
                specs[i].level * 0.7
            ),
        });
    }
    for _ in 0..n_of(3) {
        // About 15 errors in 100 calls on its main route over six hours.
        let busy_main = |s: &Spec| {
            not_quiet_route(s) && s.routes[0].0 != SHARED_ROUTE && {
                let per_hour = s.level * 0.7 * s.routes[0].1;
                (13.0..30.0).contains(&per_hour)
            }
        };
        let Some(i) = pick(&mut rng, &busy_main, &specs) else {
            break;
        };
        let route = specs[i].routes[0].0;
        let from = weekday_at(&mut rng, 9);
        specs[i].injections.push(Injection::Errors {
            route,
            from,
            to: from + 6,
            rate: 0.15,
            share_5xx: 1.0,
        });
        for kind in [FindingKind::ErrorSpike, FindingKind::IntegrationErrors] {
            labels.push(Label {
                kind,
                consumer: Some(specs[i].id.clone()),
                route: Some(op(route)),
                from_ms: hour_ms(from),
                to_ms: hour_ms(from + 6),
                note: format!(
                    "quiet ({:.0}/h on the route): 15% 5xx for 6 h",
                    specs[i].level * 0.7 * specs[i].routes[0].1
                ),
            });
        }
    }
    for _ in 0..n_of(3) {
        let Some(i) = pick(&mut rng, &not_quiet_route, &specs) else {
            break;
        };
        let from = weekday_at(&mut rng, 8);
        specs[i].injections.push(Injection::Latency {
            from,
            to: from + 6,
            factor: 5.0,
        });
        labels.push(Label {
            kind: FindingKind::LatencyRegression,
            consumer: Some(specs[i].id.clone()),
            route: None,
            from_ms: hour_ms(from),
            to_ms: hour_ms(from + 6),
            note: format!("quiet ({:.0}/h): 5× latency for 6 h", specs[i].level * 0.7),
        });
    }
    for _ in 0..n_of(3) {
        let Some(i) = pick(&mut rng, &not_quiet_route, &specs) else {
            break;
        };
        let from = weekday_at(&mut rng, 14);
        let route = NEW_ROUTES.start + rng.below(NEW_ROUTES.len());
        specs[i].injections.push(Injection::NewRoute {
            route,
            from,
            per_hour: 3.0,
        });
        labels.push(Label {
            kind: FindingKind::NewEndpoint,
            consumer: Some(specs[i].id.clone()),
            route: Some(op(route)),
            from_ms: hour_ms(from),
            to_ms: now_ms,
            note: "quiet: started calling an endpoint it never used, 3/h".into(),
        });
    }
    for _ in 0..n_of(3) {
        let Some(i) = pick(&mut rng, &not_quiet_route, &specs) else {
            break;
        };
        let from = weekday_at(&mut rng, 11);
        specs[i].injections.push(Injection::Volume {
            from,
            to: from + 2,
            factor: 6.0,
        });
        labels.push(Label {
            kind: FindingKind::VolumeSpike,
            consumer: Some(specs[i].id.clone()),
            route: None,
            from_ms: hour_ms(from),
            to_ms: hour_ms(from + 2),
            note: format!("quiet ({:.0}/h): 6× for 2 h", specs[i].level * 0.7),
        });
    }
    // A quiet API-wide incident: 10% 503s for two hours on the route only ten quiet consumers
    // call, on a day of its own.
    let mut quiet_incident = weekday_at(&mut rng, 13);
    for _ in 0..50 {
        if quiet_incident.div_euclid(24) != incident.div_euclid(24) {
            break;
        }
        quiet_incident = weekday_at(&mut rng, 13);
    }
    for &i in &quiet_route_callers {
        specs[i].injections.push(Injection::Errors {
            route: QUIET_ROUTE,
            from: quiet_incident,
            to: quiet_incident + 2,
            rate: 0.1,
            share_5xx: 1.0,
        });
    }
    labels.push(Label {
        kind: FindingKind::ApiErrors,
        consumer: None,
        route: Some(op(QUIET_ROUTE)),
        from_ms: hour_ms(quiet_incident),
        to_ms: hour_ms(quiet_incident + 2),
        note: format!(
            "quiet API bug: 10% 503s for 2 h across the {} consumers of the route",
            quiet_route_callers.len()
        ),
    });
    // A quiet API-wide slowdown: the same route four times slower for three hours, on a day
    // of its own. Each caller sends a few requests an hour to it: only pooled are they clear.
    let mut quiet_slowdown = weekday_at(&mut rng, 10);
    for _ in 0..50 {
        let day = quiet_slowdown.div_euclid(24);
        if day != incident.div_euclid(24) && day != quiet_incident.div_euclid(24) {
            break;
        }
        quiet_slowdown = weekday_at(&mut rng, 10);
    }
    for &i in &quiet_route_callers {
        specs[i].injections.push(Injection::RouteLatency {
            route: QUIET_ROUTE,
            from: quiet_slowdown,
            to: quiet_slowdown + 3,
            factor: 4.0,
        });
    }
    labels.push(Label {
        kind: FindingKind::LatencyRegression,
        consumer: None,
        route: Some(op(QUIET_ROUTE)),
        from_ms: hour_ms(quiet_slowdown),
        to_ms: hour_ms(quiet_slowdown + 3),
        note: format!(
            "quiet API slowdown: 4x latency for 3 h across the {} consumers of the route",
            quiet_route_callers.len()
        ),
    });

    // Traffic.
    let engine = Engine::new(Retention {
        minute_ms: i64::MAX / 4,
        hour_ms: i64::MAX / 4,
        day_ms: i64::MAX / 4,
    });
    let mut hour_rows: Vec<ExportedRollup> = Vec::new();
    let mut day_rows: BTreeMap<(i64, usize, usize, u8), Rollup> = BTreeMap::new();
    let mut agents = Vec::new();
    let mut series_rollups = 0;
    for s in &specs {
        if s.shape == Shape::Agent {
            agents.push(s.id.clone());
        }
        let ci = s.id.clone();
        let occasional = s.injections.len() <= 1 && rng.f64() < options.occasional;
        // Error rates wander from day to day (deploys on the consumer's side, data it sends).
        let mut day_error = 1.0;
        for hour in s.start_hour.max(first_hour)..=now_hour {
            if hod(hour) == 0 || hour == s.start_hour.max(first_hour) {
                day_error = (0.3 * rng.normal()).exp();
            }
            if occasional && rng.f64() > 0.15 {
                continue;
            }
            let elapsed = if hour == now_hour {
                (now_ms - hour * HOUR_MS) as f64 / HOUR_MS as f64
            } else {
                1.0
            };
            let mut lambda = if s.shape == Shape::Agent {
                // Bursts: active in a third of the hours, one to several bursts of 20-60 calls.
                if rng.f64() < 0.35 {
                    (1.0 + rng.poisson(1.5) as f64) * rng.range(20.0, 60.0) * s.level / 40.0
                } else {
                    0.0
                }
            } else {
                s.level * intensity(s.shape, hour) * (0.12 * rng.normal()).exp()
            };
            let mut latency_factor = s.latency_factor;
            let mut error_override: Option<(usize, f64, f64)> = None;
            let mut extra_route: Option<(usize, f64)> = None;
            let mut route_latency: Option<(usize, f64)> = None;
            for inj in &s.injections {
                match *inj {
                    Injection::Volume { from, to, factor } if (from..to).contains(&hour) => {
                        // An agent's loop replaces its bursts with a steady stream.
                        lambda = if s.shape == Shape::Agent {
                            s.level * factor
                        } else {
                            lambda * factor
                        };
                    }
                    Injection::Errors {
                        route,
                        from,
                        to,
                        rate,
                        share_5xx,
                    } if (from..to).contains(&hour) => {
                        error_override = Some((route, rate, share_5xx));
                    }
                    Injection::Latency { from, to, factor } if (from..to).contains(&hour) => {
                        latency_factor *= factor;
                    }
                    Injection::RouteLatency {
                        route,
                        from,
                        to,
                        factor,
                    } if (from..to).contains(&hour) => {
                        route_latency = Some((route, factor));
                    }
                    Injection::NewRoute {
                        route,
                        from,
                        per_hour,
                    } if hour >= from => {
                        extra_route = Some((route, per_hour));
                    }
                    _ => {}
                }
            }
            let mut routes: Vec<(usize, f64)> =
                s.routes.iter().map(|(r, w)| (*r, lambda * w)).collect();
            if let Some((r, per_hour)) = extra_route {
                // A new feature of the same integration follows its daily shape.
                let shape = if s.shape == Shape::Agent {
                    1.0
                } else {
                    intensity(s.shape, hour)
                };
                routes.push((r, per_hour * shape));
            }
            for (r, lam) in routes {
                let n = rng.poisson(lam * elapsed);
                if n == 0 {
                    continue;
                }
                let (rate, share_5xx) = match error_override {
                    Some((er, rate, share)) if er == r => (rate, share),
                    _ => (
                        (s.error_rate * ROUTES[r].error_factor * day_error).min(0.5),
                        0.25,
                    ),
                };
                let errors = rng.binomial(n, rate);
                let e5 = rng.binomial(errors, share_5xx);
                let e4 = errors - e5;
                for (class, count) in [(2u8, n - errors), (4, e4), (5, e5)] {
                    if count == 0 {
                        continue;
                    }
                    let mut rollup = Rollup::default();
                    for _ in 0..count.min(options.latency_samples) {
                        let route_factor = match route_latency {
                            Some((lr, f)) if lr == r => f,
                            _ => 1.0,
                        };
                        let latency = ROUTES[r].latency_ms
                            * latency_factor
                            * route_factor
                            * (0.4 * rng.normal()).exp();
                        rollup.add(&Sample {
                            status: u16::from(class) * 100,
                            latency_ms: latency,
                            ..Default::default()
                        });
                    }
                    rollup.counters = Counters {
                        requests: count,
                        s2xx: if class == 2 { count } else { 0 },
                        s4xx: if class == 4 { count } else { 0 },
                        s5xx: if class == 5 { count } else { 0 },
                        ..Default::default()
                    };
                    let day = (hour * HOUR_MS).div_euclid(DAY_MS) * DAY_MS;
                    day_rows
                        .entry((day, specs_index(&ci), r, class))
                        .or_default()
                        .merge(&rollup);
                    hour_rows.push(ExportedRollup {
                        tier: Tier::Hour,
                        bucket_ms: hour * HOUR_MS,
                        consumer: ci.clone(),
                        api: "petstore".into(),
                        method: ROUTES[r].method.into(),
                        route: ROUTES[r].template.into(),
                        status_class: class,
                        rollup,
                    });
                    series_rollups += 1;
                }
            }
            if hour_rows.len() > 200_000 {
                engine.import(std::mem::take(&mut hour_rows));
            }
        }
    }
    engine.import(hour_rows);
    engine.import(
        day_rows
            .into_iter()
            .map(|((day, ci, r, class), rollup)| ExportedRollup {
                tier: Tier::Day,
                bucket_ms: day,
                consumer: format!("c{ci:05}"),
                api: "petstore".into(),
                method: ROUTES[r].method.into(),
                route: ROUTES[r].template.into(),
                status_class: class,
                rollup,
            })
            .collect(),
    );
    let consumers = specs
        .iter()
        .map(|s| Consumer {
            id: s.id.clone(),
            name: None,
            plan: Some(if s.level > 300.0 { "pro" } else { "free" }.into()),
            team: None,
            use_case: Some(format!("{:?}", s.shape).to_lowercase()),
            metadata: Default::default(),
            created_at_ms: s.start_hour * HOUR_MS,
            limits: None,
        })
        .collect();
    World {
        engine,
        now_ms,
        consumers,
        labels,
        agents,
        judged_days,
        series_rollups,
    }
}

fn specs_index(id: &str) -> usize {
    id.trim_start_matches('c').parse().unwrap_or(0)
}

//! Clientele's detectors: what is unusual about each consumer, judged against its own history.
//!
//! A [`Detector`] reads the analytics [`Engine`] (never raw events) through an [`EvalContext`]
//! and returns [`Finding`]s. The [`Registry`] holds every detector the server runs; adding one is
//! one `.with(...)` line in [`Registry::standard`].
//!
//! Detection works in event time: an evaluation "as of" `now_ms` judges the hourly slots of the
//! window `[now_ms - lookback_ms, now_ms]` against the history before that window. Whether the
//! events arrived live or were back-dated a week later, the rollups are the same, and so are
//! the findings. A condition spanning consecutive slots is one finding whose `first_seen` and
//! `last_seen` are event times, so re-evaluating the same data finds the same conditions and the
//! store updates them instead of repeating them.
//!
//! Baselines are medians (robust to the anomalies they must find), seasonal by hour of day and
//! day of week when the history allows, with fallbacks for young consumers. Evidence accumulates
//! over windows of several lengths (`[detection.*] windows_hours`), each judged with a
//! likelihood-ratio test at a significance corrected for the number of tests per consumer-day,
//! so quiet consumers are judged too: there is no per-hour volume below which nothing is seen.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use clientele_analytics::{DAY_MS, Engine, HOUR_MS};
use clientele_core::alert::DetectionConfig;
use clientele_core::config::PlanConfig;
use clientele_core::consumer::Consumer;
use clientele_core::finding::Finding;
use rustc_hash::FxHashMap as HashMap;

pub mod agents;
mod budget;
mod errors;
mod governance;
mod latency;
mod limits;
mod new_endpoint;
mod seasonal;
pub mod stats;
mod text;
mod volume;

pub use budget::BudgetDetector;
pub use errors::ErrorDetector;
pub use governance::GovernanceDetector;
pub use latency::LatencyDetector;
pub use limits::LimitDetector;
pub use new_endpoint::NewEndpointDetector;
pub use volume::VolumeDetector;

/// One detector: looks at the engine as of `ctx.now_ms` and reports what it notices.
///
/// Detectors are synchronous and must not block on I/O: the caller runs them on a blocking
/// thread. They should read the engine in a few bulk scans (see `Engine::scan_series`,
/// `Engine::consumer_grid`), not per consumer.
pub trait Detector: Send + Sync {
    /// A short name for logs and timings, e.g. `volume`.
    fn name(&self) -> &'static str;
    /// The findings as of `ctx.now_ms`. Each finding's `first_seen_ms`/`last_seen_ms` are the
    /// event times of the condition; `id` may be any fresh id (the store keeps the first one
    /// when the condition was already known).
    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding>;
}

/// What a detector may look at.
pub struct EvalContext<'a> {
    pub engine: &'a Engine,
    /// The evaluation's "as of" time, epoch milliseconds (event time).
    pub now_ms: i64,
    /// How far back conditions are looked for; the history before it is the baseline.
    pub lookback_ms: i64,
    /// Every known consumer, with plan, team and use case.
    pub consumers: &'a [Consumer],
    /// The config's plans, by name.
    pub plans: &'a BTreeMap<String, PlanConfig>,
    /// The behavioural features governance detectors read; `None` when not kept.
    pub governance: Option<&'a clientele_governance::FeatureStore>,
    names: OnceLock<Vec<Arc<str>>>,
    by_id: OnceLock<HashMap<&'a str, &'a Consumer>>,
}

impl<'a> EvalContext<'a> {
    pub fn new(
        engine: &'a Engine,
        now_ms: i64,
        lookback_ms: i64,
        consumers: &'a [Consumer],
        plans: &'a BTreeMap<String, PlanConfig>,
    ) -> EvalContext<'a> {
        EvalContext {
            engine,
            now_ms,
            lookback_ms: lookback_ms.max(HOUR_MS),
            consumers,
            plans,
            governance: None,
            names: OnceLock::new(),
            by_id: OnceLock::new(),
        }
    }

    /// The same context with the governance feature store.
    pub fn with_governance(
        mut self,
        features: &'a clientele_governance::FeatureStore,
    ) -> EvalContext<'a> {
        self.governance = Some(features);
        self
    }

    /// The name behind an engine name id (see `clientele_analytics::SeriesIds`).
    pub fn name(&self, id: u32) -> &str {
        let names = self.names.get_or_init(|| self.engine.names());
        names.get(id as usize).map_or("", |s| s)
    }

    /// A consumer by id, if the control plane knows it.
    pub fn consumer(&self, id: &str) -> Option<&'a Consumer> {
        self.by_id
            .get_or_init(|| self.consumers.iter().map(|c| (c.id.as_str(), c)).collect())
            .get(id)
            .copied()
    }

    /// The hourly slots judged: starts of the hours from `now - lookback` to the current
    /// (possibly partial) hour.
    pub fn slots(&self) -> std::ops::Range<i64> {
        let first = (self.now_ms - self.lookback_ms).div_euclid(HOUR_MS);
        let last = self.now_ms.div_euclid(HOUR_MS);
        first..last + 1
    }

    /// The baseline history of `days` whole UTC days before the day of the first judged slot,
    /// as `[from_ms, to_ms)`: detectors compare the window with what came before that day, so
    /// each day of a long lookback is judged on the history before it.
    pub fn history_days(&self, days: i64) -> std::ops::Range<i64> {
        let window_day = (self.slots().start * HOUR_MS).div_euclid(DAY_MS) * DAY_MS;
        window_day - days * DAY_MS..window_day
    }

    /// The share of slot `hour` (an hour number, `ms / HOUR_MS`) that has happened by `now_ms`.
    pub fn elapsed_fraction(&self, hour: i64) -> f64 {
        ((self.now_ms - hour * HOUR_MS) as f64 / HOUR_MS as f64).clamp(0.0, 1.0)
    }
}

/// The detectors the server runs.
#[derive(Default)]
pub struct Registry {
    detectors: Vec<Box<dyn Detector>>,
}

/// How long one detector took, for logs and the evaluate endpoint.
#[derive(Debug, Clone)]
pub struct Timing {
    pub detector: &'static str,
    pub elapsed_ms: f64,
    pub findings: usize,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Every built-in detector with the default thresholds.
    pub fn standard() -> Registry {
        Registry::configured(&DetectionConfig::default())
    }

    /// Every built-in detector, with the thresholds of `[detection.*]`. Register a new detector
    /// here with one more `.with(...)`.
    pub fn configured(config: &DetectionConfig) -> Registry {
        Registry::new()
            .with(VolumeDetector::new(config.volume.clone()))
            .with(NewEndpointDetector::new(config.new_endpoint.clone()))
            .with(ErrorDetector::new(config.errors.clone()))
            .with(LatencyDetector::new(config.latency.clone()))
            .with(LimitDetector::default())
            .with(GovernanceDetector)
            .with(BudgetDetector)
            .with(agents::AgentLoopDetector)
    }

    pub fn with(mut self, detector: impl Detector + 'static) -> Registry {
        self.detectors.push(Box::new(detector));
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.detectors.iter().map(|d| d.name()).collect()
    }

    /// Runs every detector; findings in detector order.
    pub fn evaluate(&self, ctx: &EvalContext<'_>) -> (Vec<Finding>, Vec<Timing>) {
        let mut all = Vec::new();
        let mut timings = Vec::with_capacity(self.detectors.len());
        for d in &self.detectors {
            let started = std::time::Instant::now();
            let found = d.evaluate(ctx);
            timings.push(Timing {
                detector: d.name(),
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                findings: found.len(),
            });
            all.extend(found);
        }
        (all, timings)
    }
}

/// A fresh finding id. The store keeps the first id of a condition that persists.
pub fn new_finding_id() -> String {
    format!("fnd_{}", clientele_core::event::random_id128())
}

/// Groups flagged hourly slots into runs of consecutive hours, so that a condition lasting
/// several hours is one finding. Input: (key, hour) pairs in any order.
pub(crate) fn runs<K: Ord + Clone>(mut flagged: Vec<(K, i64)>) -> Vec<(K, Vec<i64>)> {
    flagged.sort();
    flagged.dedup();
    let mut out: Vec<(K, Vec<i64>)> = Vec::new();
    for (k, h) in flagged {
        match out.last_mut() {
            Some((lk, hours)) if *lk == k && hours.last().is_some_and(|l| *l + 1 == h) => {
                hours.push(h)
            }
            _ => out.push((k, vec![h])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_on_gaps_and_keys() {
        let r = runs(vec![("a", 3), ("a", 1), ("a", 2), ("a", 5), ("b", 2)]);
        assert_eq!(
            r,
            vec![("a", vec![1, 2, 3]), ("a", vec![5]), ("b", vec![2])]
        );
    }

    #[test]
    fn slots_cover_the_lookback_and_the_current_hour() {
        let engine = Engine::default();
        let plans = BTreeMap::new();
        let now = 100 * HOUR_MS + HOUR_MS / 2;
        let ctx = EvalContext::new(&engine, now, 2 * HOUR_MS, &[], &plans);
        assert_eq!(ctx.slots(), 98..101);
        assert!((ctx.elapsed_fraction(100) - 0.5).abs() < 1e-9);
        assert_eq!(ctx.elapsed_fraction(99), 1.0);
    }
}

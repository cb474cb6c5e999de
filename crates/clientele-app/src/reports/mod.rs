//! The reports a product team acts on, computed from the analytics engine's rollups (never raw
//! events), the stored findings and the release markers. The API (`GET /v1/portfolio`,
//! `GET /v1/reports/*`), the dashboard and `clientele report` call these functions as
//! siblings, so the three cannot disagree.
//!
//! Every function here is pure CPU work over data the caller gathered (consumers, plans,
//! findings, releases): callers run it on the blocking pool. Each report also flattens itself
//! into rows ([`Table`]) for `?format=csv`.

use std::collections::BTreeMap;

use clientele_analytics::Rollup;
use clientele_core::config::PlanConfig;
use clientele_store::Release;

pub mod agents;
pub mod deprecation;
pub mod digest;
pub mod outreach;
pub mod portfolio;
pub mod pricing;
pub mod sla;

#[cfg(test)]
mod tests;

/// A report flattened for CSV: a header and rows of the same width.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// Plans from the least to the most valuable. A plan's value is what it allows: the sustained
/// rate, then the daily and monthly quotas (no quota counts as unlimited), then the name, so
/// the order is total and stable. The config has no prices, and the limits are what a
/// customer pays for.
pub fn plans_by_value(plans: &BTreeMap<String, PlanConfig>) -> Vec<(&str, &PlanConfig)> {
    let mut v: Vec<(&str, &PlanConfig)> = plans.iter().map(|(k, p)| (k.as_str(), p)).collect();
    let quota = |q: Option<u64>| q.unwrap_or(u64::MAX);
    v.sort_by(|(an, a), (bn, b)| {
        a.rate_per_second
            .total_cmp(&b.rate_per_second)
            .then(quota(a.quota_per_day).cmp(&quota(b.quota_per_day)))
            .then(quota(a.quota_per_month).cmp(&quota(b.quota_per_month)))
            .then(an.cmp(bn))
    });
    v
}

/// The latest release of `api` at or before `at_ms`, within `within_ms` of it: the release a
/// change first seen at `at_ms` most likely follows.
pub fn release_before<'a>(
    releases: &'a [Release],
    api: Option<&str>,
    at_ms: i64,
    within_ms: i64,
) -> Option<&'a Release> {
    releases
        .iter()
        .filter(|r| api.is_none_or(|a| a == r.api))
        .filter(|r| r.at_ms <= at_ms && at_ms - r.at_ms <= within_ms)
        .max_by_key(|r| r.at_ms)
}

/// The share of a rollup's requests that took at most `threshold_ms`, by nearest rank: exact
/// while the rollup holds its values inline, within the sketch's 1% otherwise. A binary search
/// over ranks with [`Rollup::quantile`], which is monotone in its rank.
pub fn share_at_most(r: &Rollup, threshold_ms: f64) -> f64 {
    let n = r.latency_samples();
    if n == 0 {
        return 0.0;
    }
    // Largest k in 0..=n with the k-th smallest value (1-based) at most the threshold.
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let v = r.quantile(mid as f64 / n as f64).unwrap_or(f64::INFINITY);
        if v <= threshold_ms {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo as f64 / n as f64
}

/// The default Apdex threshold T: a request answered without error within T is satisfied,
/// within 4T tolerating, anything else (slower, or any status >= 400) frustrated.
pub const APDEX_T_MS: f64 = 500.0;

/// Apdex-style satisfaction of a set of requests: `(satisfied + tolerating / 2) / requests`,
/// where `ok` holds only the requests answered below 400 (the rollups of status classes 1-3)
/// and `requests` counts every request. Rate-limited requests (429) are frustrated like other
/// errors: the consumer did not get an answer. `None` with no requests.
pub fn satisfaction(ok: &Rollup, requests: u64, t_ms: f64) -> Option<f64> {
    if requests == 0 {
        return None;
    }
    let n_ok = ok.latency_samples() as f64;
    let satisfied = n_ok * share_at_most(ok, t_ms);
    let tolerating = n_ok * share_at_most(ok, 4.0 * t_ms) - satisfied;
    Some(round4((satisfied + tolerating / 2.0) / requests as f64))
}

/// Rounded to 4 decimals, the precision reports show shares at.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Rounded to 2 decimals, for milliseconds.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A percentage with one decimal at most, the way the sentences of reports write them.
pub fn pct(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

pub(crate) fn opt_num(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

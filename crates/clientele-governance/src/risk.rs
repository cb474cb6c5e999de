//! Risk scores: 0-100 per consumer, the sum of named factors, each with its number and a
//! sentence, so a score can always be explained.
//!
//! | factor | points | full points at |
//! |---|---|---|
//! | `volume_variance` | 20 | daily calls with a coefficient of variation of 1.5 |
//! | `rate_limited` | 15 | 20% of calls refused with 429 |
//! | `errors` | 15 | 25% of calls answered with another 4xx/5xx |
//! | `use_case_mismatch` | 15 | a flat around-the-clock profile for an office-hours use case, or a walk of ids for an interactive one |
//! | `governance_findings` | 35 | two critical (or three warning) governance findings |

use clientele_core::consumer::Consumer;
use clientele_core::finding::{Finding, FindingKind, Severity};
use serde::Serialize;

use crate::features::{DAY_MS, DaySummary, FeatureStore};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Factor {
    pub name: &'static str,
    /// The points this factor adds to the score.
    pub value: f64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Risk {
    pub consumer: String,
    pub plan: Option<String>,
    pub score: f64,
    pub factors: Vec<Factor>,
}

/// The finding kinds that count as governance findings.
pub const GOVERNANCE_KINDS: [FindingKind; 4] = [
    FindingKind::KeySharing,
    FindingKind::Scraping,
    FindingKind::Reselling,
    FindingKind::PolicyViolation,
];

/// Scores every consumer with traffic in `[from_ms, to_ms)`, riskiest first. `findings` are
/// the findings of the window (other kinds are ignored).
pub fn scores(
    store: &FeatureStore,
    from_ms: i64,
    to_ms: i64,
    consumers: &[Consumer],
    findings: &[Finding],
) -> Vec<Risk> {
    let first = from_ms.div_euclid(DAY_MS);
    let last = (to_ms - 1).div_euclid(DAY_MS);
    let mut out: Vec<Risk> = consumers
        .iter()
        .filter_map(|c| {
            let (days, _) = store.consumer(&c.id)?;
            let days: Vec<DaySummary> = days
                .into_iter()
                .filter(|d| d.day >= first && d.day <= last && d.counts.requests > 0)
                .collect();
            if days.is_empty() {
                return None;
            }
            let mine: Vec<&Finding> = findings
                .iter()
                .filter(|f| f.consumer.as_deref() == Some(c.id.as_str()))
                .filter(|f| GOVERNANCE_KINDS.contains(&f.kind))
                .collect();
            Some(score(c, &days, &mine))
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.consumer.cmp(&b.consumer))
    });
    out
}

/// One consumer's score from its days in the window and its governance findings.
pub fn score(c: &Consumer, days: &[DaySummary], findings: &[&Finding]) -> Risk {
    let requests: u64 = days.iter().map(|d| d.counts.requests).sum();
    let limited: u64 = days.iter().map(|d| d.counts.rate_limited).sum();
    let errors: u64 = days.iter().map(|d| d.counts.errors).sum();
    let mut factors = vec![
        volume_variance(days),
        share_factor(
            "rate_limited",
            15.0,
            0.20,
            limited,
            requests,
            "refused with 429",
        ),
        share_factor(
            "errors",
            15.0,
            0.25,
            errors,
            requests,
            "answered with an error",
        ),
        use_case_mismatch(c.use_case.as_deref(), days),
        findings_factor(findings),
    ];
    factors.retain(|f| f.value > 0.0);
    let score: f64 = factors
        .iter()
        .map(|f| f.value)
        .sum::<f64>()
        .clamp(0.0, 100.0);
    Risk {
        consumer: c.id.clone(),
        plan: c.plan.clone(),
        score: score.round(),
        factors,
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn volume_variance(days: &[DaySummary]) -> Factor {
    let v: Vec<f64> = days.iter().map(|d| d.counts.requests as f64).collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let cv = if v.len() < 2 || mean == 0.0 {
        0.0
    } else {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / mean
    };
    Factor {
        name: "volume_variance",
        value: round1(20.0 * (cv / 1.5).min(1.0)),
        detail: format!(
            "daily calls vary by {:.0}% around their mean of {mean:.0} over {} days",
            100.0 * cv,
            v.len()
        ),
    }
}

fn share_factor(
    name: &'static str,
    points: f64,
    full_at: f64,
    part: u64,
    whole: u64,
    what: &str,
) -> Factor {
    let share = if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    };
    Factor {
        name,
        value: round1(points * (share / full_at).min(1.0)),
        detail: format!("{:.1}% of {whole} calls {what}", 100.0 * share),
    }
}

fn use_case_mismatch(use_case: Option<&str>, days: &[DaySummary]) -> Factor {
    let u = use_case.unwrap_or("").to_ascii_lowercase();
    let flat_days = days.iter().filter(|d| d.active_hours() >= 20).count();
    let walk_days = days
        .iter()
        .filter(|d| d.counts.sequential_share() >= 0.5 && d.distinct_ids >= 150)
        .count();
    let office = [
        "dashboard",
        "internal",
        "backoffice",
        "crm",
        "reporting",
        "office",
    ]
    .iter()
    .any(|w| u.contains(w));
    let interactive = office || ["mobile", "web", "app"].iter().any(|w| u.contains(w));
    let n = days.len().max(1) as f64;
    let (share, detail) = if office && flat_days > 0 {
        (
            flat_days as f64 / n,
            format!(
                "declared use case {u:?} suggests office hours, yet traffic ran around the clock on {flat_days} of {} days",
                days.len()
            ),
        )
    } else if interactive && walk_days > 0 {
        (
            walk_days as f64 / n,
            format!(
                "declared use case {u:?} is interactive, yet it walked id ranges in sequence on {walk_days} of {} days",
                days.len()
            ),
        )
    } else {
        (0.0, String::new())
    };
    Factor {
        name: "use_case_mismatch",
        value: round1(15.0 * share.min(1.0)),
        detail,
    }
}

fn findings_factor(findings: &[&Finding]) -> Factor {
    let points: f64 = findings
        .iter()
        .map(|f| match f.severity {
            Severity::Critical => 17.5,
            Severity::Warning => 12.0,
            Severity::Info => 4.0,
        })
        .sum();
    let mut kinds: Vec<&str> = findings.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Factor {
        name: "governance_findings",
        value: round1(points.min(35.0)),
        detail: format!(
            "{} governance findings ({})",
            findings.len(),
            kinds.join(", ")
        ),
    }
}

//! Findings: what the detectors notice, one list for every kind.
//!
//! A finding is about one consumer (or the API as a whole when `consumer` is `None`), optionally
//! narrowed to an API and a route. A condition that persists keeps one finding whose `last_seen`
//! moves, instead of a new finding per evaluation: [`Finding::dedup_key`] says which findings are
//! "the same condition".

use serde::{Deserialize, Serialize};

/// Every kind named in the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    VolumeSpike,
    VolumeDrop,
    NewEndpoint,
    ErrorSpike,
    LatencyRegression,
    IntegrationErrors,
    ApiErrors,
    UndocumentedEndpoint,
    UndocumentedStatus,
    SchemaViolation,
    DeprecatedUsage,
    QuotaPressure,
    RateLimited,
    KeySharing,
    Scraping,
    Reselling,
    PolicyViolation,
    AgentLoop,
    BudgetExceeded,
}

impl FindingKind {
    pub const ALL: [FindingKind; 19] = [
        FindingKind::VolumeSpike,
        FindingKind::VolumeDrop,
        FindingKind::NewEndpoint,
        FindingKind::ErrorSpike,
        FindingKind::LatencyRegression,
        FindingKind::IntegrationErrors,
        FindingKind::ApiErrors,
        FindingKind::UndocumentedEndpoint,
        FindingKind::UndocumentedStatus,
        FindingKind::SchemaViolation,
        FindingKind::DeprecatedUsage,
        FindingKind::QuotaPressure,
        FindingKind::RateLimited,
        FindingKind::KeySharing,
        FindingKind::Scraping,
        FindingKind::Reselling,
        FindingKind::PolicyViolation,
        FindingKind::AgentLoop,
        FindingKind::BudgetExceeded,
    ];

    /// The snake_case name used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::VolumeSpike => "volume_spike",
            FindingKind::VolumeDrop => "volume_drop",
            FindingKind::NewEndpoint => "new_endpoint",
            FindingKind::ErrorSpike => "error_spike",
            FindingKind::LatencyRegression => "latency_regression",
            FindingKind::IntegrationErrors => "integration_errors",
            FindingKind::ApiErrors => "api_errors",
            FindingKind::UndocumentedEndpoint => "undocumented_endpoint",
            FindingKind::UndocumentedStatus => "undocumented_status",
            FindingKind::SchemaViolation => "schema_violation",
            FindingKind::DeprecatedUsage => "deprecated_usage",
            FindingKind::QuotaPressure => "quota_pressure",
            FindingKind::RateLimited => "rate_limited",
            FindingKind::KeySharing => "key_sharing",
            FindingKind::Scraping => "scraping",
            FindingKind::Reselling => "reselling",
            FindingKind::PolicyViolation => "policy_violation",
            FindingKind::AgentLoop => "agent_loop",
            FindingKind::BudgetExceeded => "budget_exceeded",
        }
    }

    pub fn parse(s: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// One finding. Times are epoch milliseconds; the API renders them as RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable across updates of the same condition.
    pub id: String,
    pub kind: FindingKind,
    /// `None` for findings about the API as a whole (e.g. `api_errors`).
    pub consumer: Option<String>,
    pub api: Option<String>,
    /// `METHOD /template` when the finding is about one operation, else `None`.
    pub route: Option<String>,
    pub severity: Severity,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// One sentence a product manager can act on.
    pub summary: String,
    /// The numbers behind it: baseline, observed, window, thresholds.
    pub evidence: serde_json::Value,
}

impl Finding {
    /// Which findings describe the same condition: a later evaluation that finds the same key
    /// updates the stored finding (last_seen, severity, summary, evidence) instead of adding one.
    pub fn dedup_key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.kind.as_str(),
            self.consumer.as_deref().unwrap_or(""),
            self.api.as_deref().unwrap_or(""),
            self.route.as_deref().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in FindingKind::ALL {
            assert_eq!(FindingKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(FindingKind::parse("nope"), None);
    }
}

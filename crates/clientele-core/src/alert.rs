//! `[[alerts]]` rules and `[detection]`: where findings are sent, and how often detectors run.
//!
//! ```toml
//! [[alerts]]
//! name = "oncall"                      # shown in the delivery log; default alerts[N]
//! kinds = ["error_spike", "api_errors"] # leave out for every kind
//! min_severity = "warning"             # info, warning (default) or critical
//! plans = ["enterprise"]               # only findings about consumers on these plans
//! teams = ["payments"]                 # only findings about consumers of these teams
//! webhook = "http://hooks.internal/clientele"
//! format = "json"                      # or "slack" (Slack-compatible incoming webhook body)
//! cooldown_secs = 3600                 # a finding is re-sent at most this often while it lasts
//! max_attempts = 5                     # tries per delivery, with exponential backoff
//! ```
//!
//! With `plans` or `teams`, findings about the API as a whole (no consumer) do not match.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{ConfigError, PlanConfig, parse_upstream, valid_name};
use crate::finding::{FindingKind, Severity};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default = "default_min_severity")]
    pub min_severity: String,
    #[serde(default)]
    pub plans: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    pub webhook: String,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_min_severity() -> String {
    "warning".into()
}
fn default_format() -> String {
    "json".into()
}
fn default_cooldown() -> u64 {
    3600
}
fn default_attempts() -> u32 {
    5
}

/// How a webhook body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFormat {
    /// `{"rule", "finding": {...}}` with the finding as `GET /v1/findings` shows it.
    Json,
    /// A Slack incoming-webhook body (`text` plus blocks).
    Slack,
}

/// A rule after validation, ready to match findings.
#[derive(Debug, Clone)]
pub struct AlertTarget {
    pub name: String,
    /// Empty: every kind.
    pub kinds: Vec<FindingKind>,
    pub min_severity: Severity,
    pub plans: Vec<String>,
    pub teams: Vec<String>,
    pub webhook: String,
    pub format: AlertFormat,
    pub cooldown_ms: i64,
    pub max_attempts: u32,
}

impl AlertTarget {
    /// Whether a finding about a consumer with `plan`/`team` (both `None` for API-wide
    /// findings) matches this rule.
    pub fn matches(
        &self,
        kind: FindingKind,
        severity: Severity,
        plan: Option<&str>,
        team: Option<&str>,
    ) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && severity >= self.min_severity
            && (self.plans.is_empty() || plan.is_some_and(|p| self.plans.iter().any(|x| x == p)))
            && (self.teams.is_empty() || team.is_some_and(|t| self.teams.iter().any(|x| x == t)))
    }
}

/// Validates every rule; errors name the file, the key and the reason.
pub fn targets(
    rules: &[AlertRule],
    plans: &BTreeMap<String, PlanConfig>,
    origin: &str,
) -> Result<Vec<AlertTarget>, ConfigError> {
    let err = |key: String, reason: String| ConfigError(format!("{origin}: {key}: {reason}"));
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let key = |field: &str| format!("alerts[{i}].{field}");
        let name = r.name.clone().unwrap_or_else(|| format!("alerts[{i}]"));
        if r.name.is_some() && !valid_name(&name) {
            return Err(err(
                key("name"),
                format!("{name:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(err(
                key("name"),
                format!("{name:?} is used by two rules; names must be unique"),
            ));
        }
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for k in &r.kinds {
            match FindingKind::parse(k) {
                Some(kind) => kinds.push(kind),
                None => {
                    return Err(err(
                        key("kinds"),
                        format!(
                            "{k:?} is not a finding kind; use one of {}",
                            FindingKind::ALL.map(FindingKind::as_str).join(", ")
                        ),
                    ));
                }
            }
        }
        let Some(min_severity) = Severity::parse(&r.min_severity) else {
            return Err(err(
                key("min_severity"),
                format!(
                    "{:?} is not a severity; use info, warning or critical",
                    r.min_severity
                ),
            ));
        };
        for p in &r.plans {
            if !plans.contains_key(p) {
                return Err(err(
                    key("plans"),
                    format!("{p:?} is not a plan defined under [plans]"),
                ));
            }
        }
        if let Err(reason) = parse_upstream(&r.webhook) {
            return Err(err(key("webhook"), reason));
        }
        let format = match r.format.as_str() {
            "json" => AlertFormat::Json,
            "slack" => AlertFormat::Slack,
            other => {
                return Err(err(
                    key("format"),
                    format!("{other:?} is not a format; use \"json\" or \"slack\""),
                ));
            }
        };
        if !(1..=20).contains(&r.max_attempts) {
            return Err(err(
                key("max_attempts"),
                format!("{} must be between 1 and 20", r.max_attempts),
            ));
        }
        out.push(AlertTarget {
            name,
            kinds,
            min_severity,
            plans: r.plans.clone(),
            teams: r.teams.clone(),
            webhook: r.webhook.clone(),
            format,
            cooldown_ms: i64::try_from(r.cooldown_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_attempts: r.max_attempts,
        });
    }
    Ok(out)
}

/// `[digest]`: a summary of the reports (portfolio, outreach, pricing, SLA) sent through every
/// `[[alerts]]` webhook in its format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DigestConfig {
    /// Seconds between digests, e.g. 604800 for weekly; 0 (the default) sends none.
    pub interval_secs: u64,
}

/// `[detection]`: how detectors run on their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Seconds between evaluations; 0 turns periodic evaluation off (`POST
    /// /v1/findings/evaluate` still works).
    pub interval_secs: u64,
    /// Hours each periodic evaluation looks back over (its own late events included).
    pub lookback_hours: u32,
    /// `[detection.volume]`: see [`crate::detection_config`] for these four.
    pub volume: crate::detection_config::VolumeConfig,
    /// `[detection.errors]`.
    pub errors: crate::detection_config::ErrorsConfig,
    /// `[detection.latency]`.
    pub latency: crate::detection_config::LatencyConfig,
    /// `[detection.new_endpoint]`.
    pub new_endpoint: crate::detection_config::NewEndpointConfig,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            interval_secs: 60,
            lookback_hours: 3,
            volume: Default::default(),
            errors: Default::default(),
            latency: Default::default(),
            new_endpoint: Default::default(),
        }
    }
}

impl DetectionConfig {
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if !(1..=24 * 7).contains(&self.lookback_hours) {
            return Err(ConfigError(format!(
                "{origin}: detection.lookback_hours: {} must be between 1 and 168",
                self.lookback_hours
            )));
        }
        crate::detection_config::validate(self, origin)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/clientele"))
    }

    #[test]
    fn a_full_rule_parses_and_matches() {
        let c = parse(
            "[plans.pro]\nrate_per_second = 1\nburst = 1\n[[alerts]]\nname = \"oncall\"\nkinds = [\"error_spike\"]\nmin_severity = \"critical\"\nplans = [\"pro\"]\nwebhook = \"http://127.0.0.1:9/hook\"\nformat = \"slack\"\n",
        )
        .unwrap();
        let t = super::targets(&c.alerts, &c.plans, "test.toml").unwrap();
        use crate::finding::{FindingKind as K, Severity as S};
        assert!(t[0].matches(K::ErrorSpike, S::Critical, Some("pro"), None));
        assert!(!t[0].matches(K::ErrorSpike, S::Warning, Some("pro"), None));
        assert!(!t[0].matches(K::VolumeDrop, S::Critical, Some("pro"), None));
        assert!(!t[0].matches(K::ErrorSpike, S::Critical, None, None));
        assert_eq!(t[0].format, super::AlertFormat::Slack);
    }

    #[test]
    fn bad_rules_name_their_key() {
        for (body, key) in [
            (
                "kinds = [\"nope\"]\nwebhook = \"http://h:1\"",
                "alerts[0].kinds",
            ),
            (
                "min_severity = \"loud\"\nwebhook = \"http://h:1\"",
                "alerts[0].min_severity",
            ),
            (
                "plans = [\"gold\"]\nwebhook = \"http://h:1\"",
                "alerts[0].plans",
            ),
            ("webhook = \"ftp://hooks.slack.com/x\"", "alerts[0].webhook"),
            ("webhook = \"hooks\"", "alerts[0].webhook"),
            (
                "webhook = \"http://h:1\"\nformat = \"xml\"",
                "alerts[0].format",
            ),
            (
                "webhook = \"http://h:1\"\nmax_attempts = 0",
                "alerts[0].max_attempts",
            ),
        ] {
            let e = parse(&format!("[[alerts]]\n{body}\n")).unwrap_err();
            assert!(e.0.starts_with("test.toml: "), "{e}");
            assert!(e.0.contains(key), "{key}: {e}");
        }
        let e = parse("[[alerts]]\nurl = \"http://h:1\"\n").unwrap_err();
        assert!(e.0.contains("url"), "{e}");
        let e = parse("[detection]\nlookback_hours = 0\n").unwrap_err();
        assert!(e.0.contains("detection.lookback_hours"), "{e}");
    }
}

//! Plan policies (`[plans.X.policy]`): governance rules a plan's consumers must keep, and what
//! happens when one is broken.
//!
//! The rules are judged off the hot path by the governance evaluation. What the gateway sees is
//! only its outcome: a [`PolicyRule`] code stored in the consumer's `LimitSlot`, read with one
//! atomic load per request.

use serde::Deserialize;

/// `[plans.X.policy]`. Every rule is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPolicy {
    /// Distinct client networks (IPv4 /24, IPv6 /48) a key may be used from in one UTC day.
    pub max_networks_per_day: Option<u32>,
    /// Distinct user agents per UTC day.
    pub max_user_agents_per_day: Option<u32>,
    /// Distinct end users (the gateway's `end_user_header`, the ingest field `end_user`) per
    /// UTC day.
    pub max_end_users: Option<u32>,
    /// Largest share (0-1) of all traffic of a UTC day one consumer may make.
    pub max_share_of_traffic: Option<f64>,
    /// `"forbidden"`: a `reselling` finding is also a violation of the plan.
    pub resale: Option<Resale>,
    /// What a broken rule does: `flag` (a `policy_violation` finding, the default) or `block`
    /// (also refuse the consumer's requests with 403 until the rule holds again).
    #[serde(default)]
    pub action: PolicyAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resale {
    Forbidden,
    Allowed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    #[default]
    Flag,
    Block,
}

/// One rule of a plan policy. The discriminant is what the consumer's slot stores (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PolicyRule {
    MaxNetworksPerDay = 1,
    MaxUserAgentsPerDay = 2,
    MaxEndUsers = 3,
    MaxShareOfTraffic = 4,
    Resale = 5,
}

impl PolicyRule {
    pub const ALL: [PolicyRule; 5] = [
        PolicyRule::MaxNetworksPerDay,
        PolicyRule::MaxUserAgentsPerDay,
        PolicyRule::MaxEndUsers,
        PolicyRule::MaxShareOfTraffic,
        PolicyRule::Resale,
    ];

    /// The config key of the rule, as people wrote it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyRule::MaxNetworksPerDay => "max_networks_per_day",
            PolicyRule::MaxUserAgentsPerDay => "max_user_agents_per_day",
            PolicyRule::MaxEndUsers => "max_end_users",
            PolicyRule::MaxShareOfTraffic => "max_share_of_traffic",
            PolicyRule::Resale => "resale",
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<PolicyRule> {
        PolicyRule::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl PlanPolicy {
    /// Checks the values; the error names the field under `key` (such as `plans.free.policy`).
    pub fn validate(&self, key: &str) -> Result<(), (String, String)> {
        for (field, v) in [
            ("max_networks_per_day", self.max_networks_per_day),
            ("max_user_agents_per_day", self.max_user_agents_per_day),
            ("max_end_users", self.max_end_users),
        ] {
            if v == Some(0) {
                return Err((
                    format!("{key}.{field}"),
                    "must be at least 1; leave it out for no limit".into(),
                ));
            }
        }
        if let Some(s) = self.max_share_of_traffic {
            if !(s > 0.0 && s <= 1.0) {
                return Err((
                    format!("{key}.max_share_of_traffic"),
                    format!("{s} must be above 0 and at most 1 (0.05 = 5% of all traffic)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_zero_is_none() {
        for r in PolicyRule::ALL {
            assert_eq!(PolicyRule::from_code(r.code()), Some(r));
        }
        assert_eq!(PolicyRule::from_code(0), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        let p = PlanPolicy {
            max_share_of_traffic: Some(1.5),
            ..PlanPolicy::default()
        };
        let (key, why) = p.validate("plans.free.policy").unwrap_err();
        assert_eq!(key, "plans.free.policy.max_share_of_traffic");
        assert!(why.contains("at most 1"), "{why}");
        let p = PlanPolicy {
            max_end_users: Some(0),
            ..PlanPolicy::default()
        };
        assert_eq!(
            p.validate("plans.x.policy").unwrap_err().0,
            "plans.x.policy.max_end_users"
        );
    }
}

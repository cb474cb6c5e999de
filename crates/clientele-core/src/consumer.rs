//! Consumers and their API keys, as the control plane stores them.

use serde::{Deserialize, Serialize};

/// Who makes requests: a customer, a partner, an internal team, an AI agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
    /// Free-form JSON object the team attaches (CRM id, account owner, region, ...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Epoch milliseconds.
    pub created_at_ms: i64,
    /// Limits set on this consumer, on top of its plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::LimitOverride>,
}

/// An API key as stored: everything but the key itself, which is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: String,
    pub consumer: String,
    pub name: Option<String>,
    /// The first characters of the key, shown so people can tell their keys apart.
    pub prefix: String,
    /// HMAC-SHA256 of the key under the store's secret, lowercase hex.
    pub hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// Whether the key was brought from another gateway rather than generated here.
    pub imported: bool,
}

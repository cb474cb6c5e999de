//! `application/problem+json` bodies (RFC 9457), shared by the gateway and the admin API so
//! that every error a client sees has one shape.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Per-item errors, for batch endpoints and validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<serde_json::Value>,
}

impl Problem {
    /// `slug` becomes the problem type URI, so clients can switch on it without parsing prose.
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://clientele.dev/problems/{slug}"),
            title: title.to_string(),
            status,
            detail: detail.into(),
            instance: None,
            errors: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

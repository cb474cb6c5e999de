//! A small client for the admin API, used by the CLI commands and the demo.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clientele_http::{ClientOptions, FailureKind, Outbound, Timeouts};
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::Value;

/// The CLI's client for the admin API (and the demo's for its own gateway): the shared outbound
/// client with the system's roots (SSL_CERT_FILE names another bundle), for an admin API behind
/// TLS, waiting `request` for each answer.
pub fn http(request: Duration) -> Result<Outbound<Full<Bytes>>> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        request,
    };
    Outbound::new(&ClientOptions::new(timeouts)).map_err(|e| anyhow!(e))
}

pub struct AdminClient {
    base: String,
    token: String,
    http: Outbound<Full<Bytes>>,
}

impl AdminClient {
    pub fn new(base: &str, token: &str) -> Result<AdminClient> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!(
                "--admin-url {base:?} must be an http:// or https:// URL such as http://127.0.0.1:8081"
            );
        }
        Ok(AdminClient {
            base,
            token: token.to_string(),
            http: http(Duration::from_secs(30))?,
        })
    }

    /// Sends a request and returns the JSON answer, or an error made from the problem+json.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload))
            .with_context(|| format!("invalid URL {url}"))?;
        let (parts, bytes) = self.http.fetch(req).await.map_err(|e| match e.kind {
            FailureKind::Timeout => anyhow!("{url}: {e}"),
            _ => anyhow!("cannot reach the admin API at {}: {e}; is `clientele serve` running? (set --admin-url or CLIENTELE_ADMIN_URL)", self.base),
        })?;
        let status = parts.status;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        let detail = value
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("no detail given");
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the admin API refused the token ({detail}); set --token or CLIENTELE_ADMIN_TOKEN"
            );
        }
        bail!(
            "{} {}: {detail}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
    }
}

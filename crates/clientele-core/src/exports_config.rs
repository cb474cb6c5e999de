//! The `[exports]` section of the config file: Prometheus, OTLP and log sinks.
//!
//! Kept apart from `config.rs` so the export settings read as one unit; `Config` holds one
//! [`ExportsConfig`] and calls [`ExportsConfig::validate`] and [`ExportsConfig::resolve_paths`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every export is off unless configured, except `/metrics`, which is always served (it is
/// part of the contract) behind the admin token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportsConfig {
    pub prometheus: PrometheusConfig,
    pub otlp: Option<OtlpConfig>,
    pub logs: Vec<LogSinkConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Consumers with their own series; everyone else is folded into `consumer="_other"`.
    pub top_k: usize,
    /// Serve `GET /metrics` without any token (for scrapers on a trusted network).
    pub allow_unauthenticated: bool,
    /// A token accepted for `GET /metrics` only, so a scraper never holds the admin token.
    pub scrape_token: Option<String>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            top_k: 100,
            allow_unauthenticated: false,
            scrape_token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector base URL, such as `http://127.0.0.1:4318`; `/v1/traces`, `/v1/metrics` and
    /// `/v1/logs` are appended.
    pub endpoint: String,
    #[serde(default = "default_protocol")]
    pub protocol: OtlpProtocol,
    /// Extra request headers, for example a vendor's API key.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// One span per request.
    #[serde(default = "yes")]
    pub traces: bool,
    /// Per-consumer metrics, bounded by `[exports.prometheus].top_k`.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Findings as log records.
    #[serde(default = "yes")]
    pub logs: bool,
    /// Share of requests exported as spans; errors are always exported.
    #[serde(default = "one")]
    pub sample_rate: f64,
    #[serde(default = "default_metrics_interval_ms")]
    pub metrics_interval_ms: u64,
    /// Largest number of items in one request.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Longest time an item waits for its batch to fill.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Items waiting to be sent; beyond it new items are dropped and counted.
    #[serde(default = "default_queue_items")]
    pub queue_items: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of a failed batch (connection errors, 429 and 5xx), with exponential backoff.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

/// How a pushing exporter batches, retries and bounds its memory. The same keys sit directly in
/// `[exports.otlp]` and each `[[exports.logs]]` (serde's `deny_unknown_fields` does not see
/// through `flatten`, so they are repeated there rather than flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub batch_max: usize,
    pub flush_interval_ms: u64,
    pub queue_items: usize,
    pub timeout_ms: u64,
    pub max_retries: u32,
}

macro_rules! delivery_of {
    ($t:ty) => {
        impl $t {
            pub fn delivery(&self) -> DeliveryConfig {
                DeliveryConfig {
                    batch_max: self.batch_max,
                    flush_interval_ms: self.flush_interval_ms,
                    queue_items: self.queue_items,
                    timeout_ms: self.timeout_ms,
                    max_retries: self.max_retries,
                }
            }
        }
    };
}
delivery_of!(OtlpConfig);
delivery_of!(LogSinkConfig);

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_max: default_batch_max(),
            flush_interval_ms: default_flush_interval_ms(),
            queue_items: default_queue_items(),
            timeout_ms: default_timeout_ms(),
            max_retries: default_max_retries(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSinkKind {
    File,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpLogFormat {
    /// Loki's push API, `/loki/api/v1/push`, JSON streams.
    Loki,
    /// Splunk HTTP Event Collector, `/services/collector/event`.
    Splunk,
    /// A JSON array of events.
    Json,
    /// One JSON event per line.
    Ndjson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    pub kind: LogSinkKind,
    /// A name for metrics and logs; defaults to `<kind><index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Event fields to write (`ts` is the RFC 3339 time); all fields when empty.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Share of requests written; errors (status >= 400 or a failed outcome) are always kept.
    #[serde(default = "one")]
    pub sample_rate: f64,
    // kind = "file"
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The file is rotated when it would grow past this.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept beside the current one (`path.1` is the newest).
    #[serde(default = "default_keep")]
    pub keep: u32,
    // kind = "http"
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Option<HttpLogFormat>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Splunk HEC token, sent as `Authorization: Splunk <token>`.
    #[serde(default)]
    pub token: Option<String>,
    /// Largest number of items in one request.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Longest time an item waits for its batch to fill.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Items waiting to be sent; beyond it new items are dropped and counted.
    #[serde(default = "default_queue_items")]
    pub queue_items: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of a failed batch (connection errors, 429 and 5xx), with exponential backoff.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

/// Fields of an exported event, as named in log sinks' `fields`.
pub const EVENT_FIELDS: &[&str] = &[
    "ts",
    "ts_ms",
    "id",
    "consumer",
    "key_id",
    "api",
    "method",
    "path",
    "route",
    "status",
    "latency_ms",
    "upstream_latency_ms",
    "request_bytes",
    "response_bytes",
    "client_ip",
    "user_agent",
    "session_id",
    "trace_id",
    "span_id",
    "outcome",
    "plan",
    "team",
    "use_case",
    "model",
    "tokens_in",
    "tokens_out",
    "cost_usd",
];

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_protocol() -> OtlpProtocol {
    OtlpProtocol::HttpProtobuf
}
fn default_service_name() -> String {
    "clientele".into()
}
fn default_metrics_interval_ms() -> u64 {
    60_000
}
fn default_batch_max() -> usize {
    512
}
fn default_flush_interval_ms() -> u64 {
    1_000
}
fn default_queue_items() -> usize {
    65_536
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_retries() -> u32 {
    5
}
fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_keep() -> u32 {
    5
}

/// Largest `top_k`: each consumer series costs a histogram per scrape, and Prometheus itself is
/// the thing being protected from cardinality.
pub const MAX_TOP_K: usize = 10_000;

impl ExportsConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        for sink in &mut self.logs {
            if let Some(p) = sink.path.as_mut() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// Checks ranges, URLs and per-kind required keys. Errors read `origin: key: reason`.
    pub fn validate(&self, origin: &str) -> Result<(), String> {
        let err = |key: &str, reason: String| Err(format!("{origin}: {key}: {reason}"));
        let p = &self.prometheus;
        if p.top_k > MAX_TOP_K {
            return err(
                "exports.prometheus.top_k",
                format!("{} is above the limit of {MAX_TOP_K}", p.top_k),
            );
        }
        if let Some(t) = &p.scrape_token {
            if t.len() < 16 {
                return err(
                    "exports.prometheus.scrape_token",
                    "is shorter than 16 characters; use a long random value".into(),
                );
            }
        }
        if let Some(o) = &self.otlp {
            if let Err(reason) = check_http_url(&o.endpoint) {
                return err("exports.otlp.endpoint", reason);
            }
            if let Err((k, reason)) = check_headers(&o.headers) {
                return err(&format!("exports.otlp.headers.{k}"), reason);
            }
            if !(0.0..=1.0).contains(&o.sample_rate) {
                return err(
                    "exports.otlp.sample_rate",
                    format!("{} must be between 0 and 1", o.sample_rate),
                );
            }
            if o.metrics_interval_ms < 100 {
                return err(
                    "exports.otlp.metrics_interval_ms",
                    "use at least 100".into(),
                );
            }
            if o.service_name.is_empty() {
                return err("exports.otlp.service_name", "must not be empty".into());
            }
            if let Err((k, reason)) = check_delivery(&o.delivery()) {
                return err(&format!("exports.otlp.{k}"), reason);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.logs.iter().enumerate() {
            let key = format!("exports.logs[{i}]");
            let name = s.name.clone().unwrap_or_else(|| match s.kind {
                LogSinkKind::File => format!("file{i}"),
                LogSinkKind::Http => format!("http{i}"),
            });
            if !crate::config::valid_name(&name) {
                return err(
                    &format!("{key}.name"),
                    format!("{name:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'"),
                );
            }
            if !names.insert(name.clone()) {
                return err(
                    &format!("{key}.name"),
                    format!("{name:?} is used by two sinks"),
                );
            }
            for f in &s.fields {
                if !EVENT_FIELDS.contains(&f.as_str()) {
                    return err(
                        &format!("{key}.fields"),
                        format!("unknown field {f:?}; known: {}", EVENT_FIELDS.join(", ")),
                    );
                }
            }
            if !(0.0..=1.0).contains(&s.sample_rate) {
                return err(
                    &format!("{key}.sample_rate"),
                    format!("{} must be between 0 and 1", s.sample_rate),
                );
            }
            if let Err((k, reason)) = check_delivery(&s.delivery()) {
                return err(&format!("{key}.{k}"), reason);
            }
            match s.kind {
                LogSinkKind::File => {
                    if s.path.is_none() {
                        return err(
                            &format!("{key}.path"),
                            "a file sink needs a path, such as path = \"events.ndjson\"".into(),
                        );
                    }
                    if s.url.is_some() || s.format.is_some() || s.token.is_some() {
                        return err(
                            &format!("{key}.url"),
                            "url, format and token belong to kind = \"http\" sinks".into(),
                        );
                    }
                    if s.max_bytes < 4096 {
                        return err(&format!("{key}.max_bytes"), "use at least 4096".into());
                    }
                }
                LogSinkKind::Http => {
                    let Some(url) = &s.url else {
                        return err(
                            &format!("{key}.url"),
                            "an http sink needs a url, such as url = \"http://127.0.0.1:3100/loki/api/v1/push\"".into(),
                        );
                    };
                    if let Err(reason) = check_http_url(url) {
                        return err(&format!("{key}.url"), reason);
                    }
                    if s.path.is_some() {
                        return err(
                            &format!("{key}.path"),
                            "path belongs to kind = \"file\" sinks".into(),
                        );
                    }
                    let format = s.format.unwrap_or(HttpLogFormat::Json);
                    if format == HttpLogFormat::Splunk && s.token.is_none() {
                        return err(
                            &format!("{key}.token"),
                            "a Splunk HEC sink needs its token (sent as Authorization: Splunk <token>)".into(),
                        );
                    }
                    if let Err((k, reason)) = check_headers(&s.headers) {
                        return err(&format!("{key}.headers.{k}"), reason);
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_delivery(d: &DeliveryConfig) -> Result<(), (&'static str, String)> {
    if d.batch_max == 0 || d.batch_max > 100_000 {
        return Err(("batch_max", "must be between 1 and 100000".into()));
    }
    if d.queue_items < d.batch_max {
        return Err((
            "queue_items",
            format!(
                "{} must be at least batch_max ({})",
                d.queue_items, d.batch_max
            ),
        ));
    }
    if d.flush_interval_ms == 0 || d.timeout_ms == 0 {
        return Err((
            "flush_interval_ms",
            "flush_interval_ms and timeout_ms must be greater than 0".into(),
        ));
    }
    if d.max_retries > 20 {
        return Err(("max_retries", "use at most 20".into()));
    }
    Ok(())
}

fn check_headers(h: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (k, v) in h {
        let name_ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok {
            return Err((k.clone(), "is not a valid HTTP header name".into()));
        }
        if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err((k.clone(), "the value has control characters".into()));
        }
    }
    Ok(())
}

/// `http://` or `https://` with a host; TLS trust comes from `[outbound]`.
fn check_http_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!("{url:?} must be an http:// or https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no host, or has credentials in it"));
    }
    if url.parse::<http_uri_check::Checked>().is_err() {
        return Err(format!("{url:?} is not a valid URL"));
    }
    Ok(())
}

/// A minimal syntactic check, so core needs no HTTP crate: printable ASCII without spaces.
mod http_uri_check {
    pub struct Checked;
    impl std::str::FromStr for Checked {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            if s.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(Checked)
            } else {
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "t.toml", Path::new("/etc/c")).map_err(|e| e.0)
    }

    #[test]
    fn full_section_parses() {
        let c = parse(
            r#"
[exports.prometheus]
top_k = 50
scrape_token = "0123456789abcdef0"
[exports.otlp]
endpoint = "http://127.0.0.1:4318"
protocol = "http/json"
headers = { "x-key" = "v" }
batch_max = 100
[[exports.logs]]
kind = "file"
path = "ev.ndjson"
keep = 3
fields = ["ts", "consumer", "status"]
sample_rate = 0.1
[[exports.logs]]
kind = "http"
url = "http://127.0.0.1:8088/services/collector/event"
format = "splunk"
token = "abc"
"#,
        )
        .unwrap();
        let e = &c.exports;
        assert_eq!(e.prometheus.top_k, 50);
        let o = e.otlp.as_ref().unwrap();
        assert_eq!(o.protocol, super::OtlpProtocol::HttpJson);
        assert_eq!(o.delivery().batch_max, 100);
        assert_eq!(
            e.logs[0].path.as_deref(),
            Some(Path::new("/etc/c/ev.ndjson"))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[exports.prometheus]\ntop_k = 100000\n",
                "exports.prometheus.top_k",
            ),
            (
                "[exports.otlp]\nendpoint = \"grpc://x\"\n",
                "exports.otlp.endpoint",
            ),
            (
                "[exports.otlp]\nendpoint = \"x:4318\"\n",
                "exports.otlp.endpoint",
            ),
            (
                "[exports.otlp]\nendpoint = \"http://x\"\nprotocol = \"grpc\"\n",
                "expected `http/protobuf` or `http/json`",
            ),
            (
                "[[exports.logs]]\nkind = \"file\"\n",
                "exports.logs[0].path",
            ),
            (
                "[[exports.logs]]\nkind = \"file\"\npath = \"a\"\nfields = [\"nope\"]\n",
                "exports.logs[0].fields",
            ),
            (
                "[[exports.logs]]\nkind = \"http\"\nurl = \"http://x/\"\nformat = \"splunk\"\n",
                "exports.logs[0].token",
            ),
            (
                "[[exports.logs]]\nkind = \"http\"\nurl = \"http://x/\"\nsample_rate = 2\n",
                "exports.logs[0].sample_rate",
            ),
            ("[[exports.logs]]\nkind = \"syslog\"\n", "`file`"),
            ("[exports]\nprometeus = 1\n", "prometeus"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}

//! The configuration file (`clientele.toml`), parsed and validated in one place.
//!
//! Every section has defaults, so an empty file (or no file at all) is a working embedded setup.
//! Unknown keys are errors, not warnings: a typo in a limit should never silently fall back to a
//! default. Errors name the file, the key and the reason, and say how to fix it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// A configuration problem, already phrased for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub analytics: AnalyticsConfig,
    pub apis: Vec<ApiConfig>,
    pub limits: LimitsConfig,
    pub plans: BTreeMap<String, PlanConfig>,
    pub exports: crate::exports_config::ExportsConfig,
    /// Where findings are sent (see [`crate::alert`]).
    pub alerts: Vec<crate::alert::AlertRule>,
    pub detection: crate::alert::DetectionConfig,
    /// `[digest]`: the periodic summary of the reports through the alert webhooks.
    pub digest: crate::alert::DigestConfig,
    /// Trust and client certificate for everything Clientele connects to (webhooks, OTLP
    /// collectors, log sinks, and upstreams without settings of their own).
    pub outbound: OutboundTls,
    /// How `POST /v1/otlp/v1/traces` finds the consumer of a span.
    pub otlp_ingest: OtlpIngestConfig,
    /// `[prices."model"]`: dollars per million tokens, replacing or adding to the shipped
    /// price book (`crates/clientele-core/prices.toml`).
    pub prices: BTreeMap<String, crate::prices::ModelPrice>,
    /// `[governance]`: what the behavioural features may read besides the events.
    pub governance: GovernanceConfig,
    /// `[agents]`: what the gateway does about AI agents' loops.
    pub agents: AgentsConfig,
    /// Where the config came from (the file), for messages about it found after parsing.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address the data plane listens on.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the gateway terminates TLS (HTTP/2 via ALPN).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed. Anyone else's is ignored, so a client cannot
    /// choose the IP its events are attributed to.
    pub trusted_proxies: Vec<IpNet>,
    /// Request header carrying a client session id, recorded on each event.
    pub session_header: String,
    /// Request header naming the end user behind a call (`X-End-User-Id` by default), recorded
    /// on each event: how many end users a key serves is what tells reselling from an app.
    pub end_user_header: String,
    /// Largest request head (request line plus headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Largest request body forwarded upstream, in bytes; 0 means no limit. Bodies stream
    /// either way: the limit is counted as bytes pass, never by buffering.
    pub max_request_body_bytes: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Capacity of the hand-off between the hot path and the event pipeline. When it is full,
    /// events are dropped and counted rather than slowing traffic.
    pub event_queue: usize,
    /// A connection that has not sent its first byte within this many seconds is closed, so
    /// connections that never send anything cannot pile up.
    pub first_byte_timeout_secs: u64,
    /// Time allowed for a client to send a whole request head once it has started.
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection with no request in flight and no bytes moving for this many
    /// seconds is closed.
    pub idle_timeout_secs: u64,
    /// Open client connections at most; past it new connections are closed at once. Also
    /// capped by the descriptor limit less `reserved_fds`.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_ip: usize,
    /// Descriptors kept back from the gateway's connections, for upstream connections, the
    /// store, and the admin listener (so `/healthz` answers while the gateway is full).
    pub reserved_fds: usize,
    /// Request header fields accepted at most (HTTP/1.1); more is answered 431.
    pub max_headers: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            session_header: "x-session-id".to_string(),
            end_user_header: "x-end-user-id".to_string(),
            max_header_bytes: 64 * 1024,
            max_request_body_bytes: 64 * 1024 * 1024,
            shutdown_grace_secs: 30,
            event_queue: 65_536,
            first_byte_timeout_secs: 10,
            header_read_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 25_000,
            max_connections_per_ip: 1_024,
            reserved_fds: 1_024,
            max_headers: 256,
        }
    }
}

impl GatewayConfig {
    /// The connection limits and timeouts: each at least 1, and the per-address limit within
    /// the global one.
    fn validate_connections(&self, origin: &str) -> Result<(), ConfigError> {
        let positive = [
            ("first_byte_timeout_secs", self.first_byte_timeout_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!(
                    "{origin}: gateway.{key}: must be at least 1 (0 would refuse every connection)"
                )));
            }
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err(ConfigError(format!(
                "{origin}: gateway.max_connections_per_ip: {} is more than max_connections ({}); \
                 lower it or raise max_connections",
                self.max_connections_per_ip, self.max_connections
            )));
        }
        if !(16..=65_536).contains(&self.max_headers) {
            return Err(ConfigError(format!(
                "{origin}: gateway.max_headers: {} is out of range; use 16 to 65536",
                self.max_headers
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for the admin API and dashboard. `CLIENTELE_ADMIN_TOKEN` overrides it.
    pub token: Option<String>,
    /// Largest request body the admin API accepts, in bytes.
    pub max_body_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Where this node's raw-event log and hand-off ring live; `data_dir` when unset. The log has
    /// one writer, so processes that share a `data_dir` (its SQLite control plane: consumers,
    /// keys, findings) each need their own `event_dir`.
    pub event_dir: Option<PathBuf>,
    /// Raw events older than this are deleted, after their hour and day rollups are archived.
    /// It also bounds back-dating: older events are refused at ingest, since they could no longer
    /// be counted exactly once.
    pub raw_event_retention_days: u32,
    /// Where the control plane (and, later, events) live: `sqlite` (embedded, the default),
    /// `postgres` (consumers, keys, findings, spec history in PostgreSQL at `postgres_url`,
    /// shared by every node; events in this node's log) or `clickhouse` (the same, plus events
    /// and rollups in ClickHouse at `clickhouse_url`).
    pub backend: StorageBackend,
    /// `postgres://user[:password]@host[:port]/database`; `${VAR}` is replaced by the
    /// environment variable, so a password need not sit in the file.
    pub postgres_url: Option<String>,
    /// `http://host:8123`, ClickHouse's HTTP interface (with `backend = "clickhouse"`).
    pub clickhouse_url: Option<String>,
    /// The bound of the local spool of events waiting for ClickHouse (default 1024 MiB):
    /// what an outage can hold before new events stay in this node's log only (counted).
    pub clickhouse_spool_mib: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Sqlite,
    Postgres,
    Clickhouse,
}

impl StorageBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Sqlite => "sqlite",
            StorageBackend::Postgres => "postgres",
            StorageBackend::Clickhouse => "clickhouse",
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./clientele-data"),
            event_dir: None,
            raw_event_retention_days: 30,
            backend: StorageBackend::Sqlite,
            postgres_url: None,
            clickhouse_url: None,
            clickhouse_spool_mib: None,
        }
    }
}

impl StorageConfig {
    /// The backend and its URLs agree: each URL is given exactly when its backend needs it.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| {
            Err(ConfigError(format!("{origin}: storage.{key}: {reason}")))
        };
        let needs_postgres = self.backend != StorageBackend::Sqlite;
        match &self.postgres_url {
            None if needs_postgres => {
                return err(
                    "postgres_url",
                    format!(
                        "required with backend = \"{}\" (the shared control plane); set it to postgres://user@host:port/database",
                        self.backend.as_str()
                    ),
                );
            }
            Some(_) if !needs_postgres => {
                return err(
                    "postgres_url",
                    "is set but backend is \"sqlite\"; set backend = \"postgres\" to use it, or remove it".into(),
                );
            }
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                return err(
                    "postgres_url",
                    "must start with postgres:// (postgres://user[:password]@host[:port]/database)"
                        .into(),
                );
            }
            _ => {}
        }
        let needs_clickhouse = self.backend == StorageBackend::Clickhouse;
        match &self.clickhouse_url {
            None if needs_clickhouse => err(
                "clickhouse_url",
                "required with backend = \"clickhouse\"; set it to ClickHouse's HTTP address, e.g. http://127.0.0.1:8123".into(),
            ),
            Some(_) if !needs_clickhouse => err(
                "clickhouse_url",
                format!(
                    "is set but backend is \"{}\"; set backend = \"clickhouse\" to use it, or remove it",
                    self.backend.as_str()
                ),
            ),
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => err(
                "clickhouse_url",
                "must be ClickHouse's HTTP address, e.g. http://127.0.0.1:8123".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// `[governance]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// An IP-to-ASN table in iptoasn.com's TSV format (`ip2asn-combined.tsv`). With it, the
    /// features count each consumer's autonomous systems and countries, and `key_sharing`
    /// sees a key used from far-apart countries in the same hour. Read at start-up; a file
    /// that cannot be read or parsed stops the start with the line at fault.
    pub ip_table: Option<PathBuf>,
}

/// Rollup retention per tier. Queries over older windows are answered by coarser tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    pub minute_retention_days: u32,
    pub hour_retention_days: u32,
    pub day_retention_days: u32,
    /// Ingested events dated further ahead than this are refused (clock skew allowance).
    pub max_future_secs: u64,
    /// Memory for closed rollup buckets read back from disk (`rollups.db`), in MiB. Only open
    /// buckets live in memory; queries and detectors over older windows read through this cache.
    pub rollup_cache_mib: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            minute_retention_days: 3,
            hour_retention_days: 35,
            day_retention_days: 400,
            max_future_secs: 300,
            rollup_cache_mib: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub name: String,
    /// Base URL of the upstream, `http://host:port[/base]`.
    pub upstream: String,
    /// Gateway path prefix routed to this API; the longest matching prefix wins.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Remove `prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// OpenAPI document for route templates, drift and deprecation.
    #[serde(default)]
    pub openapi: Option<PathBuf>,
    /// Time allowed for the upstream to answer with headers; past it the gateway answers 504.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// Time allowed to open a connection to the upstream; past it the gateway answers 502.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Share of requests (0..=1) whose parameters and JSON body are checked against the spec.
    #[serde(default = "default_request_sample_rate")]
    pub request_sample_rate: f64,
    /// Share of responses (0..=1) whose JSON body is checked against the spec.
    #[serde(default = "default_response_sample_rate")]
    pub response_sample_rate: f64,
    /// Most bytes of a sampled body copied for validation; a longer body is not checked.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Sunset dates and replacements for operations, on top of the spec's `deprecated: true`.
    #[serde(default)]
    pub deprecations: Vec<DeprecationConfig>,
    /// Per-operation sample rates, keyed `"METHOD /template"` as the spec names the
    /// operation; a rate left out keeps the API's.
    #[serde(default)]
    pub sample_rates: BTreeMap<String, SampleRates>,
    /// For an `https://` upstream: a PEM bundle of CAs trusted instead of `[outbound]`'s (or
    /// the system's) roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain and key presented to an upstream that requires mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Token usage read from the responses: unset = on the well-known OpenAI and Anthropic
    /// paths only; `"openai"`/`"anthropic"` = every response of the API, in that provider's
    /// format; `"off"` = never.
    #[serde(default)]
    pub llm: Option<LlmMode>,
    /// Whether an OpenAI streamed request (`"stream": true`) without
    /// `stream_options.include_usage` gets it added, so the stream ends with its usage
    /// instead of an estimate. On by default; the client then also receives that last chunk
    /// (`choices: []`).
    #[serde(default = "yes")]
    pub llm_include_usage: bool,
    /// Headers set on every request sent upstream (the provider's key), `${NAME}` replaced by
    /// the environment variable at load. When set, the consumer's Clientele key is always
    /// removed, whatever `hide_credentials` says.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// `[agents]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Refuse (429) a call a session (the session header) has already made this many times,
    /// identical in method, path, query and body. Unset = never refuse (loops are reported
    /// by the `agent_loop` finding only).
    pub max_identical_calls: Option<u32>,
}

/// `[[apis]] llm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmMode {
    Openai,
    Anthropic,
    Off,
}

/// Replaces each `${NAME}` in `value` by the environment variable `NAME`; a variable that is
/// not set is an error naming it, so a provider key cannot silently go out empty.
pub fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("{value:?} has an unclosed `${{`"));
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(format!(
                    "the environment variable {name} is not set; export it or remove the reference"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ApiConfig {
    /// This API's TLS settings: its own where it has any, else `[outbound]`'s.
    pub fn tls(&self, outbound: &OutboundTls) -> OutboundTls {
        if self.ca_file.is_none() && self.client_cert.is_none() && self.client_key.is_none() {
            return outbound.clone();
        }
        OutboundTls {
            ca_file: self.ca_file.clone().or_else(|| outbound.ca_file.clone()),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// `[otlp_ingest]`: OTLP HTTP server spans become events; the consumer is the first of these
/// found on the span (or its resource).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpIngestConfig {
    /// A span attribute naming the consumer (e.g. set by the gateway's auth plugin).
    pub consumer_attribute: String,
    /// A request header naming the consumer, captured on spans as the semantic conventions'
    /// `http.request.header.<name>` attribute (e.g. Kong's `x-consumer-username`).
    pub consumer_header: Option<String>,
}

impl Default for OtlpIngestConfig {
    fn default() -> Self {
        OtlpIngestConfig {
            consumer_attribute: "enduser.id".into(),
            consumer_header: None,
        }
    }
}

/// Where trust comes from for outbound TLS, and the certificate presented to servers that ask.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundTls {
    /// A PEM bundle of CAs trusted instead of the system's roots (which honour `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain presented to servers that ask for one (mTLS), with `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The share of one operation's requests and responses checked against the spec.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRates {
    pub request: Option<f64>,
    pub response: Option<f64>,
}

/// One `[[apis]] deprecations` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeprecationConfig {
    /// `METHOD /template`, e.g. `GET /pet/findByTags`.
    pub operation: String,
    /// `YYYY-MM-DD` or RFC 3339; the operation is deprecated from now on, and gone after it.
    #[serde(default)]
    pub sunset: Option<String>,
    /// `METHOD /template` (or an operationId) of the replacement.
    #[serde(default)]
    pub replaced_by: Option<String>,
}

impl DeprecationConfig {
    /// The sunset as epoch milliseconds (a bare date is midnight UTC).
    pub fn sunset_ms(&self) -> Option<Result<i64, String>> {
        self.sunset.as_deref().map(parse_sunset)
    }
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_sunset(s: &str) -> Result<i64, String> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
            .unwrap_or_default());
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("{s:?} is not a date (2027-01-01) or an RFC 3339 time"))
}

/// Checks `METHOD /template`.
fn check_operation_name(s: &str) -> Result<(), String> {
    const METHODS: [&str; 8] = [
        "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
    ];
    match s.trim().split_once(' ') {
        Some((m, t)) if METHODS.contains(&m) && t.trim().starts_with('/') => Ok(()),
        _ => Err(format!(
            "{s:?} must be `METHOD /template` with an upper-case HTTP method, e.g. \"GET /pet/{{petId}}\""
        )),
    }
}

fn default_request_sample_rate() -> f64 {
    0.1
}
fn default_response_sample_rate() -> f64 {
    0.01
}
fn default_max_body_bytes() -> u64 {
    64 * 1024
}

fn default_prefix() -> String {
    "/".to_string()
}
fn default_upstream_timeout_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// When set, every node sharing this Redis enforces one cluster-wide limit per consumer.
    pub redis_url: Option<String>,
    /// How long a request may wait for Redis before the failure policy applies. Kept tight:
    /// the limiter must never be why a request hangs.
    pub redis_timeout_ms: u64,
    /// What happens to requests while Redis cannot be reached: `open` (allow, log and count) or
    /// `closed` (refuse with 503).
    pub on_redis_error: FailurePolicy,
    /// Prefix of every Redis key Clientele writes, so several deployments can share a Redis.
    pub redis_key_prefix: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            redis_url: None,
            redis_timeout_ms: 50,
            on_redis_error: FailurePolicy::Open,
            redis_key_prefix: "clientele".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    Open,
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub rate_per_second: f64,
    pub burst: u32,
    #[serde(default)]
    pub quota_per_day: Option<u64>,
    #[serde(default)]
    pub quota_per_month: Option<u64>,
    /// Budgets of AI traffic for every consumer on the plan: US dollars and tokens per UTC day
    /// and month, reserved before forwarding and settled to the provider's usage.
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    /// Budgets of one session (the client's session header, `[gateway] session_header`): US
    /// dollars and tokens for as long as the session lasts.
    #[serde(default)]
    pub budget_usd_per_session: Option<f64>,
    #[serde(default)]
    pub tokens_per_session: Option<u64>,
    /// Per-route limits for every consumer on the plan, keyed `"GET /search"` or `"/search"`.
    #[serde(default)]
    pub routes: BTreeMap<String, crate::limits::RouteLimit>,
    /// Governance rules for every consumer on the plan (`[plans.X.policy]`).
    #[serde(default)]
    pub policy: Option<crate::policy::PlanPolicy>,
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved against
    /// the file's folder, so the same file works from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read config file {}: {e}; check the path given to --config",
                path.display()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text. `origin` names the source in messages.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            // toml's message already names the key and shows the line; flatten it to keep
            // one clear message.
            let msg = e.message().to_string();
            let place = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    match key_at(text, before.len()) {
                        Some(key) => format!(" (line {line}, {key})"),
                        None => format!(" (line {line})"),
                    }
                })
                .unwrap_or_default();
            ConfigError(format!("{origin}{place}: {msg}"))
        })?;
        config.resolve_paths(base);
        if let Some(url) = config.storage.postgres_url.as_mut() {
            *url = expand_env(url).map_err(|reason| {
                ConfigError(format!("{origin}: storage.postgres_url: {reason}"))
            })?;
        }
        for (i, api) in config.apis.iter_mut().enumerate() {
            for (name, value) in api.upstream_headers.iter_mut() {
                *value = expand_env(value).map_err(|reason| {
                    ConfigError(format!(
                        "{origin}: apis[{i}].upstream_headers.{name}: {reason}"
                    ))
                })?;
            }
        }
        config.validate(origin)?;
        config.origin = origin.to_string();
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.storage.data_dir);
        if let Some(p) = self.storage.event_dir.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.gateway.tls_cert.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.gateway.tls_key.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.governance.ip_table.as_mut() {
            resolve(p);
        }
        for api in &mut self.apis {
            for p in [
                &mut api.openapi,
                &mut api.ca_file,
                &mut api.client_cert,
                &mut api.client_key,
            ]
            .into_iter()
            .flatten()
            {
                resolve(p);
            }
        }
        let o = &mut self.outbound;
        for p in [&mut o.ca_file, &mut o.client_cert, &mut o.client_key]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
        self.exports.resolve_paths(base);
    }

    /// Checks what types alone cannot: ranges, references between sections, and URLs.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err =
            |key: &str, reason: String| Err(ConfigError(format!("{origin}: {key}: {reason}")));

        if self.gateway.tls_cert.is_some() != self.gateway.tls_key.is_some() {
            return err(
                "gateway.tls_cert",
                "tls_cert and tls_key must be set together; set both to terminate TLS, or neither"
                    .into(),
            );
        }
        if self.outbound.client_cert.is_some() != self.outbound.client_key.is_some() {
            return err(
                "outbound.client_cert",
                "client_cert and client_key must be set together".into(),
            );
        }
        if self.gateway.max_header_bytes < 1024 {
            return err(
                "gateway.max_header_bytes",
                format!(
                    "{} is too small; use at least 1024",
                    self.gateway.max_header_bytes
                ),
            );
        }
        if self.gateway.event_queue == 0 {
            return err("gateway.event_queue", "must be at least 1".into());
        }
        self.gateway.validate_connections(origin)?;
        if self.gateway.session_header.is_empty()
            || http_header_name_invalid(&self.gateway.session_header)
        {
            return err(
                "gateway.session_header",
                format!(
                    "{:?} is not a valid HTTP header name",
                    self.gateway.session_header
                ),
            );
        }
        if self.gateway.end_user_header.is_empty()
            || http_header_name_invalid(&self.gateway.end_user_header)
        {
            return err(
                "gateway.end_user_header",
                format!(
                    "{:?} is not a valid HTTP header name",
                    self.gateway.end_user_header
                ),
            );
        }
        if self.admin.max_body_bytes < 1024 {
            return err("admin.max_body_bytes", "use at least 1024".into());
        }
        if let Some(token) = &self.admin.token {
            if token.len() < 16 {
                return err(
                    "admin.token",
                    "is shorter than 16 characters; use a long random value, e.g. from `openssl rand -hex 24`"
                        .into(),
                );
            }
        }

        let a = &self.analytics;
        if a.minute_retention_days == 0
            || a.hour_retention_days < a.minute_retention_days
            || a.day_retention_days < a.hour_retention_days
        {
            return err(
                "analytics.minute_retention_days",
                "retentions must be at least 1 day and grow from minutes to hours to days".into(),
            );
        }

        if !(1..=65_536).contains(&a.rollup_cache_mib) {
            return err(
                "analytics.rollup_cache_mib",
                format!(
                    "{} is outside 1..=65536; it is the memory in MiB for rollup buckets read back from disk (default 64)",
                    a.rollup_cache_mib
                ),
            );
        }

        self.storage.validate(origin)?;
        if self.storage.raw_event_retention_days < a.minute_retention_days {
            return err(
                "storage.raw_event_retention_days",
                format!(
                    "{} is shorter than analytics.minute_retention_days ({}); minute rollups are rebuilt from raw events at start-up",
                    self.storage.raw_event_retention_days, a.minute_retention_days
                ),
            );
        }

        crate::prices::validate(origin, &self.prices)?;
        let mut names = std::collections::HashSet::new();
        for (i, api) in self.apis.iter().enumerate() {
            let key = format!("apis[{i}]");
            if !valid_name(&api.name) {
                return err(
                    &format!("{key}.name"),
                    format!(
                        "{:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'",
                        api.name
                    ),
                );
            }
            if !names.insert(api.name.as_str()) {
                return err(
                    &format!("{key}.name"),
                    format!("{:?} is used by two APIs; names must be unique", api.name),
                );
            }
            if let Err(reason) = parse_upstream(&api.upstream) {
                return err(&format!("{key}.upstream"), reason);
            }
            if !api.prefix.starts_with('/') {
                return err(
                    &format!("{key}.prefix"),
                    format!("{:?} must start with '/'", api.prefix),
                );
            }
            for (name, value) in &api.upstream_headers {
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                let field = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b);
                if name.is_empty() || !name.bytes().all(token) || !value.bytes().all(field) {
                    return err(
                        &format!("{key}.upstream_headers.{name}"),
                        "is not a valid HTTP header name and value".into(),
                    );
                }
            }
            if api.timeout_ms == 0 || api.connect_timeout_ms == 0 {
                return err(
                    &format!("{key}.timeout_ms"),
                    "timeouts must be greater than 0".into(),
                );
            }
            for (field, rate) in [
                ("request_sample_rate", api.request_sample_rate),
                ("response_sample_rate", api.response_sample_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return err(
                        &format!("{key}.{field}"),
                        format!("{rate} must be between 0 and 1 (0.01 checks one in a hundred)"),
                    );
                }
            }
            for (op, rates) in &api.sample_rates {
                let okey = format!("{key}.sample_rates.{op:?}");
                let well_formed = op.split_once(' ').is_some_and(|(m, p)| {
                    !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && p.starts_with('/')
                });
                if !well_formed {
                    return err(
                        &okey,
                        "must name an operation as \"METHOD /template\", e.g. \"GET /pet/{petId}\""
                            .into(),
                    );
                }
                for (field, rate) in [("request", rates.request), ("response", rates.response)] {
                    if let Some(rate) = rate {
                        if !(0.0..=1.0).contains(&rate) {
                            return err(
                                &format!("{okey}.{field}"),
                                format!("{rate} must be between 0 and 1"),
                            );
                        }
                    }
                }
            }
            if api.max_body_bytes > 16 * 1024 * 1024 {
                return err(
                    &format!("{key}.max_body_bytes"),
                    format!(
                        "{} is more than 16 MiB; bodies are copied for validation, keep this small",
                        api.max_body_bytes
                    ),
                );
            }
            if !api.deprecations.is_empty() && api.openapi.is_none() {
                return err(
                    &format!("{key}.deprecations"),
                    "needs an openapi spec for this API; set openapi or remove deprecations".into(),
                );
            }
            let mut seen_ops = std::collections::HashSet::new();
            for (j, d) in api.deprecations.iter().enumerate() {
                let dkey = format!("{key}.deprecations[{j}]");
                if let Err(e) = check_operation_name(&d.operation) {
                    return err(&format!("{dkey}.operation"), e);
                }
                if !seen_ops.insert(d.operation.trim()) {
                    return err(
                        &format!("{dkey}.operation"),
                        format!("{:?} is listed twice", d.operation),
                    );
                }
                if let Some(Err(e)) = d.sunset_ms() {
                    return err(&format!("{dkey}.sunset"), e);
                }
                if let Some(r) = &d.replaced_by
                    && r.trim().is_empty()
                {
                    return err(
                        &format!("{dkey}.replaced_by"),
                        "is empty; name the replacement as `METHOD /template` or leave it out"
                            .into(),
                    );
                }
                if d.sunset.is_none() && d.replaced_by.is_none() {
                    return err(&dkey, "set sunset, replaced_by or both".into());
                }
            }
        }
        let mut prefixes = std::collections::HashSet::new();
        for (i, api) in self.apis.iter().enumerate() {
            if !prefixes.insert(api.prefix.trim_end_matches('/')) {
                return err(
                    &format!("apis[{i}].prefix"),
                    format!(
                        "{:?} is routed to two APIs; give each API its own prefix",
                        api.prefix
                    ),
                );
            }
        }

        if self.agents.max_identical_calls == Some(0) {
            return err(
                "agents.max_identical_calls",
                "must be at least 1; leave it out to never refuse repeated calls".into(),
            );
        }
        for (name, plan) in &self.plans {
            let key = format!("plans.{name}");
            if !valid_name(name) {
                return err(
                    &key,
                    "plan names must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'".into(),
                );
            }
            if let Err(e) = crate::limits::check_rate("rate_per_second", plan.rate_per_second) {
                return err(&format!("{key}.rate_per_second"), e);
            }
            if plan.burst == 0 {
                return err(&format!("{key}.burst"), "must be at least 1".into());
            }
            for (field, q) in [
                ("quota_per_day", plan.quota_per_day),
                ("quota_per_month", plan.quota_per_month),
            ] {
                if q == Some(0) {
                    return err(
                        &format!("{key}.{field}"),
                        "a quota must be at least 1; leave it out for no quota".into(),
                    );
                }
            }
            if let Err(e) = crate::limits::check_budgets(
                [plan.budget_usd_per_day, plan.budget_usd_per_month],
                [plan.tokens_per_day, plan.tokens_per_month],
            )
            .and_then(|()| {
                crate::limits::check_session_budgets(
                    plan.budget_usd_per_session,
                    plan.tokens_per_session,
                )
            }) {
                return err(&key, e);
            }
            for (route, limit) in &plan.routes {
                let rkey = format!("{key}.routes.{route:?}");
                if let Err(e) = crate::limits::RouteMatch::parse(route) {
                    return err(&rkey, e);
                }
                if let Err(e) = crate::limits::check_route_limit(limit) {
                    return err(&rkey, e);
                }
            }
            if let Some(policy) = &plan.policy {
                if let Err((pkey, why)) = policy.validate(&format!("{key}.policy")) {
                    return err(&pkey, why);
                }
            }
        }

        crate::alert::targets(&self.alerts, &self.plans, origin)?;
        self.detection.validate(origin)?;

        if let Some(url) = &self.limits.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return err(
                    "limits.redis_url",
                    format!("{url:?} must start with redis:// or rediss://"),
                );
            }
        }
        if !(1..=10_000).contains(&self.limits.redis_timeout_ms) {
            return err(
                "limits.redis_timeout_ms",
                format!(
                    "{} must be between 1 and 10000; a limiter that waits longer would stall traffic",
                    self.limits.redis_timeout_ms
                ),
            );
        }
        if !valid_name(&self.limits.redis_key_prefix) {
            return err(
                "limits.redis_key_prefix",
                "must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'".into(),
            );
        }
        self.exports.validate(origin).map_err(ConfigError)?;
        Ok(())
    }

    /// The admin token from the environment, then the file.
    pub fn admin_token(&self) -> Option<String> {
        std::env::var("CLIENTELE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.admin.token.clone())
    }
}

/// The dotted key written on the line holding byte `at` (`limits.on_redis_error`), found
/// from the line's `key =` and the table header above it, so that type errors name the key
/// even where toml's own message does not.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let (key, _) = text[start..end].split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// Names used as identifiers in URLs and metrics: consumers, plans, APIs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn http_header_name_invalid(name: &str) -> bool {
    !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An upstream URL split into what the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Whether it is `https://`.
    pub tls: bool,
    /// `host:port`, used as the authority and to connect (and the host for SNI).
    pub authority: String,
    /// Base path joined before the request path, without a trailing slash (may be empty).
    pub base_path: String,
}

/// Parses `http[s]://host[:port][/base]`; the port defaults to 80 or 443.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(format!(
            "{url:?} must be an http:// or https:// URL such as http://127.0.0.1:9000"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{url:?} has no host, or has credentials in it; use http://host:port or https://host:port"
        ));
    }
    let has_port = !authority.ends_with(']')
        && authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let authority = if has_port {
        authority.to_string()
    } else if authority.contains(':') && !authority.starts_with('[') {
        return Err(format!("{url:?} has an invalid port"));
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    Ok(Upstream {
        tls,
        authority,
        base_path: path.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/clientele"))
    }

    #[test]
    fn storage_backends_and_their_urls_agree() {
        let c = parse("").unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Sqlite);
        let c = parse("[storage]\nbackend = 'postgres'\npostgres_url = 'postgres://clientele@db:5433/clientele'\n")
            .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        let path = std::env::var("PATH").unwrap();
        let c =
            parse("[storage]\nbackend = 'postgres'\npostgres_url = 'postgres://u:${PATH}@db/c'\n")
                .unwrap();
        assert_eq!(
            c.storage.postgres_url.as_deref(),
            Some(format!("postgres://u:{path}@db/c").as_str())
        );
        for (text, key, reason) in [
            (
                "backend = 'postgres'",
                "storage.postgres_url",
                "required with backend = \"postgres\"",
            ),
            (
                "postgres_url = 'postgres://db/c'",
                "storage.postgres_url",
                "backend is \"sqlite\"",
            ),
            (
                "backend = 'postgres'\npostgres_url = 'db:5432'",
                "storage.postgres_url",
                "must start with postgres://",
            ),
            (
                "backend = 'clickhouse'\npostgres_url = 'postgres://db/c'",
                "storage.clickhouse_url",
                "required",
            ),
            (
                "backend = 'postgres'\npostgres_url = 'postgres://db/c'\nclickhouse_url = 'http://ch:8123'",
                "storage.clickhouse_url",
                "backend is \"postgres\"",
            ),
            ("backend = 'mysql'", "backend", "unknown variant"),
        ] {
            let e = parse(&format!("[storage]\n{text}\n")).unwrap_err();
            assert!(e.0.contains(key) && e.0.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn llm_settings_prices_and_upstream_headers() {
        // PATH is set wherever tests run (setting a variable would need `unsafe`).
        let path = std::env::var("PATH").unwrap();
        let c = parse(
            "[[apis]]\nname='ai'\nupstream='http://x:1'\nllm='anthropic'\n\
             upstream_headers = { x-api-key = '${PATH}', Authorization = 'Bearer ${PATH}!' }\n\
             [prices.'local-llama']\ninput = 0.1\noutput = 0.2\n",
        )
        .unwrap();
        let api = &c.apis[0];
        assert_eq!(api.llm, Some(LlmMode::Anthropic));
        assert_eq!(api.upstream_headers["x-api-key"], path);
        assert_eq!(
            api.upstream_headers["Authorization"],
            format!("Bearer {path}!")
        );
        assert_eq!(c.prices["local-llama"].output, 0.2);

        let e = parse("[[apis]]\nname='ai'\nupstream='http://x:1'\nupstream_headers = { a = '${CLIENTELE_TEST_UNSET_VAR}' }\n")
            .unwrap_err();
        assert!(
            e.0.contains("apis[0].upstream_headers.a")
                && e.0.contains("CLIENTELE_TEST_UNSET_VAR is not set"),
            "{e}"
        );
        let e = parse("[prices.m]\ninput = -1\noutput = 1\n").unwrap_err();
        assert!(e.0.contains("prices.\"m\""), "{e}");
        let e = parse("[[apis]]\nname='ai'\nupstream='http://x:1'\nllm='gemini'\n").unwrap_err();
        assert!(e.0.contains("llm"), "{e}");
    }

    #[test]
    fn connection_limits_are_validated_by_key() {
        let c = parse("").unwrap();
        assert_eq!(c.gateway.max_headers, 256);
        assert_eq!(c.gateway.first_byte_timeout_secs, 10);
        for (text, key) in [
            (
                "[gateway]\nidle_timeout_secs = 0\n",
                "gateway.idle_timeout_secs",
            ),
            (
                "[gateway]\nmax_connections = 0\n",
                "gateway.max_connections",
            ),
            (
                "[gateway]\nmax_connections = 10\nmax_connections_per_ip = 11\n",
                "gateway.max_connections_per_ip",
            ),
            ("[gateway]\nmax_headers = 3\n", "gateway.max_headers"),
            (
                "[gateway]\nfirst_byte_timeout_secs = 0\n",
                "gateway.first_byte_timeout_secs",
            ),
            (
                "[analytics]\nrollup_cache_mib = 0\n",
                "analytics.rollup_cache_mib",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.0.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn api_sampling_and_deprecations_are_validated() {
        let base =
            "[[apis]]\nname = \"p\"\nupstream = \"http://127.0.0.1:9\"\nopenapi = \"p.yaml\"\n";
        let c = parse(&format!(
            "{base}deprecations = [{{ operation = \"GET /pet/findByTags\", sunset = \"2027-01-01\", replaced_by = \"GET /pet/findByStatus\" }}]\n"
        ))
        .unwrap();
        let api = &c.apis[0];
        assert_eq!(api.max_body_bytes, 65536);
        assert!((api.response_sample_rate - 0.01).abs() < 1e-12);
        assert_eq!(api.deprecations[0].sunset_ms(), Some(Ok(1_798_761_600_000)));
        for (extra, want) in [
            (
                "response_sample_rate = 2.0\n",
                "test.toml: apis[0].response_sample_rate: 2 must be between 0 and 1",
            ),
            (
                "deprecations = [{ operation = \"/pet\", sunset = \"2027-01-01\" }]\n",
                "test.toml: apis[0].deprecations[0].operation: \"/pet\" must be `METHOD /template`",
            ),
            (
                "deprecations = [{ operation = \"GET /pet\", sunset = \"soon\" }]\n",
                "test.toml: apis[0].deprecations[0].sunset: \"soon\" is not a date",
            ),
            (
                "deprecations = [{ operation = \"GET /pet\" }]\n",
                "test.toml: apis[0].deprecations[0]: set sunset, replaced_by or both",
            ),
            (
                "deprecations = [{ operation = \"GET /pet\", sunset = \"2027-01-01\", when = 1 }]\n",
                "unknown field `when`",
            ),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err().0;
            assert!(e.contains(want), "{e}");
        }
        let e = parse("[[apis]]\nname = \"p\"\nupstream = \"http://127.0.0.1:9\"\ndeprecations = [{ operation = \"GET /a\", sunset = \"2027-01-01\" }]\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("apis[0].deprecations: needs an openapi spec"),
            "{e}"
        );
    }

    #[test]
    fn empty_config_is_a_working_default() {
        let c = parse("").unwrap();
        assert_eq!(c.gateway.listen.port(), 8080);
        assert_eq!(
            c.storage.data_dir,
            PathBuf::from("/etc/clientele/./clientele-data")
        );
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let e = parse("[gateway]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(
            e.0.contains("test.toml (line 3, gateway.listen_port)"),
            "{e}"
        );
        assert!(e.0.contains("listen_port"), "{e}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let e = parse("[plans.free]\nrate_per_second = \"fast\"\nburst = 1\n").unwrap_err();
        assert!(e.0.contains("line 2, plans.free.rate_per_second"), "{e}");
    }

    #[test]
    fn zero_rate_is_refused_with_its_key() {
        let e = parse("[plans.free]\nrate_per_second = 0\nburst = 1\n").unwrap_err();
        assert!(e.0.contains("plans.free.rate_per_second"), "{e}");
    }

    #[test]
    fn bad_redis_url_is_refused() {
        let e = parse("[limits]\nredis_url = \"localhost:6379\"\n").unwrap_err();
        assert!(e.0.contains("limits.redis_url"), "{e}");
    }

    #[test]
    fn duplicate_prefix_is_refused() {
        let text = "[[apis]]\nname='a'\nupstream='http://x:1'\n[[apis]]\nname='b'\nupstream='http://y:1'\n";
        let e = parse(text).unwrap_err();
        assert!(e.0.contains("apis[1].prefix"), "{e}");
    }

    #[test]
    fn upstream_parsing() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:9000/v2/").unwrap(),
            Upstream {
                tls: false,
                authority: "127.0.0.1:9000".into(),
                base_path: "/v2".into()
            }
        );
        assert_eq!(
            parse_upstream("http://api.internal").unwrap().authority,
            "api.internal:80"
        );
        let https = parse_upstream("https://api.example.com/v1").unwrap();
        assert!(https.tls);
        assert_eq!(https.authority, "api.example.com:443");
        assert_eq!(https.base_path, "/v1");
        assert!(!parse_upstream("http://x").unwrap().tls);
        assert!(parse_upstream("ftp://x").unwrap_err().contains("https://"));
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x:notaport").is_err());
        assert!(parse_upstream("http://u:p@x:1").is_err());
    }
}

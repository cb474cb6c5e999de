//! Storage for Clientele: one trait for the control plane ([`ControlStore`]: consumers, keys)
//! one for analytics ([`EventStore`]: events and the statistics read from them), and one for
//! what detectors notice ([`FindingStore`]: findings and the alert delivery log).
//!
//! Callers hold `Arc<dyn ControlStore>` / `Arc<dyn EventStore>`, so a PostgreSQL control plane
//! or a ClickHouse event store can be added beside the embedded ones without touching them:
//! [`sqlite::SqliteStore`] (control plane, findings, the rollup archive) and [`log::EventLog`]
//! (raw events in checksummed segment files). Every backend must pass the shared suite in
//! [`testsuite`], one line per trait.

use async_trait::async_trait;
use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::event::Event;
use clientele_core::keys::{KeyEntry, QuotaUsage};

pub mod buckets;
#[cfg(feature = "clickhouse")]
pub mod clickhouse;
pub mod findings;
pub mod log;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use buckets::{BucketFile, BucketRow, BucketSave};
#[cfg(feature = "clickhouse")]
pub use clickhouse::ClickHouseStore;
pub use findings::{Change, Delivery, DeliveryQuery, FindingQuery, FindingStore, Upserted};
pub use log::EventLog;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The storage engine failed; the message is for operators, not clients.
    #[error("storage error: {0}")]
    Backend(String),
    /// A database server could not be reached (or did not answer in time). The message names
    /// the server (`PostgreSQL at host:port/db`, never a password) and may be shown to clients.
    #[error("{0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The query behind [`ControlStore::key_entries`] in every SQL backend, before its WHERE clause:
/// each key with what the gateway needs of its consumer. A key whose consumer is gone counts as
/// revoked.
pub(crate) const KEY_ENTRIES_SELECT: &str =
    "SELECT k.key_id, k.hash, k.consumer, c.plan, c.team, c.use_case, k.expires_at,
            k.revoked_at IS NOT NULL OR c.id IS NULL, c.limits
     FROM api_keys k LEFT JOIN consumers c ON c.id = k.consumer";

/// Consumers, keys and the store's key-hashing secret.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// The secret keys are hashed under. Every node sharing a store shares it.
    fn key_secret(&self) -> [u8; 32];

    /// Creates a consumer; `Conflict` when the id exists.
    async fn create_consumer(&self, consumer: Consumer) -> Result<Consumer>;
    async fn get_consumer(&self, id: &str) -> Result<Option<Consumer>>;
    async fn list_consumers(&self) -> Result<Vec<Consumer>>;
    /// Replaces a consumer's fields; `NotFound` when it does not exist.
    async fn update_consumer(&self, consumer: Consumer) -> Result<Consumer>;
    /// Deletes a consumer and revokes its keys. Its past events are kept.
    async fn delete_consumer(&self, id: &str, now_ms: i64) -> Result<()>;

    /// Stores a new key; `Conflict` when the same key (by hash) is already stored,
    /// `NotFound` when the consumer does not exist.
    async fn create_key(&self, key: ApiKey) -> Result<ApiKey>;
    async fn list_keys(&self, consumer: &str) -> Result<Vec<ApiKey>>;
    /// Marks a key revoked (idempotent) and returns it; `NotFound` when unknown.
    async fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<ApiKey>;

    /// Every key with what the gateway needs about its consumer, revoked ones included so the
    /// gateway can say why it refuses them.
    async fn key_entries(&self) -> Result<Vec<KeyEntry>>;
    /// [`ControlStore::key_entries`] of one consumer's keys only, for reloading the gateway
    /// after a change to that consumer without reading every key.
    async fn consumer_key_entries(&self, consumer: &str) -> Result<Vec<KeyEntry>>;
    /// Saves each consumer's quota usage in its current day and month, replacing what was
    /// stored, so quotas survive a restart.
    async fn save_quota_usage(&self, usage: Vec<QuotaUsage>) -> Result<()>;
    async fn load_quota_usage(&self) -> Result<Vec<QuotaUsage>>;
    /// A number that changes whenever consumers or keys change, so that nodes can poll it
    /// cheaply and reload only when needed.
    async fn control_version(&self) -> Result<u64>;

    /// Records a loaded OpenAPI spec version. The same (api, hash) loaded again keeps its first
    /// load time; returns whether the version is new.
    async fn record_spec_version(&self, version: StoredSpecVersion) -> Result<bool>;
    /// An API's spec versions, oldest first.
    async fn spec_versions(&self, api: &str) -> Result<Vec<StoredSpecVersion>>;

    /// Takes or renews the lease `name` for `holder` for `ttl_ms` (by the store's clock);
    /// false while another holder's lease runs. For work the nodes sharing a store must do
    /// once, not once each. A store that only one node writes holds every lease.
    async fn try_lease(&self, _name: &str, _holder: &str, _ttl_ms: i64) -> Result<bool> {
        Ok(true)
    }
    /// Records a release marker; the same (api, version) again is `Conflict`.
    async fn record_release(&self, release: Release) -> Result<Release>;
    /// Release markers of one API (or every API with `None`), oldest first.
    async fn releases(&self, api: Option<&str>) -> Result<Vec<Release>>;
}

/// A release marker: an API's version went live at a time (`POST /v1/releases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub api: String,
    pub version: String,
    /// When it went live, epoch milliseconds.
    pub at_ms: i64,
    /// When it was recorded, epoch milliseconds.
    pub recorded_at_ms: i64,
}

/// One version of an API's spec, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSpecVersion {
    pub api: String,
    /// SHA-256 of the spec's files, hex.
    pub hash: String,
    pub loaded_at_ms: i64,
    /// `3.0.4`, `3.1.0`, ...
    pub openapi: String,
    pub operations: u64,
}

/// A persisted rollup: one series (consumer, api, method, route, status class) in one bucket of
/// the hour or day tier, with its counters and its latency sketch in DDSketch's binary form.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRollup {
    /// 1 = hour, 2 = day.
    pub tier: u8,
    pub bucket_ms: i64,
    pub consumer: String,
    pub api: String,
    pub method: String,
    pub route: String,
    pub status_class: u8,
    /// requests, 2xx, 3xx, 4xx, 5xx, 429, request bytes, response bytes, tokens in, tokens out.
    pub counts: [u64; 11],
    pub cost_usd: f64,
    pub sketch: Vec<u8>,
}

/// Where a scan of events stopped. Opaque: only the backend that returned it reads it, and only
/// while it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor {
    pub ts_ms: i64,
    pub rowid: i64,
}

/// Which raw events to return for drill-down.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub consumer: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Inclusive status range, e.g. 500..=599 for `5xx`.
    pub status: Option<(u16, u16)>,
    pub limit: usize,
}

/// Events and what is read from them.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends events in one transaction; ids already stored are ignored. Returns the events
    /// that were new, so that derived state (rollups) counts each event exactly once. When it
    /// returns, the events are durable.
    async fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>>;
    /// Reads stored events with `ts >= from_ms` in pages of at most `page` events, for
    /// rebuilding derived state at start-up: every such event exactly once, ordered by UTC day
    /// of event time (within a day, in the order the backend keeps). `after` is the cursor
    /// returned by the previous call (`None` first); the answer's cursor is `None` when done.
    async fn scan_events(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> Result<(Vec<Event>, Option<EventCursor>)>;
    /// A consumer's raw events, newest first.
    async fn recent_events(&self, query: &EventQuery) -> Result<Vec<Event>>;
    /// Deletes raw events of the UTC days that end at or before `before_ms`; returns how many.
    /// Events of a day that `before_ms` falls inside may be kept until a later call (the
    /// embedded log deletes whole day files); callers pass day boundaries.
    async fn prune_events(&self, before_ms: i64) -> Result<u64>;
    /// How many raw events are stored.
    async fn event_count(&self) -> Result<u64>;
    /// How many raw events are stored per UTC day of event time: (day start, count), days
    /// without events left out, oldest first. Start-up compares them with the events folded
    /// into each day's persisted rollups to find the days to rebuild.
    async fn day_counts(&self) -> Result<Vec<(i64, u64)>>;

    /// Saves rollups of buckets before `until_ms` (replacing rows with the same key) and moves
    /// the archive watermark to `until_ms`, in one transaction. Raw events before the watermark
    /// are no longer read at start-up, so a crash between archiving and pruning never counts an
    /// event twice.
    async fn archive_rollups(&self, rows: Vec<StoredRollup>, until_ms: i64) -> Result<()>;
    /// Every archived rollup, and the watermark (0 when nothing was archived).
    async fn archived_rollups(&self) -> Result<(Vec<StoredRollup>, i64)>;
    /// Deletes archived rollups of `tier` with buckets before `before_ms`.
    async fn prune_rollups(&self, tier: u8, before_ms: i64) -> Result<u64>;
}

//! The PostgreSQL control plane (feature `postgres`): consumers, keys, limits overrides, quota
//! usage, spec versions, findings and the alert delivery log, shared by every node.
//!
//! Keys stay hashed at rest: the HMAC secret is created once, by the first node, in the `meta`
//! table (`INSERT ... ON CONFLICT DO NOTHING`, then read back), so every node hashes alike.
//! Every write to consumers or keys bumps the one-row `control_version` table in the same
//! transaction; nodes poll it every 500 ms and reload their key index when it moves.
//!
//! The schema is versioned ([`MIGRATIONS`], recorded in `schema_migrations`) and migrated at
//! start-up under an advisory lock, so nodes that start together migrate once. A database
//! migrated by a newer release is refused rather than written with an older schema's idea of it.
//!
//! Connections: a small pool of idle clients; a client whose connection died (a restarted
//! server, a runtime that ended) is dropped and a new one made on next use. Every call is
//! bounded by [`CALL_TIMEOUT`], so a stalled server becomes an error, never a hang.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::keys::{KeyEntry, QuotaSeed, QuotaUsage};
use clientele_core::limits::LimitOverride;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::{ControlStore, KEY_ENTRIES_SELECT, Release, Result, StoreError, StoredSpecVersion};

mod copy;
mod findings;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;

/// PostgreSQL 12 or later: generated identity columns and `ON CONFLICT` are older, but 12 is
/// the oldest release its project still documented when this was written.
const MIN_SERVER_VERSION: i32 = 120_000;

/// How long one store call may take before it is reported as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept for reuse; more are opened under load and closed after.
const MAX_IDLE: usize = 8;
/// Connections in use at once; further calls wait their turn (within [`CALL_TIMEOUT`]), so a
/// burst of admin calls on every node never runs the server out of `max_connections`.
const MAX_BUSY: usize = 16;

/// Any 64-bit number, the same on every node: the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x636c_6965_6e74_0001;
/// The advisory lock that serialises finding upserts across nodes (one finding per condition).
const FINDINGS_LOCK: i64 = 0x636c_6965_6e74_0002;

/// The schema, one step per version, applied in order and recorded in `schema_migrations`.
/// A change is a new step at the end; a released step is never edited.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "control plane and findings",
        r#"
CREATE TABLE meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
CREATE TABLE control_version (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    v BIGINT NOT NULL
);
INSERT INTO control_version (id, v) VALUES (TRUE, 0);
CREATE TABLE spec_versions (
    api TEXT NOT NULL,
    hash TEXT NOT NULL,
    loaded_at_ms BIGINT NOT NULL,
    openapi TEXT NOT NULL,
    operations BIGINT NOT NULL,
    PRIMARY KEY (api, hash)
);
CREATE TABLE consumers (
    id TEXT PRIMARY KEY,
    name TEXT,
    plan TEXT,
    team TEXT,
    use_case TEXT,
    metadata JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    limits JSONB
);
CREATE TABLE quota_usage (
    consumer TEXT PRIMARY KEY,
    day BIGINT NOT NULL,
    day_used BIGINT NOT NULL,
    month BIGINT NOT NULL,
    month_used BIGINT NOT NULL
);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    name TEXT,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    imported BOOLEAN NOT NULL
);
CREATE INDEX api_keys_consumer ON api_keys (consumer);
CREATE TABLE findings (
    id TEXT PRIMARY KEY,
    dedup_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    consumer TEXT,
    api TEXT,
    route TEXT,
    severity TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    summary TEXT NOT NULL,
    evidence JSONB NOT NULL
);
CREATE INDEX findings_dedup ON findings (dedup_key, last_seen);
CREATE INDEX findings_last_seen ON findings (last_seen);
CREATE TABLE alert_deliveries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts BIGINT NOT NULL,
    rule TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    consumer TEXT,
    severity TEXT NOT NULL,
    url TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT
);
CREATE INDEX alert_deliveries_finding ON alert_deliveries (finding_id);
"#,
    ),
    (
        2,
        "leases",
        r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
"#,
    ),
    (
        3,
        "release markers",
        r#"
CREATE TABLE releases (
    api TEXT NOT NULL,
    version TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (api, version)
);
CREATE INDEX releases_at ON releases(at_ms);
"#,
    ),
];

/// The PostgreSQL control store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// `host:port/db`, for messages (never the password).
    place: String,
    idle: Mutex<Vec<Client>>,
    busy: tokio::sync::Semaphore,
    key_secret: [u8; 32],
    /// The consumers as last read or written here, sorted by id: what consumer reads answer
    /// while the server is unreachable, so statistics (which name plans and teams) still work.
    last_consumers: Mutex<Vec<Consumer>>,
    /// Set once the server was reached, its schema migrated and its key secret read. A node
    /// started from its local copy while the server was away gets there at its first call
    /// that reaches it.
    ready: tokio::sync::OnceCell<()>,
    /// This node's copy of the keys and quota counts (see `copy`), when it keeps one.
    copy: Option<copy::LocalCopy>,
    /// The copy's keys, answered by key reads until the server is first reached.
    offline_keys: Mutex<Option<Vec<KeyEntry>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("place", &self.inner.place)
            .finish()
    }
}

/// A client borrowed from the pool; back to it when dropped, unless its connection died.
pub(crate) struct Pooled<'a> {
    client: Option<Client>,
    inner: &'a Inner,
    /// Released after `drop` has put the client back.
    _turn: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Invariant: `client` is only taken in `drop`.
        #[allow(clippy::expect_used)]
        self.client
            .as_ref()
            .expect("a pooled client is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        // Invariant: `client` is only taken in `drop`.
        #[allow(clippy::expect_used)]
        self.client
            .as_mut()
            .expect("a pooled client is present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(client);
            }
        }
    }
}

/// Where a URL points, without its password: `host:port/database`.
fn place_of(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`), checks the
    /// server's version, migrates the schema and loads (or creates) the key secret.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        PostgresStore::open(url, None).await
    }

    /// [`PostgresStore::connect`], keeping a copy of the keys and quota counts in `copy_dir`
    /// (a node's data directory). When the server cannot be reached and a copy of this
    /// database is there, the store starts from it instead of failing: key reads answer the
    /// copy's keys, consumer reads its consumers, writes fail as unavailable (503 at the API)
    /// until a call reaches the server, which then migrates it and checks its key secret.
    pub async fn open(url: &str, copy_dir: Option<&std::path::Path>) -> Result<PostgresStore> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Backend(format!(
                "storage.postgres_url is not a PostgreSQL URL ({e}); write it as postgres://user@host:port/database"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("clientele");
        let place = place_of(&config);
        let copy = copy_dir.map(|d| copy::LocalCopy::new(d, &place));
        let inner = Inner {
            config,
            place,
            idle: Mutex::new(Vec::new()),
            busy: tokio::sync::Semaphore::new(MAX_BUSY),
            key_secret: [0; 32],
            last_consumers: Mutex::new(Vec::new()),
            ready: tokio::sync::OnceCell::new(),
            copy,
            offline_keys: Mutex::new(None),
        };
        let (client, key_secret) = match inner.prepare().await {
            Ok(prepared) => prepared,
            Err(StoreError::Unavailable(why)) => return inner.start_from_copy(why),
            Err(e) => return Err(e),
        };
        let inner = Inner {
            key_secret,
            ..inner
        };
        let _ = inner.ready.set(());
        inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client);
        let store = PostgresStore {
            inner: Arc::new(inner),
        };
        // Fills the fallback of consumer reads.
        store.list_consumers().await?;
        Ok(store)
    }

    /// Changes the fallback of consumer reads after a write committed here.
    fn remember(&self, change: impl FnOnce(&mut Vec<Consumer>)) {
        let mut cached = self
            .inner
            .last_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        change(&mut cached);
    }

    fn remembered(&self) -> Vec<Consumer> {
        self.inner
            .last_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `host:port/database`, for messages.
    pub fn place(&self) -> &str {
        &self.inner.place
    }

    pub(crate) async fn client(&self) -> Result<Pooled<'_>> {
        if self.inner.ready.get().is_none() {
            self.inner
                .ready
                .get_or_try_init(|| self.inner.catch_up())
                .await?;
        }
        // Never closed, so acquiring only waits.
        let turn = self
            .inner
            .busy
            .acquire()
            .await
            .map_err(|e| StoreError::Backend(format!("connection pool closed: {e}")))?;
        let reused = {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => self.inner.open().await?,
        };
        Ok(Pooled {
            client: Some(client),
            inner: &self.inner,
            _turn: turn,
        })
    }

    /// Runs one store call, bounded by [`CALL_TIMEOUT`].
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL at {} did not answer {what} within {} s",
                self.inner.place,
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Every consumer's quota counts as the server holds them.
    async fn read_quota_usage(&self) -> Result<Vec<QuotaUsage>> {
        self.call("load_quota_usage", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT consumer, day, day_used, month, month_used FROM quota_usage",
                    &[],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter()
                .map(|r| {
                    Ok(QuotaUsage {
                        consumer: col(r, 0)?,
                        seed: QuotaSeed {
                            day: u32::try_from(col::<i64>(r, 1)?).unwrap_or(0),
                            day_used: col::<i64>(r, 2)?.max(0) as u64,
                            month: u32::try_from(col::<i64>(r, 3)?).unwrap_or(0),
                            month_used: col::<i64>(r, 4)?.max(0) as u64,
                        },
                    })
                })
                .collect()
        })
        .await
    }

    pub(crate) fn db_err(&self, e: tokio_postgres::Error) -> StoreError {
        db_err(&self.inner.place, e)
    }

    /// The key entries `filter` (a WHERE clause over `api_keys k`, or nothing) selects, with
    /// what the gateway needs of each key's consumer. A key whose stored hash is corrupt is
    /// skipped with a warning rather than failing every other key.
    async fn key_entries_where(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<KeyEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("{KEY_ENTRIES_SELECT} {filter}"), params)
            .await
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let key_id: String = col(r, 0)?;
            let hash_hex: String = col(r, 1)?;
            let Some(hash) = parse_hash(&hash_hex) else {
                tracing::warn!(key_id, "skipping key with a corrupt stored hash");
                continue;
            };
            out.push(KeyEntry {
                key_id: key_id.into(),
                hash,
                consumer: col::<String>(r, 2)?.into(),
                plan: col::<Option<String>>(r, 3)?.map(Into::into),
                team: col::<Option<String>>(r, 4)?.map(Into::into),
                use_case: col::<Option<String>>(r, 5)?.map(Into::into),
                expires_at_ms: col(r, 6)?,
                revoked: col(r, 7)?,
                limits: parse_limits(col(r, 8)?).map(Arc::new),
                slot: None,
            });
        }
        Ok(out)
    }
}

impl Inner {
    /// A first connection: the server's version checked, the schema migrated, the key
    /// secret read (or created by the first node).
    async fn prepare(&self) -> Result<(Client, [u8; 32])> {
        let mut client = self.open().await?;
        let version = server_version(&client, &self.place).await?;
        if version < MIN_SERVER_VERSION {
            return Err(StoreError::Backend(format!(
                "PostgreSQL at {} is version {}.{}, too old: clientele needs 12 or later",
                self.place,
                version / 10_000,
                version % 10_000
            )));
        }
        migrate(&mut client, &self.place).await?;
        let key_secret = load_or_create_secret(&client, &self.place).await?;
        Ok((client, key_secret))
    }

    /// A store started from this node's copy while the server was unreachable (`why`); the
    /// original error when there is no copy of this database to start from.
    fn start_from_copy(self, why: String) -> Result<PostgresStore> {
        let Some(copy) = &self.copy else {
            return Err(StoreError::Unavailable(why));
        };
        let loaded = match copy.load() {
            Ok(Some(loaded)) => loaded,
            Ok(None) => {
                return Err(StoreError::Unavailable(format!(
                    "{why}; this node has no copy of its keys to start from yet (it keeps one once it has reached the server)"
                )));
            }
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "{why}; this node's copy of its keys does not read ({e})"
                )));
            }
        };
        tracing::warn!(
            place = self.place,
            keys = loaded.keys.len(),
            copy = %copy.keys_path().display(),
            copied_at = clientele_core::time::format_ts(loaded.saved_at_ms),
            error = why,
            "PostgreSQL is unreachable at start-up: serving the keys of this node's copy; admin writes answer 503 until the server is back"
        );
        let inner = Inner {
            key_secret: loaded.key_secret,
            last_consumers: Mutex::new(loaded.consumers),
            offline_keys: Mutex::new(Some(loaded.keys)),
            ..self
        };
        Ok(PostgresStore {
            inner: Arc::new(inner),
        })
    }

    /// The first call to reach the server after an offline start: [`Inner::prepare`], and the
    /// server's key secret checked against the copy's, which hashed the keys served meanwhile.
    async fn catch_up(&self) -> Result<()> {
        let (client, secret) = self.prepare().await?;
        if secret != self.key_secret {
            let copy = self
                .copy
                .as_ref()
                .map(|c| c.keys_path().display().to_string())
                .unwrap_or_default();
            return Err(StoreError::Backend(format!(
                "PostgreSQL at {} holds another key secret than this node's copy ({copy}) was taken with: it is another database under the same name; stop the node, remove the copy and start it again",
                self.place
            )));
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client);
        *self.offline_keys.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(
            place = self.place,
            "PostgreSQL reached: the control plane is back"
        );
        Ok(())
    }

    async fn open(&self) -> Result<Client> {
        let unreachable = |why: String| {
            StoreError::Unavailable(format!(
                "cannot reach PostgreSQL at {}: {why}; check [storage].postgres_url and that the server is running",
                self.place
            ))
        };
        // connect_timeout bounds the TCP connect only; this bounds the handshake too (a server
        // that accepts and never answers).
        let (client, connection) =
            match tokio::time::timeout(CALL_TIMEOUT, self.config.connect(NoTls)).await {
                Ok(connected) => connected.map_err(|e| unreachable(e.to_string()))?,
                Err(_) => {
                    return Err(unreachable(format!(
                        "no answer within {} s",
                        CALL_TIMEOUT.as_secs()
                    )));
                }
            };
        let place = self.place.clone();
        // The connection does the I/O for its client; it ends when the client is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(place, error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }
}

/// A lost connection (closed, a socket error, or the server shutting down: SQLSTATE classes 08
/// and 57P) is `Unavailable`; anything else the server answered is `Backend`.
pub(crate) fn db_err(place: &str, e: tokio_postgres::Error) -> StoreError {
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let going = e
        .code()
        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
    if e.is_closed() || io || going {
        StoreError::Unavailable(format!("PostgreSQL at {place} is unreachable ({e})"))
    } else {
        StoreError::Backend(format!("PostgreSQL at {place}: {e}"))
    }
}

pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A column, or an error naming it (never the panic of `Row::get`).
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| StoreError::Backend(format!("unexpected value in column {i}: {e}")))
}

async fn server_version(client: &Client, place: &str) -> Result<i32> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| db_err(place, e))?;
    col(&row, 0)
}

/// Applies the steps of [`MIGRATIONS`] the database lacks, in one transaction under an advisory
/// lock (a second node starting at the same time waits, then finds nothing to do).
async fn migrate(client: &mut Client, place: &str) -> Result<()> {
    let e = |e| db_err(place, e);
    let tx = client.transaction().await.map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(e)?;
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(e)?;
    let current: i32 = col(&row, 0)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(StoreError::Backend(format!(
            "PostgreSQL at {place} has schema version {current}, newer than this build's {latest}: a newer clientele migrated it; run that release (or a newer one) on every node"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(|err| {
            StoreError::Backend(format!(
                "PostgreSQL at {place}: migration {version} ({name}) failed: {err}"
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(e)?;
        tracing::info!(place, version, name, "postgres schema migrated");
    }
    tx.commit().await.map_err(e)?;
    Ok(())
}

/// The first node to start creates the secret; the others read the one it made.
async fn load_or_create_secret(client: &Client, place: &str) -> Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    clientele_core::keys::fill_random(&mut secret);
    client
        .execute(
            "INSERT INTO meta (k, v) VALUES ('key_secret', $1) ON CONFLICT (k) DO NOTHING",
            &[&hex::encode(secret)],
        )
        .await
        .map_err(|e| db_err(place, e))?;
    let row = client
        .query_one("SELECT v FROM meta WHERE k = 'key_secret'", &[])
        .await
        .map_err(|e| db_err(place, e))?;
    let text: String = col(&row, 0)?;
    parse_hash(&text).ok_or_else(|| {
        StoreError::Backend(format!(
            "PostgreSQL at {place}: the stored key secret is corrupt"
        ))
    })
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

async fn bump_version(
    tx: &tokio_postgres::Transaction<'_>,
) -> std::result::Result<(), tokio_postgres::Error> {
    tx.execute("UPDATE control_version SET v = v + 1", &[])
        .await
        .map(|_| ())
}

const CONSUMER_COLUMNS: &str = "id, name, plan, team, use_case, metadata, created_at, limits";

fn consumer_from_row(r: &Row) -> Result<Consumer> {
    let metadata: serde_json::Value = col(r, 5)?;
    Ok(Consumer {
        id: col(r, 0)?,
        name: col(r, 1)?,
        plan: col(r, 2)?,
        team: col(r, 3)?,
        use_case: col(r, 4)?,
        // Only JSON objects are ever written; anything else is shown as empty rather than
        // failing every listing.
        metadata: match metadata {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        created_at_ms: col(r, 6)?,
        limits: parse_limits(col(r, 7)?),
    })
}

/// Only validated overrides are written; one that no longer parses (a future field, say) is
/// treated as no override rather than failing every read.
fn parse_limits(value: Option<serde_json::Value>) -> Option<LimitOverride> {
    value
        .and_then(|v| serde_json::from_value::<LimitOverride>(v).ok())
        .filter(|o| !o.is_empty())
}

fn limits_value(limits: &Option<LimitOverride>) -> Option<serde_json::Value> {
    limits
        .as_ref()
        .filter(|o| !o.is_empty())
        .and_then(|o| serde_json::to_value(o).ok())
}

const KEY_COLUMNS: &str =
    "key_id, consumer, name, prefix, hash, created_at, expires_at, revoked_at, imported";

fn key_from_row(r: &Row) -> Result<ApiKey> {
    Ok(ApiKey {
        key_id: col(r, 0)?,
        consumer: col(r, 1)?,
        name: col(r, 2)?,
        prefix: col(r, 3)?,
        hash: col(r, 4)?,
        created_at_ms: col(r, 5)?,
        expires_at_ms: col(r, 6)?,
        revoked_at_ms: col(r, 7)?,
        imported: col(r, 8)?,
    })
}

fn upsert_sorted(all: &mut Vec<Consumer>, consumer: Consumer) {
    match all.binary_search_by(|c| c.id.cmp(&consumer.id)) {
        Ok(i) => all[i] = consumer,
        Err(i) => all.insert(i, consumer),
    }
}

/// Consumer reads answer from memory while the server is away; said once per 10 s.
fn warn_stale(why: &str) {
    static EVERY: std::sync::OnceLock<clientele_core::ratelog::Every> = std::sync::OnceLock::new();
    let every = EVERY.get_or_init(|| clientele_core::ratelog::Every::new(Duration::from_secs(10)));
    if let Some(n) = every.hit() {
        tracing::warn!(error = %why, occurrences = n, "consumer reads answered from memory: the database is unreachable");
    }
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl ControlStore for PostgresStore {
    fn key_secret(&self) -> [u8; 32] {
        self.inner.key_secret
    }

    async fn create_consumer(&self, consumer: Consumer) -> Result<Consumer> {
        self.call("create_consumer", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            let metadata = serde_json::Value::Object(consumer.metadata.clone());
            let res = tx
                .execute(
                    "INSERT INTO consumers (id, name, plan, team, use_case, metadata, created_at, limits)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &consumer.id,
                        &consumer.name,
                        &consumer.plan,
                        &consumer.team,
                        &consumer.use_case,
                        &metadata,
                        &consumer.created_at_ms,
                        &limits_value(&consumer.limits),
                    ],
                )
                .await;
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!(
                        "a consumer with id {:?} already exists; choose another id or PATCH the existing one",
                        consumer.id
                    )));
                }
                other => other.map_err(|e| self.db_err(e))?,
            };
            bump_version(&tx).await.map_err(|e| self.db_err(e))?;
            tx.commit().await.map_err(|e| self.db_err(e))?;
            self.remember(|all| upsert_sorted(all, consumer.clone()));
            Ok(consumer)
        })
        .await
    }

    async fn get_consumer(&self, id: &str) -> Result<Option<Consumer>> {
        let read = self
            .call("get_consumer", async {
                let client = self.client().await?;
                let row = client
                    .query_opt(
                        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = $1"),
                        &[&id],
                    )
                    .await
                    .map_err(|e| self.db_err(e))?;
                row.as_ref().map(consumer_from_row).transpose()
            })
            .await;
        match read {
            Err(StoreError::Unavailable(why)) => {
                warn_stale(&why);
                Ok(self.remembered().into_iter().find(|c| c.id == id))
            }
            other => other,
        }
    }

    async fn list_consumers(&self) -> Result<Vec<Consumer>> {
        let read = self
            .call("list_consumers", async {
                let client = self.client().await?;
                let rows = client
                    .query(
                        &format!(
                            "SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY id COLLATE \"C\""
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| self.db_err(e))?;
                rows.iter()
                    .map(consumer_from_row)
                    .collect::<Result<Vec<_>>>()
            })
            .await;
        match read {
            Ok(all) => {
                self.remember(|cached| cached.clone_from(&all));
                Ok(all)
            }
            Err(StoreError::Unavailable(why)) => {
                warn_stale(&why);
                Ok(self.remembered())
            }
            Err(e) => Err(e),
        }
    }

    async fn update_consumer(&self, consumer: Consumer) -> Result<Consumer> {
        self.call("update_consumer", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            let metadata = serde_json::Value::Object(consumer.metadata.clone());
            let n = tx
                .execute(
                    "UPDATE consumers SET name = $2, plan = $3, team = $4, use_case = $5,
                            metadata = $6, limits = $7
                     WHERE id = $1",
                    &[
                        &consumer.id,
                        &consumer.name,
                        &consumer.plan,
                        &consumer.team,
                        &consumer.use_case,
                        &metadata,
                        &limits_value(&consumer.limits),
                    ],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "no consumer has id {:?}",
                    consumer.id
                )));
            }
            bump_version(&tx).await.map_err(|e| self.db_err(e))?;
            tx.commit().await.map_err(|e| self.db_err(e))?;
            self.remember(|all| upsert_sorted(all, consumer.clone()));
            Ok(consumer)
        })
        .await
    }

    async fn delete_consumer(&self, id: &str, now_ms: i64) -> Result<()> {
        self.call("delete_consumer", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            let n = tx
                .execute("DELETE FROM consumers WHERE id = $1", &[&id])
                .await
                .map_err(|e| self.db_err(e))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no consumer has id {id:?}")));
            }
            // Keys stay (revoked) so their prefixes still explain old events.
            tx.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE consumer = $1 AND revoked_at IS NULL",
                &[&id, &now_ms],
            )
            .await
            .map_err(|e| self.db_err(e))?;
            bump_version(&tx).await.map_err(|e| self.db_err(e))?;
            tx.commit().await.map_err(|e| self.db_err(e))?;
            self.remember(|all| all.retain(|c| c.id != id));
            Ok(())
        })
        .await
    }

    async fn create_key(&self, key: ApiKey) -> Result<ApiKey> {
        self.call("create_key", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            // FOR SHARE: a consumer deleted by another node meanwhile waits for this key, so
            // no key is left pointing at a consumer that is gone.
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM consumers WHERE id = $1 FOR SHARE",
                    &[&key.consumer],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!(
                    "no consumer has id {:?}",
                    key.consumer
                )));
            }
            let res = tx
                .execute(
                    &format!(
                        "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    ),
                    &[
                        &key.key_id,
                        &key.consumer,
                        &key.name,
                        &key.prefix,
                        &key.hash,
                        &key.created_at_ms,
                        &key.expires_at_ms,
                        &key.revoked_at_ms,
                        &key.imported,
                    ],
                )
                .await;
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(
                        "this key is already registered; each key can belong to one consumer only"
                            .into(),
                    ));
                }
                other => other.map_err(|e| self.db_err(e))?,
            };
            bump_version(&tx).await.map_err(|e| self.db_err(e))?;
            tx.commit().await.map_err(|e| self.db_err(e))?;
            Ok(key)
        })
        .await
    }

    async fn list_keys(&self, consumer: &str) -> Result<Vec<ApiKey>> {
        self.call("list_keys", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE consumer = $1 ORDER BY created_at, key_id"
                    ),
                    &[&consumer],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter().map(key_from_row).collect()
        })
        .await
    }

    async fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<ApiKey> {
        self.call("revoke_key", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
                &[&key_id, &now_ms],
            )
            .await
            .map_err(|e| self.db_err(e))?;
            let row = tx
                .query_opt(
                    &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"),
                    &[&key_id],
                )
                .await
                .map_err(|e| self.db_err(e))?
                .ok_or_else(|| StoreError::NotFound(format!("no key has id {key_id:?}")))?;
            let key = key_from_row(&row)?;
            bump_version(&tx).await.map_err(|e| self.db_err(e))?;
            tx.commit().await.map_err(|e| self.db_err(e))?;
            Ok(key)
        })
        .await
    }

    async fn key_entries(&self) -> Result<Vec<KeyEntry>> {
        match self
            .call("key_entries", self.key_entries_where("", &[]))
            .await
        {
            Ok(entries) => {
                if let Some(copy) = &self.inner.copy {
                    copy.save_keys(&self.inner.key_secret, &entries, &self.remembered());
                }
                Ok(entries)
            }
            Err(StoreError::Unavailable(why)) => {
                let offline = self
                    .inner
                    .offline_keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                offline.ok_or(StoreError::Unavailable(why))
            }
            Err(e) => Err(e),
        }
    }

    async fn consumer_key_entries(&self, consumer: &str) -> Result<Vec<KeyEntry>> {
        self.call(
            "consumer_key_entries",
            self.key_entries_where("WHERE k.consumer = $1", &[&consumer]),
        )
        .await
    }

    async fn save_quota_usage(&self, usage: Vec<QuotaUsage>) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        // Kept here too, taken or not: counts made while the server is away survive a restart.
        if let Some(copy) = &self.inner.copy {
            copy.save_quota(&usage);
        }
        self.call("save_quota_usage", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            let stmt = tx
                .prepare(
                    "INSERT INTO quota_usage (consumer, day, day_used, month, month_used)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (consumer) DO UPDATE SET day = $2, day_used = $3, month = $4,
                                                          month_used = $5",
                )
                .await
                .map_err(|e| self.db_err(e))?;
            for u in &usage {
                tx.execute(
                    &stmt,
                    &[
                        &u.consumer,
                        &i64::from(u.seed.day),
                        &count(u.seed.day_used),
                        &i64::from(u.seed.month),
                        &count(u.seed.month_used),
                    ],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            }
            tx.commit().await.map_err(|e| self.db_err(e))?;
            Ok(())
        })
        .await
    }

    async fn load_quota_usage(&self) -> Result<Vec<QuotaUsage>> {
        let read = self.read_quota_usage().await;
        match (&self.inner.copy, read) {
            (Some(copy), Ok(from_db)) => Ok(copy.merge_quota(from_db)),
            // Started from the copy and still away: its counts are the best there are.
            (Some(copy), Err(StoreError::Unavailable(_))) if self.inner.ready.get().is_none() => {
                Ok(copy.quota())
            }
            (_, read) => read,
        }
    }

    async fn control_version(&self) -> Result<u64> {
        self.call("control_version", async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT v FROM control_version", &[])
                .await
                .map_err(|e| self.db_err(e))?;
            Ok(col::<i64>(&row, 0)?.max(0) as u64)
        })
        .await
    }

    async fn record_spec_version(&self, v: StoredSpecVersion) -> Result<bool> {
        self.call("record_spec_version", async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "INSERT INTO spec_versions (api, hash, loaded_at_ms, openapi, operations)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (api, hash) DO NOTHING",
                    &[
                        &v.api,
                        &v.hash,
                        &v.loaded_at_ms,
                        &v.openapi,
                        &count(v.operations),
                    ],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            Ok(n == 1)
        })
        .await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        self.call("try_lease", async {
            let client = self.client().await?;
            // The server's clock, so nodes whose clocks disagree still agree on who holds it.
            let row = client
                .query_opt(
                    "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS ms)
                     INSERT INTO leases (name, holder, until_ms)
                     SELECT $1, $2, now.ms + $3 FROM now
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
                     WHERE leases.holder = EXCLUDED.holder
                        OR leases.until_ms <= (SELECT ms FROM now)
                     RETURNING holder",
                    &[&name, &holder, &ttl_ms],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            Ok(row.is_some())
        })
        .await
    }

    async fn spec_versions(&self, api: &str) -> Result<Vec<StoredSpecVersion>> {
        self.call("spec_versions", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT api, hash, loaded_at_ms, openapi, operations FROM spec_versions
                     WHERE api = $1 ORDER BY loaded_at_ms, hash",
                    &[&api],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter()
                .map(|r| {
                    Ok(StoredSpecVersion {
                        api: col(r, 0)?,
                        hash: col(r, 1)?,
                        loaded_at_ms: col(r, 2)?,
                        openapi: col(r, 3)?,
                        operations: col::<i64>(r, 4)?.max(0) as u64,
                    })
                })
                .collect()
        })
        .await
    }

    async fn record_release(&self, release: Release) -> Result<Release> {
        self.call("record_release", async {
            let client = self.client().await?;
            let res = client
                .execute(
                    "INSERT INTO releases (api, version, at_ms, recorded_at_ms) VALUES ($1, $2, $3, $4)",
                    &[&release.api, &release.version, &release.at_ms, &release.recorded_at_ms],
                )
                .await;
            match res {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                    "release {} of api {} is already recorded",
                    release.version, release.api
                ))),
                other => {
                    other.map_err(|e| self.db_err(e))?;
                    Ok(release.clone())
                }
            }
        })
        .await
    }

    async fn releases(&self, api: Option<&str>) -> Result<Vec<Release>> {
        self.call("releases", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT api, version, at_ms, recorded_at_ms FROM releases
                     WHERE $1::TEXT IS NULL OR api = $1 ORDER BY at_ms, api, version",
                    &[&api],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter()
                .map(|r| {
                    Ok(Release {
                        api: col(r, 0)?,
                        version: col(r, 1)?,
                        at_ms: col(r, 2)?,
                        recorded_at_ms: col(r, 3)?,
                    })
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
crate::control_store_suite!(postgres_control, crate::postgres::PostgresStore);
#[cfg(test)]
crate::finding_store_suite!(postgres_findings, crate::postgres::PostgresStore);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::testing::PgServer;
    use super::*;

    fn consumer(id: &str) -> Consumer {
        Consumer {
            id: id.into(),
            name: None,
            plan: None,
            team: None,
            use_case: None,
            metadata: serde_json::Map::new(),
            created_at_ms: 1,
            limits: None,
        }
    }

    /// A fresh database on the shared server, or `None` when the server cannot be had here.
    fn fresh_db(name: &str) -> Option<String> {
        let server = PgServer::shared()?;
        let db = format!("{name}_{}", &clientele_core::event::random_id128()[..8]);
        server.create_database(&db);
        Some(server.url(&db))
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = PostgresStore::connect(&format!("postgres://clientele@127.0.0.1:{port}/x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}/x"))
                && err.contains("postgres_url"),
            "{err}"
        );
        let err = PostgresStore::connect("mysql://nope").await.unwrap_err();
        assert!(err.to_string().contains("storage.postgres_url"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_an_error_in_bounded_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and keeps every connection open, saying nothing.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let started = std::time::Instant::now();
        let err = PostgresStore::connect(&format!("postgres://clientele@127.0.0.1:{port}/x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() <= CALL_TIMEOUT + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        silent.abort();
    }

    #[tokio::test]
    async fn nodes_starting_together_migrate_once_and_share_the_secret() {
        let Some(url) = fresh_db("together") else {
            return;
        };
        let stores = futures_join(&url, 4).await;
        let secret = stores[0].key_secret();
        assert!(stores.iter().all(|s| s.key_secret() == secret));
        let client = stores[0].client().await.unwrap();
        let rows = client
            .query("SELECT version FROM schema_migrations", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), MIGRATIONS.len());
    }

    async fn futures_join(url: &str, n: usize) -> Vec<PostgresStore> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let url = url.to_string();
                tokio::spawn(async move { PostgresStore::connect(&url).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_runs_out() {
        let Some(url) = fresh_db("lease") else {
            return;
        };
        let a = PostgresStore::connect(&url).await.unwrap();
        let b = PostgresStore::connect(&url).await.unwrap();
        assert!(a.try_lease("detection", "node-a", 300).await.unwrap());
        assert!(!b.try_lease("detection", "node-b", 300).await.unwrap());
        assert!(
            a.try_lease("detection", "node-a", 300).await.unwrap(),
            "renewed"
        );
        assert!(
            b.try_lease("other", "node-b", 300).await.unwrap(),
            "leases are by name"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.try_lease("detection", "node-b", 300).await.unwrap());
        assert!(!a.try_lease("detection", "node-a", 300).await.unwrap());
    }

    #[tokio::test]
    async fn nodes_upserting_one_condition_at_once_make_one_finding() {
        use crate::findings::{Change, FindingStore};
        let Some(url) = fresh_db("upsert") else {
            return;
        };
        let finding = |id: &str| clientele_core::finding::Finding {
            id: id.into(),
            kind: clientele_core::finding::FindingKind::ErrorSpike,
            consumer: Some("acme".into()),
            api: Some("petstore".into()),
            route: None,
            severity: clientele_core::finding::Severity::Warning,
            first_seen_ms: 1_000,
            last_seen_ms: 2_000,
            summary: "errors".into(),
            evidence: serde_json::json!({"rate": 0.5}),
        };
        let a = PostgresStore::connect(&url).await.unwrap();
        let b = PostgresStore::connect(&url).await.unwrap();
        let (ra, rb) = tokio::join!(
            a.upsert_findings(vec![finding("f_a")], 7_200_000),
            b.upsert_findings(vec![finding("f_b")], 7_200_000)
        );
        let changes = [ra.unwrap()[0].change, rb.unwrap()[0].change];
        assert_eq!(
            changes.iter().filter(|c| **c == Change::New).count(),
            1,
            "exactly one node reports the condition as new (one alert): {changes:?}"
        );
        let all = a.list_findings(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 1);
    }

    #[tokio::test]
    async fn a_burst_of_calls_keeps_the_connections_bounded() {
        let Some(url) = fresh_db("burst") else {
            return;
        };
        let store = PostgresStore::connect(&url).await.unwrap();
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move {
                    // pg_sleep keeps each connection busy long enough for the calls to overlap.
                    let c = s.client().await.unwrap();
                    let row = c
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'clientele' AND datname = current_database() AND pg_sleep(0.02) IS NOT NULL",
                            &[],
                        )
                        .await
                        .unwrap();
                    row.get::<_, i64>(0)
                })
            })
            .collect();
        let mut peak = 0;
        for c in calls {
            peak = peak.max(c.await.unwrap());
        }
        assert!(
            peak as usize <= MAX_BUSY + MAX_IDLE,
            "{peak} connections at once"
        );
        assert!(peak > 1, "the calls did not overlap");
        let idle = store.inner.idle.lock().unwrap().len();
        assert!(idle <= MAX_IDLE, "{idle} idle");
    }

    #[tokio::test]
    async fn a_schema_from_a_newer_release_is_refused() {
        let Some(url) = fresh_db("newer") else {
            return;
        };
        let store = PostgresStore::connect(&url).await.unwrap();
        store
            .client()
            .await
            .unwrap()
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
                &[],
            )
            .await
            .unwrap();
        let err = PostgresStore::connect(&url).await.unwrap_err().to_string();
        assert!(
            err.contains("schema version 999") && err.contains("newer"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_change_on_one_node_moves_the_version_another_node_reads() {
        let Some(url) = fresh_db("nodes") else {
            return;
        };
        let a = PostgresStore::connect(&url).await.unwrap();
        let b = PostgresStore::connect(&url).await.unwrap();
        let before = b.control_version().await.unwrap();
        a.create_consumer(consumer("acme")).await.unwrap();
        assert!(b.control_version().await.unwrap() > before);
        assert_eq!(
            b.get_consumer("acme").await.unwrap(),
            Some(consumer("acme"))
        );
    }
}

//! The embedded store: one SQLite database in WAL mode inside `data_dir`.
//!
//! Two connections: one writer and one reader, each behind its own mutex. WAL lets the reader
//! answer queries while the writer commits. Every call runs on tokio's blocking pool, so no
//! async task ever waits on disk, and no lock is held across an await.
//!
//! `synchronous = NORMAL` with WAL makes a commit durable against a crash of the process
//! (kill -9); only a power loss can drop the last commits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::event::{Event, Outcome};
use clientele_core::keys::{KeyEntry, QuotaSeed, QuotaUsage};
use clientele_core::limits::LimitOverride;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    ControlStore, EventCursor, EventQuery, EventStore, KEY_ENTRIES_SELECT, Result, StoreError,
    StoredRollup,
};

mod findings;
mod releases;

/// 2 added `consumers.limits` and `quota_usage`.
const SCHEMA_VERSION: i64 = 6;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spec_versions (
    api TEXT NOT NULL,
    hash TEXT NOT NULL,
    loaded_at_ms INTEGER NOT NULL,
    openapi TEXT NOT NULL,
    operations INTEGER NOT NULL,
    PRIMARY KEY (api, hash)
);
CREATE TABLE IF NOT EXISTS consumers (
    id TEXT PRIMARY KEY,
    name TEXT,
    plan TEXT,
    team TEXT,
    use_case TEXT,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    limits TEXT
);
CREATE TABLE IF NOT EXISTS quota_usage (
    consumer TEXT PRIMARY KEY,
    day INTEGER NOT NULL,
    day_used INTEGER NOT NULL,
    month INTEGER NOT NULL,
    month_used INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    name TEXT,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    imported INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_consumer ON api_keys(consumer);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    ts INTEGER NOT NULL,
    consumer TEXT,
    key_id TEXT,
    api TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    upstream_latency_ms REAL,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    client_ip TEXT,
    user_agent TEXT,
    session_id TEXT,
    trace_id TEXT,
    outcome TEXT NOT NULL,
    plan TEXT,
    team TEXT,
    use_case TEXT,
    model TEXT,
    tokens_in INTEGER,
    tokens_out INTEGER,
    cost_usd REAL,
    end_user TEXT,
    close_code INTEGER,
    call_hash INTEGER,
    tokens_cached INTEGER,
    tokens_cache_write INTEGER,
    tokens_reasoning INTEGER,
    tls_fp TEXT
);
CREATE INDEX IF NOT EXISTS events_consumer_ts ON events(consumer, ts);
CREATE TABLE IF NOT EXISTS rollups (
    tier INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    api TEXT NOT NULL,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    class INTEGER NOT NULL,
    counts TEXT NOT NULL,
    cost_usd REAL NOT NULL,
    sketch BLOB NOT NULL,
    PRIMARY KEY (tier, bucket, consumer, api, method, route, class)
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
"#;

/// The embedded SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    key_secret: [u8; 32],
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data directory {}: {e}; check [storage].data_dir and its permissions",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("clientele.db");
        let open_err = |e: rusqlite::Error| {
            StoreError::Backend(format!("cannot open {}: {e}", path.display()))
        };
        let writer = Connection::open(&path).map_err(open_err)?;
        writer
            .execute_batch(
                // A 64 MiB page cache keeps the event indexes' upper levels in memory, which is
                // what bounds insert speed once the table is large.
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -65536;",
            )
            .map_err(open_err)?;
        writer.execute_batch(SCHEMA).map_err(open_err)?;
        writer.execute_batch(findings::SCHEMA).map_err(open_err)?;
        writer.execute_batch(releases::SCHEMA).map_err(open_err)?;
        let version: Option<String> = writer
            .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match version.as_deref().map(str::parse::<i64>) {
            None => {
                writer.execute(
                    "INSERT INTO meta (k, v) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(Ok(v)) if v == SCHEMA_VERSION => {}
            Some(Ok(v @ (1..=5))) => {
                // Version 1 had no per-consumer limits (the new table was created above);
                // version 2 no end user on events; version 3 no WebSocket close code;
                // version 4 no call fingerprint; version 5 no usage parts or TLS
                // fingerprint. Each step is ALTERs only, data untouched.
                if v == 1 {
                    writer.execute_batch("ALTER TABLE consumers ADD COLUMN limits TEXT;")?;
                }
                if v <= 2 {
                    writer.execute_batch("ALTER TABLE events ADD COLUMN end_user TEXT;")?;
                }
                if v <= 3 {
                    writer.execute_batch("ALTER TABLE events ADD COLUMN close_code INTEGER;")?;
                }
                if v <= 4 {
                    writer.execute_batch("ALTER TABLE events ADD COLUMN call_hash INTEGER;")?;
                }
                writer.execute_batch(
                    "ALTER TABLE events ADD COLUMN tokens_cached INTEGER;
                     ALTER TABLE events ADD COLUMN tokens_cache_write INTEGER;
                     ALTER TABLE events ADD COLUMN tokens_reasoning INTEGER;
                     ALTER TABLE events ADD COLUMN tls_fp TEXT;
                     UPDATE meta SET v = '6' WHERE k = 'schema_version';",
                )?;
            }
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "{} has schema version {other:?}, this build expects {SCHEMA_VERSION}; use a matching clientele release or a fresh data_dir",
                    path.display()
                )));
            }
        }
        let key_secret = load_or_create_secret(&writer)?;
        let reader = Connection::open(&path).map_err(open_err)?;
        reader
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(open_err)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                key_secret,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Runs `f` with the reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

fn load_or_create_secret(conn: &Connection) -> Result<[u8; 32]> {
    let existing: Option<String> = conn
        .query_row("SELECT v FROM meta WHERE k = 'key_secret'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let hex_secret = match existing {
        Some(s) => s,
        None => {
            let mut secret = [0u8; 32];
            clientele_core::keys::fill_random(&mut secret);
            let s = hex::encode(secret);
            conn.execute("INSERT INTO meta (k, v) VALUES ('key_secret', ?1)", [&s])?;
            s
        }
    };
    parse_hash(&hex_secret)
        .ok_or_else(|| StoreError::Backend("the stored key secret is corrupt".into()))
}

fn bump_version(conn: &Connection) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (k, v) VALUES ('control_version', '1')
         ON CONFLICT(k) DO UPDATE SET v = CAST(v AS INTEGER) + 1",
        [],
    )?;
    Ok(())
}

fn consumer_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Consumer> {
    let metadata: String = r.get(5)?;
    Ok(Consumer {
        id: r.get(0)?,
        name: r.get(1)?,
        plan: r.get(2)?,
        team: r.get(3)?,
        use_case: r.get(4)?,
        // Only JSON objects are ever written; an unreadable value is shown as empty rather
        // than failing every listing.
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        created_at_ms: r.get(6)?,
        limits: parse_limits(r.get(7)?),
    })
}

const CONSUMER_COLUMNS: &str = "id, name, plan, team, use_case, metadata, created_at, limits";

/// Only validated overrides are written; one that no longer parses (a future field, say) is
/// treated as no override rather than failing every read.
fn parse_limits(text: Option<String>) -> Option<LimitOverride> {
    text.and_then(|t| serde_json::from_str::<LimitOverride>(&t).ok())
        .filter(|o| !o.is_empty())
}

fn limits_text(limits: &Option<LimitOverride>) -> Option<String> {
    limits
        .as_ref()
        .filter(|o| !o.is_empty())
        .and_then(|o| serde_json::to_string(o).ok())
}
const KEY_COLUMNS: &str =
    "key_id, consumer, name, prefix, hash, created_at, expires_at, revoked_at, imported";

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        key_id: r.get(0)?,
        consumer: r.get(1)?,
        name: r.get(2)?,
        prefix: r.get(3)?,
        hash: r.get(4)?,
        created_at_ms: r.get(5)?,
        expires_at_ms: r.get(6)?,
        revoked_at_ms: r.get(7)?,
        imported: r.get(8)?,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[async_trait]
impl ControlStore for SqliteStore {
    fn key_secret(&self) -> [u8; 32] {
        self.inner.key_secret
    }

    async fn create_consumer(&self, consumer: Consumer) -> Result<Consumer> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let metadata = serde_json::Value::Object(consumer.metadata.clone()).to_string();
            let res = tx.execute(
                "INSERT INTO consumers (id, name, plan, team, use_case, metadata, created_at, limits)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    consumer.id,
                    consumer.name,
                    consumer.plan,
                    consumer.team,
                    consumer.use_case,
                    metadata,
                    consumer.created_at_ms,
                    limits_text(&consumer.limits)
                ],
            );
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!(
                        "a consumer with id {:?} already exists; choose another id or PATCH the existing one",
                        consumer.id
                    )));
                }
                other => other?,
            };
            bump_version(&tx)?;
            tx.commit()?;
            Ok(consumer)
        })
        .await
    }

    async fn get_consumer(&self, id: &str) -> Result<Option<Consumer>> {
        let id = id.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = ?1"),
                    [id],
                    consumer_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_consumers(&self) -> Result<Vec<Consumer>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY id"
            ))?;
            let rows = stmt.query_map([], consumer_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_consumer(&self, consumer: Consumer) -> Result<Consumer> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let metadata = serde_json::Value::Object(consumer.metadata.clone()).to_string();
            let n = tx.execute(
                "UPDATE consumers SET name = ?2, plan = ?3, team = ?4, use_case = ?5, metadata = ?6,
                        limits = ?7
                 WHERE id = ?1",
                params![
                    consumer.id,
                    consumer.name,
                    consumer.plan,
                    consumer.team,
                    consumer.use_case,
                    metadata,
                    limits_text(&consumer.limits)
                ],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "no consumer has id {:?}",
                    consumer.id
                )));
            }
            bump_version(&tx)?;
            tx.commit()?;
            Ok(consumer)
        })
        .await
    }

    async fn delete_consumer(&self, id: &str, now_ms: i64) -> Result<()> {
        let id = id.to_string();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let n = tx.execute("DELETE FROM consumers WHERE id = ?1", [&id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no consumer has id {id:?}")));
            }
            // Keys stay (revoked) so their prefixes still explain old events.
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE consumer = ?1 AND revoked_at IS NULL",
                params![id, now_ms],
            )?;
            bump_version(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn create_key(&self, key: ApiKey) -> Result<ApiKey> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM consumers WHERE id = ?1", [&key.consumer], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("no consumer has id {:?}", key.consumer)));
            }
            let res = tx.execute(
                &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    key.key_id,
                    key.consumer,
                    key.name,
                    key.prefix,
                    key.hash,
                    key.created_at_ms,
                    key.expires_at_ms,
                    key.revoked_at_ms,
                    key.imported
                ],
            );
            match res {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(
                        "this key is already registered; each key can belong to one consumer only".into(),
                    ));
                }
                other => other?,
            };
            bump_version(&tx)?;
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    async fn list_keys(&self, consumer: &str) -> Result<Vec<ApiKey>> {
        let consumer = consumer.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE consumer = ?1 ORDER BY created_at, key_id"
            ))?;
            let rows = stmt.query_map([consumer], key_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<ApiKey> {
        let key_id = key_id.to_string();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL",
                params![key_id, now_ms],
            )?;
            let key = tx
                .query_row(
                    &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?1"),
                    [&key_id],
                    key_from_row,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("no key has id {key_id:?}")))?;
            bump_version(&tx)?;
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    async fn key_entries(&self) -> Result<Vec<KeyEntry>> {
        self.read(|conn| key_entries_where(conn, "", [])).await
    }

    async fn consumer_key_entries(&self, consumer: &str) -> Result<Vec<KeyEntry>> {
        let consumer = consumer.to_string();
        self.read(move |conn| key_entries_where(conn, "WHERE k.consumer = ?1", [consumer]))
            .await
    }

    async fn save_quota_usage(&self, usage: Vec<QuotaUsage>) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO quota_usage (consumer, day, day_used, month, month_used)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(consumer) DO UPDATE SET day = ?2, day_used = ?3, month = ?4,
                                                         month_used = ?5",
                )?;
                for u in &usage {
                    stmt.execute(params![
                        u.consumer,
                        u.seed.day,
                        u.seed.day_used as i64,
                        u.seed.month,
                        u.seed.month_used as i64
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn load_quota_usage(&self) -> Result<Vec<QuotaUsage>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT consumer, day, day_used, month, month_used FROM quota_usage")?;
            let rows = stmt.query_map([], |r| {
                Ok(QuotaUsage {
                    consumer: r.get(0)?,
                    seed: QuotaSeed {
                        day: r.get(1)?,
                        day_used: r.get::<_, i64>(2)?.max(0) as u64,
                        month: r.get(3)?,
                        month_used: r.get::<_, i64>(4)?.max(0) as u64,
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn record_spec_version(&self, v: crate::StoredSpecVersion) -> Result<bool> {
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT INTO spec_versions (api, hash, loaded_at_ms, openapi, operations)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(api, hash) DO NOTHING",
                params![
                    v.api,
                    v.hash,
                    v.loaded_at_ms,
                    v.openapi,
                    v.operations as i64
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn spec_versions(&self, api: &str) -> Result<Vec<crate::StoredSpecVersion>> {
        let api = api.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT api, hash, loaded_at_ms, openapi, operations FROM spec_versions
                 WHERE api = ?1 ORDER BY loaded_at_ms, hash",
            )?;
            let rows = stmt.query_map([&api], |r| {
                Ok(crate::StoredSpecVersion {
                    api: r.get(0)?,
                    hash: r.get(1)?,
                    loaded_at_ms: r.get(2)?,
                    openapi: r.get(3)?,
                    operations: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn record_release(&self, release: crate::Release) -> Result<crate::Release> {
        self.write(move |conn| releases::insert(conn, release))
            .await
    }

    async fn releases(&self, api: Option<&str>) -> Result<Vec<crate::Release>> {
        let api = api.map(str::to_string);
        self.read(move |conn| releases::list(conn, api.as_deref()))
            .await
    }

    async fn control_version(&self) -> Result<u64> {
        self.read(|conn| {
            let v: Option<String> = conn
                .query_row("SELECT v FROM meta WHERE k = 'control_version'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
        })
        .await
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

const EVENT_COLUMNS: &str =
    "id, ts, consumer, key_id, api, method, path, route, status, latency_ms,
    upstream_latency_ms, request_bytes, response_bytes, client_ip, user_agent, session_id,
    trace_id, outcome, plan, team, use_case, model, tokens_in, tokens_out, cost_usd, end_user,
    close_code, call_hash, tokens_cached, tokens_cache_write, tokens_reasoning, tls_fp";

/// How many columns `EVENT_COLUMNS` names: the index of whatever a query selects after them.
const EVENT_COLUMN_COUNT: usize = 32;

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let outcome: String = r.get(17)?;
    Ok(Event {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        consumer: r.get(2)?,
        key_id: r.get(3)?,
        api: r.get(4)?,
        method: r.get(5)?,
        path: r.get(6)?,
        route: r.get(7)?,
        status: r.get(8)?,
        latency_ms: r.get(9)?,
        upstream_latency_ms: r.get(10)?,
        request_bytes: r.get::<_, i64>(11)?.max(0) as u64,
        response_bytes: r.get::<_, i64>(12)?.max(0) as u64,
        client_ip: r.get(13)?,
        user_agent: r.get(14)?,
        session_id: r.get(15)?,
        end_user: r.get(25)?,
        trace_id: r.get(16)?,
        outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Ingested),
        plan: r.get(18)?,
        team: r.get(19)?,
        use_case: r.get(20)?,
        model: r.get(21)?,
        tokens_in: r.get::<_, Option<i64>>(22)?.map(|v| v.max(0) as u64),
        tokens_out: r.get::<_, Option<i64>>(23)?.map(|v| v.max(0) as u64),
        cost_usd: r.get(24)?,
        close_code: r.get(26)?,
        // Stored as the i64 with the same bits.
        call_hash: r.get::<_, Option<i64>>(27)?.map(|v| v as u64),
        tokens_cached: r.get::<_, Option<i64>>(28)?.map(|v| v.max(0) as u64),
        tokens_cache_write: r.get::<_, Option<i64>>(29)?.map(|v| v.max(0) as u64),
        tokens_reasoning: r.get::<_, Option<i64>>(30)?.map(|v| v.max(0) as u64),
        tls_fp: r.get(31)?,
    })
}

/// Bytes counts are stored as SQLite integers (i64); larger values saturate instead of wrapping.
pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(events);
        }
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut fresh = Vec::with_capacity(events.len());
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) VALUES
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                      ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28,
                      ?29, ?30, ?31, ?32)"
                ))?;
                for e in events {
                    let n = stmt.execute(params![
                        e.id,
                        e.ts_ms,
                        e.consumer,
                        e.key_id,
                        e.api,
                        e.method,
                        e.path,
                        e.route,
                        e.status,
                        e.latency_ms,
                        e.upstream_latency_ms,
                        sql_u64(e.request_bytes),
                        sql_u64(e.response_bytes),
                        e.client_ip,
                        e.user_agent,
                        e.session_id,
                        e.trace_id,
                        e.outcome.as_str(),
                        e.plan,
                        e.team,
                        e.use_case,
                        e.model,
                        e.tokens_in.map(sql_u64),
                        e.tokens_out.map(sql_u64),
                        e.cost_usd,
                        e.end_user,
                        e.close_code,
                        e.call_hash.map(|h| h as i64),
                        e.tokens_cached.map(sql_u64),
                        e.tokens_cache_write.map(sql_u64),
                        e.tokens_reasoning.map(sql_u64),
                        e.tls_fp
                    ])?;
                    if n == 1 {
                        fresh.push(e);
                    }
                }
            }
            tx.commit()?;
            Ok(fresh)
        })
        .await
    }

    async fn scan_events(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> Result<(Vec<Event>, Option<EventCursor>)> {
        self.read(move |conn| {
            let (ts, rowid) = after.map_or((from_ms, -1), |c| (c.ts_ms, c.rowid));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS}, rowid FROM events
                 WHERE ts >= ?1 AND (ts > ?2 OR (ts = ?2 AND rowid > ?3))
                 ORDER BY ts, rowid LIMIT ?4"
            ))?;
            let mut cursor = None;
            let rows = stmt.query_map(params![from_ms, ts, rowid, page as i64], |r| {
                Ok((event_from_row(r)?, r.get::<_, i64>(EVENT_COLUMN_COUNT)?))
            })?;
            let mut out = Vec::with_capacity(page);
            for row in rows {
                let (e, rowid) = row?;
                cursor = Some(EventCursor {
                    ts_ms: e.ts_ms,
                    rowid,
                });
                out.push(e);
            }
            let done = out.len() < page;
            Ok((out, if done { None } else { cursor }))
        })
        .await
    }

    async fn recent_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let q = query.clone();
        self.read(move |conn| {
            let (lo, hi) = q.status.unwrap_or((0, 999));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE consumer = ?1 AND ts >= ?2 AND ts < ?3 AND status BETWEEN ?4 AND ?5
                 ORDER BY ts DESC LIMIT ?6"
            ))?;
            let rows = stmt.query_map(
                params![q.consumer, q.from_ms, q.to_ms, lo, hi, q.limit as i64],
                event_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM events WHERE ts < ?1", [before_ms])? as u64)
        })
        .await
    }

    async fn day_counts(&self) -> Result<Vec<(i64, u64)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT ts / 86400000 AS d, count(*) FROM events GROUP BY d ORDER BY d",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (d, n) = row?;
                out.push((d * 86_400_000, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }

    async fn archive_rollups(&self, rows: Vec<StoredRollup>, until_ms: i64) -> Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO rollups
                     (tier, bucket, consumer, api, method, route, class, counts, cost_usd, sketch)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for r in &rows {
                    let counts = r
                        .counts
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    stmt.execute(params![
                        r.tier,
                        r.bucket_ms,
                        r.consumer,
                        r.api,
                        r.method,
                        r.route,
                        r.status_class,
                        counts,
                        r.cost_usd,
                        r.sketch
                    ])?;
                }
            }
            tx.execute(
                "INSERT INTO meta (k, v) VALUES ('archived_until', ?1)
                 ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                [until_ms.to_string()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn archived_rollups(&self) -> Result<(Vec<StoredRollup>, i64)> {
        self.read(|conn| {
            let until: Option<String> = conn
                .query_row("SELECT v FROM meta WHERE k = 'archived_until'", [], |r| r.get(0))
                .optional()?;
            let until = until.and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut stmt = conn.prepare(
                "SELECT tier, bucket, consumer, api, method, route, class, counts, cost_usd, sketch FROM rollups",
            )?;
            let rows = stmt.query_map([], |r| {
                let counts_text: String = r.get(7)?;
                let mut counts = [0u64; 11];
                for (slot, part) in counts.iter_mut().zip(counts_text.split(',')) {
                    *slot = part.parse().unwrap_or(0);
                }
                Ok(StoredRollup {
                    tier: r.get(0)?,
                    bucket_ms: r.get(1)?,
                    consumer: r.get(2)?,
                    api: r.get(3)?,
                    method: r.get(4)?,
                    route: r.get(5)?,
                    status_class: r.get(6)?,
                    counts,
                    cost_usd: r.get(8)?,
                    sketch: r.get(9)?,
                })
            })?;
            Ok((rows.collect::<rusqlite::Result<Vec<_>>>()?, until))
        })
        .await
    }

    async fn prune_rollups(&self, tier: u8, before_ms: i64) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM rollups WHERE tier = ?1 AND bucket < ?2",
                params![tier, before_ms],
            )? as u64)
        })
        .await
    }

    async fn event_count(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }
}

/// The key entries `filter` (a WHERE clause over `api_keys k`, or nothing) selects, with what
/// the gateway needs of each key's consumer. A key whose stored hash is corrupt is skipped with
/// a warning rather than failing every other key.
fn key_entries_where(
    conn: &rusqlite::Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<KeyEntry>> {
    let mut stmt = conn.prepare_cached(&format!("{KEY_ENTRIES_SELECT} {filter}"))?;
    let rows = stmt.query_map(params, |r| {
        let hash_hex: String = r.get(1)?;
        Ok((
            hash_hex,
            KeyEntry {
                key_id: r.get::<_, String>(0)?.into(),
                hash: [0; 32],
                consumer: r.get::<_, String>(2)?.into(),
                plan: r.get::<_, Option<String>>(3)?.map(Into::into),
                team: r.get::<_, Option<String>>(4)?.map(Into::into),
                use_case: r.get::<_, Option<String>>(5)?.map(Into::into),
                expires_at_ms: r.get(6)?,
                revoked: r.get(7)?,
                limits: parse_limits(r.get(8)?).map(Arc::new),
                slot: None,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (hash_hex, mut entry) = row?;
        match parse_hash(&hash_hex) {
            Some(h) => entry.hash = h,
            None => {
                tracing::warn!(key_id = %entry.key_id, "skipping key with a corrupt stored hash");
                continue;
            }
        }
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
impl crate::testsuite::Backend for SqliteStore {
    fn open_in(dir: &Path) -> Self {
        #[allow(clippy::unwrap_used)]
        SqliteStore::open(dir).unwrap()
    }
}

#[cfg(test)]
crate::control_store_suite!(sqlite_control, SqliteStore);
#[cfg(test)]
crate::event_store_suite!(sqlite_events, SqliteStore);
#[cfg(test)]
crate::finding_store_suite!(sqlite_findings, SqliteStore);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod migration_tests {
    use super::*;

    #[test]
    fn the_column_count_is_the_columns_named() {
        assert_eq!(EVENT_COLUMNS.split(',').count(), EVENT_COLUMN_COUNT);
    }

    #[test]
    fn a_version_4_database_gains_every_later_column() {
        let mut fresh = crate::testsuite::Fresh::<SqliteStore>::new();
        let dir = fresh.dir().to_path_buf();
        // Make it what a version 4 build left.
        let conn = Connection::open(dir.join("clientele.db")).unwrap();
        conn.execute_batch(
            "ALTER TABLE events DROP COLUMN call_hash;
             ALTER TABLE events DROP COLUMN tokens_cached;
             ALTER TABLE events DROP COLUMN tokens_cache_write;
             ALTER TABLE events DROP COLUMN tokens_reasoning;
             ALTER TABLE events DROP COLUMN tls_fp;
             UPDATE meta SET v = '4' WHERE k = 'schema_version';",
        )
        .unwrap();
        drop(conn);
        fresh.reopen();
        let conn = Connection::open(dir.join("clientele.db")).unwrap();
        let v: String = conn
            .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(v, "6");
        conn.execute_batch(
            "SELECT call_hash, tokens_cached, tokens_cache_write, tokens_reasoning, tls_fp FROM events",
        )
        .unwrap();
    }
}

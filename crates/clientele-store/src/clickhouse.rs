//! Raw events in ClickHouse (feature `clickhouse`), over its HTTP interface with the workspace's
//! one HTTP client: no driver, rows as `JSONEachRow`.
//!
//! Written for the oldest server it was checked against, Debian's clickhouse-server 18.16: no
//! `TTL` clause, no async inserts, no `insert_deduplication_token`, mutations only in the
//! background. So:
//! - `events` is a `ReplacingMergeTree` partitioned by UTC day of event time (`day`, days since
//!   the epoch) and ordered by `(consumer, ts_ms, id)`: a consumer's drill-down reads a narrow
//!   range, and retention ([`EventStore::prune_events`]) drops whole partitions.
//! - Duplicates: [`EventStore::append_events`] asks for the batch's (day, id) pairs in
//!   `event_ids` (a narrow table ordered by `(day, id)`, filled by a materialized view from every
//!   insert into `events`) before its one insert per day, and inserts only the events not there
//!   (the embedded log's rule: an id is a duplicate within its UTC day whatever else it
//!   carries, and the first copy stays). The replacing engine is only the
//!   second line: a copy two nodes insert at the same instant (both checks before either insert)
//!   collapses at the next merge, and every read here counts distinct ids, so even then no
//!   answer counts it twice.
//! - Each row carries the `node` that inserted it and that node's insert `seq`: nodes tail
//!   each other's inserts by `(node, seq)` ([`ClickHouseStore::tail`]). A node's inserts are one
//!   at a time and each covers one day, so one part: an insert is visible whole or not at all,
//!   and in `seq` order. The tail reads `event_seqs` (ordered by `(node, seq)`, one row per
//!   insert, day and consumer with its time span, filled by a view) and then only those key
//!   ranges of `events`; a view writes after the table it watches, so an insert the index shows
//!   is already in `events`.
//! - The rollup archive of the trait is a small replacing table read with `FINAL`; pruning it
//!   writes tombstones (no synchronous `ALTER ... DELETE` on 18.16).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use clientele_core::event::{Event, Outcome};
use clientele_http::{ClientOptions, FailureKind, Outbound, Timeouts};
use http_body_util::Full;
use serde_json::{Map, Value, json};

use crate::{EventCursor, EventQuery, EventStore, Result, StoreError, StoredRollup};

pub mod spool;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;

const DAY_MS: i64 = 86_400_000;

/// How long one call may take before it is reported as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Ids per existence check: keeps each query well under the server's parser limits.
const CHECK_CHUNK: usize = 10_000;

/// The schema, created at connect when absent (`IF NOT EXISTS`, so nodes may race).
fn schema(db: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.events (
    day Int32,
    consumer String,
    has_consumer UInt8,
    ts_ms Int64,
    id String,
    node String,
    seq UInt64,
    key_id Nullable(String),
    api Nullable(String),
    method String,
    path String,
    route String,
    status UInt16,
    latency_ms Float64,
    upstream_latency_ms Nullable(Float64),
    request_bytes UInt64,
    response_bytes UInt64,
    client_ip Nullable(String),
    user_agent Nullable(String),
    session_id Nullable(String),
    end_user Nullable(String),
    trace_id Nullable(String),
    outcome String,
    plan Nullable(String),
    team Nullable(String),
    use_case Nullable(String),
    model Nullable(String),
    tokens_in Nullable(UInt64),
    tokens_out Nullable(UInt64),
    cost_usd Nullable(Float64),
    close_code Nullable(UInt16),
    call_hash Nullable(UInt64),
    tokens_cached Nullable(UInt64),
    tokens_cache_write Nullable(UInt64),
    tokens_reasoning Nullable(UInt64),
    tls_fp Nullable(String)
) ENGINE = ReplacingMergeTree() PARTITION BY day ORDER BY (consumer, ts_ms, id)
SETTINGS index_granularity = 8192"
        ),
        // Each event's (day, id), kept by the insert itself: the duplicate check reads this
        // narrow table by its key instead of a whole day of events.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.event_ids (day Int32, id String)
ENGINE = ReplacingMergeTree() PARTITION BY day ORDER BY (day, id)"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_ids_mv TO {db}.event_ids AS SELECT day, id FROM {db}.events"
        ),
        // The tail's index: one row per (insert, day, consumer) with its event times, kept by
        // the insert itself (each insert is one block, so the view's GROUP BY sums one insert).
        // Ordered by (node, seq), so a poll reads only the inserts after its cursor, and the
        // events it then fetches by their key ranges: no scan of `events`.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.event_seqs (
    node String,
    seq UInt64,
    day Int32,
    consumer String,
    min_ts Int64,
    max_ts Int64,
    n UInt64
) ENGINE = MergeTree() PARTITION BY day ORDER BY (node, seq)
SETTINGS index_granularity = 1024"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_seqs_mv TO {db}.event_seqs AS {SEQS_OF_EVENTS}",
            SEQS_OF_EVENTS = seqs_of(&format!("{db}.events"))
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.rollups (
    tier UInt8,
    bucket_ms Int64,
    consumer String,
    api String,
    method String,
    route String,
    status_class UInt8,
    counts Array(UInt64),
    cost_usd Float64,
    sketch String,
    deleted UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (tier, bucket_ms, consumer, api, method, route, status_class)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.meta (k String, v Int64, version UInt64)
ENGINE = ReplacingMergeTree(version) ORDER BY k"
        ),
    ]
}

/// `event_seqs`' rows for the events of `table`: the view's query, and the one-off backfill's.
fn seqs_of(table: &str) -> String {
    format!(
        "SELECT node, seq, day, consumer, min(ts_ms) AS min_ts, max(ts_ms) AS max_ts, count() AS n FROM {table} GROUP BY node, seq, day, consumer"
    )
}

/// The event columns, in the order rows are read.
const COLUMNS: &str = "id, ts_ms, has_consumer, consumer, key_id, api, method, path, route, status, \
latency_ms, upstream_latency_ms, request_bytes, response_bytes, client_ip, user_agent, session_id, \
end_user, trace_id, outcome, plan, team, use_case, model, tokens_in, tokens_out, cost_usd, \
close_code, call_hash, tokens_cached, tokens_cache_write, tokens_reasoning, tls_fp";

/// Events in ClickHouse. Cheap to clone.
#[derive(Clone)]
pub struct ClickHouseStore {
    inner: Arc<Inner>,
}

struct Inner {
    http: Outbound<Full<Bytes>>,
    /// `http://host:port/`, where queries are posted.
    endpoint: String,
    /// `user`/`password` parameters, already encoded, when the URL had them.
    auth: String,
    db: String,
    /// `ClickHouse at host:port/db`, for messages (never the password).
    place: String,
    /// Versions of the rollup archive's rows: later writes replace earlier ones.
    version: AtomicU64,
    /// Set once the server has been checked and the schema made.
    ready: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("place", &self.inner.place)
            .finish()
    }
}

/// The one number of a `... FORMAT TSV` answer; 0 for an empty answer (no row).
fn number_of<T: std::str::FromStr + Default>(body: &[u8]) -> T {
    String::from_utf8_lossy(body)
        .trim()
        .parse()
        .unwrap_or_default()
}

/// `'text'` with ClickHouse's escapes: safe for any string, including ids from clients.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn decode_pct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A database name must be a plain identifier: it is written into statements unquoted.
fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Parsed `http[s]://[user[:password]@]host[:port][/][?database=NAME]`.
struct Url {
    endpoint: String,
    host: String,
    user: Option<String>,
    password: Option<String>,
    db: String,
}

fn parse_url(url: &str) -> Result<Url> {
    let bad = |why: &str| {
        StoreError::Invalid(format!(
            "storage.clickhouse_url: {why}; expected http://[user[:password]@]host:8123[/?database=NAME]"
        ))
    };
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| *s == "http" || *s == "https")
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(decode_pct(u)), Some(decode_pct(p))),
            None => (Some(decode_pct(u)), None),
        },
        None => (None, None),
    };
    let mut db = "clientele".to_string();
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    if !(path.is_empty() || path == "/") {
        return Err(bad("must not have a path"));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("database", v)) => db = decode_pct(v),
            _ => return Err(bad(&format!("unknown parameter `{pair}`"))),
        }
    }
    if !valid_ident(&db) {
        return Err(bad("database must be letters, digits and _"));
    }
    Ok(Url {
        endpoint: format!("{scheme}://{host}/"),
        host: host.to_string(),
        user,
        password,
        db,
    })
}

/// One stored event's columns, as inserted.
fn row(e: &Event, node: &str, seq: u64) -> Value {
    json!({
        "day": e.ts_ms.div_euclid(DAY_MS),
        "consumer": e.consumer.as_deref().unwrap_or(""),
        "has_consumer": u8::from(e.consumer.is_some()),
        "ts_ms": e.ts_ms,
        "id": e.id,
        "node": node,
        "seq": seq,
        "key_id": e.key_id,
        "api": e.api,
        "method": e.method,
        "path": e.path,
        "route": e.route,
        "status": e.status,
        "latency_ms": e.latency_ms,
        "upstream_latency_ms": e.upstream_latency_ms,
        "request_bytes": e.request_bytes,
        "response_bytes": e.response_bytes,
        "client_ip": e.client_ip,
        "user_agent": e.user_agent,
        "session_id": e.session_id,
        "end_user": e.end_user,
        "trace_id": e.trace_id,
        "outcome": e.outcome.as_str(),
        "plan": e.plan,
        "team": e.team,
        "use_case": e.use_case,
        "model": e.model,
        "tokens_in": e.tokens_in,
        "tokens_out": e.tokens_out,
        "cost_usd": e.cost_usd,
        "close_code": e.close_code,
        "call_hash": e.call_hash,
        "tokens_cached": e.tokens_cached,
        "tokens_cache_write": e.tokens_cache_write,
        "tokens_reasoning": e.tokens_reasoning,
        "tls_fp": e.tls_fp,
    })
}

fn bad_row(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "ClickHouse answered a row without a valid `{what}`"
    ))
}

fn get_str(m: &Map<String, Value>, k: &str) -> Result<String> {
    m.get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad_row(k))
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

/// 64-bit integers may come quoted (the server's default) or not.
fn get_u64(m: &Map<String, Value>, k: &str) -> Option<u64> {
    match m.get(k)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn get_i64(m: &Map<String, Value>, k: &str) -> Option<i64> {
    match m.get(k)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn get_f64(m: &Map<String, Value>, k: &str) -> Option<f64> {
    match m.get(k)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn event_of(m: &Map<String, Value>) -> Result<Event> {
    let outcome = get_str(m, "outcome")?;
    Ok(Event {
        id: get_str(m, "id")?,
        ts_ms: get_i64(m, "ts_ms").ok_or_else(|| bad_row("ts_ms"))?,
        consumer: (get_u64(m, "has_consumer") == Some(1))
            .then(|| get_str(m, "consumer"))
            .transpose()?,
        key_id: opt_str(m, "key_id"),
        api: opt_str(m, "api"),
        method: get_str(m, "method")?,
        path: get_str(m, "path")?,
        route: get_str(m, "route")?,
        status: get_u64(m, "status")
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| bad_row("status"))?,
        latency_ms: get_f64(m, "latency_ms").ok_or_else(|| bad_row("latency_ms"))?,
        upstream_latency_ms: get_f64(m, "upstream_latency_ms"),
        request_bytes: get_u64(m, "request_bytes").ok_or_else(|| bad_row("request_bytes"))?,
        response_bytes: get_u64(m, "response_bytes").ok_or_else(|| bad_row("response_bytes"))?,
        client_ip: opt_str(m, "client_ip"),
        user_agent: opt_str(m, "user_agent"),
        session_id: opt_str(m, "session_id"),
        end_user: opt_str(m, "end_user"),
        trace_id: opt_str(m, "trace_id"),
        outcome: Outcome::parse(&outcome).ok_or_else(|| bad_row("outcome"))?,
        plan: opt_str(m, "plan"),
        team: opt_str(m, "team"),
        use_case: opt_str(m, "use_case"),
        model: opt_str(m, "model"),
        tokens_in: get_u64(m, "tokens_in"),
        tokens_out: get_u64(m, "tokens_out"),
        cost_usd: get_f64(m, "cost_usd"),
        close_code: get_u64(m, "close_code").and_then(|c| u16::try_from(c).ok()),
        call_hash: get_u64(m, "call_hash"),
        tokens_cached: get_u64(m, "tokens_cached"),
        tokens_cache_write: get_u64(m, "tokens_cache_write"),
        tokens_reasoning: get_u64(m, "tokens_reasoning"),
        tls_fp: opt_str(m, "tls_fp"),
    })
}

/// Each line of a `JSONEachRow` answer as an object.
fn rows(body: &[u8]) -> Result<Vec<Map<String, Value>>> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match serde_json::from_slice::<Value>(l) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(StoreError::Backend(
                "ClickHouse answered a line that is not a JSON object".into(),
            )),
        })
        .collect()
}

/// One event inserted by another node, as [`ClickHouseStore::tail`] reads it.
#[derive(Debug, Clone)]
pub struct Tailed {
    pub node: String,
    pub seq: u64,
    pub event: Event,
}

impl ClickHouseStore {
    /// Connects (one query proves the server answers), checks the server's version and creates
    /// the schema when absent. An unreachable server, or one that does not answer within
    /// [`CALL_TIMEOUT`], is a clear error naming it.
    pub async fn connect(url: &str) -> Result<ClickHouseStore> {
        let store = ClickHouseStore::open(url)?;
        store.ready().await?;
        Ok(store)
    }

    /// A store for `url` that has not called the server yet: only the URL is checked. The
    /// first call that needs the database (or [`ClickHouseStore::ready`]) checks the server and
    /// makes the schema; until that succeeds every call fails and the next one tries again, so
    /// a node can start while ClickHouse is down and catch up once it answers.
    pub fn open(url: &str) -> Result<ClickHouseStore> {
        let u = parse_url(url)?;
        let http = Outbound::new(&ClientOptions::new(Timeouts {
            connect: Duration::from_secs(3),
            request: CALL_TIMEOUT,
        }))
        .map_err(|e| StoreError::Invalid(format!("storage.clickhouse_url: {e}")))?;
        let mut auth = String::new();
        if let Some(user) = &u.user {
            let _ = write!(auth, "&user={}", encode(user));
        }
        if let Some(password) = &u.password {
            let _ = write!(auth, "&password={}", encode(password));
        }
        // Rollup archive versions start at the clock so a restarted node's writes replace
        // the rows it wrote before.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(ClickHouseStore {
            inner: Arc::new(Inner {
                http,
                endpoint: u.endpoint,
                auth,
                place: format!("ClickHouse at {}/{}", u.host, u.db),
                db: u.db,
                version: AtomicU64::new(now_ns),
                ready: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// Checks the server and makes the schema, once: later calls return at once. A failure is
    /// returned to every caller waiting on it and leaves the next call to try again.
    /// [`StoreError::Unavailable`] means the server did not answer; any other error is one it
    /// gave (too old, a wrong password, no rights), which retrying will not mend.
    pub async fn ready(&self) -> Result<()> {
        self.inner
            .ready
            .get_or_try_init(|| self.prepare())
            .await
            .map(|_| ())
    }

    async fn prepare(&self) -> Result<()> {
        let version = self.query_in("SELECT version()", "", false).await?;
        let version = String::from_utf8_lossy(&version).trim().to_string();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 18 {
            return Err(StoreError::Invalid(format!(
                "{} runs ClickHouse {version}; Clientele needs 18.16 or later",
                self.inner.place
            )));
        }
        for statement in schema(&self.inner.db) {
            self.query_in(&statement, "", false).await?;
        }
        self.backfill_seqs().await
    }

    /// Rows in the active parts of `table`, from the parts' metadata (no read of the table).
    /// Called while the schema is made, so it bypasses [`ClickHouseStore::ready`].
    async fn stored_rows(&self, table: &str) -> Result<u64> {
        let sql = format!(
            "SELECT sum(rows) FROM system.parts WHERE database = {} AND table = {} AND active FORMAT TSV",
            quote(&self.inner.db),
            quote(table)
        );
        Ok(number_of(&self.query_in(&sql, "", true).await?))
    }

    /// The one number a `... FORMAT TSV` query answers; 0 for an empty answer (no row).
    async fn query_number<T: std::str::FromStr + Default>(&self, sql: &str) -> Result<T> {
        Ok(number_of(&self.query(sql, "").await?))
    }

    /// A database made before `event_seqs` existed: fills it once from `events`. The view
    /// already exists by now, so an insert racing this shows up twice in the index, which
    /// only widens what a poll fetches (the events read are the same); so does two nodes'
    /// backfills racing.
    async fn backfill_seqs(&self) -> Result<()> {
        if self.stored_rows("event_seqs").await? > 0 || self.stored_rows("events").await? == 0 {
            return Ok(());
        }
        self.query_in(
            &format!("INSERT INTO event_seqs {}", seqs_of("events")),
            "",
            true,
        )
        .await?;
        Ok(())
    }

    /// `ClickHouse at host:port/db`.
    pub fn place(&self) -> &str {
        &self.inner.place
    }

    /// The database (for tests and the benchmark).
    pub fn database(&self) -> &str {
        &self.inner.db
    }

    /// Runs `sql` (with `data` after it, for inserts) and returns the answer's body; the
    /// server is checked and the schema made first if that has not succeeded yet.
    pub async fn query(&self, sql: &str, data: &str) -> Result<Bytes> {
        self.ready().await?;
        self.query_in(sql, data, true).await
    }

    /// `in_db`: false before the database exists (the server refuses a `database` that is not).
    async fn query_in(&self, sql: &str, data: &str, in_db: bool) -> Result<Bytes> {
        let inner = &self.inner;
        let db = if in_db { inner.db.as_str() } else { "default" };
        // Statements go in the body, so their length is bounded by `max_query_size` (raised for
        // the id lists of the existence check), not by the URL; insert data follows its query.
        let (uri, body) = if data.is_empty() {
            (
                format!(
                    "{}?database={db}{}&max_query_size=67108864&output_format_json_quote_64bit_integers=0",
                    inner.endpoint, inner.auth
                ),
                sql.to_string(),
            )
        } else {
            (
                format!(
                    "{}?database={db}{}&query={}",
                    inner.endpoint,
                    inner.auth,
                    encode(sql)
                ),
                data.to_string(),
            )
        };
        let req = http::Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| StoreError::Backend(format!("building a ClickHouse request: {e}")))?;
        let (parts, body) = inner.http.fetch(req).await.map_err(|f| match f.kind {
            FailureKind::Connect | FailureKind::Timeout | FailureKind::Tls => {
                StoreError::Unavailable(format!("cannot reach {}: {f}", inner.place))
            }
            FailureKind::Other => StoreError::Unavailable(format!("{}: {f}", inner.place)),
        })?;
        if !parts.status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(StoreError::Backend(format!(
                "{} answered {}: {}",
                inner.place,
                parts.status.as_u16(),
                text.trim()
            )));
        }
        Ok(body)
    }

    async fn select_events(&self, sql: &str) -> Result<Vec<Event>> {
        let body = self.query(sql, "").await?;
        rows(&body)?.iter().map(event_of).collect()
    }

    /// The (day, id) pairs of `events` already stored: the embedded log's rule, an id is a
    /// duplicate within its UTC day of event time whatever else the event carries. Read from
    /// `event_ids` by its key, in chunks.
    async fn existing(&self, events: &[Event]) -> Result<HashSet<(i64, String)>> {
        let mut found = HashSet::new();
        for chunk in events.chunks(CHECK_CHUNK) {
            let mut days = BTreeSet::new();
            let mut ids = String::new();
            for e in chunk {
                days.insert(e.ts_ms.div_euclid(DAY_MS));
                if !ids.is_empty() {
                    ids.push(',');
                }
                ids.push_str(&quote(&e.id));
            }
            let days: Vec<String> = days.iter().map(i64::to_string).collect();
            let sql = format!(
                "SELECT DISTINCT day, id FROM event_ids WHERE day IN ({}) AND id IN ({ids}) FORMAT TSV",
                days.join(",")
            );
            let body = self.query(&sql, "").await?;
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Some(tab) = line.iter().position(|b| *b == b'\t') else {
                    continue;
                };
                let day = std::str::from_utf8(&line[..tab])
                    .ok()
                    .and_then(|d| d.parse::<i64>().ok())
                    .ok_or_else(|| bad_row("day"))?;
                found.insert((day, unescape_tsv(&line[tab + 1..])));
            }
        }
        Ok(found)
    }

    /// Appends `events` as inserted by `node`, whose inserts are numbered from `first_seq` (one
    /// number per day of event time, in day order): the events whose ids were not stored yet,
    /// one insert per day. Returns the new events and the next free number.
    pub async fn append_from(
        &self,
        events: Vec<Event>,
        node: &str,
        first_seq: u64,
    ) -> Result<(Vec<Event>, u64)> {
        let mut seen = HashSet::with_capacity(events.len());
        let unique: Vec<Event> = events
            .into_iter()
            .filter(|e| seen.insert(e.id.clone()))
            .collect();
        if unique.is_empty() {
            return Ok((unique, first_seq));
        }
        let stored = self.existing(&unique).await?;
        let fresh: Vec<Event> = unique
            .into_iter()
            .filter(|e| !stored.contains(&(e.ts_ms.div_euclid(DAY_MS), e.id.clone())))
            .collect();
        let mut by_day: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
        for e in &fresh {
            by_day
                .entry(e.ts_ms.div_euclid(DAY_MS))
                .or_default()
                .push(e);
        }
        let mut seq = first_seq;
        for day in by_day.values() {
            let mut data = String::with_capacity(day.len() * 400);
            for e in day {
                data.push_str(&row(e, node, seq).to_string());
                data.push('\n');
            }
            self.query("INSERT INTO events FORMAT JSONEachRow", &data)
                .await?;
            seq += 1;
        }
        Ok((fresh, seq))
    }

    /// Events other nodes inserted after `after` (their last `seq` read, per node; nodes not
    /// named are read from the start), in (node, seq) order, at most about `limit`. Never this
    /// `node`'s own. The answer's last insert may be cut by the limit: callers re-read it.
    ///
    /// Two reads, neither a scan: `event_seqs` by its key (node, seq) for the inserts after the
    /// cursor, then `events` by its key, the (day, consumer, time) ranges those inserts cover.
    /// An idle poll is the first read only, and finds nothing.
    pub async fn tail(
        &self,
        node: &str,
        after: &BTreeMap<String, u64>,
        limit: usize,
    ) -> Result<(Vec<Tailed>, bool)> {
        let limit = limit.max(1);
        let sql = format!(
            "SELECT node, seq, day, consumer, min_ts, max_ts, n FROM event_seqs WHERE {} ORDER BY node, seq LIMIT {limit} FORMAT JSONEachRow",
            after_cursor(node, after)
        );
        let entries = rows(&self.query(&sql, "").await?)?;
        let mut full = entries.len() >= limit;
        // The highest insert taken per node, and each (day, consumer)'s span of event times.
        let mut upto: BTreeMap<String, u64> = BTreeMap::new();
        let mut spans: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
        let mut total = 0u64;
        let mut last_taken: Option<(String, u64)> = None;
        for m in &entries {
            let n = get_str(m, "node")?;
            let seq = get_u64(m, "seq").ok_or_else(|| bad_row("seq"))?;
            if let Some((ln, ls)) = &last_taken {
                // Past the limit: finish the insert that reached it, then stop.
                if (ln.as_str(), *ls) != (n.as_str(), seq) {
                    full = true;
                    break;
                }
            }
            let day = get_i64(m, "day").ok_or_else(|| bad_row("day"))?;
            let lo = get_i64(m, "min_ts").ok_or_else(|| bad_row("min_ts"))?;
            let hi = get_i64(m, "max_ts").ok_or_else(|| bad_row("max_ts"))?;
            total += get_u64(m, "n").ok_or_else(|| bad_row("n"))?;
            let span = spans
                .entry((day, get_str(m, "consumer")?))
                .or_insert((lo, hi));
            *span = (span.0.min(lo), span.1.max(hi));
            let top = upto.entry(n.clone()).or_insert(seq);
            *top = (*top).max(seq);
            if last_taken.is_none() && total >= limit as u64 {
                full = true;
                last_taken = Some((n, seq));
            }
        }
        if upto.is_empty() {
            return Ok((Vec::new(), false));
        }
        let keys: Vec<String> = spans
            .iter()
            .map(|((day, consumer), (lo, hi))| {
                format!(
                    "(day = {day} AND consumer = {} AND ts_ms >= {lo} AND ts_ms <= {hi})",
                    quote(consumer)
                )
            })
            .collect();
        let sql = format!(
            "SELECT node, seq, {COLUMNS} FROM events WHERE ({}) AND node != {} AND seq > {} AND seq <= {} ORDER BY node, seq FORMAT JSONEachRow",
            keys.join(" OR "),
            quote(node),
            per_node(after),
            per_node(&upto)
        );
        let body = self.query(&sql, "").await?;
        let tailed = rows(&body)?
            .iter()
            .map(|m| {
                Ok(Tailed {
                    node: get_str(m, "node")?,
                    seq: get_u64(m, "seq").ok_or_else(|| bad_row("seq"))?,
                    event: event_of(m)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((tailed, full))
    }

    fn next_version(&self) -> u64 {
        self.inner.version.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// `node`'s number in `seqs`, 0 for a node not there, as a ClickHouse expression.
fn per_node(seqs: &BTreeMap<String, u64>) -> String {
    if seqs.is_empty() {
        return "toUInt64(0)".to_string();
    }
    let names: Vec<String> = seqs.keys().map(|n| quote(n)).collect();
    let values: Vec<String> = seqs.values().map(|s| format!("toUInt64({s})")).collect();
    format!(
        "transform(node, [{}], [{}], toUInt64(0))",
        names.join(","),
        values.join(",")
    )
}

/// The rows of `event_seqs` after the cursor, never `me`'s, written as ranges of its key
/// (node, seq) so that the server reads only those: `seq > n` for each node read so far, and
/// every node between them (or before the first, after the last), which is new, whole.
fn after_cursor(me: &str, after: &BTreeMap<String, u64>) -> String {
    let mut points: BTreeMap<&str, Option<u64>> =
        after.iter().map(|(n, s)| (n.as_str(), Some(*s))).collect();
    points.insert(me, None);
    let mut ranges = Vec::with_capacity(points.len() * 2 + 1);
    let mut prev: Option<&str> = None;
    for (name, floor) in &points {
        let q = quote(name);
        ranges.push(match prev {
            None => format!("node < {q}"),
            Some(p) => format!("(node > {} AND node < {q})", quote(p)),
        });
        if let Some(s) = floor {
            ranges.push(format!("(node = {q} AND seq > {s})"));
        }
        prev = Some(name);
    }
    if let Some(last) = prev {
        ranges.push(format!("node > {}", quote(last)));
    }
    ranges.join(" OR ")
}

/// A TSV field back to its text (the server escapes `\`, tab, newline and a few more).
fn unescape_tsv(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 1 < field.len() {
            out.push(match field[i + 1] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'0' => 0,
                b'b' => 8,
                b'f' => 12,
                other => other,
            });
            i += 2;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl EventStore for ClickHouseStore {
    async fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        // Without a node of its own (the suite, a one-off import), rows are this store's.
        let (fresh, _) = self.append_from(events, "", 0).await?;
        Ok(fresh)
    }

    async fn scan_events(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> Result<(Vec<Event>, Option<EventCursor>)> {
        // Ordered by (ts_ms, id); the cursor is the last time returned and how many events of
        // that time were returned, so a page boundary between equal times loses nothing.
        let (from, skip) = match after {
            Some(c) => (c.ts_ms.max(from_ms), c.rowid.max(0)),
            None => (from_ms, 0),
        };
        let page = page.max(1);
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE day >= {} AND ts_ms >= {from} ORDER BY ts_ms, id LIMIT 1 BY id LIMIT {skip}, {page} FORMAT JSONEachRow",
            from.div_euclid(DAY_MS)
        );
        let events = self.select_events(&sql).await?;
        if events.len() < page {
            return Ok((events, None));
        }
        let last = events.last().map_or(from, |e| e.ts_ms);
        let mut same = events.iter().rev().take_while(|e| e.ts_ms == last).count() as i64;
        if last == from {
            same += skip;
        }
        Ok((
            events,
            Some(EventCursor {
                ts_ms: last,
                rowid: same,
            }),
        ))
    }

    async fn recent_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let status = match query.status {
            Some((lo, hi)) => format!(" AND status >= {lo} AND status <= {hi}"),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE consumer = {} AND has_consumer = 1 AND day >= {} AND day <= {} AND ts_ms >= {} AND ts_ms < {}{status} ORDER BY ts_ms DESC, id DESC LIMIT 1 BY id LIMIT {} FORMAT JSONEachRow",
            quote(&query.consumer),
            query.from_ms.div_euclid(DAY_MS),
            query.to_ms.div_euclid(DAY_MS),
            query.from_ms,
            query.to_ms,
            query.limit
        );
        self.select_events(&sql).await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64> {
        // Whole days ending at or before the cut: their partitions are dropped.
        let cut = before_ms.div_euclid(DAY_MS);
        let n: u64 = self
            .query_number(&format!(
                "SELECT uniqExact(id) FROM events WHERE day < {cut} FORMAT TSV"
            ))
            .await?;
        let parts = self
            .query(
                &format!(
                    "SELECT DISTINCT table, partition FROM system.parts WHERE database = {} AND table IN ('events', 'event_ids', 'event_seqs') AND active FORMAT TSV",
                    quote(&self.inner.db)
                ),
                "",
            )
            .await?;
        // The events first: a failure between the two leaves ids without events, which only
        // makes a re-sent event of a pruned day a duplicate, as the embedded log's pruning
        // would not; the next prune drops them.
        let mut drops: Vec<(String, i64)> = String::from_utf8_lossy(&parts)
            .lines()
            .filter_map(|l| {
                let (table, day) = l.split_once('\t')?;
                let day = day.trim().parse::<i64>().ok()?;
                (day < cut).then(|| (table.to_string(), day))
            })
            .collect();
        drops.sort_by_key(|(t, d)| (t != "events", *d));
        for (table, day) in drops {
            self.query(&format!("ALTER TABLE {table} DROP PARTITION {day}"), "")
                .await?;
        }
        Ok(n)
    }

    async fn event_count(&self) -> Result<u64> {
        Ok(self.day_counts().await?.iter().map(|(_, n)| n).sum())
    }

    async fn day_counts(&self) -> Result<Vec<(i64, u64)>> {
        let body = self
            .query(
                "SELECT day, uniqExact(id) FROM events GROUP BY day ORDER BY day FORMAT TSV",
                "",
            )
            .await?;
        let mut out = Vec::new();
        for line in String::from_utf8_lossy(&body).lines() {
            let mut f = line.split('\t');
            let (Some(day), Some(n)) = (f.next(), f.next()) else {
                continue;
            };
            let (Ok(day), Ok(n)) = (day.parse::<i64>(), n.parse::<u64>()) else {
                return Err(StoreError::Backend(format!(
                    "ClickHouse answered a day count `{line}`"
                )));
            };
            out.push((day * DAY_MS, n));
        }
        Ok(out)
    }

    async fn archive_rollups(&self, rows: Vec<StoredRollup>, until_ms: i64) -> Result<()> {
        let version = self.next_version();
        if !rows.is_empty() {
            let mut data = String::new();
            for r in &rows {
                let line = json!({
                    "tier": r.tier,
                    "bucket_ms": r.bucket_ms,
                    "consumer": r.consumer,
                    "api": r.api,
                    "method": r.method,
                    "route": r.route,
                    "status_class": r.status_class,
                    "counts": r.counts.to_vec(),
                    "cost_usd": r.cost_usd,
                    // Hex: JSON text carries any bytes this way.
                    "sketch": hex::encode(&r.sketch),
                    "deleted": 0,
                    "version": version,
                });
                data.push_str(&line.to_string());
                data.push('\n');
            }
            self.query("INSERT INTO rollups FORMAT JSONEachRow", &data)
                .await?;
        }
        let mark = json!({"k": "archived_until", "v": until_ms, "version": version});
        self.query("INSERT INTO meta FORMAT JSONEachRow", &format!("{mark}\n"))
            .await?;
        Ok(())
    }

    async fn archived_rollups(&self) -> Result<(Vec<StoredRollup>, i64)> {
        let body = self
            .query(
                "SELECT tier, bucket_ms, consumer, api, method, route, status_class, counts, cost_usd, sketch FROM rollups FINAL WHERE deleted = 0 FORMAT JSONEachRow",
                "",
            )
            .await?;
        let mut out = Vec::new();
        for m in rows(&body)? {
            let counts: Vec<u64> = m
                .get("counts")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| match v {
                            Value::Number(n) => n.as_u64(),
                            Value::String(s) => s.parse().ok(),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let counts: [u64; 11] = counts.try_into().map_err(|_| bad_row("counts"))?;
            out.push(StoredRollup {
                tier: get_u64(&m, "tier")
                    .and_then(|t| u8::try_from(t).ok())
                    .ok_or_else(|| bad_row("tier"))?,
                bucket_ms: get_i64(&m, "bucket_ms").ok_or_else(|| bad_row("bucket_ms"))?,
                consumer: get_str(&m, "consumer")?,
                api: get_str(&m, "api")?,
                method: get_str(&m, "method")?,
                route: get_str(&m, "route")?,
                status_class: get_u64(&m, "status_class")
                    .and_then(|t| u8::try_from(t).ok())
                    .ok_or_else(|| bad_row("status_class"))?,
                counts,
                cost_usd: get_f64(&m, "cost_usd").ok_or_else(|| bad_row("cost_usd"))?,
                sketch: hex::decode(get_str(&m, "sketch")?).map_err(|_| bad_row("sketch"))?,
            });
        }
        let until = self
            .query_number("SELECT v FROM meta FINAL WHERE k = 'archived_until' FORMAT TSV")
            .await?;
        Ok((out, until))
    }

    async fn prune_rollups(&self, tier: u8, before_ms: i64) -> Result<u64> {
        let filter = format!("tier = {tier} AND bucket_ms < {before_ms} AND deleted = 0");
        let n: u64 = self
            .query_number(&format!(
                "SELECT count() FROM rollups FINAL WHERE {filter} FORMAT TSV"
            ))
            .await?;
        if n > 0 {
            // Tombstones with a newer version replace the rows.
            let version = self.next_version();
            self.query(
                &format!(
                    "INSERT INTO rollups SELECT tier, bucket_ms, consumer, api, method, route, status_class, counts, cost_usd, '', 1, {version} FROM rollups FINAL WHERE {filter}"
                ),
                "",
            )
            .await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    crate::event_store_suite!(clickhouse_events, ClickHouseStore);

    #[tokio::test]
    async fn a_tail_reads_other_nodes_inserts_in_order_and_never_its_own() {
        use crate::testsuite::{Backend, Fresh, event};
        if !<ClickHouseStore as Backend>::available() {
            return;
        }
        let fresh = Fresh::<ClickHouseStore>::new();
        let store = fresh.store();
        // Node a: two days in one shipment, so two inserts (1 and 2); node b: one.
        let a = vec![
            event("a1", "acme", 10, 200),
            event("a2", "acme", DAY_MS + 10, 200),
        ];
        let (_, next) = store.append_from(a, "a", 1).await.unwrap();
        assert_eq!(next, 3);
        store
            .append_from(vec![event("b1", "acme", 20, 200)], "b", 1)
            .await
            .unwrap();
        let (rows, full) = store.tail("b", &BTreeMap::new(), 100).await.unwrap();
        assert!(!full);
        let seen: Vec<(String, u64, String)> = rows
            .into_iter()
            .map(|t| (t.node, t.seq, t.event.id))
            .collect();
        assert_eq!(
            seen,
            [("a".into(), 1, "a1".into()), ("a".into(), 2, "a2".into())]
        );
        let after = BTreeMap::from([("a".to_string(), 1)]);
        let (rows, _) = store.tail("c", &after, 100).await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|t| t.event.id.as_str()).collect();
        assert_eq!(ids, ["a2", "b1"], "after a's first insert, and all of b's");
        let (rows, full) = store.tail("c", &BTreeMap::new(), 2).await.unwrap();
        assert!(full && rows.len() == 2, "a full page says so");
    }

    #[tokio::test]
    async fn a_poll_reads_the_new_inserts_not_the_table_also_after_a_backfill() {
        use crate::testsuite::{Backend, Fresh, event};
        use testing::{BUDGET_ROWS, ChServer};
        if !<ClickHouseStore as Backend>::available() {
            return;
        }
        let server = ChServer::shared().unwrap();
        let fresh = Fresh::<ClickHouseStore>::new();
        let store = fresh.store();
        let db = store.database().to_string();
        // 400,000 events of node `old` over two days, 400 inserts of 1,000, 50 consumers:
        // written by the server itself, through the views like any insert.
        let d0 = 20_000_i64;
        let old_rows = 400_000_u64;
        server.query(&format!(
            "INSERT INTO {db}.events (day, consumer, has_consumer, ts_ms, id, node, seq, method, path, route, status, latency_ms, request_bytes, response_bytes, outcome)
             SELECT intDiv(ts, {DAY_MS}), concat('c', toString(number % 50)), 1, ts, concat('old', toString(number)), 'old', intDiv(number, 1000) + 1, 'GET', '/x', '/x', 200, 1.0, 0, 0, 'proxied'
             FROM (SELECT number, {} + number * 432 AS ts FROM system.numbers LIMIT {old_rows})",
            d0 * DAY_MS
        ));
        // Node `a`: a late event (day 1, so insert 1) and 300 new ones (day 2, insert 2).
        let mut batch = vec![event("late", "c7", (d0 + 1) * DAY_MS + 5_000, 200)];
        for i in 0..300 {
            batch.push(event(
                &format!("a{i}"),
                &format!("c{}", i % 3),
                (d0 + 2) * DAY_MS + i * 10,
                200,
            ));
        }
        let (_, next) = store.append_from(batch, "a", 1).await.unwrap();
        assert_eq!(next, 3);

        let budget = ClickHouseStore::connect(&server.budget_url(&db))
            .await
            .unwrap();
        // The check can fail: the former tail, a scan of `events`' node and seq, is refused.
        let scan = budget
            .query(
                "SELECT node, seq FROM events WHERE node != 'b' AND seq > 0 ORDER BY node, seq LIMIT 10 FORMAT TSV",
                "",
            )
            .await;
        assert!(
            scan.as_ref()
                .is_err_and(|e| e.to_string().contains("Limit for rows")),
            "a scan of {old_rows} rows must exceed the budget of {BUDGET_ROWS}: {scan:?}"
        );

        let check = |budget: ClickHouseStore| async move {
            // `a` is new to this reader, `old` was read up to its last insert.
            let after = BTreeMap::from([("old".to_string(), 400)]);
            let (rows, full) = budget.tail("b", &after, 120_000).await.unwrap();
            assert!(!full);
            let got: Vec<(String, u64)> = rows.iter().map(|t| (t.node.clone(), t.seq)).collect();
            assert_eq!(got.len(), 301);
            assert_eq!(got[0], ("a".to_string(), 1));
            assert_eq!(rows[0].event.id, "late");
            assert!(got[1..].iter().all(|g| *g == ("a".to_string(), 2)));
            // Idle: nothing after the cursor.
            let after = BTreeMap::from([("old".to_string(), 400), ("a".to_string(), 2)]);
            let (rows, full) = budget.tail("b", &after, 120_000).await.unwrap();
            assert!(rows.is_empty() && !full);
            // Part of `a`: its second insert.
            let after = BTreeMap::from([("old".to_string(), 400), ("a".to_string(), 1)]);
            let (rows, _) = budget.tail("b", &after, 120_000).await.unwrap();
            assert_eq!(rows.len(), 300);
            assert!(rows.iter().all(|t| t.node == "a" && t.seq == 2));
            // A limit inside an insert takes that insert whole and says the page is full.
            let after = BTreeMap::from([("old".to_string(), 400)]);
            let (rows, full) = budget.tail("b", &after, 100).await.unwrap();
            assert!(full && rows.len() == 301, "{}", rows.len());
        };
        check(budget.clone()).await;

        // A database from before the index: it is made and filled at connect.
        server.query(&format!("DROP TABLE {db}.event_seqs_mv"));
        server.query(&format!("DROP TABLE {db}.event_seqs"));
        ClickHouseStore::connect(&server.url(&db)).await.unwrap();
        let indexed = server.query(&format!("SELECT sum(n) FROM {db}.event_seqs"));
        assert_eq!(indexed.trim(), (old_rows + 301).to_string());
        check(budget).await;
        // Connecting again does not fill it twice.
        ClickHouseStore::connect(&server.url(&db)).await.unwrap();
        let indexed = server.query(&format!("SELECT sum(n) FROM {db}.event_seqs"));
        assert_eq!(indexed.trim(), (old_rows + 301).to_string());
    }

    #[test]
    fn urls_name_the_database_and_refuse_what_they_cannot_carry() {
        let u = parse_url("http://127.0.0.1:8123").unwrap();
        assert_eq!(
            (u.endpoint.as_str(), u.db.as_str()),
            ("http://127.0.0.1:8123/", "clientele")
        );
        let u = parse_url("http://bob:s%40cret@ch:8123/?database=analytics").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.db, "analytics");
        assert!(parse_url("ch:8123").is_err());
        assert!(parse_url("http://ch:8123/x").is_err());
        assert!(parse_url("http://ch:8123/?database=a;DROP").is_err());
    }

    #[test]
    fn quoting_escapes_what_would_end_a_string() {
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
    }
}

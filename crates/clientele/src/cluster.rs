//! `[storage] backend = "clickhouse"` (cargo feature `clickhouse`): raw events shared by every
//! node through ClickHouse.
//!
//! Each node keeps its own event log as its durable, exactly-once record and derives
//! everything from it, as with the embedded store. Its own events also go to a local spool
//! that [`clientele_store::clickhouse::spool::ship`] sends to ClickHouse (so an outage of
//! ClickHouse never reaches the gateway or the pipeline), and [`tail`] reads the events the
//! other nodes inserted, by `(node, seq)`, into this node's log and, for those its log takes as
//! new, through the pipeline's observers. Every node's rollups, contracts, detectors and stats
//! therefore see the whole cluster and answer as one embedded store fed all the events would.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use clientele_core::config::{StorageBackend, StorageConfig};
use clientele_store::{EventLog, EventStore};

/// The event store the pipeline writes to, and what the ClickHouse tasks need.
pub struct Events {
    pub store: Arc<dyn EventStore>,
    pub cluster: Option<Cluster>,
}

#[cfg(feature = "clickhouse")]
pub struct Cluster {
    pub ch: clientele_store::ClickHouseStore,
    pub log: EventLog,
    pub spool: Arc<clientele_store::clickhouse::spool::Spool>,
    /// This node's name in ClickHouse's `node` column (kept in `event_dir/node-id`).
    pub node: String,
    /// Where the tail's cursor is kept.
    pub dir: std::path::PathBuf,
}

#[cfg(not(feature = "clickhouse"))]
pub struct Cluster;

impl Cluster {
    /// This node's name, for the leases of work done once per cluster.
    pub fn node(&self) -> Option<String> {
        #[cfg(feature = "clickhouse")]
        return Some(self.node.clone());
        #[cfg(not(feature = "clickhouse"))]
        None
    }
}

/// Without ClickHouse support there is nothing to start (no `Cluster` is ever made).
#[cfg(not(feature = "clickhouse"))]
pub fn start(
    _cluster: Cluster,
    _pipeline: clientele_app::Pipeline,
    _exporters: &clientele_export::Exporters,
    _retention_days: u32,
    _shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    Ok(Vec::new())
}

/// The node's event store: its log, or with `backend = "clickhouse"` the spool and its log.
pub async fn open(storage: &StorageConfig, event_dir: &Path, log: EventLog) -> Result<Events> {
    if storage.backend != StorageBackend::Clickhouse {
        return Ok(Events {
            store: Arc::new(log),
            cluster: None,
        });
    }
    clickhouse(storage, event_dir, log).await
}

#[cfg(not(feature = "clickhouse"))]
async fn clickhouse(_storage: &StorageConfig, _event_dir: &Path, _log: EventLog) -> Result<Events> {
    anyhow::bail!(
        "storage.backend = \"clickhouse\": this clientele was built without ClickHouse support; build it with `cargo build --release --features postgres,clickhouse`, or use backend = \"postgres\""
    )
}

#[cfg(feature = "clickhouse")]
async fn clickhouse(storage: &StorageConfig, event_dir: &Path, log: EventLog) -> Result<Events> {
    use anyhow::Context;
    use clientele_store::clickhouse::spool::{DEFAULT_MAX_BYTES, Spool, SpooledLog};

    let Some(url) = storage.clickhouse_url.as_deref() else {
        // The config's validation refuses this; kept as an error, not a panic.
        anyhow::bail!("storage.clickhouse_url: required with backend = \"clickhouse\"");
    };
    let ch = clientele_store::ClickHouseStore::open(url)
        .map_err(|e| anyhow::anyhow!("storage.backend = \"clickhouse\": {e}"))?;
    let max = storage
        .clickhouse_spool_mib
        .map_or(DEFAULT_MAX_BYTES, |m| m << 20);
    match ch.ready().await {
        Ok(()) => {}
        // An outage must not keep a node from starting (a restart during it, a machine that
        // boots before ClickHouse): this node's log and spool need nothing from it. The shipper
        // and the tail make the schema and catch up once it answers.
        Err(clientele_store::StoreError::Unavailable(e)) => tracing::warn!(
            error = %e,
            spool_mib = max >> 20,
            "ClickHouse is unreachable at start-up: starting without it. Traffic is served and stored in this node's log; its events wait in the local spool and are sent once ClickHouse answers, and other nodes' events are read then"
        ),
        // An answer that says no (too old, a wrong password): retrying will not mend it.
        Err(e) => anyhow::bail!("storage.backend = \"clickhouse\": {e}"),
    }
    let node = node_id(event_dir)?;
    let dir = event_dir.join("clickhouse");
    let spool = Arc::new(
        Spool::open(&dir, max)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("opening the ClickHouse spool")?,
    );
    tracing::info!(place = ch.place(), node, "events shared through ClickHouse");
    let store = SpooledLog {
        log: log.clone(),
        spool: spool.clone(),
        ch: ch.clone(),
    };
    Ok(Events {
        store: Arc::new(store),
        cluster: Some(Cluster {
            ch,
            log,
            spool,
            node,
            dir,
        }),
    })
}

/// This node's name: made once (random) and kept beside its log, which has one process, so no
/// two running nodes share one. A node whose folder is new is a new node; its old events are
/// then tailed like any other node's, and the log's duplicate check keeps them once.
#[cfg(feature = "clickhouse")]
fn node_id(event_dir: &Path) -> Result<String> {
    let path = event_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = format!("node-{}", &clientele_core::event::random_id128()[..16]);
    std::fs::create_dir_all(event_dir)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// Starts the shipper and the tail, and puts the spool in `/metrics`.
#[cfg(feature = "clickhouse")]
pub fn start(
    cluster: Cluster,
    pipeline: clientele_app::Pipeline,
    exporters: &clientele_export::Exporters,
    retention_days: u32,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    use std::sync::atomic::Ordering;
    let stats = cluster.spool.clone();
    exporters
        .metrics()
        .register_gauge(
            "clientele_clickhouse_spool",
            "Events in the local spool for ClickHouse: waiting (events, bytes), shipped, already there (resends), dropped because the spool was full; and up (1 when the last call succeeded).",
            Box::new(move || {
                let s = &stats.stats;
                let l = |k: &str| vec![("state".to_string(), k.to_string())];
                vec![
                    (l("pending"), s.pending.load(Ordering::Relaxed) as f64),
                    (l("pending_bytes"), s.pending_bytes.load(Ordering::Relaxed) as f64),
                    (l("shipped"), s.shipped.load(Ordering::Relaxed) as f64),
                    (l("already_there"), s.already_there.load(Ordering::Relaxed) as f64),
                    (l("dropped"), s.dropped.load(Ordering::Relaxed) as f64),
                    (l("up"), if s.up.load(Ordering::Relaxed) { 1.0 } else { 0.0 }),
                ]
            }),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let ship = tokio::spawn(clientele_store::clickhouse::spool::ship(
        cluster.spool.clone(),
        cluster.ch.clone(),
        cluster.node.clone(),
        wait(shutdown.clone()),
    ));
    let tail = tokio::spawn(tail(cluster, pipeline, retention_days, wait(shutdown)));
    Ok(vec![ship, tail])
}

/// Rows read per poll of the tail; an insert has at most `SHIP_EVENTS` (50,000) rows, so a
/// poll always finishes at least one.
#[cfg(feature = "clickhouse")]
const TAIL_ROWS: usize = 120_000;
#[cfg(feature = "clickhouse")]
const TAIL_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads the other nodes' inserts into this node's log and observers, until `shutdown`. The
/// cursor (each node's last insert number read) is saved after the events are in the log, so
/// a crash re-reads at most one poll, which the log's duplicate check drops.
#[cfg(feature = "clickhouse")]
pub async fn tail(
    cluster: Cluster,
    pipeline: clientele_app::Pipeline,
    retention_days: u32,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use std::collections::BTreeMap;
    tokio::pin!(shutdown);
    let path = cluster.dir.join("tail.json");
    let mut after: BTreeMap<String, u64> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let failing = clientele_core::ratelog::Every::new(std::time::Duration::from_secs(10));
    let mut wait = TAIL_EVERY;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
        match tail_once(&cluster, &pipeline, &mut after, retention_days).await {
            Ok(true) => {
                wait = std::time::Duration::ZERO;
                save_cursor(&path, &after);
            }
            Ok(false) => wait = TAIL_EVERY,
            Err(e) => {
                clientele_core::warn_every!(
                    failing,
                    error = %e,
                    "cannot read other nodes' events from ClickHouse; retrying"
                );
                wait = std::time::Duration::from_secs(2);
            }
        }
    }
}

#[cfg(feature = "clickhouse")]
fn save_cursor(path: &Path, after: &std::collections::BTreeMap<String, u64>) {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(after).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(file = %path.display(), error = %e, "cannot save the ClickHouse tail cursor; a restart re-reads (duplicates are dropped)");
    }
}

/// One poll; true when it read anything (poll again at once).
#[cfg(feature = "clickhouse")]
async fn tail_once(
    cluster: &Cluster,
    pipeline: &clientele_app::Pipeline,
    after: &mut std::collections::BTreeMap<String, u64>,
    retention_days: u32,
) -> Result<bool, clientele_store::StoreError> {
    let (rows, full) = cluster.ch.tail(&cluster.node, after, TAIL_ROWS).await?;
    let Some(last) = rows.last().map(|t| (t.node.clone(), t.seq)) else {
        return Ok(false);
    };
    let mut reached: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for t in &rows {
        let e = reached.entry(t.node.clone()).or_default();
        *e = (*e).max(t.seq);
    }
    if full {
        // The limit may have cut the last insert: read it again next time (the log drops what
        // it already has).
        if let Some(s) = reached.get_mut(&last.0) {
            *s = last.1.saturating_sub(1);
        }
    }
    // Older than the raw retention: ingest would refuse them, and their days may be pruned.
    let cutoff =
        clientele_core::time::now_ms() - i64::from(retention_days) * clientele_analytics::DAY_MS;
    let events: Vec<_> = rows
        .into_iter()
        .map(|t| t.event)
        .filter(|e| e.ts_ms >= cutoff)
        .collect();
    let fresh = cluster.log.append_events(events).await?;
    pipeline.observe_stored(fresh).await;
    for (node, seq) in reached {
        let e = after.entry(node).or_default();
        *e = (*e).max(seq);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A ClickHouse store for a port nothing listens on, in a fresh folder.
    async fn open_unreachable() -> (std::path::PathBuf, u16, Result<Events>) {
        let dir = std::env::temp_dir().join(format!(
            "clientele-cluster-{}",
            clientele_core::event::random_id128()
        ));
        let sqlite = clientele_store::SqliteStore::open(&dir).unwrap();
        let log = EventLog::open(&dir.join("events"), sqlite).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = StorageConfig {
            backend: StorageBackend::Clickhouse,
            clickhouse_url: Some(format!("http://127.0.0.1:{port}")),
            ..StorageConfig::default()
        };
        let opened = open(&storage, &dir, log).await;
        (dir, port, opened)
    }

    #[cfg(not(feature = "clickhouse"))]
    #[tokio::test]
    async fn asking_for_clickhouse_without_it_built_in_is_an_error_not_a_panic() {
        let (dir, _, opened) = open_unreachable().await;
        let err = opened.err().unwrap().to_string();
        assert!(err.contains("--features postgres,clickhouse"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Nothing listens on the port: the node starts, and the store says where it is trying to
    /// reach each time it is asked.
    #[cfg(feature = "clickhouse")]
    #[tokio::test]
    async fn clickhouse_unreachable_at_start_up_is_not_an_error() {
        let (dir, port, opened) = open_unreachable().await;
        let cluster = opened.unwrap().cluster.unwrap();
        let err = cluster.ch.ready().await.unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "cannot reach ClickHouse at 127.0.0.1:{port}/clientele"
            )),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Wiring: builds the store, key index, event pipeline, gateway and admin API from a config,
//! and runs them until shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clientele_analytics::{DAY_MS, Engine, Retention};
use clientele_api::AppState;
use clientele_app::Pipeline;
use clientele_core::config::Config;
use clientele_core::keys::{KeyHasher, KeyIndex};
use clientele_core::pipeline::{EventSink, PipelineStats};
use clientele_gateway::limiter::Limiter;
use clientele_gateway::{Gateway, GatewayOptions, ServeSettings, TlsFiles};
use clientele_store::{ControlStore, EventLog, SqliteStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Sampled exchanges waiting for schema validation; past this the gateway drops (and counts)
/// samples rather than wait.
const VALIDATION_QUEUE: usize = 1024;

/// A started server: its addresses, and the handle to stop it.
pub struct Running {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    /// Where the token was written when it was generated rather than configured.
    pub token_file: Option<std::path::PathBuf>,
    pub data_dir: std::path::PathBuf,
    /// The exporters: `findings()` is the hook for findings as OTLP log records, and
    /// `metrics().register_gauge` the one for limiter and Redis gauges.
    pub exporters: Arc<clientele_export::Exporters>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
    /// Saved once more after the writer drained, so a graceful restart replays nothing.
    features: (
        Arc<clientele_governance::FeatureStore>,
        Arc<clientele_store::BucketFile>,
    ),
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, then flushes the pipeline.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // The gateway's sinks are gone once its tasks ended, so the writer drains and exits.
        if tokio::time::timeout(Duration::from_secs(30), self.writer)
            .await
            .is_err()
        {
            tracing::warn!(
                "event writer did not finish within 30 s; some events may not be stored"
            );
        }
        let (features, file) = self.features;
        match tokio::task::spawn_blocking(move || clientele_app::governance::save(&features, &file))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "saving governance features at shutdown failed; the next start rebuilds the days since the last save")
            }
            Err(e) => tracing::warn!(error = %e, "saving governance features at shutdown failed"),
        }
        // The writer held the other reference; once it is gone, queued exports get a last try.
        if let Ok(exporters) = Arc::try_unwrap(self.exporters) {
            exporters.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Binds both listeners and starts every part. Returns once the server is accepting.
pub async fn start(config: Config) -> Result<Running> {
    let admin_token_configured = config.admin_token();
    if admin_token_configured.is_none() && !config.admin.listen.ip().is_loopback() {
        bail!(
            "admin.token: required when [admin].listen ({}) is not a loopback address; set it in the config or CLIENTELE_ADMIN_TOKEN",
            config.admin.listen
        );
    }

    // Specs first: a bad one stops start-up with the file and the place, before anything listens.
    let contracts = Arc::new(crate::contract::load(&config)?);
    let store = SqliteStore::open(&config.storage.data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = config.storage.data_dir.clone();
    let (admin_token, token_file) = match admin_token_configured {
        Some(t) => (t, None),
        None => {
            let (t, path) = load_or_create_token(&data_dir)?;
            (t, Some(path))
        }
    };

    let (control, finding_store) = crate::control_plane::open(&config.storage, &store).await?;
    // Spec versions live in the store, so their history survives restarts.
    for contract in contracts.apis() {
        clientele_api::contract::persist_spec_versions(&*control, contract).await;
    }
    let event_dir = config
        .storage
        .event_dir
        .clone()
        .unwrap_or_else(|| data_dir.clone());
    let log = open_event_log(&event_dir, store).await?;
    // With `backend = "clickhouse"`: a spool for ClickHouse before the log (crate::cluster).
    let crate::cluster::Events {
        store: events,
        cluster,
    } = crate::cluster::open(&config.storage, &event_dir, log).await?;
    let node = cluster.as_ref().and_then(crate::cluster::Cluster::node);
    let keys = Arc::new(KeyIndex::with_plans(
        KeyHasher::new(control.key_secret()),
        config.plans.clone(),
    ));
    keys.replace_all(
        control
            .key_entries()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    // Redis first: an unreachable Redis must stop start-up before anything listens.
    let limiter = Arc::new(
        Limiter::from_config(&config.limits)
            .await
            .map_err(|e| anyhow::anyhow!(e))?,
    );
    // With Redis the cluster's counts live there; locally they are persisted here.
    let persist_quotas = limiter.mode() == "local";
    if persist_quotas && config.storage.backend != clientele_core::config::StorageBackend::Sqlite {
        tracing::warn!(
            "the control plane is shared but [limits] redis_url is not set: each node enforces rate limits and quotas on its own; set redis_url for one limit across nodes"
        );
    }
    if persist_quotas {
        keys.restore_usage(
            control
                .load_quota_usage()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }

    let a = &config.analytics;
    let engine = Arc::new(Engine::new(Retention {
        minute_ms: i64::from(a.minute_retention_days) * DAY_MS,
        hour_ms: i64::from(a.hour_retention_days) * DAY_MS,
        day_ms: i64::from(a.day_retention_days) * DAY_MS,
    }));
    // Governance features are saved in rollups.db (below) and loaded at start-up; the replay
    // rebuilds only the days not complete there.
    let governance = Arc::new(match config.governance.ip_table.clone() {
        Some(path) => {
            let table = tokio::task::spawn_blocking(move || {
                clientele_governance::iptable::IpTable::load(&path)
            })
            .await
            .context("loading governance.ip_table")?
            .map_err(|e| anyhow::anyhow!(e))?;
            let (v4, v6) = table.len();
            tracing::info!(
                ipv4_ranges = v4,
                ipv6_ranges = v6,
                "loaded governance.ip_table"
            );
            clientele_governance::FeatureStore::with_ip_table(Arc::new(table))
        }
        None => clientele_governance::FeatureStore::new(),
    });
    governance.on_blocks(block_hook(keys.clone()));

    let stats = Arc::new(PipelineStats::default());
    let (sink, rx) = open_hand_off(&event_dir, config.gateway.event_queue, stats.clone())?;
    let exporters = Arc::new(
        clientele_export::Exporters::start(&config.exports, &config.outbound, Some(stats.clone()))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    register_limiter_gauges(&exporters, &limiter)?;
    // Every event, from the gateway's writer or from ingest, takes this one path. A further
    // consumer of stored events is one more `.with_observer(...)` line.
    let pipeline = Pipeline::new(events.clone(), stats.clone())
        .with_observer(engine.clone())
        .with_observer(contracts.clone())
        .with_observer(governance.clone())
        .with_exporters(exporters.clone());
    // Closed rollup buckets live in rollups.db beside the event log they are derived from;
    // start-up rebuilds only the days not complete there.
    let buckets = Arc::new(
        clientele_store::BucketFile::open(&event_dir).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let cache_bytes = usize::try_from(a.rollup_cache_mib << 20).unwrap_or(usize::MAX);
    clientele_app::governance::restore(&governance, buckets.clone(), &events)
        .await
        .map_err(|e| anyhow::anyhow!("restoring governance features: {e}"))?;
    let restored =
        clientele_app::rollups::restore_persisted(&pipeline, &engine, buckets.clone(), cache_bytes)
            .await
            .map_err(|e| anyhow::anyhow!("restoring rollups: {e}"))?;
    let archived_until = Arc::new(std::sync::atomic::AtomicI64::new(restored.archived_until));
    if persist_quotas {
        // Budgets are counted in memory on one node: restore today's and this month's use.
        clientele_app::budgets::restore(&keys, &engine, clientele_core::time::now_ms());
    }
    let writer = tokio::spawn(clientele_app::writer::run(rx, pipeline.clone()));

    let tls = match (&config.gateway.tls_cert, &config.gateway.tls_key) {
        (Some(cert), Some(key)) => Some(
            clientele_gateway::load_tls(&TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .map_err(|e| anyhow::anyhow!("gateway.tls_cert: {e}"))?,
        ),
        _ => None,
    };
    let mut gateway = Gateway::new(
        &config.apis,
        GatewayOptions {
            trusted_proxies: config.gateway.trusted_proxies.clone(),
            session_header: config.gateway.session_header.clone(),
            end_user_header: config.gateway.end_user_header.clone(),
            max_request_body_bytes: config.gateway.max_request_body_bytes,
            hide_credentials: true,
            prices: Arc::new(clientele_core::prices::PriceBook::with_overrides(
                &config.prices,
            )),
            outbound_tls: config.outbound.clone(),
            max_identical_calls: config.agents.max_identical_calls,
        },
        keys.clone(),
        limiter.clone(),
        sink,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    // Sampled bodies are validated on one background thread; the gateway only `try_send`s.
    let samples = (!contracts.is_empty()).then(|| contracts.start_validator(VALIDATION_QUEUE));
    gateway.set_contracts(&contracts, samples);

    let gateway_listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| {
            format!(
                "gateway.listen: cannot listen on {}; is another process using it?",
                config.gateway.listen
            )
        })?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| {
            format!(
                "admin.listen: cannot listen on {}; is another process using it?",
                config.admin.listen
            )
        })?;
    let gateway_addr = gateway_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let settings = ServeSettings::from_config(&config.gateway);
    tasks.push(tokio::spawn(clientele_gateway::serve(
        Arc::new(gateway),
        gateway_listener,
        tls,
        settings,
        wait_for(shutdown_rx.clone()),
    )));

    let alert_targets = clientele_core::alert::targets(&config.alerts, &config.plans, "config")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let alert_http =
        clientele_app::alerts::client(&config.outbound).map_err(|e| anyhow::anyhow!(e))?;
    let digest_targets = alert_targets.clone();
    let digest_http = alert_http.clone();
    let (alert_tx, alert_task) = clientele_app::alerts::start(
        alert_targets,
        alert_http,
        finding_store.clone(),
        control.clone(),
        wait_for(shutdown_rx.clone()),
    )
    .await;
    tasks.extend(alert_task);
    let findings = Arc::new(
        clientele_app::findings::FindingsService::new(
            clientele_detect::Registry::configured(&config.detection)
                .with(crate::contract::ContractDetector(contracts.clone())),
            finding_store.clone(),
            control.clone(),
            engine.clone(),
            config.plans.clone(),
            alert_tx,
        )
        .governance(governance.clone())
        .observe({
            // New and escalated findings become OTLP log records when `[exports.otlp]` has logs on.
            let export = exporters.findings();
            Box::new(move |found| {
                export.offer(found);
            })
        }),
    );
    // `[digest]`: the reports' summary through the alert webhooks, when both are configured.
    let digest = Arc::new(clientele_app::reports::digest::DigestService {
        engine: engine.clone(),
        control: control.clone(),
        findings: finding_store.clone(),
        plans: Arc::new(config.plans.clone()),
        spec_apis: contracts.apis().map(|c| c.api.clone()).collect(),
        targets: digest_targets,
        http: digest_http,
    });
    tasks.push(tokio::spawn(clientele_app::reports::digest::run_periodic(
        digest,
        Duration::from_secs(config.digest.interval_secs),
        wait_for(shutdown_rx.clone()),
    )));
    tasks.push(tokio::spawn(clientele_app::detection::run_periodic(
        findings.clone(),
        Some(stats.clone()),
        Duration::from_secs(config.detection.interval_secs),
        config.detection.lookback_hours,
        config.analytics.day_retention_days,
        // Every node sees every event with ClickHouse: one evaluates for the cluster.
        node.map(|holder| clientele_app::detection::Lease {
            control: control.clone(),
            holder,
        }),
        wait_for(shutdown_rx.clone()),
    )));
    if let Some(cluster) = cluster {
        tasks.extend(crate::cluster::start(
            cluster,
            pipeline.clone(),
            &exporters,
            config.storage.raw_event_retention_days,
            shutdown_rx.clone(),
        )?);
    }

    let plans: BTreeSet<String> = config.plans.keys().cloned().collect();
    let state = AppState {
        control: control.clone(),
        events: events.clone(),
        keys: keys.clone(),
        admin_token: admin_token.as_str().into(),
        pipeline,
        plans: Arc::new(plans),
        started: Instant::now(),
        engine: engine.clone(),
        max_future_ms: i64::try_from(config.analytics.max_future_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX),
        max_age_ms: i64::from(config.storage.raw_event_retention_days) * DAY_MS,
        archived_until: archived_until.clone(),
        known_consumers: Arc::default(),
        limiter: limiter.stats(),
        limiter_mode: limiter.mode(),
        findings,
        contracts: contracts.clone(),
        governance: governance.clone(),
        otlp: config.otlp_ingest.clone(),
        allocator_committed: crate::allocator_committed,
    };
    // The dashboard and portal share the admin listener; the API router keeps the fallback.
    let ui = clientele_ui::router(state.clone());
    let app = clientele_api::router(state, config.admin.max_body_bytes)
        .merge(ui)
        .merge(crate::exports::metrics_router(
            exporters.metrics(),
            &admin_token,
            &config.exports.prometheus,
        ));
    let admin_shutdown = wait_for(shutdown_rx.clone());
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(
            admin_listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(admin_shutdown);
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server failed");
        }
    }));

    tasks.push(tokio::spawn(crate::contract::reload_on_sighup(
        contracts.clone(),
        control.clone(),
        wait_for(shutdown_rx.clone()),
    )));
    tasks.push(tokio::spawn(sync_keys(
        control.clone(),
        keys.clone(),
        wait_for(shutdown_rx.clone()),
    )));
    if persist_quotas {
        tasks.push(tokio::spawn(persist_quota_usage(
            control.clone(),
            keys,
            wait_for(shutdown_rx.clone()),
        )));
    }
    tasks.push(tokio::spawn(report_drops(
        stats,
        wait_for(shutdown_rx.clone()),
    )));
    tasks.push(tokio::spawn(clientele_app::governance::maintain(
        governance.clone(),
        buckets.clone(),
        wait_for(shutdown_rx.clone()),
    )));
    tasks.push(tokio::spawn(clientele_app::rollups::maintain(
        events,
        engine,
        buckets.clone(),
        archived_until,
        config.storage.raw_event_retention_days,
        wait_for(shutdown_rx),
    )));

    Ok(Running {
        gateway_addr,
        admin_addr,
        admin_token,
        token_file,
        data_dir,
        exporters,
        shutdown: shutdown_tx,
        tasks,
        writer,
        features: (governance, buckets),
    })
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Room in the hand-off ring per event of `[gateway].event_queue`: gateway events encode to
/// 150-300 bytes.
const RING_BYTES_PER_EVENT: u64 = 512;

/// The gateway → writer hand-off: a bounded queue whose events are also held in the
/// memory-mapped ring `event_dir/events.ring`, so a crash of the process loses none of them.
/// What the previous process left in the ring is handed to the writer first. A ring that cannot
/// be created (a full disk at start) leaves the queue without it, said loudly.
fn open_hand_off(
    event_dir: &Path,
    queue: usize,
    stats: Arc<PipelineStats>,
) -> Result<(EventSink, clientele_core::pipeline::EventReceiver)> {
    let path = event_dir.join("events.ring");
    let bytes = (queue as u64 * RING_BYTES_PER_EVENT).max(1 << 20);
    match clientele_core::ring::Ring::open(&path, bytes) {
        Ok((ring, replay)) => {
            if let Some(at) = replay.damaged_at {
                tracing::error!(file = %path.display(), offset = at, "the hand-off ring holds a damaged frame; replay stopped there");
            }
            if !replay.events.is_empty() {
                tracing::info!(
                    events = replay.events.len(),
                    "replaying events the previous process handed over but had not stored"
                );
            }
            Ok(EventSink::durable(queue, stats, ring, replay.events))
        }
        // The ring is locked for as long as the process runs, so it also guards the event log
        // beside it, which must have one writer.
        Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => bail!(
            "storage.event_dir: {e}; nodes that share a data_dir need their own [storage].event_dir"
        ),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot open the hand-off ring; serving without it, so a crash loses the events not yet stored");
            Ok(EventSink::bounded(queue, stats))
        }
    }
}

/// Opens the event log in `event_dir/events`, the rollup archive staying in SQLite. Events an
/// older release kept in SQLite's `events` table are moved into the log first.
async fn open_event_log(event_dir: &Path, sqlite: SqliteStore) -> Result<EventLog> {
    let log = EventLog::open(&event_dir.join("events"), sqlite.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let moved = log
        .adopt_sqlite_events(&sqlite)
        .await
        .map_err(|e| anyhow::anyhow!("moving events from SQLite into the event log: {e}"))?;
    if moved > 0 {
        tracing::info!(
            events = moved,
            "moved raw events from SQLite into the event log"
        );
    }
    Ok(log)
}

/// Reads the admin token kept in the data dir, or makes one. Only the owner can read it.
fn load_or_create_token(data_dir: &Path) -> Result<(String, std::path::PathBuf)> {
    let path = data_dir.join("admin-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim().to_string();
        if t.len() >= 16 {
            return Ok((t, path));
        }
    }
    let token = format!("cat_{}", clientele_core::keys::random_base62(40));
    write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((token, path))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
}

/// Where the governance evaluation's block verdicts go: onto each consumer's limit slot, where
/// the gateway reads them with one atomic load. The list is complete, so a consumer missing
/// from it is unblocked.
fn block_hook(keys: Arc<KeyIndex>) -> clientele_governance::features::BlockHook {
    Box::new(move |blocks| {
        let by_consumer: std::collections::HashMap<&str, _> =
            blocks.iter().map(|(c, r)| (c.as_str(), *r)).collect();
        for (consumer, slot) in keys.slots() {
            slot.set_policy_block(by_consumer.get(consumer.as_ref()).copied());
        }
    })
}

/// Keeps the key index in step with the store, for changes made by other nodes or processes.
/// Changes made through this node's admin API apply at once; this bounds the rest to 500 ms.
async fn sync_keys(
    control: Arc<dyn ControlStore>,
    keys: Arc<KeyIndex>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut seen = control.control_version().await.unwrap_or(0);
    // A database that is away fails every poll; one line per 10 s says so with the count.
    let failing = clientele_core::ratelog::Every::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Taken before the read: a consumer this node's admin API reloads meanwhile keeps
        // what that reload found, which is newer than this read.
        let since = keys.generation();
        match control.control_version().await {
            Ok(v) if v != seen => match control.key_entries().await {
                Ok(entries) => {
                    if keys.replace_all_since(entries, since) {
                        seen = v;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "key reload failed; keeping the previous keys")
                }
            },
            Ok(_) => {}
            Err(e) => clientele_core::warn_every!(
                failing,
                error = %e,
                "cannot read the control version; the gateway keeps its current keys"
            ),
        }
    }
}

/// The limiter's state in `/metrics`: decisions by result (cumulative since start) and whether
/// the shared Redis answers.
fn register_limiter_gauges(
    exporters: &clientele_export::Exporters,
    limiter: &Limiter,
) -> Result<()> {
    let stats = limiter.stats();
    let mode = limiter.mode().to_string();
    let metrics = exporters.metrics();
    let s = stats.clone();
    metrics
        .register_gauge(
            "clientele_limiter_decisions",
            "Limit decisions since start, by result (cumulative; use rate()).",
            Box::new(move || {
                let l = |r: &str| vec![("result".to_string(), r.to_string())];
                vec![
                    (l("allowed"), s.allowed.load(Ordering::Relaxed) as f64),
                    (l("refused"), s.refused.load(Ordering::Relaxed) as f64),
                    (
                        l("failed_open"),
                        s.failed_open.load(Ordering::Relaxed) as f64,
                    ),
                    (
                        l("failed_closed"),
                        s.failed_closed.load(Ordering::Relaxed) as f64,
                    ),
                    (
                        l("redis_error"),
                        s.redis_errors.load(Ordering::Relaxed) as f64,
                    ),
                ]
            }),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    metrics
        .register_gauge(
            "clientele_limiter_redis_up",
            "1 when the limiter's last call to Redis succeeded (always 1 in local mode).",
            Box::new(move || {
                let up = stats.redis_up.load(Ordering::Relaxed);
                vec![(
                    vec![("mode".to_string(), mode.clone())],
                    if up { 1.0 } else { 0.0 },
                )]
            }),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// Saves quota usage every second and once more at shutdown, so quotas survive a restart. A
/// crash loses at most the last second's counts (documented in the README).
async fn persist_quota_usage(
    control: Arc<dyn ControlStore>,
    keys: Arc<KeyIndex>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut pending: std::collections::HashMap<String, clientele_core::keys::QuotaUsage> =
        std::collections::HashMap::new();
    loop {
        let stopping = tokio::select! {
            () = &mut shutdown => true,
            () = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        // Only consumers whose counts changed are written; a failed save is retried with the
        // newer counts merged in.
        for u in keys.changed_usage(clientele_core::time::now_ms()) {
            pending.insert(u.consumer.clone(), u);
        }
        if !pending.is_empty() {
            let batch: Vec<_> = pending.values().cloned().collect();
            match control.save_quota_usage(batch).await {
                Ok(()) => pending.clear(),
                Err(e) => tracing::warn!(error = %e, "could not save quota usage; will retry"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Logs dropped events, at most every 10 s, so an operator notices the pipeline falling behind.
async fn report_drops(stats: Arc<PipelineStats>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut last = 0;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let dropped = stats.dropped.load(Ordering::Relaxed);
        if dropped > last {
            tracing::warn!(
                dropped_total = dropped,
                dropped_recently = dropped - last,
                "event pipeline fell behind; events were dropped, traffic was not slowed"
            );
            last = dropped;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

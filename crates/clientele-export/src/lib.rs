//! Exports to the observability stack: Prometheus exposition with a bounded number of consumer
//! series, OTLP/HTTP (one span per request, per-consumer metrics, findings as log records) and
//! log sinks for per-request events (rotating NDJSON files; Loki, Splunk HEC and JSON webhooks).
//!
//! [`Exporters::offer`] is called by the event pipeline's writer with each batch, never by the
//! gateway's hot path. It updates the in-memory metrics and hands copies to each exporter's
//! bounded queue without waiting: a full queue drops the items and counts them. Only the
//! exporters' own tasks wait on the network.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clientele_core::event::Event;
use clientele_core::exports_config::{ExportsConfig, HttpLogFormat, LogSinkKind, OtlpProtocol};
use clientele_core::finding::Finding;
use clientele_core::pipeline::PipelineStats;
use tokio::task::JoinHandle;

mod deliver;
pub mod hist;
pub mod logs;
pub mod otlp;
mod pb;
pub mod prom;
pub mod topk;

pub use prom::{GaugeReader, GaugeSample, Metrics};

/// Counters of one exporter's queue, shown in `/metrics` with `exporter="<name>"`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Items admitted and not yet delivered or given up.
    pub queued: AtomicUsize,
    pub sent: AtomicU64,
    /// Items refused because the queue was full.
    pub dropped: AtomicU64,
    /// Items given up after retries, or refused by the endpoint.
    pub failed: AtomicU64,
    pub retries: AtomicU64,
}

/// The findings hook: hands findings to the OTLP log exporter without waiting. Cheap to clone;
/// a no-op when OTLP logs are not configured.
#[derive(Clone, Default)]
pub struct FindingsExport {
    queue: Option<deliver::Queue<Finding>>,
}

impl FindingsExport {
    /// Queues the findings as OTLP log records. Returns how many were dropped (queue full).
    pub fn offer(&self, findings: &[Finding]) -> usize {
        match &self.queue {
            Some(q) => q.offer(findings.to_vec()),
            None => 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }
}

struct EventExporter {
    name: String,
    sample_rate: f64,
    queue: deliver::Queue<Event>,
}

/// Every configured exporter, started.
pub struct Exporters {
    metrics: Arc<Metrics>,
    events: Vec<EventExporter>,
    findings: FindingsExport,
    tasks: Vec<JoinHandle<()>>,
    stop_metrics: Option<tokio::sync::watch::Sender<bool>>,
}

/// An exporter that could not be started, phrased as `key: reason`.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::error::Error for StartError {}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn now_ns() -> u64 {
    (clientele_core::time::now_ms().max(0) as u64) * 1_000_000
}

impl Exporters {
    /// Starts the exporters in `cfg`. Must be called inside a Tokio runtime.
    /// Starts the configured exporters; `tls` (the config's `[outbound]`) is the trust for
    /// `https://` collectors and sinks.
    pub fn start(
        cfg: &ExportsConfig,
        tls: &clientele_http::TlsSettings,
        pipeline: Option<Arc<PipelineStats>>,
    ) -> Result<Exporters, StartError> {
        let metrics = Arc::new(Metrics::new(cfg.prometheus.top_k, pipeline));
        let mut ex = Exporters {
            metrics: metrics.clone(),
            events: Vec::new(),
            findings: FindingsExport::default(),
            tasks: Vec::new(),
            stop_metrics: None,
        };
        if let Some(o) = &cfg.otlp {
            ex.start_otlp(o, tls)?;
        }
        for (i, s) in cfg.logs.iter().enumerate() {
            ex.start_log_sink(i, s, tls)?;
        }
        Ok(ex)
    }

    fn start_otlp(
        &mut self,
        o: &clientele_core::exports_config::OtlpConfig,
        tls: &clientele_http::TlsSettings,
    ) -> Result<(), StartError> {
        let d = o.delivery();
        let poster = deliver::Poster::new(&d, &o.headers, tls)
            .map_err(|e| StartError(format!("exports.otlp: {e}")))?;
        let base = o.endpoint.trim_end_matches('/').to_string();
        let json = o.protocol == OtlpProtocol::HttpJson;
        let content_type = if json {
            "application/json"
        } else {
            "application/x-protobuf"
        };
        let service: Arc<str> = o.service_name.as_str().into();
        if o.traces {
            let stats = Arc::new(QueueStats::default());
            self.metrics.register_exporter("otlp_traces", stats.clone());
            let (poster, url, service, st) = (
                poster.clone(),
                format!("{base}/v1/traces"),
                service.clone(),
                stats.clone(),
            );
            let (queue, task) = deliver::spawn_worker(&d, stats, move |batch: Vec<Event>| {
                let (poster, url, service, st) =
                    (poster.clone(), url.clone(), service.clone(), st.clone());
                async move {
                    let body = if json {
                        otlp::traces_json(&service, &batch)
                    } else {
                        otlp::traces_protobuf(&service, &batch)
                    };
                    poster
                        .post("otlp_traces", &url, content_type, Bytes::from(body), &st)
                        .await
                }
            });
            self.events.push(EventExporter {
                name: "otlp_traces".into(),
                sample_rate: o.sample_rate,
                queue,
            });
            self.tasks.push(task);
        }
        if o.logs {
            let stats = Arc::new(QueueStats::default());
            self.metrics.register_exporter("otlp_logs", stats.clone());
            let (poster, url, service, st) = (
                poster.clone(),
                format!("{base}/v1/logs"),
                service.clone(),
                stats.clone(),
            );
            let (queue, task) = deliver::spawn_worker(&d, stats, move |batch: Vec<Finding>| {
                let (poster, url, service, st) =
                    (poster.clone(), url.clone(), service.clone(), st.clone());
                async move {
                    let body = if json {
                        otlp::logs_json(&service, &batch, now_ns())
                    } else {
                        otlp::logs_protobuf(&service, &batch, now_ns())
                    };
                    poster
                        .post("otlp_logs", &url, content_type, Bytes::from(body), &st)
                        .await
                }
            });
            self.findings = FindingsExport { queue: Some(queue) };
            self.tasks.push(task);
        }
        if o.metrics {
            let stats = Arc::new(QueueStats::default());
            self.metrics
                .register_exporter("otlp_metrics", stats.clone());
            let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
            self.stop_metrics = Some(stop_tx);
            let metrics = self.metrics.clone();
            let url = format!("{base}/v1/metrics");
            let interval = Duration::from_millis(o.metrics_interval_ms);
            let start_ns = now_ns();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let stopping = tokio::select! {
                        _ = stop_rx.wait_for(|s| *s) => true,
                        () = tokio::time::sleep(interval) => false,
                    };
                    // Values are cumulative: a failed push loses nothing, the next one carries
                    // the totals. So a push is one point in time and is not queued.
                    let snap = otlp::MetricsSnapshot {
                        start_ns,
                        now_ns: now_ns(),
                        consumers: metrics.consumer_snapshot(),
                        apis: metrics.api_durations(),
                    };
                    let body = if json {
                        otlp::metrics_json(&service, &snap)
                    } else {
                        otlp::metrics_protobuf(&service, &snap)
                    };
                    let n = snap.consumers.len() + snap.apis.len();
                    let ok = poster
                        .post(
                            "otlp_metrics",
                            &url,
                            content_type,
                            Bytes::from(body),
                            &stats,
                        )
                        .await;
                    let counter = if ok { &stats.sent } else { &stats.failed };
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if stopping {
                        return;
                    }
                }
            }));
        }
        Ok(())
    }

    fn start_log_sink(
        &mut self,
        i: usize,
        s: &clientele_core::exports_config::LogSinkConfig,
        tls: &clientele_http::TlsSettings,
    ) -> Result<(), StartError> {
        let d = s.delivery();
        let name = s.name.clone().unwrap_or_else(|| match s.kind {
            LogSinkKind::File => format!("file{i}"),
            LogSinkKind::Http => format!("http{i}"),
        });
        let label = format!("log_{name}");
        let stats = Arc::new(QueueStats::default());
        self.metrics.register_exporter(&label, stats.clone());
        let fields = Arc::new(s.fields.clone());
        let (queue, task) = match s.kind {
            LogSinkKind::File => {
                let path = s.path.clone().ok_or_else(|| {
                    StartError(format!("exports.logs[{i}].path: a file sink needs a path"))
                })?;
                let file = Arc::new(Mutex::new(logs::RotatingFile::new(
                    path.clone(),
                    s.max_bytes,
                    s.keep,
                )));
                let sink = label.clone();
                // A full disk fails every batch: one warning per interval, with the count.
                let failures = Arc::new(clientele_core::ratelog::Every::new(
                    std::time::Duration::from_secs(10),
                ));
                deliver::spawn_worker(&d, stats, move |batch: Vec<Event>| {
                    let (file, fields, sink, path, failures) = (
                        file.clone(),
                        fields.clone(),
                        sink.clone(),
                        path.clone(),
                        failures.clone(),
                    );
                    async move {
                        match logs::write_file_batch(file, batch, fields).await {
                            Ok(()) => true,
                            Err(e) => {
                                clientele_core::warn_every!(failures, exporter = %sink, path = %path.display(), error = %e, "log file write failed; batch dropped");
                                false
                            }
                        }
                    }
                })
            }
            LogSinkKind::Http => {
                let url = s.url.clone().ok_or_else(|| {
                    StartError(format!("exports.logs[{i}].url: an http sink needs a url"))
                })?;
                let mut headers = s.headers.clone();
                let format = s.format.unwrap_or(HttpLogFormat::Json);
                if let (HttpLogFormat::Splunk, Some(token)) = (format, &s.token) {
                    headers.insert("authorization".into(), format!("Splunk {token}"));
                }
                let poster = deliver::Poster::new(&d, &headers, tls)
                    .map_err(|e| StartError(format!("exports.logs[{i}]: {e}")))?;
                let (sink, st) = (label.clone(), stats.clone());
                deliver::spawn_worker(&d, stats, move |batch: Vec<Event>| {
                    let (poster, url, fields, sink, st) = (
                        poster.clone(),
                        url.clone(),
                        fields.clone(),
                        sink.clone(),
                        st.clone(),
                    );
                    async move {
                        let (body, ct) = logs::http_body(format, &batch, &fields);
                        poster.post(&sink, &url, ct, body, &st).await
                    }
                })
            }
        };
        self.events.push(EventExporter {
            name: label,
            sample_rate: s.sample_rate,
            queue,
        });
        self.tasks.push(task);
        Ok(())
    }

    /// The metrics behind `/metrics`, also where gauge sources are registered.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The hook for findings as OTLP log records.
    pub fn findings(&self) -> FindingsExport {
        self.findings.clone()
    }

    /// Offers a batch of events from the pipeline. Never waits: updates the metrics in memory
    /// and queues sampled copies for each exporter, dropping (and counting) what does not fit.
    pub fn offer(&self, events: &[Event]) {
        self.metrics.record(events);
        for ex in &self.events {
            let kept: Vec<Event> = events
                .iter()
                .filter(|e| logs::keep(e, ex.sample_rate))
                .cloned()
                .collect();
            let dropped = ex.queue.offer(kept);
            if dropped > 0 {
                tracing::debug!(exporter = %ex.name, dropped, "export queue full; events dropped");
            }
        }
    }

    /// Whether any exporter needs the events themselves (beyond the in-memory metrics).
    pub fn has_event_exporters(&self) -> bool {
        !self.events.is_empty()
    }

    /// Stops the exporters: queued items get one more delivery attempt, bounded by `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let Exporters {
            events,
            findings,
            tasks,
            stop_metrics,
            ..
        } = self;
        drop(events);
        drop(findings);
        if let Some(stop) = stop_metrics {
            let _ = stop.send(true);
        }
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                "exporters did not finish within the grace period; queued items were dropped"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use clientele_core::event::{Event, Outcome};

    pub fn event(consumer: &str, status: u16, latency_ms: f64) -> Event {
        Event {
            id: clientele_core::event::event_id(1_700_000_000_000),
            ts_ms: 1_700_000_000_000,
            consumer: Some(consumer.into()),
            key_id: Some("key_1".into()),
            api: Some("petstore".into()),
            method: "GET".into(),
            path: "/pets/1".into(),
            route: "/pets/{id}".into(),
            status,
            latency_ms,
            upstream_latency_ms: Some(latency_ms / 2.0),
            request_bytes: 10,
            response_bytes: 100,
            client_ip: Some("127.0.0.1".into()),
            user_agent: Some("test/1".into()),
            session_id: None,
            end_user: None,
            trace_id: Some(clientele_core::event::random_id128()),
            outcome: Outcome::Proxied,
            plan: Some("pro".into()),
            team: Some("retail".into()),
            use_case: None,
            model: None,
            tokens_in: None,
            tokens_out: None,
            cost_usd: None,
            close_code: None,
            call_hash: None,
            tokens_cached: None,
            tokens_cache_write: None,
            tokens_reasoning: None,
            tls_fp: None,
        }
    }
}

#[cfg(test)]
mod tests;

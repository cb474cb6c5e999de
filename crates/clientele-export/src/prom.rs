//! Metrics kept from the event stream, and their Prometheus text exposition (format 0.0.4).
//!
//! Hand-written rather than through a metrics crate: the families are few and fixed, the
//! per-consumer ones come from [`TopK`] rather than from a label-keyed registry (which is what
//! lets their number be bounded), and the output is checked by `promtool check metrics` in the
//! tests.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use clientele_core::event::{Event, Outcome};
use clientele_core::pipeline::PipelineStats;

use crate::QueueStats;
use crate::hist::{BOUNDS, Hist};
use crate::topk::{ANONYMOUS, ConsumerSeries, STATUS_CLASSES, TopK, status_class_index};

/// Label pairs and a value, as a gauge source reports them.
pub type GaugeSample = (Vec<(String, String)>, f64);

/// Reads the current values of one gauge family, when `/metrics` is scraped. It must be quick
/// and must not block (read atomics or a snapshot; never await or do I/O).
pub type GaugeReader = Box<dyn Fn() -> Vec<GaugeSample> + Send + Sync>;

struct GaugeFamily {
    name: String,
    help: String,
    read: GaugeReader,
}

#[derive(Debug, Default)]
struct GatewayMetrics {
    /// (api, status class index, outcome) → requests. Bounded: APIs come from the config,
    /// classes and outcomes are enums.
    requests: HashMap<(String, usize, &'static str), u64>,
    duration: HashMap<String, Hist>,
    upstream_duration: HashMap<String, Hist>,
    request_bytes: HashMap<String, u64>,
    response_bytes: HashMap<String, u64>,
}

struct Inner {
    gateway: GatewayMetrics,
    consumers: TopK,
}

/// What the exporters know, shared by `/metrics` and the OTLP metrics exporter.
pub struct Metrics {
    inner: Mutex<Inner>,
    gauges: RwLock<Vec<GaugeFamily>>,
    pipeline: Option<Arc<PipelineStats>>,
    exporters: RwLock<Vec<(String, Arc<QueueStats>)>>,
}

/// Whether an event counts as an error for sampling and span status: an error status, or the
/// gateway failed to get an answer.
pub fn is_error(e: &Event) -> bool {
    e.status >= 400 || !matches!(e.outcome, Outcome::Proxied | Outcome::Ingested)
}

fn is_upstream_failure(outcome: &str) -> bool {
    [
        Outcome::UpstreamUnreachable,
        Outcome::UpstreamTimeout,
        Outcome::UpstreamAborted,
    ]
    .iter()
    .any(|o| o.as_str() == outcome)
}

impl Metrics {
    pub fn new(top_k: usize, pipeline: Option<Arc<PipelineStats>>) -> Metrics {
        Metrics {
            inner: Mutex::new(Inner {
                gateway: GatewayMetrics::default(),
                consumers: TopK::new(top_k),
            }),
            gauges: RwLock::new(Vec::new()),
            pipeline,
            exporters: RwLock::new(Vec::new()),
        }
    }

    /// Folds a batch of events in. Called by the pipeline's writer, off the hot path.
    pub fn record(&self, events: &[Event]) {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            // A panic while recording left counters possibly half-updated; they are still
            // counters, so keep serving them rather than losing metrics for good.
            Err(poisoned) => poisoned.into_inner(),
        };
        let inner = &mut *guard;
        for e in events {
            let api = e.api.as_deref().unwrap_or("");
            let g = &mut inner.gateway;
            *g.requests
                .entry((
                    api.to_string(),
                    status_class_index(e.status),
                    e.outcome.as_str(),
                ))
                .or_default() += 1;
            g.duration
                .entry(api.to_string())
                .or_default()
                .observe(e.latency_ms / 1000.0);
            if let Some(u) = e.upstream_latency_ms {
                g.upstream_duration
                    .entry(api.to_string())
                    .or_default()
                    .observe(u / 1000.0);
            }
            *g.request_bytes.entry(api.to_string()).or_default() += e.request_bytes;
            *g.response_bytes.entry(api.to_string()).or_default() += e.response_bytes;
            let consumer = e.consumer.as_deref().unwrap_or(ANONYMOUS);
            inner.consumers.series_for(consumer, 1).record(
                e.status,
                e.latency_ms,
                e.request_bytes,
                e.response_bytes,
            );
        }
    }

    /// Registers a gauge family read at every scrape: the hook for state owned elsewhere
    /// (limiter buckets, Redis connectivity). `name` must be a valid, unused metric name.
    pub fn register_gauge(&self, name: &str, help: &str, read: GaugeReader) -> Result<(), String> {
        let valid = !name.is_empty()
            && name.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
            });
        if !valid {
            return Err(format!("{name:?} is not a valid Prometheus metric name"));
        }
        let mut gauges = self.gauges.write().map_err(|_| "gauge registry poisoned")?;
        if gauges.iter().any(|g| g.name == name) || name.starts_with("clientele_export_") {
            return Err(format!("{name:?} is already registered"));
        }
        gauges.push(GaugeFamily {
            name: name.to_string(),
            help: help.to_string(),
            read,
        });
        Ok(())
    }

    /// Adds an exporter's queue counters to the exposition.
    pub fn register_exporter(&self, name: &str, stats: Arc<QueueStats>) {
        if let Ok(mut e) = self.exporters.write() {
            e.push((name.to_string(), stats));
        }
    }

    /// The per-consumer series (top K plus `_other`).
    pub fn consumer_snapshot(&self) -> Vec<(String, ConsumerSeries)> {
        match self.inner.lock() {
            Ok(g) => g.consumers.snapshot(),
            Err(p) => p.into_inner().consumers.snapshot(),
        }
    }

    /// Request duration per API, for the OTLP `http.server.request.duration` metric.
    pub fn api_durations(&self) -> Vec<(String, Hist)> {
        let g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<(String, Hist)> = g
            .gateway
            .duration
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        {
            let g = match self.inner.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            self.render_gateway(&mut out, &g.gateway);
            render_consumers(&mut out, &g.consumers);
        }
        self.render_pipeline(&mut out);
        self.render_exporters(&mut out);
        if let Ok(gauges) = self.gauges.read() {
            for fam in gauges.iter() {
                header(&mut out, &fam.name, &fam.help, "gauge");
                for (labels, value) in (fam.read)() {
                    let pairs: Vec<(&str, &str)> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    sample(&mut out, &fam.name, &pairs, value);
                }
            }
        }
        out
    }

    fn render_gateway(&self, out: &mut String, g: &GatewayMetrics) {
        header(
            out,
            "clientele_requests_total",
            "Requests seen by the gateway, by API, status class and outcome.",
            "counter",
        );
        let mut rows: Vec<_> = g.requests.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for ((api, class, outcome), n) in &rows {
            sample(
                out,
                "clientele_requests_total",
                &[
                    ("api", api),
                    ("status_class", STATUS_CLASSES[*class]),
                    ("outcome", outcome),
                ],
                **n as f64,
            );
        }
        header(
            out,
            "clientele_upstream_errors_total",
            "Requests whose upstream was unreachable, timed out or aborted the response.",
            "counter",
        );
        for ((api, _, outcome), n) in rows.iter().filter(|r| is_upstream_failure(r.0.2)) {
            sample(
                out,
                "clientele_upstream_errors_total",
                &[("api", api), ("outcome", outcome)],
                **n as f64,
            );
        }
        histogram_family(
            out,
            "clientele_request_duration_seconds",
            "Time from request start to the last response byte, by API.",
            sorted(&g.duration),
            "api",
        );
        histogram_family(
            out,
            "clientele_upstream_duration_seconds",
            "Time to the upstream's response headers, by API.",
            sorted(&g.upstream_duration),
            "api",
        );
        for (name, help, map) in [
            (
                "clientele_request_bytes_total",
                "Request body bytes received, by API.",
                &g.request_bytes,
            ),
            (
                "clientele_response_bytes_total",
                "Response body bytes sent, by API.",
                &g.response_bytes,
            ),
        ] {
            header(out, name, help, "counter");
            for (api, n) in sorted(map) {
                sample(out, name, &[("api", &api)], n as f64);
            }
        }
    }

    fn render_pipeline(&self, out: &mut String) {
        let Some(p) = &self.pipeline else { return };
        let s = p.snapshot();
        for (name, help, v) in [
            (
                "clientele_events_offered_total",
                "Events handed from the gateway to the pipeline.",
                s.offered,
            ),
            (
                "clientele_events_dropped_total",
                "Events dropped because the pipeline queue was full; traffic was not slowed.",
                s.dropped,
            ),
            (
                "clientele_events_stored_total",
                "Events written to the store.",
                s.stored,
            ),
            (
                "clientele_events_store_errors_total",
                "Events the store failed to write.",
                s.store_errors,
            ),
        ] {
            header(out, name, help, "counter");
            sample(out, name, &[], v as f64);
        }
    }

    fn render_exporters(&self, out: &mut String) {
        let Ok(exporters) = self.exporters.read() else {
            return;
        };
        type Read = fn(&QueueStats) -> u64;
        let families: [(&str, &str, &str, Read); 5] = [
            (
                "clientele_export_queued_items",
                "Items waiting in an exporter's queue.",
                "gauge",
                |s| s.queued.load(Ordering::Relaxed) as u64,
            ),
            (
                "clientele_export_sent_items_total",
                "Items an exporter delivered.",
                "counter",
                |s| s.sent.load(Ordering::Relaxed),
            ),
            (
                "clientele_export_dropped_items_total",
                "Items dropped because an exporter's queue was full; nothing waited for them.",
                "counter",
                |s| s.dropped.load(Ordering::Relaxed),
            ),
            (
                "clientele_export_failed_items_total",
                "Items given up after the retries failed or the endpoint refused them.",
                "counter",
                |s| s.failed.load(Ordering::Relaxed),
            ),
            (
                "clientele_export_retries_total",
                "Delivery attempts that were retried.",
                "counter",
                |s| s.retries.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, read) in families {
            header(out, name, help, kind);
            for (exporter, stats) in exporters.iter() {
                sample(out, name, &[("exporter", exporter)], read(stats) as f64);
            }
        }
    }
}

fn render_consumers(out: &mut String, t: &TopK) {
    let snap = t.snapshot();
    header(
        out,
        "clientele_consumer_requests_total",
        "Requests per consumer and status class; consumers outside the top K are folded into consumer=\"_other\".",
        "counter",
    );
    for (consumer, s) in &snap {
        for (i, n) in s.requests.iter().enumerate() {
            if *n > 0 {
                sample(
                    out,
                    "clientele_consumer_requests_total",
                    &[("consumer", consumer), ("status_class", STATUS_CLASSES[i])],
                    *n as f64,
                );
            }
        }
    }
    histogram_family(
        out,
        "clientele_consumer_request_duration_seconds",
        "Request duration per consumer (top K and _other).",
        snap.iter()
            .map(|(c, s)| (c.clone(), s.duration.clone()))
            .collect(),
        "consumer",
    );
    for (name, help, read) in [
        (
            "clientele_consumer_request_bytes_total",
            "Request body bytes per consumer (top K and _other).",
            (|s: &ConsumerSeries| s.request_bytes) as fn(&ConsumerSeries) -> u64,
        ),
        (
            "clientele_consumer_response_bytes_total",
            "Response body bytes per consumer (top K and _other).",
            |s: &ConsumerSeries| s.response_bytes,
        ),
    ] {
        header(out, name, help, "counter");
        for (consumer, s) in &snap {
            sample(out, name, &[("consumer", consumer)], read(s) as f64);
        }
    }
    header(
        out,
        "clientele_consumer_series",
        "Consumer series currently exported, _other included; at most the limit plus one.",
        "gauge",
    );
    sample(
        out,
        "clientele_consumer_series",
        &[],
        t.series_count() as f64,
    );
    header(
        out,
        "clientele_consumer_series_limit",
        "The configured top K ([exports.prometheus].top_k).",
        "gauge",
    );
    sample(out, "clientele_consumer_series_limit", &[], t.k() as f64);
    header(
        out,
        "clientele_consumer_series_evictions_total",
        "Consumers that lost their own series to a busier one; their totals moved to _other.",
        "counter",
    );
    sample(
        out,
        "clientele_consumer_series_evictions_total",
        &[],
        t.evictions as f64,
    );
}

fn sorted<V: Clone>(m: &HashMap<String, V>) -> Vec<(String, V)> {
    let mut v: Vec<(String, V)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    rows: Vec<(String, Hist)>,
    label: &str,
) {
    header(out, name, help, "histogram");
    let bucket = format!("{name}_bucket");
    for (value, h) in rows {
        let mut cumulative = 0u64;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = match BOUNDS.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_string(),
            };
            sample(
                out,
                &bucket,
                &[(label, &value), ("le", &le)],
                cumulative as f64,
            );
        }
        sample(out, &format!("{name}_sum"), &[(label, &value)], h.sum);
        sample(
            out,
            &format!("{name}_count"),
            &[(label, &value)],
            cumulative as f64,
        );
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_float(value));
    out.push('\n');
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::event;

    #[test]
    fn exposition_has_gateway_consumer_pipeline_and_hook_families() {
        let stats = Arc::new(PipelineStats::default());
        stats.dropped.store(3, Ordering::Relaxed);
        let m = Metrics::new(2, Some(stats));
        let mut evs = vec![
            event("acme", 200, 12.0),
            event("acme", 503, 40.0),
            event("ini\"tech", 200, 2.0),
            event("c3", 200, 1.0),
        ];
        evs[1].outcome = Outcome::UpstreamTimeout;
        m.record(&evs);
        m.register_gauge(
            "clientele_limiter_buckets",
            "Limiter buckets held.",
            Box::new(|| vec![(vec![("node".into(), "a".into())], 7.0)]),
        )
        .unwrap();
        assert!(m.register_gauge("9bad", "", Box::new(Vec::new)).is_err());
        assert!(
            m.register_gauge("clientele_limiter_buckets", "", Box::new(Vec::new))
                .is_err()
        );
        let text = m.render();
        assert!(text.contains(
            "clientele_requests_total{api=\"petstore\",status_class=\"2xx\",outcome=\"proxied\"} 3"
        ));
        assert!(text.contains(
            "clientele_upstream_errors_total{api=\"petstore\",outcome=\"upstream_timeout\"} 1"
        ));
        assert!(text.contains(
            "clientele_request_duration_seconds_bucket{api=\"petstore\",le=\"0.025\"} 3"
        ));
        assert!(
            text.contains(
                "clientele_request_duration_seconds_bucket{api=\"petstore\",le=\"+Inf\"} 4"
            )
        );
        assert!(text.contains("clientele_events_dropped_total 3"));
        assert!(text.contains("clientele_limiter_buckets{node=\"a\"} 7"));
        assert!(text.contains(
            "clientele_consumer_requests_total{consumer=\"acme\",status_class=\"5xx\"} 1"
        ));
        // top_k = 2: the third consumer is folded, and label values are escaped.
        assert!(text.contains("consumer=\"ini\\\"tech\""));
        assert!(text.contains(
            "clientele_consumer_requests_total{consumer=\"_other\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("clientele_consumer_series 3"));
    }
}

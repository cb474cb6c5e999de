//! OTLP payloads (traces, metrics, logs) in both OTLP/HTTP encodings: binary protobuf and the
//! OTLP JSON mapping (camelCase names, trace and span ids as hex, 64-bit integers as strings,
//! enums as numbers).
//!
//! Each payload is first built as a small neutral model (a list of attributes, a span, a data
//! point), then written by one of two encoders, so both encodings say the same thing.
//! Field numbers follow opentelemetry-proto v1 (`collector/*/v1/*_service.proto`).

use clientele_core::event::{Event, span_id_of};
use clientele_core::finding::{Finding, Severity};
use serde_json::{Value, json};

use crate::hist::{BOUNDS, Hist};
use crate::pb::Writer;
use crate::prom::is_error;
use crate::topk::{ConsumerSeries, STATUS_CLASSES};

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
}

pub type Attrs = Vec<(&'static str, AttrValue)>;

fn push_str(a: &mut Attrs, key: &'static str, v: Option<&str>) {
    if let Some(v) = v {
        a.push((key, AttrValue::Str(v.to_string())));
    }
}

/// The span attributes for one request, with OpenTelemetry HTTP semantic-convention names where
/// one exists and `clientele.*` for the consumer's identity and the gateway's own facts.
pub fn span_attributes(e: &Event) -> Attrs {
    let mut a: Attrs = Vec::with_capacity(24);
    a.push(("http.request.method", AttrValue::Str(e.method.clone())));
    a.push(("http.route", AttrValue::Str(e.route.clone())));
    a.push((
        "http.response.status_code",
        AttrValue::Int(i64::from(e.status)),
    ));
    a.push(("url.path", AttrValue::Str(e.path.clone())));
    push_str(&mut a, "client.address", e.client_ip.as_deref());
    push_str(&mut a, "user_agent.original", e.user_agent.as_deref());
    a.push((
        "http.request.body.size",
        AttrValue::Int(e.request_bytes as i64),
    ));
    a.push((
        "http.response.body.size",
        AttrValue::Int(e.response_bytes as i64),
    ));
    push_str(&mut a, "session.id", e.session_id.as_deref());
    if e.status >= 500 {
        a.push(("error.type", AttrValue::Str(e.status.to_string())));
    } else if is_error(e) && e.status < 400 {
        a.push(("error.type", AttrValue::Str(e.outcome.as_str().to_string())));
    }
    push_str(&mut a, "clientele.consumer", e.consumer.as_deref());
    push_str(&mut a, "clientele.plan", e.plan.as_deref());
    push_str(&mut a, "clientele.team", e.team.as_deref());
    push_str(&mut a, "clientele.use_case", e.use_case.as_deref());
    push_str(&mut a, "clientele.api", e.api.as_deref());
    push_str(&mut a, "clientele.key_id", e.key_id.as_deref());
    a.push((
        "clientele.outcome",
        AttrValue::Str(e.outcome.as_str().to_string()),
    ));
    a.push(("clientele.latency_ms", AttrValue::Double(e.latency_ms)));
    if let Some(u) = e.upstream_latency_ms {
        a.push(("clientele.upstream_latency_ms", AttrValue::Double(u)));
    }
    push_str(&mut a, "gen_ai.request.model", e.model.as_deref());
    if let Some(t) = e.tokens_in {
        a.push(("gen_ai.usage.input_tokens", AttrValue::Int(t as i64)));
    }
    if let Some(t) = e.tokens_out {
        a.push(("gen_ai.usage.output_tokens", AttrValue::Int(t as i64)));
    }
    if let Some(c) = e.cost_usd {
        a.push(("clientele.cost_usd", AttrValue::Double(c)));
    }
    a
}

/// Trace id bytes: the event's W3C trace id, or one derived from the event id for events that
/// came without one (ingested), so every span is valid and stable across retries.
pub fn trace_id_bytes(e: &Event) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Some(t) = &e.trace_id {
        if hex::decode_to_slice(t, &mut out).is_ok() && out != [0; 16] {
            return out;
        }
    }
    use sha2::{Digest, Sha256};
    out.copy_from_slice(&Sha256::digest(e.id.as_bytes())[..16]);
    if out == [0; 16] {
        out[15] = 1;
    }
    out
}

pub fn span_id_bytes(e: &Event) -> [u8; 8] {
    let mut out = [0u8; 8];
    // span_id_of always returns 16 hex digits; on the impossible failure the span id stays
    // zero, which a collector rejects visibly rather than mislinking.
    let _ = hex::decode_to_slice(span_id_of(&e.id), &mut out);
    out
}

fn ms_to_ns(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1_000_000.0) as u64
    } else {
        0
    }
}

struct Resource<'a> {
    service_name: &'a str,
}

impl Resource<'_> {
    fn attrs(&self) -> Attrs {
        vec![
            (
                "service.name",
                AttrValue::Str(self.service_name.to_string()),
            ),
            (
                "service.version",
                AttrValue::Str(env!("CARGO_PKG_VERSION").to_string()),
            ),
        ]
    }
}

const SCOPE: &str = "clientele";

// ----- protobuf ---------------------------------------------------------------------------------

fn pb_any(w: &mut Writer, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => w.string_always(1, s),
        // A oneof member is written even when 0, so the value's type survives.
        AttrValue::Int(i) => w.int64_always(3, *i),
        AttrValue::Double(d) => w.double(4, *d, true),
    }
}

fn pb_attrs(w: &mut Writer, field: u32, attrs: &Attrs) {
    for (k, v) in attrs {
        w.message(field, |kv| {
            kv.string(1, k);
            kv.message(2, |any| pb_any(any, v));
        });
    }
}

fn pb_resource(w: &mut Writer, r: &Resource) {
    w.message(1, |res| pb_attrs(res, 1, &r.attrs()));
}

fn pb_scope(w: &mut Writer) {
    w.message(1, |s| {
        s.string(1, SCOPE);
        s.string(2, env!("CARGO_PKG_VERSION"));
    });
}

/// `ExportTraceServiceRequest` with one span per event (kind SERVER).
pub fn traces_protobuf(service_name: &str, events: &[Event]) -> Vec<u8> {
    let mut w = Writer::new();
    w.message(1, |rs| {
        pb_resource(rs, &Resource { service_name });
        rs.message(2, |ss| {
            pb_scope(ss);
            for e in events {
                ss.message(2, |span| {
                    span.bytes(1, &trace_id_bytes(e));
                    span.bytes(2, &span_id_bytes(e));
                    span.string(5, &span_name(e));
                    span.uint(6, 2); // SPAN_KIND_SERVER
                    let start = (e.ts_ms.max(0) as u64) * 1_000_000;
                    span.fixed64(7, start);
                    span.fixed64(8, start + ms_to_ns(e.latency_ms));
                    pb_attrs(span, 9, &span_attributes(e));
                    span.message(15, |st| {
                        if let Some((code, msg)) = span_status(e) {
                            st.string(2, &msg);
                            st.uint(3, code);
                        }
                    });
                    span.fixed32(16, 0x100); // flags: the span is a server span of a remote parent
                });
            }
        });
    });
    w.buf
}

fn span_name(e: &Event) -> String {
    if e.route.is_empty() {
        e.method.clone()
    } else {
        format!("{} {}", e.method, e.route)
    }
}

/// `Some((STATUS_CODE_ERROR, message))` for server errors and failed exchanges; 4xx leave the
/// status unset, as the HTTP semantic conventions say for server spans.
fn span_status(e: &Event) -> Option<(u64, String)> {
    if e.status >= 500 || (is_error(e) && e.status < 400) {
        Some((2, e.outcome.as_str().to_string()))
    } else {
        None
    }
}

fn severity_number(s: Severity) -> u64 {
    match s {
        Severity::Info => 9,      // INFO
        Severity::Warning => 13,  // WARN
        Severity::Critical => 17, // ERROR
    }
}

fn finding_attrs(f: &Finding) -> Attrs {
    let mut a: Attrs = vec![
        ("clientele.finding.id", AttrValue::Str(f.id.clone())),
        (
            "clientele.finding.kind",
            AttrValue::Str(f.kind.as_str().to_string()),
        ),
        (
            "clientele.finding.severity",
            AttrValue::Str(f.severity.as_str().to_string()),
        ),
        (
            "clientele.finding.first_seen",
            AttrValue::Str(clientele_core::time::format_ts(f.first_seen_ms)),
        ),
        (
            "clientele.finding.last_seen",
            AttrValue::Str(clientele_core::time::format_ts(f.last_seen_ms)),
        ),
        (
            "clientele.finding.evidence",
            AttrValue::Str(f.evidence.to_string()),
        ),
    ];
    push_str(&mut a, "clientele.consumer", f.consumer.as_deref());
    push_str(&mut a, "clientele.api", f.api.as_deref());
    push_str(&mut a, "clientele.finding.route", f.route.as_deref());
    a
}

/// `ExportLogsServiceRequest` with one log record per finding.
pub fn logs_protobuf(service_name: &str, findings: &[Finding], now_ns: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.message(1, |rl| {
        pb_resource(rl, &Resource { service_name });
        rl.message(2, |sl| {
            pb_scope(sl);
            for f in findings {
                sl.message(2, |lr| {
                    lr.fixed64(1, (f.last_seen_ms.max(0) as u64) * 1_000_000);
                    lr.uint(2, severity_number(f.severity));
                    lr.string(3, f.severity.as_str());
                    lr.message(5, |any| any.string_always(1, &f.summary));
                    pb_attrs(lr, 6, &finding_attrs(f));
                    lr.fixed64(11, now_ns);
                    lr.string(12, "clientele.finding");
                });
            }
        });
    });
    w.buf
}

/// What the metrics payload reports: cumulative since `start_ns`.
pub struct MetricsSnapshot {
    pub start_ns: u64,
    pub now_ns: u64,
    pub consumers: Vec<(String, ConsumerSeries)>,
    pub apis: Vec<(String, Hist)>,
}

fn pb_hist_point(w: &mut Writer, attrs: &Attrs, h: &Hist, s: &MetricsSnapshot) {
    w.message(1, |dp| {
        pb_attrs(dp, 9, attrs);
        dp.fixed64(2, s.start_ns);
        dp.fixed64(3, s.now_ns);
        dp.fixed64_always(4, h.count());
        dp.double(5, h.sum, true);
        dp.packed_fixed64(6, &h.counts);
        dp.packed_double(7, &BOUNDS);
    });
}

/// `ExportMetricsServiceRequest`: per-consumer request counts (Sum, monotonic, cumulative) and
/// durations (Histogram), bounded like the Prometheus series, plus the gateway's
/// `http.server.request.duration` per API.
pub fn metrics_protobuf(service_name: &str, s: &MetricsSnapshot) -> Vec<u8> {
    let mut w = Writer::new();
    w.message(1, |rm| {
        pb_resource(rm, &Resource { service_name });
        rm.message(2, |sm| {
            pb_scope(sm);
            sm.message(2, |m| {
                m.string(1, "clientele.consumer.requests");
                m.string(
                    2,
                    "Requests per consumer (top K and _other) and status class.",
                );
                m.string(3, "{request}");
                m.message(7, |sum| {
                    for (consumer, series, class, n) in request_points(s) {
                        sum.message(1, |dp| {
                            pb_attrs(dp, 7, &consumer_class_attrs(consumer, class));
                            dp.fixed64(2, s.start_ns);
                            dp.fixed64(3, s.now_ns);
                            let _ = series;
                            dp.sfixed64_always(6, n as i64); // as_int
                        });
                    }
                    sum.uint(2, 2); // AGGREGATION_TEMPORALITY_CUMULATIVE
                    sum.uint(3, 1); // is_monotonic
                });
            });
            sm.message(2, |m| {
                m.string(1, "clientele.consumer.request.duration");
                m.string(2, "Request duration per consumer (top K and _other).");
                m.string(3, "s");
                m.message(9, |hist| {
                    for (consumer, series) in &s.consumers {
                        let attrs = vec![("clientele.consumer", AttrValue::Str(consumer.clone()))];
                        pb_hist_point(hist, &attrs, &series.duration, s);
                    }
                    hist.uint(2, 2);
                });
            });
            sm.message(2, |m| {
                m.string(1, "http.server.request.duration");
                m.string(2, "Duration of HTTP server requests, by API.");
                m.string(3, "s");
                m.message(9, |hist| {
                    for (api, h) in &s.apis {
                        let attrs = vec![("clientele.api", AttrValue::Str(api.clone()))];
                        pb_hist_point(hist, &attrs, h, s);
                    }
                    hist.uint(2, 2);
                });
            });
        });
    });
    w.buf
}

fn request_points(s: &MetricsSnapshot) -> Vec<(&str, &ConsumerSeries, usize, u64)> {
    let mut out = Vec::new();
    for (consumer, series) in &s.consumers {
        for (class, n) in series.requests.iter().enumerate() {
            if *n > 0 {
                out.push((consumer.as_str(), series, class, *n));
            }
        }
    }
    out
}

fn consumer_class_attrs(consumer: &str, class: usize) -> Attrs {
    vec![
        ("clientele.consumer", AttrValue::Str(consumer.to_string())),
        (
            "http.response.status_class",
            AttrValue::Str(STATUS_CLASSES[class].to_string()),
        ),
    ]
}

// ----- JSON -------------------------------------------------------------------------------------

fn json_any(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!({"stringValue": s}),
        AttrValue::Int(i) => json!({"intValue": i.to_string()}),
        AttrValue::Double(d) => json!({"doubleValue": d}),
    }
}

fn json_attrs(attrs: &Attrs) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|(k, v)| json!({"key": k, "value": json_any(v)}))
            .collect(),
    )
}

fn json_resource(service_name: &str) -> Value {
    json!({"attributes": json_attrs(&Resource { service_name }.attrs())})
}

fn json_scope() -> Value {
    json!({"name": SCOPE, "version": env!("CARGO_PKG_VERSION")})
}

pub fn traces_json(service_name: &str, events: &[Event]) -> Vec<u8> {
    let spans: Vec<Value> = events
        .iter()
        .map(|e| {
            let start = (e.ts_ms.max(0) as u64) * 1_000_000;
            let mut span = json!({
                "traceId": hex::encode(trace_id_bytes(e)),
                "spanId": hex::encode(span_id_bytes(e)),
                "name": span_name(e),
                "kind": 2,
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": (start + ms_to_ns(e.latency_ms)).to_string(),
                "attributes": json_attrs(&span_attributes(e)),
                "flags": 0x100,
                "status": {},
            });
            if let Some((code, msg)) = span_status(e) {
                span["status"] = json!({"code": code, "message": msg});
            }
            span
        })
        .collect();
    let body = json!({"resourceSpans": [{
        "resource": json_resource(service_name),
        "scopeSpans": [{"scope": json_scope(), "spans": spans}],
    }]});
    body.to_string().into_bytes()
}

pub fn logs_json(service_name: &str, findings: &[Finding], now_ns: u64) -> Vec<u8> {
    let records: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({
                "timeUnixNano": ((f.last_seen_ms.max(0) as u64) * 1_000_000).to_string(),
                "observedTimeUnixNano": now_ns.to_string(),
                "severityNumber": severity_number(f.severity),
                "severityText": f.severity.as_str(),
                "body": {"stringValue": f.summary},
                "attributes": json_attrs(&finding_attrs(f)),
                "eventName": "clientele.finding",
            })
        })
        .collect();
    let body = json!({"resourceLogs": [{
        "resource": json_resource(service_name),
        "scopeLogs": [{"scope": json_scope(), "logRecords": records}],
    }]});
    body.to_string().into_bytes()
}

fn json_hist_point(attrs: &Attrs, h: &Hist, s: &MetricsSnapshot) -> Value {
    json!({
        "attributes": json_attrs(attrs),
        "startTimeUnixNano": s.start_ns.to_string(),
        "timeUnixNano": s.now_ns.to_string(),
        "count": h.count().to_string(),
        "sum": h.sum,
        "bucketCounts": h.counts.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "explicitBounds": BOUNDS.to_vec(),
    })
}

pub fn metrics_json(service_name: &str, s: &MetricsSnapshot) -> Vec<u8> {
    let sum_points: Vec<Value> = request_points(s)
        .into_iter()
        .map(|(consumer, _, class, n)| {
            json!({
                "attributes": json_attrs(&consumer_class_attrs(consumer, class)),
                "startTimeUnixNano": s.start_ns.to_string(),
                "timeUnixNano": s.now_ns.to_string(),
                "asInt": n.to_string(),
            })
        })
        .collect();
    let consumer_hist: Vec<Value> = s
        .consumers
        .iter()
        .map(|(c, series)| {
            json_hist_point(
                &vec![("clientele.consumer", AttrValue::Str(c.clone()))],
                &series.duration,
                s,
            )
        })
        .collect();
    let api_hist: Vec<Value> = s
        .apis
        .iter()
        .map(|(a, h)| json_hist_point(&vec![("clientele.api", AttrValue::Str(a.clone()))], h, s))
        .collect();
    let body = json!({"resourceMetrics": [{
        "resource": json_resource(service_name),
        "scopeMetrics": [{"scope": json_scope(), "metrics": [
            {"name": "clientele.consumer.requests", "unit": "{request}",
             "description": "Requests per consumer (top K and _other) and status class.",
             "sum": {"dataPoints": sum_points, "aggregationTemporality": 2, "isMonotonic": true}},
            {"name": "clientele.consumer.request.duration", "unit": "s",
             "description": "Request duration per consumer (top K and _other).",
             "histogram": {"dataPoints": consumer_hist, "aggregationTemporality": 2}},
            {"name": "http.server.request.duration", "unit": "s",
             "description": "Duration of HTTP server requests, by API.",
             "histogram": {"dataPoints": api_hist, "aggregationTemporality": 2}},
        ]}],
    }]});
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::event;

    #[test]
    fn span_carries_the_consumer_and_semantic_convention_names() {
        let mut e = event("acme", 503, 12.5);
        e.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        let attrs = span_attributes(&e);
        let get = |k: &str| attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("http.response.status_code"), Some(AttrValue::Int(503)));
        assert_eq!(
            get("clientele.consumer"),
            Some(AttrValue::Str("acme".into()))
        );
        assert_eq!(get("error.type"), Some(AttrValue::Str("503".into())));
        assert_eq!(
            hex::encode(trace_id_bytes(&e)),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let pb = traces_protobuf("svc", &[e.clone()]);
        // The trace id appears verbatim as a length-delimited field 1 of the span.
        let tid = trace_id_bytes(&e);
        assert!(
            pb.windows(18)
                .any(|w| w[0] == 0x0a && w[1] == 16 && w[2..] == tid)
        );
        let js: Value = serde_json::from_slice(&traces_json("svc", &[e])).unwrap();
        let span = &js["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["name"], "GET /pets/{id}");
    }

    #[test]
    fn an_event_without_a_trace_id_gets_a_stable_one() {
        let mut e = event("a", 200, 1.0);
        e.trace_id = None;
        assert_eq!(trace_id_bytes(&e), trace_id_bytes(&e));
        assert_ne!(trace_id_bytes(&e), [0; 16]);
    }
}

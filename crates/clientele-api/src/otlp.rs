//! `POST /v1/otlp/v1/traces` and `POST /v1/otlp/v1/logs`: OTLP/HTTP traces and logs (protobuf
//! or JSON) from a gateway or service that already emits OpenTelemetry, so it feeds Clientele
//! without Clientele in the request path. Each HTTP server span, and each HTTP access log
//! record (a record with a request method), becomes one event, validated like `POST
//! /v1/events`; other spans and records are skipped. Log records take the same attributes as
//! spans (and the fields of a `kvlist` body), their time as the start and the duration from
//! an attribute (see `otlp_decode::log_duration_ns`).
//!
//! Attributes read (current semantic conventions first, then the older names):
//! `http.request.method`/`http.method`, `url.path` + `url.query`/`http.target`/`url.full`/
//! `http.url`, `http.route`, `http.response.status_code`/`http.status_code`,
//! `client.address`/`http.client_ip`/`net.sock.peer.addr`/`network.peer.address`,
//! `user_agent.original`/`http.user_agent`; the duration is end - start; `service.name` (of
//! the resource) is the event's `api`. The consumer comes from `[otlp_ingest]`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clientele_core::config::OtlpIngestConfig;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::handlers::{ingest_bounds, submit_ingested};
use crate::ingest::{Rejected, parse_values};
use crate::otlp_decode::{
    Attr, KIND_SERVER, Span, logs_json, logs_protobuf, traces_json, traces_protobuf,
};

#[derive(Clone, Copy, PartialEq)]
enum Signal {
    Traces,
    Logs,
}

#[utoipa::path(post, path = "/v1/otlp/v1/traces",
    request_body(description = "An OTLP ExportTraceServiceRequest", content((String = "application/x-protobuf"), (Object = "application/json"))),
    responses((status = 200, description = "ExportTraceServiceResponse; partial_success counts the HTTP server spans refused, with the first reason",
        content((Object = "application/json"), (String = "application/x-protobuf"))),
        (status = 400, description = "not an OTLP trace export")),
    security(("admin_token" = [])))]
pub async fn ingest_traces(
    state: State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    ingest(state, headers, body, Signal::Traces).await
}

#[utoipa::path(post, path = "/v1/otlp/v1/logs",
    request_body(description = "An OTLP ExportLogsServiceRequest", content((String = "application/x-protobuf"), (Object = "application/json"))),
    responses((status = 200, description = "ExportLogsServiceResponse; partial_success counts the HTTP access log records refused, with the first reason",
        content((Object = "application/json"), (String = "application/x-protobuf"))),
        (status = 400, description = "not an OTLP log export")),
    security(("admin_token" = [])))]
pub async fn ingest_logs(
    state: State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    ingest(state, headers, body, Signal::Logs).await
}

async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    signal: Signal,
) -> Result<Response, ApiError> {
    let what = if signal == Signal::Traces {
        "traces"
    } else {
        "logs"
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = content_type.starts_with("application/json");
    if !json && !content_type.starts_with("application/x-protobuf") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("send OTLP {what} as application/x-protobuf or application/json"),
        ));
    }
    let spans = match (signal, json) {
        (Signal::Traces, true) => traces_json(&body),
        (Signal::Traces, false) => traces_protobuf(&body),
        (Signal::Logs, true) => logs_json(&body),
        (Signal::Logs, false) => logs_protobuf(&body),
    }
    .map_err(|e| {
        let message = if signal == Signal::Traces {
            "ExportTraceServiceRequest"
        } else {
            "ExportLogsServiceRequest"
        };
        ApiError::bad_request(format!("not an OTLP {message}: {e}"))
    })?;

    let mut values = Vec::new();
    let mut invalid = Vec::new();
    for span in &spans {
        match span_event(span, &state.otlp) {
            Ok(Some(v)) => values.push(v),
            Ok(None) => {}
            Err(e) => invalid.push(e),
        }
    }
    let contracts = state.contracts.clone();
    let templates = |api: &str, method: &str, path: &str| {
        contracts
            .api(api)
            .and_then(|c| c.route_template(method, path))
    };
    let (events, rejected) = parse_values(&values, ingest_bounds(&state), &templates);
    let mut errors: Vec<String> = invalid;
    errors.extend(rejected.iter().map(|r: &Rejected| r.error.clone()));
    if !events.is_empty() {
        submit_ingested(&state, events, Vec::new()).await?;
    }
    Ok(answer(json, errors, signal))
}

/// The OTLP answer: 200 with `partial_success` naming how many spans were refused and the first
/// reason (an exporter logs it; retrying would not help).
fn answer(json: bool, errors: Vec<String>, signal: Signal) -> Response {
    let message = errors.first().cloned().unwrap_or_default();
    let rejected = errors.len() as u64;
    if json {
        let body = if rejected == 0 {
            json!({})
        } else {
            let field = if signal == Signal::Traces {
                "rejectedSpans"
            } else {
                "rejectedLogRecords"
            };
            json!({"partialSuccess": {field: rejected.to_string(), "errorMessage": message}})
        };
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    // ExportTraceServiceResponse { ExportTracePartialSuccess partial_success = 1 { int64
    // rejected_spans = 1; string error_message = 2 } }; ExportLogsServiceResponse has the same
    // shape (rejected_log_records = 1).
    let mut inner = Vec::new();
    if rejected > 0 {
        inner.push(0x08);
        varint(&mut inner, rejected);
        inner.push(0x12);
        varint(&mut inner, message.len() as u64);
        inner.extend_from_slice(message.as_bytes());
    }
    let mut out = Vec::new();
    if !inner.is_empty() {
        out.push(0x0a);
        varint(&mut out, inner.len() as u64);
        out.extend_from_slice(&inner);
    }
    ([(header::CONTENT_TYPE, "application/x-protobuf")], out).into_response()
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn attr<'a>(span: &'a Span, names: &[&str]) -> Option<&'a Attr> {
    names.iter().find_map(|n| {
        span.attrs
            .iter()
            .chain(span.resource.iter())
            .find(|(k, _)| k == n)
            .map(|(_, v)| v)
    })
}

fn str_attr<'a>(span: &'a Span, names: &[&str]) -> Option<&'a str> {
    attr(span, names).and_then(Attr::as_str)
}

/// The event for an HTTP server span, `None` for any other span, or why it cannot be one.
fn span_event(span: &Span, cfg: &OtlpIngestConfig) -> Result<Option<Value>, String> {
    let Some(method) = str_attr(span, &["http.request.method", "http.method"]) else {
        return Ok(None);
    };
    // Unspecified kinds are taken when the span has HTTP server attributes: some
    // instrumentations leave the kind out.
    if span.kind != KIND_SERVER && span.kind != 0 {
        return Ok(None);
    }
    let name = &span.name;
    let label = if span.record_id.is_some() {
        format!("log record {name:?}")
    } else {
        format!("span {name:?}")
    };
    let status = attr(span, &["http.response.status_code", "http.status_code"])
        .and_then(Attr::as_i64)
        .ok_or_else(|| format!("{label}: no http.response.status_code"))?;
    let consumer = consumer_of(span, cfg).ok_or_else(|| {
        let header = cfg
            .consumer_header
            .as_deref()
            .map(|h| format!(" or http.request.header.{}", h.to_ascii_lowercase()))
            .unwrap_or_default();
        format!(
            "{label}: no consumer: set the {}{header} attribute, or change [otlp_ingest]",
            cfg.consumer_attribute
        )
    })?;
    let path = path_of(span).ok_or_else(|| format!("{label}: no url.path or http.target"))?;
    if span.record_id.is_some() && span.end_ns == 0 && span.start_ns != 0 {
        return Err(format!(
            "{label}: no duration: add an http.server.request.duration (s) or duration_ms attribute"
        ));
    }
    if span.end_ns < span.start_ns || span.start_ns == 0 {
        return Err(format!("{label}: no valid start and end times"));
    }
    // Stable across resends, so a retried export stores each span or record once.
    let id = match &span.record_id {
        Some(digest) => format!("otlp-log-{digest}"),
        None => format!(
            "otlp-{}-{}",
            hex::encode(&span.trace_id),
            hex::encode(&span.span_id)
        ),
    };
    let mut event = json!({
        "id": id,
        "ts": (span.start_ns / 1_000_000) as i64,
        "consumer": consumer,
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": (span.end_ns - span.start_ns) as f64 / 1e6,
    });
    let optional = [
        ("route", str_attr(span, &["http.route"])),
        (
            "client_ip",
            str_attr(
                span,
                &[
                    "client.address",
                    "http.client_ip",
                    "net.sock.peer.addr",
                    "network.peer.address",
                ],
            ),
        ),
        (
            "user_agent",
            str_attr(span, &["user_agent.original", "http.user_agent"]),
        ),
        ("api", str_attr(span, &["service.name"])),
    ];
    for (field, value) in optional {
        if let Some(v) = value {
            event[field] = json!(v);
        }
    }
    if !span.trace_id.is_empty() {
        event["trace_id"] = json!(hex::encode(&span.trace_id));
    }
    Ok(Some(event))
}

fn consumer_of<'a>(span: &'a Span, cfg: &OtlpIngestConfig) -> Option<&'a str> {
    if let Some(c) = str_attr(span, &[cfg.consumer_attribute.as_str()]) {
        return Some(c);
    }
    let header = cfg.consumer_header.as_deref()?;
    let name = format!("http.request.header.{}", header.to_ascii_lowercase());
    str_attr(span, &[name.as_str()])
}

/// `url.path` (+ `url.query`), else `http.target`, else the path of `url.full`/`http.url`.
fn path_of(span: &Span) -> Option<String> {
    if let Some(p) = str_attr(span, &["url.path"]) {
        return Some(match str_attr(span, &["url.query"]) {
            Some(q) if !q.is_empty() => format!("{p}?{q}"),
            _ => p.to_string(),
        });
    }
    if let Some(t) = str_attr(span, &["http.target"]) {
        return Some(t.to_string());
    }
    let full = str_attr(span, &["url.full", "http.url"])?;
    let after_scheme = full.split_once("://").map_or(full, |(_, rest)| rest);
    Some(match after_scheme.find('/') {
        Some(i) => after_scheme[i..].to_string(),
        None => "/".to_string(),
    })
}

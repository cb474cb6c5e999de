//! OTLP trace payloads, read into [`Span`]s: protobuf (`application/x-protobuf`) by a small
//! hand-written reader of the few messages needed, and OTLP JSON (`application/json`).
//!
//! A hand-written reader rather than prost + opentelemetry-proto: the request path needs six
//! message types and a handful of fields; the generated crates would bring prost, its derive
//! macros and every OTLP message into the build for that.

use std::sync::Arc;

use serde_json::Value;

/// An attribute value (`AnyValue`); kvlists and bytes are kept as absent.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    List(Vec<Attr>),
}

impl Attr {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::Str(s) => Some(s),
            // Header attributes are string arrays in the semantic conventions.
            Attr::List(items) => items.first().and_then(Attr::as_str),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Attr::Int(i) => Some(*i),
            Attr::Str(s) => s.parse().ok(),
            Attr::Double(d) if d.fract() == 0.0 => Some(*d as i64),
            _ => None,
        }
    }
}

pub type Attrs = Vec<(String, Attr)>;

/// One span with what the mapping needs, and its resource's attributes.
#[derive(Debug, Clone, Default)]
pub struct Span {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub name: String,
    /// `SpanKind`: 2 is SERVER.
    pub kind: i64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attrs: Attrs,
    pub resource: Arc<Attrs>,
    /// Log records: an id from the record's content (they need not carry trace or span ids).
    pub record_id: Option<String>,
}

pub const KIND_SERVER: i64 = 2;

// ---- protobuf -------------------------------------------------------------------------------

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or("a length runs past the end of the message")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next field, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Wire::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".into())
}

/// `ExportTraceServiceRequest` (= `TracesData`): field 1 is repeated `ResourceSpans`.
pub fn traces_protobuf(body: &[u8]) -> Result<Vec<Span>, String> {
    let mut spans = Vec::new();
    let mut r = Reader::new(body);
    while let Some((field, wire)) = r.field()? {
        if let (1, Wire::Bytes(b)) = (field, wire) {
            resource_spans(b, &mut spans)?;
        }
    }
    Ok(spans)
}

fn resource_spans(buf: &[u8], out: &mut Vec<Span>) -> Result<(), String> {
    resource_records(buf, out, span)
}

/// `ExportLogsServiceRequest` (= `LogsData`): field 1 is repeated `ResourceLogs`, shaped like
/// `ResourceSpans` (resource = 1, scope_logs = 2 { scope = 1, log_records = 2 }).
pub fn logs_protobuf(body: &[u8]) -> Result<Vec<Span>, String> {
    let mut records = Vec::new();
    let mut r = Reader::new(body);
    while let Some((field, wire)) = r.field()? {
        if let (1, Wire::Bytes(b)) = (field, wire) {
            resource_records(b, &mut records, log_record)?;
        }
    }
    Ok(records)
}

/// `ResourceSpans` or `ResourceLogs`: the resource's attributes, then each scope's records.
fn resource_records(
    buf: &[u8],
    out: &mut Vec<Span>,
    record: fn(&[u8]) -> Result<Span, String>,
) -> Result<(), String> {
    let mut resource = Attrs::new();
    let mut scopes: Vec<&[u8]> = Vec::new();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.field()? {
        match (field, wire) {
            // Resource { repeated KeyValue attributes = 1 }
            (1, Wire::Bytes(b)) => {
                let mut rr = Reader::new(b);
                while let Some((f, w)) = rr.field()? {
                    if let (1, Wire::Bytes(kv)) = (f, w) {
                        resource.extend(key_value(kv)?);
                    }
                }
            }
            (2, Wire::Bytes(b)) => scopes.push(b),
            _ => {}
        }
    }
    let resource = Arc::new(resource);
    for scope in scopes {
        // ScopeSpans { scope = 1; repeated Span spans = 2 }
        let mut r = Reader::new(scope);
        while let Some((field, wire)) = r.field()? {
            if let (2, Wire::Bytes(b)) = (field, wire) {
                let mut span = record(b)?;
                span.resource = resource.clone();
                out.push(span);
            }
        }
    }
    Ok(())
}

fn span(buf: &[u8]) -> Result<Span, String> {
    let mut s = Span::default();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.field()? {
        match (field, wire) {
            (1, Wire::Bytes(b)) => s.trace_id = b.to_vec(),
            (2, Wire::Bytes(b)) => s.span_id = b.to_vec(),
            (5, Wire::Bytes(b)) => s.name = utf8(b)?,
            (6, Wire::Varint(v)) => s.kind = v as i64,
            (7, Wire::Fixed64(v)) => s.start_ns = v,
            (8, Wire::Fixed64(v)) => s.end_ns = v,
            (9, Wire::Bytes(b)) => s.attrs.extend(key_value(b)?),
            _ => {}
        }
    }
    Ok(s)
}

/// A log record as a span-like record: `time_unix_nano` (else `observed_time_unix_nano`) is
/// the start, the duration comes from its attributes ([`log_duration_ns`]), a `kvlist` body's
/// fields count as attributes (after the record's own), and `id` is the record's digest, so a
/// re-sent export is stored once.
fn log_record(buf: &[u8]) -> Result<Span, String> {
    let mut s = Span {
        name: String::new(),
        ..Span::default()
    };
    let (mut time, mut observed) = (0, 0);
    let mut body = Attrs::new();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.field()? {
        match (field, wire) {
            (1, Wire::Fixed64(v)) => time = v,
            (11, Wire::Fixed64(v)) => observed = v,
            (5, Wire::Bytes(b)) => body = kvlist_of(b)?,
            (6, Wire::Bytes(b)) => s.attrs.extend(key_value(b)?),
            (9, Wire::Bytes(b)) => s.trace_id = b.to_vec(),
            (10, Wire::Bytes(b)) => s.span_id = b.to_vec(),
            (12, Wire::Bytes(b)) if !b.is_empty() => s.name = utf8(b)?,
            _ => {}
        }
    }
    s.attrs.extend(body);
    finish_log(&mut s, if time != 0 { time } else { observed });
    s.record_id = Some(digest(buf));
    Ok(s)
}

/// The fields of an `AnyValue` that is a `kvlist_value` (field 6: `KeyValueList { repeated
/// KeyValue values = 1 }`); empty for any other body (a string body is a message, not fields).
fn kvlist_of(buf: &[u8]) -> Result<Attrs, String> {
    let mut out = Attrs::new();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.field()? {
        if let (6, Wire::Bytes(b)) = (field, wire) {
            let mut rr = Reader::new(b);
            while let Some((f, w)) = rr.field()? {
                if let (1, Wire::Bytes(kv)) = (f, w) {
                    out.extend(key_value(kv)?);
                }
            }
        }
    }
    Ok(out)
}

/// Start and end from the record's time and duration; `end_ns` stays 0 when no duration is
/// given, which the mapping reports.
fn finish_log(s: &mut Span, time: u64) {
    s.start_ns = time;
    if let Some(d) = log_duration_ns(&s.attrs) {
        s.end_ns = time.saturating_add(d);
    }
}

/// Access-log durations under the names exporters use: `http.server.request.duration` (seconds,
/// the semantic conventions' metric name), `duration_ms`/`latency_ms`/`request_time_ms`
/// (milliseconds), `duration` (milliseconds, as Envoy's `%DURATION%`), `request_time`
/// (seconds, as nginx's `$request_time`).
pub fn log_duration_ns(attrs: &Attrs) -> Option<u64> {
    let number = |a: &Attr| match a {
        Attr::Int(i) => Some(*i as f64),
        Attr::Double(d) => Some(*d),
        Attr::Str(s) => s.trim().parse().ok(),
        _ => None,
    };
    let find = |name: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| number(v))
    };
    let seconds = ["http.server.request.duration", "request_time"];
    let millis = ["duration_ms", "latency_ms", "request_time_ms", "duration"];
    let ns = seconds
        .iter()
        .find_map(|n| find(n).map(|s| s * 1e9))
        .or_else(|| millis.iter().find_map(|n| find(n).map(|ms| ms * 1e6)))?;
    (ns.is_finite() && ns >= 0.0).then_some(ns as u64)
}

fn digest(bytes: &[u8]) -> String {
    clientele_core::event::content_id(bytes).replacen("ev_", "", 1)
}

/// `KeyValue { key = 1; AnyValue value = 2 }`; `None` for values this does not keep.
fn key_value(buf: &[u8]) -> Result<Option<(String, Attr)>, String> {
    let (mut key, mut value) = (String::new(), None);
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.field()? {
        match (field, wire) {
            (1, Wire::Bytes(b)) => key = utf8(b)?,
            (2, Wire::Bytes(b)) => value = any_value(b, 0)?,
            _ => {}
        }
    }
    Ok(value.map(|v| (key, v)))
}

/// How deep attribute arrays may nest. Each level is a few bytes of protobuf, so without a bound
/// one admin-sized body (16 MiB) nests deep enough to overflow the stack of the recursive
/// reader and abort the whole process; real attributes nest one or two levels.
pub const MAX_ARRAY_DEPTH: usize = 32;

fn any_value(buf: &[u8], depth: usize) -> Result<Option<Attr>, String> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!(
            "attribute arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
        ));
    }
    let mut out = None;
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.field()? {
        out = match (field, wire) {
            (1, Wire::Bytes(b)) => Some(Attr::Str(utf8(b)?)),
            (2, Wire::Varint(v)) => Some(Attr::Bool(v != 0)),
            (3, Wire::Varint(v)) => Some(Attr::Int(v as i64)),
            (4, Wire::Fixed64(v)) => Some(Attr::Double(f64::from_bits(v))),
            // ArrayValue { repeated AnyValue values = 1 }
            (5, Wire::Bytes(b)) => {
                let mut items = Vec::new();
                let mut rr = Reader::new(b);
                while let Some((f, w)) = rr.field()? {
                    if let (1, Wire::Bytes(item)) = (f, w) {
                        items.extend(any_value(item, depth + 1)?);
                    }
                }
                Some(Attr::List(items))
            }
            _ => out,
        };
    }
    Ok(out)
}

// ---- OTLP JSON ------------------------------------------------------------------------------

/// OTLP JSON: lowerCamelCase fields, ids in hex, 64-bit integers as strings or numbers, enums
/// as numbers or names.
pub fn traces_json(body: &[u8]) -> Result<Vec<Span>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut spans = Vec::new();
    for rs in array(&v, "resourceSpans") {
        let resource = Arc::new(json_attrs(&rs["resource"]["attributes"]));
        for ss in array(rs, "scopeSpans") {
            for s in array(ss, "spans") {
                spans.push(Span {
                    trace_id: hex_bytes(&s["traceId"]),
                    span_id: hex_bytes(&s["spanId"]),
                    name: s["name"].as_str().unwrap_or("").to_string(),
                    kind: match &s["kind"] {
                        Value::String(k) if k == "SPAN_KIND_SERVER" => KIND_SERVER,
                        k => k.as_i64().unwrap_or(0),
                    },
                    start_ns: json_u64(&s["startTimeUnixNano"]),
                    end_ns: json_u64(&s["endTimeUnixNano"]),
                    attrs: json_attrs(&s["attributes"]),
                    resource: resource.clone(),
                    record_id: None,
                });
            }
        }
    }
    Ok(spans)
}

/// OTLP JSON logs: `resourceLogs[].scopeLogs[].logRecords[]`.
pub fn logs_json(body: &[u8]) -> Result<Vec<Span>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut records = Vec::new();
    for rl in array(&v, "resourceLogs") {
        let resource = Arc::new(json_attrs(&rl["resource"]["attributes"]));
        for sl in array(rl, "scopeLogs") {
            for r in array(sl, "logRecords") {
                let mut attrs = json_attrs(&r["attributes"]);
                attrs.extend(json_attrs(&r["body"]["kvlistValue"]["values"]));
                let mut s = Span {
                    trace_id: hex_bytes(&r["traceId"]),
                    span_id: hex_bytes(&r["spanId"]),
                    name: r["eventName"].as_str().unwrap_or("").to_string(),
                    attrs,
                    resource: resource.clone(),
                    record_id: Some(digest(r.to_string().as_bytes())),
                    ..Span::default()
                };
                let time = match json_u64(&r["timeUnixNano"]) {
                    0 => json_u64(&r["observedTimeUnixNano"]),
                    t => t,
                };
                finish_log(&mut s, time);
                records.push(s);
            }
        }
    }
    Ok(records)
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn json_u64(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

fn hex_bytes(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| hex::decode(s).ok())
        .unwrap_or_default()
}

fn json_attrs(v: &Value) -> Attrs {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            Some((key, json_any(&kv["value"])?))
        })
        .collect()
}

fn json_any(v: &Value) -> Option<Attr> {
    if let Some(s) = v.get("stringValue").and_then(Value::as_str) {
        return Some(Attr::Str(s.to_string()));
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => s.parse().ok().map(Attr::Int),
            i => i.as_i64().map(Attr::Int),
        };
    }
    if let Some(d) = v.get("doubleValue").and_then(Value::as_f64) {
        return Some(Attr::Double(d));
    }
    if let Some(b) = v.get("boolValue").and_then(Value::as_bool) {
        return Some(Attr::Bool(b));
    }
    let items = v.get("arrayValue")?.get("values")?.as_array()?;
    Some(Attr::List(items.iter().filter_map(json_any).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf message built from the inside out: `rev` holds it reversed, so wrapping it in
    /// a length-delimited field is a push, not a copy of everything inside.
    struct Inside {
        rev: Vec<u8>,
    }

    impl Inside {
        fn new(innermost: &[u8]) -> Inside {
            Inside {
                rev: innermost.iter().rev().copied().collect(),
            }
        }

        fn wrap(&mut self, tag: u8) {
            let mut len = Vec::new();
            let mut n = self.rev.len() as u64;
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    len.push(b);
                    break;
                }
                len.push(b | 0x80);
            }
            self.rev.extend(len.iter().rev());
            self.rev.push(tag);
        }

        /// `levels` arrays around a string, as the value of one span attribute `k`.
        fn request(levels: usize) -> Vec<u8> {
            // AnyValue { string_value = 1: "x" }
            let mut m = Inside::new(&[0x0a, 0x01, b'x']);
            for _ in 0..levels {
                m.wrap(0x0a); // ArrayValue { repeated AnyValue values = 1 }
                m.wrap(0x2a); // AnyValue { ArrayValue array_value = 5 }
            }
            m.wrap(0x12); // KeyValue { AnyValue value = 2 }
            m.rev.extend([b'k', 0x01, 0x0a].iter()); // KeyValue { key = 1: "k" } (reversed)
            m.wrap(0x4a); // Span { repeated KeyValue attributes = 9 }
            m.wrap(0x12); // ScopeSpans { repeated Span spans = 2 }
            m.wrap(0x12); // ResourceSpans { repeated ScopeSpans scope_spans = 2 }
            m.wrap(0x0a); // ExportTraceServiceRequest { repeated ResourceSpans = 1 }
            m.rev.reverse();
            m.rev
        }
    }

    #[test]
    fn nested_attribute_arrays_within_the_bound_are_read() {
        let spans = traces_protobuf(&Inside::request(2)).unwrap();
        let want = Attr::List(vec![Attr::List(vec![Attr::Str("x".into())])]);
        assert_eq!(spans[0].attrs, vec![("k".to_string(), want)]);
        assert!(traces_protobuf(&Inside::request(MAX_ARRAY_DEPTH)).is_ok());
    }

    /// 100,000 nested arrays (under 1 MiB, well inside the admin body limit) overflowed the
    /// recursive reader's stack and aborted the process before the bound.
    #[test]
    fn deeply_nested_attribute_arrays_are_refused_not_a_stack_overflow() {
        for levels in [100_000, MAX_ARRAY_DEPTH + 1] {
            let body = Inside::request(levels);
            let err = traces_protobuf(&body).unwrap_err();
            assert!(err.contains("nested deeper than 32"), "{err}");
        }
    }
}

//! Parsing and validating `POST /v1/events` batches.
//!
//! Rules, stated once here and in the OpenAPI description:
//! - Required: `ts` (RFC 3339 or epoch ms), `consumer`, `method`, `path`, `status` (100-599),
//!   `latency_ms` (finite, 0 to 86,400,000).
//! - A `ts` more than `max_future_secs` ahead, or older than the raw event retention, is
//!   rejected: the first is a clock problem; for the second, its bucket may already be archived,
//!   and the event could not be counted exactly once.
//! - Wrong types and out-of-range values reject the event with a reason naming the field.
//!   Every number is bounded, so no sum of them can overflow a rollup and an event reads back
//!   from the store exactly as it was counted: `request_bytes`/`response_bytes` at most
//!   [`MAX_BYTES`] (1 TiB), `upstream_latency_ms` like `latency_ms`, `tokens_in`/`tokens_out` at
//!   most [`MAX_TOKENS`] (`tokens_cached`/`tokens_cache_write`/`tokens_reasoning` too, and as
//!   parts of `tokens_in` and `tokens_out` at most those), `cost_usd` finite and at most
//!   [`MAX_COST_USD`]. `call_hash` is 16 hex digits, `tls_fp` at most 128 characters. Strings
//!   hold no control characters (NUL included).
//! - Unknown fields are ignored, so that shippers may send extra context (host, pod) without
//!   losing events.
//! - Without `id`, the id is derived from the event's content, so a retried batch or a re-run
//!   import stores each event once.
//! - Without `route`, the route is the API's spec template when the event's `api` has a spec
//!   that matches the path, else inferred from the path.

use clientele_core::config::valid_name;
use clientele_core::event::{Event, Outcome, content_id};
use clientele_core::route::infer_template;
use clientele_core::time::parse_ts_value;
use serde_json::{Map, Value};

/// The largest `request_bytes`/`response_bytes` of one event: 1 TiB.
pub const MAX_BYTES: u64 = 1 << 40;
/// The largest `tokens_in`/`tokens_out` of one event.
pub const MAX_TOKENS: u64 = 1_000_000_000;
/// The largest `cost_usd` of one event.
pub const MAX_COST_USD: f64 = 1_000_000.0;
/// The largest latency, in ms: one day.
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;

/// Why one event of a batch was refused.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Rejected {
    /// 0-based position in the batch (the line, for NDJSON).
    pub index: usize,
    pub error: String,
}

/// Limits an event's time must fall within.
#[derive(Debug, Clone, Copy)]
pub struct TimeBounds {
    pub min_ms: i64,
    pub max_ms: i64,
}

/// Validates events already made into JSON objects (from OTLP spans), each with an `id`, by the
/// same rules as a batch. Rejections are indexed by position in `values`.
pub fn parse_values(
    values: &[Value],
    bounds: TimeBounds,
    templates: &TemplateOf<'_>,
) -> (Vec<Event>, Vec<Rejected>) {
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for (index, v) in values.iter().enumerate() {
        match parse_event(v, &[], bounds, templates) {
            Ok(e) => events.push(e),
            Err(error) => rejected.push(Rejected { index, error }),
        }
    }
    (events, rejected)
}

/// Splits a batch into valid events and rejections. `ndjson` selects one event per line;
/// otherwise the body is a JSON array (or a single object).
pub fn parse_batch(
    body: &[u8],
    ndjson: bool,
    bounds: TimeBounds,
) -> Result<(Vec<Event>, Vec<Rejected>), String> {
    parse_batch_with(body, ndjson, bounds, &|_, _, _| None)
}

/// The spec template of `(api, method, path)`, when that API has a spec that matches the path.
pub type TemplateOf<'a> = dyn Fn(&str, &str, &str) -> Option<String> + 'a;

/// [`parse_batch`], with events without a `route` given their API's spec template when
/// `templates` knows one (else the inferred template).
pub fn parse_batch_with(
    body: &[u8],
    ndjson: bool,
    bounds: TimeBounds,
    templates: &TemplateOf<'_>,
) -> Result<(Vec<Event>, Vec<Rejected>), String> {
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    let mut handle = |index: usize, raw: &[u8], value: Result<Value, String>| match value
        .and_then(|v| parse_event(&v, raw, bounds, templates))
    {
        Ok(e) => events.push(e),
        Err(error) => rejected.push(Rejected { index, error }),
    };
    if ndjson {
        let mut index = 0;
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value =
                serde_json::from_slice::<Value>(line).map_err(|e| format!("not valid JSON: {e}"));
            handle(index, line, value);
            index += 1;
        }
    } else {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
        match value {
            Value::Array(items) => {
                for (index, item) in items.into_iter().enumerate() {
                    let raw = item.to_string();
                    handle(index, raw.as_bytes(), Ok(item));
                }
            }
            obj @ Value::Object(_) => {
                let raw = obj.to_string();
                handle(0, raw.as_bytes(), Ok(obj));
            }
            _ => return Err("the body must be a JSON array of events, or NDJSON with Content-Type: application/x-ndjson".into()),
        }
    }
    Ok((events, rejected))
}

fn parse_event(
    v: &Value,
    raw: &[u8],
    bounds: TimeBounds,
    templates: &TemplateOf<'_>,
) -> Result<Event, String> {
    let obj = v.as_object().ok_or("each event must be a JSON object")?;
    let ts_ms =
        parse_ts_value(obj.get("ts").ok_or("ts is required")?).map_err(|e| format!("ts: {e}"))?;
    if ts_ms > bounds.max_ms {
        return Err(
            "ts is in the future beyond the allowed clock skew; check the sender's clock".into(),
        );
    }
    if ts_ms < bounds.min_ms {
        return Err(
            "ts is older than the raw event retention ([storage].raw_event_retention_days); such events can no longer be counted exactly once".into(),
        );
    }
    let consumer = req_str(obj, "consumer")?;
    if !valid_name(consumer) {
        return Err("consumer must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'".into());
    }
    let method = req_str(obj, "method")?;
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("method {method:?} is not an HTTP method"));
    }
    let full_path = req_str(obj, "path")?;
    if !full_path.starts_with('/') || full_path.len() > 2048 {
        return Err("path must start with '/' and be at most 2048 characters".into());
    }
    let path = full_path.split(['?', '#']).next().unwrap_or(full_path);
    let status = obj
        .get("status")
        .ok_or("status is required")?
        .as_u64()
        .ok_or("status must be an integer")?;
    if !(100..=599).contains(&status) {
        return Err(format!("status {status} is not between 100 and 599"));
    }
    if obj.get("latency_ms").is_none_or(Value::is_null) {
        return Err("latency_ms is required".into());
    }
    let latency_ms = opt_f64(obj, "latency_ms", MAX_LATENCY_MS)?.unwrap_or(0.0);
    let id = match opt_str(obj, "id")? {
        Some(id) if id.is_empty() || id.len() > 128 => {
            return Err("id must be 1-128 characters".into());
        }
        Some(id) => id.to_string(),
        None => content_id(raw),
    };
    let route = match opt_str(obj, "route")? {
        Some(r) if !r.starts_with('/') => return Err("route must start with '/'".into()),
        Some(r) => r.to_string(),
        None => opt_str(obj, "api")?
            .filter(|a| !a.is_empty())
            .and_then(|api| templates(api, method, path))
            .unwrap_or_else(|| infer_template(path)),
    };
    let upper = method.to_ascii_uppercase();
    let tokens_in = opt_u64(obj, "tokens_in", MAX_TOKENS)?;
    let tokens_out = opt_u64(obj, "tokens_out", MAX_TOKENS)?;
    // The parts priced apart are parts: more cached than input tokens, or more reasoning than
    // output tokens, is a shipper's mistake that would price tokens that were never used.
    let tokens_cached = opt_u64(obj, "tokens_cached", MAX_TOKENS)?;
    let tokens_cache_write = opt_u64(obj, "tokens_cache_write", MAX_TOKENS)?;
    let tokens_reasoning = opt_u64(obj, "tokens_reasoning", MAX_TOKENS)?;
    let input_parts = tokens_cached.unwrap_or(0) + tokens_cache_write.unwrap_or(0);
    if input_parts > tokens_in.unwrap_or(0) {
        return Err(format!(
            "tokens_cached plus tokens_cache_write ({input_parts}) exceed tokens_in ({}); tokens_in counts every input token, cached ones included",
            tokens_in.unwrap_or(0)
        ));
    }
    if let Some(r) = tokens_reasoning.filter(|r| *r > tokens_out.unwrap_or(0)) {
        return Err(format!(
            "tokens_reasoning ({r}) exceeds tokens_out ({}); tokens_out counts every output token, reasoning ones included",
            tokens_out.unwrap_or(0)
        ));
    }
    let tls_fp = match opt_str(obj, "tls_fp")? {
        Some(f) if f.len() > 128 => return Err("tls_fp is longer than 128 characters".into()),
        f => f.filter(|f| !f.is_empty()).map(str::to_string),
    };
    let given_hash = match opt_str(obj, "call_hash")? {
        None => None,
        Some(h) => Some(
            u64::from_str_radix(h, 16)
                .ok()
                .filter(|_| h.len() == 16)
                .ok_or_else(|| format!("call_hash {h:?} is not 16 hex digits"))?,
        ),
    };
    Ok(Event {
        id,
        ts_ms,
        consumer: Some(consumer.to_string()),
        key_id: opt_str(obj, "key_id")?.map(str::to_string),
        api: opt_str(obj, "api")?
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        path: path.to_string(),
        route,
        status: status as u16,
        latency_ms,
        upstream_latency_ms: opt_f64(obj, "upstream_latency_ms", MAX_LATENCY_MS)?,
        request_bytes: opt_u64(obj, "request_bytes", MAX_BYTES)?.unwrap_or(0),
        response_bytes: opt_u64(obj, "response_bytes", MAX_BYTES)?.unwrap_or(0),
        client_ip: opt_str(obj, "client_ip")?.map(str::to_string),
        user_agent: opt_str(obj, "user_agent")?.map(|s| s.chars().take(512).collect()),
        session_id: opt_str(obj, "session_id")?.map(str::to_string),
        // `user` is the OpenAI-style name for the same thing, so chat logs import as they are.
        end_user: match opt_str(obj, "end_user")? {
            Some(u) => Some(u),
            None => opt_str(obj, "user")?,
        }
        .filter(|u| !u.is_empty())
        .map(|u| u.chars().take(256).collect()),
        trace_id: opt_str(obj, "trace_id")?.map(str::to_string),
        outcome: Outcome::Ingested,
        plan: opt_str(obj, "plan")?.map(str::to_string),
        team: opt_str(obj, "team")?.map(str::to_string),
        use_case: opt_str(obj, "use_case")?.map(str::to_string),
        model: opt_str(obj, "model")?.map(str::to_string),
        tokens_in,
        tokens_out,
        tokens_cached,
        tokens_cache_write,
        tokens_reasoning,
        tls_fp,
        cost_usd: opt_f64(obj, "cost_usd", MAX_COST_USD)?,
        close_code: None,
        // A shipper that fingerprinted the call (as the events API shows it) is trusted.
        // Otherwise calls without a body are the same call when method, path and query are:
        // their fingerprint is the gateway's (an empty body's CRC is 0). A logged call with a
        // body has no body to read here, and different prompts to one endpoint are not a loop,
        // so it has none.
        call_hash: given_hash.or_else(|| {
            matches!(upper.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS").then(|| {
                let query = full_path
                    .split_once('?')
                    .map(|(_, q)| q.split('#').next().unwrap_or(q));
                clientele_core::event::call_hash(
                    clientele_core::event::head_print(&upper, path, query),
                    0,
                )
            })
        }),
        method: upper,
    })
}

fn req_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(format!("{field} is required")),
        Some(Value::String(s)) => no_controls(field, s),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 2048 => no_controls(field, s).map(Some),
        Some(Value::String(_)) => Err(format!("{field} is longer than 2048 characters")),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

/// `s`, unless it holds a control character (NUL, newline, ESC...), which would corrupt logs,
/// exports and terminals downstream.
fn no_controls<'a>(field: &str, s: &'a str) -> Result<&'a str, String> {
    match s.chars().position(char::is_control) {
        None => Ok(s),
        Some(at) => Err(format!(
            "{field} holds a control character at position {at}; remove or percent-encode it"
        )),
    }
}

fn opt_u64(obj: &Map<String, Value>, field: &str, max: u64) -> Result<Option<u64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            Some(n) => Err(format!("{field} {n} is more than the maximum of {max}")),
            None => Err(format!(
                "{field} must be an integer from 0 to {max} (got {v})"
            )),
        },
    }
}

fn opt_f64(obj: &Map<String, Value>, field: &str, max: f64) -> Result<Option<f64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && (0.0..=max).contains(&x) => Ok(Some(x)),
            _ => Err(format!(
                "{field} must be a number from 0 to {max} (got {v})"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: TimeBounds = TimeBounds {
        min_ms: 0,
        max_ms: 2_000_000_000_000,
    };

    #[test]
    fn ndjson_with_per_line_errors() {
        let body = br#"{"ts":"2026-01-01T00:00:00Z","consumer":"acme","method":"get","path":"/pets/42?x=1","status":200,"latency_ms":12.5,"extra":"ignored"}

not json
{"ts":1767225600000,"consumer":"acme","method":"GET","path":"/pets","status":200,"latency_ms":-1}
{"ts":1767225600000,"consumer":"acme","method":"GET","path":"/pets","status":"200","latency_ms":1}
{"ts":4000000000000,"consumer":"acme","method":"GET","path":"/pets","status":200,"latency_ms":1}
{"consumer":"acme","method":"GET","path":"/pets","status":200,"latency_ms":1}
"#;
        let (events, rejected) = parse_batch(body, true, B).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.method.as_str(), e.path.as_str(), e.route.as_str()),
            ("GET", "/pets/42", "/pets/{id}")
        );
        assert!(e.id.starts_with("ev_"));
        let reasons: Vec<(usize, &str)> = rejected
            .iter()
            .map(|r| (r.index, r.error.as_str()))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(reasons[0].1.contains("not valid JSON") && reasons[0].0 == 1);
        assert!(reasons[1].1.contains("latency_ms"));
        assert!(reasons[2].1.contains("status must be an integer"));
        assert!(reasons[3].1.contains("future"));
        assert!(reasons[4].1.contains("ts is required"));
    }

    #[test]
    fn every_number_is_bounded_and_strings_hold_no_controls() {
        let line = |extra: &str| {
            format!(
                r#"{{"ts":1767225600000,"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1{extra}}}"#
            )
        };
        let cases = [
            (r#","request_bytes":18446744073709551615"#, "request_bytes"),
            (r#","response_bytes":1099511627777"#, "response_bytes"),
            (r#","request_bytes":-1"#, "request_bytes"),
            (r#","upstream_latency_ms":1e300"#, "upstream_latency_ms"),
            (r#","tokens_in":10000000000"#, "tokens_in"),
            (r#","tokens_out":1.5"#, "tokens_out"),
            (r#","cost_usd":1e308"#, "cost_usd"),
            (r#","latency_ms":86400001"#, "latency_ms"),
            (r#","status":99"#, "status"),
            (r#","status":600"#, "status"),
            (r#","path":"/a\u0000b""#, "path"),
            (r#","user_agent":"x\u001b[31m""#, "user_agent"),
            (r#","tokens_in":10,"tokens_cached":11"#, "tokens_cached"),
            (
                r#","tokens_in":10,"tokens_cached":5,"tokens_cache_write":6"#,
                "tokens_in",
            ),
            (
                r#","tokens_out":3,"tokens_reasoning":4"#,
                "tokens_reasoning",
            ),
            (r#","tokens_cached":10000000001"#, "tokens_cached"),
            (r#","call_hash":"12345""#, "call_hash"),
            (r#","call_hash":"zz00000000000000""#, "call_hash"),
        ];
        for (extra, field) in cases {
            let text = line(extra);
            let (events, rejected) = parse_batch(text.as_bytes(), true, B).unwrap();
            assert!(events.is_empty(), "{extra} was accepted");
            assert!(
                rejected[0].error.contains(field),
                "{extra}: {}",
                rejected[0].error
            );
        }
        let ok =
            line(r#","request_bytes":1099511627776,"cost_usd":1000000,"upstream_latency_ms":5"#);
        let (events, _) = parse_batch(ok.as_bytes(), true, B).unwrap();
        assert_eq!(events[0].request_bytes, MAX_BYTES);
        let usage = line(
            r#","tokens_in":100,"tokens_cached":60,"tokens_cache_write":40,"tokens_out":9,"tokens_reasoning":9,"tls_fp":"t13d_x","call_hash":"00000000DEADBEEF""#,
        );
        let e = &parse_batch(usage.as_bytes(), true, B).unwrap().0[0];
        assert_eq!(
            (e.tokens_cached, e.tokens_cache_write, e.tokens_reasoning),
            (Some(60), Some(40), Some(9))
        );
        assert_eq!(e.tls_fp.as_deref(), Some("t13d_x"));
        assert_eq!(e.call_hash, Some(0xdead_beef));
    }

    #[test]
    fn derived_ids_are_stable_and_given_ids_kept() {
        let line = br#"{"ts":1767225600000,"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1}"#;
        let a = parse_batch(line, true, B).unwrap().0;
        let b = parse_batch(line, true, B).unwrap().0;
        assert_eq!(a[0].id, b[0].id);
        let with_id = br#"[{"id":"x1","ts":1767225600000,"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1}]"#;
        assert_eq!(parse_batch(with_id, false, B).unwrap().0[0].id, "x1");
        assert!(parse_batch(b"42", false, B).is_err());
        // Without a route, the API's spec template wins over the inferred one.
        let templates = |api: &str, _m: &str, p: &str| {
            (api == "petstore" && p.starts_with("/pet/")).then(|| "/pet/{petId}".to_string())
        };
        let body = br#"[{"ts": 1, "consumer": "a", "method": "GET", "path": "/pet/abc?x=1", "status": 200, "latency_ms": 1, "api": "petstore"},
            {"ts": 1, "consumer": "a", "method": "GET", "path": "/pet/abc", "status": 200, "latency_ms": 1},
            {"ts": 1, "consumer": "a", "method": "GET", "path": "/pet/abc", "status": 200, "latency_ms": 1, "api": "petstore", "route": "/given"}]"#;
        let events = parse_batch_with(body, false, B, &templates).unwrap().0;
        let routes: Vec<&str> = events.iter().map(|e| e.route.as_str()).collect();
        assert_eq!(routes, vec!["/pet/{petId}", "/pet/abc", "/given"]);
    }
}

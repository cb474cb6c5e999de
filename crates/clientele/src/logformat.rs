//! The access-log shapes `clientele import` reads, converted to Clientele events: pure
//! functions from one raw line to one event, apart from the command's I/O so that the fuzz
//! target `fuzz/fuzz_targets/import_*.rs` can include this file as it is (it needs only
//! `serde_json`, `chrono`, `clap` and `clientele_core`).

use serde_json::{Map, Value, json};

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Clientele,
    Nginx,
    Kong,
    Envoy,
}

/// Converts one log line into a Clientele event.
pub fn convert_line(raw: &[u8], format: Option<Format>) -> std::result::Result<Value, String> {
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| format!("not JSON ({e}); each line must be one JSON object"))?;
    let obj = value.as_object().ok_or("each line must be a JSON object")?;
    let format = format.unwrap_or_else(|| detect(obj));
    let mut event = match format {
        Format::Clientele => obj.clone(),
        Format::Nginx => from_nginx(obj)?,
        Format::Kong => from_kong(obj)?,
        Format::Envoy => from_envoy(obj)?,
    };
    if !event.contains_key("id") {
        event.insert("id".into(), Value::String(line_id(raw)));
    }
    Ok(Value::Object(event))
}

fn detect(obj: &Map<String, Value>) -> Format {
    if obj.contains_key("latencies")
        || (obj.get("request").is_some_and(Value::is_object)
            && obj.get("response").is_some_and(Value::is_object))
    {
        Format::Kong
    } else if obj.contains_key("response_code")
        || obj.contains_key("start_time")
        || obj.contains_key("upstream_service_time")
    {
        Format::Envoy
    } else if obj.contains_key("request_time")
        || obj.contains_key("time_local")
        || obj.contains_key("time_iso8601")
        || obj.contains_key("remote_addr")
    {
        Format::Nginx
    } else {
        Format::Clientele
    }
}

/// A stable id from the raw line: the same line imported twice is the same event.
fn line_id(raw: &[u8]) -> String {
    clientele_core::event::content_id(raw).replacen("ev_", "imp_", 1)
}

fn text<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| obj.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .find(|s| !s.is_empty() && *s != "-")
}

/// A number given as a JSON number or a string (nginx logs numbers as strings).
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn path_only(uri: &str) -> &str {
    let uri = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .map_or(uri, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    uri.split(['?', '#']).next().unwrap_or(uri)
}

fn from_nginx(o: &Map<String, Value>) -> std::result::Result<Map<String, Value>, String> {
    let consumer = text(
        o,
        &[
            "consumer",
            "http_x_consumer_id",
            "consumer_id",
            "remote_user",
        ],
    )
    .ok_or("no consumer field; add \"consumer\":\"$http_x_consumer_id\" to the nginx log_format")?;
    let (method, uri) = match (
        text(o, &["request_method"]),
        text(o, &["request_uri", "uri"]),
    ) {
        (Some(m), Some(u)) => (m.to_string(), u.to_string()),
        _ => {
            let request =
                text(o, &["request"]).ok_or("no request, or request_method and request_uri")?;
            let mut parts = request.split_whitespace();
            let m = parts.next().ok_or("request is empty")?;
            let u = parts.next().ok_or("request has no URI")?;
            (m.to_string(), u.to_string())
        }
    };
    let ts: Value = if let Some(t) = text(o, &["time_iso8601"]) {
        json!(t)
    } else if let Some(t) = number(o.get("msec")) {
        json!((t * 1000.0).round() as i64)
    } else if let Some(t) = text(o, &["time_local"]) {
        let parsed = chrono::DateTime::parse_from_str(t, "%d/%b/%Y:%H:%M:%S %z")
            .map_err(|_| format!("time_local {t:?} is not like 10/Oct/2026:13:55:36 +0000"))?;
        json!(parsed.timestamp_millis())
    } else {
        return Err("no time_iso8601, msec or time_local field".into());
    };
    let status = number(o.get("status")).ok_or("no status field")?;
    let request_time = number(o.get("request_time")).ok_or("no request_time field (seconds)")?;
    let mut e = Map::new();
    e.insert("ts".into(), ts);
    e.insert("consumer".into(), json!(consumer));
    e.insert("method".into(), json!(method));
    e.insert("path".into(), json!(path_only(&uri)));
    e.insert("status".into(), json!(status as u64));
    e.insert("latency_ms".into(), json!(request_time * 1000.0));
    // nginx lists one time per upstream attempt ("0.010, 0.020"); their sum is the time spent
    // upstream, which is what the gateway-overhead comparison needs.
    if let Some(up) = text(o, &["upstream_response_time"]) {
        let times: Vec<f64> = up
            .split([',', ':'])
            .filter_map(|p| p.trim().parse::<f64>().ok())
            .collect();
        // "-, -" means no upstream answered: leave the field out rather than claim 0 ms.
        if !times.is_empty() {
            e.insert(
                "upstream_latency_ms".into(),
                json!(times.iter().sum::<f64>() * 1000.0),
            );
        }
    }
    if let Some(b) = number(o.get("body_bytes_sent").or_else(|| o.get("bytes_sent"))) {
        e.insert("response_bytes".into(), json!(b as u64));
    }
    if let Some(b) = number(o.get("request_length")) {
        e.insert("request_bytes".into(), json!(b as u64));
    }
    if let Some(ip) = text(o, &["remote_addr"]) {
        e.insert("client_ip".into(), json!(ip));
    }
    if let Some(ua) = text(o, &["http_user_agent"]) {
        e.insert("user_agent".into(), json!(ua));
    }
    Ok(e)
}

fn from_kong(o: &Map<String, Value>) -> std::result::Result<Map<String, Value>, String> {
    let empty = Map::new();
    let req = o
        .get("request")
        .and_then(Value::as_object)
        .ok_or("no request object")?;
    let resp = o
        .get("response")
        .and_then(Value::as_object)
        .ok_or("no response object")?;
    let lat = o
        .get("latencies")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let consumer_obj = o
        .get("consumer")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let consumer = text(consumer_obj, &["username", "custom_id", "id"])
        .or_else(|| o.get("consumer").and_then(Value::as_str))
        .ok_or("no consumer (the request was not authenticated by a Kong consumer plugin)")?;
    let uri = text(req, &["uri", "url"]).ok_or("no request.uri")?;
    let mut e = Map::new();
    e.insert(
        "ts".into(),
        json!(number(o.get("started_at")).ok_or("no started_at")? as i64),
    );
    e.insert("consumer".into(), json!(consumer));
    e.insert(
        "method".into(),
        json!(text(req, &["method"]).ok_or("no request.method")?),
    );
    e.insert("path".into(), json!(path_only(uri)));
    e.insert(
        "status".into(),
        json!(number(resp.get("status")).ok_or("no response.status")? as u64),
    );
    e.insert(
        "latency_ms".into(),
        json!(number(lat.get("request")).ok_or("no latencies.request")?),
    );
    if let Some(p) = number(lat.get("proxy")) {
        e.insert("upstream_latency_ms".into(), json!(p));
    }
    if let Some(s) = number(req.get("size")) {
        e.insert("request_bytes".into(), json!(s as u64));
    }
    if let Some(s) = number(resp.get("size")) {
        e.insert("response_bytes".into(), json!(s as u64));
    }
    if let Some(ip) = text(o, &["client_ip"]) {
        e.insert("client_ip".into(), json!(ip));
    }
    if let Some(ua) = req
        .get("headers")
        .and_then(Value::as_object)
        .and_then(|h| text(h, &["user-agent"]))
    {
        e.insert("user_agent".into(), json!(ua));
    }
    if let Some(api) = o
        .get("service")
        .and_then(Value::as_object)
        .and_then(|s| text(s, &["name"]))
    {
        e.insert("api".into(), json!(api));
    }
    Ok(e)
}

fn from_envoy(o: &Map<String, Value>) -> std::result::Result<Map<String, Value>, String> {
    let consumer = text(
        o,
        &["consumer", "x-consumer-id", "x_consumer_id", "consumer_id"],
    )
    .ok_or(
        "no consumer field; add \"consumer\": \"%REQ(X-CONSUMER-ID)%\" to the Envoy json_format",
    )?;
    let path = text(o, &["x-envoy-original-path", "path"]).ok_or("no path field")?;
    let mut e = Map::new();
    e.insert(
        "ts".into(),
        json!(text(o, &["start_time"]).ok_or("no start_time field")?),
    );
    e.insert("consumer".into(), json!(consumer));
    e.insert(
        "method".into(),
        json!(text(o, &["method"]).ok_or("no method field")?),
    );
    e.insert("path".into(), json!(path_only(path)));
    e.insert(
        "status".into(),
        json!(number(o.get("response_code")).ok_or("no response_code field")? as u64),
    );
    e.insert(
        "latency_ms".into(),
        json!(number(o.get("duration")).ok_or("no duration field (ms)")?),
    );
    if let Some(u) = number(o.get("upstream_service_time")) {
        e.insert("upstream_latency_ms".into(), json!(u));
    }
    if let Some(b) = number(o.get("bytes_received")) {
        e.insert("request_bytes".into(), json!(b as u64));
    }
    if let Some(b) = number(o.get("bytes_sent")) {
        e.insert("response_bytes".into(), json!(b as u64));
    }
    if let Some(ua) = text(o, &["user_agent"]) {
        e.insert("user_agent".into(), json!(ua));
    }
    let ip = text(o, &["x_forwarded_for"])
        .map(|x| x.split(',').next().unwrap_or(x).trim().to_string())
        .or_else(|| {
            text(o, &["downstream_remote_address"]).map(|a| {
                a.rsplit_once(':')
                    .map_or(a, |(ip, _)| ip)
                    .trim_matches(['[', ']'])
                    .to_string()
            })
        });
    if let Some(ip) = ip {
        e.insert("client_ip".into(), json!(ip));
    }
    if let Some(id) = text(o, &["request_id"]) {
        e.insert("id".into(), json!(format!("envoy_{id}")));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_escape_json_line() {
        let line = br#"{"time_iso8601":"2026-10-10T13:55:36+00:00","remote_addr":"203.0.113.7","request":"POST /orders/42?x=1 HTTP/1.1","status":"422","body_bytes_sent":"87","request_length":"311","request_time":"0.035","upstream_response_time":"0.010, 0.020","http_user_agent":"acme-sdk/2","http_x_consumer_id":"acme"}"#;
        let e = convert_line(line, None).unwrap();
        assert_eq!(e["consumer"], "acme");
        assert_eq!(e["method"], "POST");
        assert_eq!(e["path"], "/orders/42");
        assert_eq!(e["status"], 422);
        assert!((e["latency_ms"].as_f64().unwrap() - 35.0).abs() < 1e-9);
        assert!((e["upstream_latency_ms"].as_f64().unwrap() - 30.0).abs() < 1e-9);
        assert_eq!(e["response_bytes"], 87);
        assert_eq!(e["client_ip"], "203.0.113.7");
        assert!(e["id"].as_str().unwrap().starts_with("imp_"));
        let local = br#"{"time_local":"10/Oct/2026:13:55:36 +0000","request_method":"GET","request_uri":"/pets","status":200,"request_time":"0.001","remote_user":"globex"}"#;
        assert_eq!(
            convert_line(local, Some(Format::Nginx)).unwrap()["ts"],
            1_791_640_536_000i64
        );
    }

    #[test]
    fn kong_http_log() {
        let line = br#"{"request":{"method":"GET","uri":"/v1/pets/7?limit=1","url":"http://api.example.com:8000/v1/pets/7?limit=1","size":212,"headers":{"user-agent":"curl/8.5"}},"response":{"status":503,"size":640},"latencies":{"request":515,"kong":58,"proxy":457},"consumer":{"id":"9c2b","username":"initech"},"client_ip":"198.51.100.4","started_at":1791640536000,"service":{"name":"petstore"}}"#;
        let e = convert_line(line, None).unwrap();
        assert_eq!(
            (
                e["consumer"].as_str(),
                e["path"].as_str(),
                e["status"].as_u64()
            ),
            (Some("initech"), Some("/v1/pets/7"), Some(503))
        );
        assert_eq!(e["latency_ms"], 515.0);
        assert_eq!(e["upstream_latency_ms"], 457.0);
        assert_eq!(e["api"], "petstore");
        assert_eq!(e["user_agent"], "curl/8.5");
        assert_eq!(e["ts"], 1_791_640_536_000i64);
    }

    #[test]
    fn envoy_json_access_log() {
        let line = br#"{"start_time":"2026-10-10T13:55:36.123Z","method":"GET","path":"/search?q=cat","protocol":"HTTP/1.1","response_code":200,"response_flags":"-","bytes_received":0,"bytes_sent":1024,"duration":48,"upstream_service_time":"45","x_forwarded_for":"203.0.113.9, 10.0.0.1","user_agent":"python-requests/2.31","request_id":"5f1c","consumer":"umbrella","downstream_remote_address":"10.0.0.1:52311"}"#;
        let e = convert_line(line, None).unwrap();
        assert_eq!(
            (e["consumer"].as_str(), e["path"].as_str()),
            (Some("umbrella"), Some("/search"))
        );
        assert_eq!(e["upstream_latency_ms"], 45.0);
        assert_eq!(e["client_ip"], "203.0.113.9");
        assert_eq!(e["id"], "envoy_5f1c");
    }

    #[test]
    fn clientele_lines_pass_through_and_ids_are_stable() {
        let line = br#"{"ts":1791640536000,"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1.5}"#;
        let a = convert_line(line, None).unwrap();
        let b = convert_line(line, None).unwrap();
        assert_eq!(a["id"], b["id"]);
        let other = br#"{"ts":1791640536001,"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1.5}"#;
        assert_ne!(convert_line(other, None).unwrap()["id"], a["id"]);
        assert_eq!(a["latency_ms"], 1.5);
    }

    #[test]
    fn rejections_say_what_to_fix() {
        assert!(
            convert_line(b"GET / HTTP/1.1", None)
                .unwrap_err()
                .contains("not JSON")
        );
        let no_consumer = br#"{"time_iso8601":"2026-10-10T13:55:36+00:00","request":"GET / HTTP/1.1","status":"200","request_time":"0.1","remote_addr":"1.2.3.4"}"#;
        assert!(
            convert_line(no_consumer, None)
                .unwrap_err()
                .contains("$http_x_consumer_id")
        );
        assert!(convert_line(b"[1,2]", None).unwrap_err().contains("object"));
    }
}

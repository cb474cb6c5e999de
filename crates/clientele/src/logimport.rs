//! `clientele import FILE...`: sends access logs to a running server's `POST /v1/events`.
//!
//! Each line is read as JSON and converted from whichever shape it has: Clientele's own event
//! (NDJSON as the API takes it), nginx's `log_format ... escape=json`, Kong's file-log or
//! http-log, or Envoy's JSON access log. Lines without an `id` get one derived from the raw line,
//! so re-running an import after a crash stores every event once.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use clientele_http::{Outbound, Posted, RetryPolicy};
use http::{Request, StatusCode, header};
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use crate::Remote;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// NDJSON files: Clientele events, or nginx/Kong/Envoy JSON access logs.
    #[arg(required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
    /// Events per request.
    #[arg(long, default_value_t = 5000)]
    pub(crate) batch: usize,
    /// The shape of every line; detected per line when absent.
    #[arg(long, value_enum)]
    pub(crate) format: Option<Format>,
    /// Keep following FILE as it grows, across logrotate's rename and copytruncate rotations,
    /// until interrupted. Exactly once across restarts: the offset is saved after each batch the
    /// server accepted.
    #[arg(long)]
    follow: bool,
    /// With --follow: where the offset is kept (default: `.NAME.clientele-follow` beside FILE).
    #[arg(long, value_name = "PATH", requires = "follow")]
    state: Option<PathBuf>,
    /// With --follow: how often to look for new lines and rotations, in milliseconds.
    #[arg(long, default_value_t = 250, value_name = "MS")]
    poll_ms: u64,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Clientele,
    Nginx,
    Kong,
    Envoy,
}

/// Where a line came from, for messages.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) file: usize,
    pub(crate) line: usize,
}

pub(crate) struct Batch {
    pub(crate) body: Vec<u8>,
    pub(crate) origins: Vec<Origin>,
}

#[derive(Debug, Default)]
struct Totals {
    lines: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    reasons: Vec<String>,
}

impl Totals {
    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < 10 {
            self.reasons.push(reason);
        }
    }
}

pub async fn run(args: ImportArgs) -> Result<()> {
    if args.batch == 0 || args.batch > 100_000 {
        bail!("--batch must be between 1 and 100000");
    }
    let token = crate::cli::token(&args.remote)?;
    let base = args.remote.admin_url.trim_end_matches('/').to_string();
    let http = crate::client::http(Duration::from_secs(120))?;
    if args.follow {
        let [file] = args.files.as_slice() else {
            bail!("--follow takes exactly one FILE; run one follower per log");
        };
        let state = match &args.state {
            Some(p) => p.clone(),
            None => crate::follow::default_state_path(file),
        };
        return crate::follow::run(crate::follow::Follow {
            path: file.clone(),
            state,
            batch: args.batch,
            format: args.format,
            poll: Duration::from_millis(args.poll_ms.clamp(10, 60_000)),
            json: args.remote.json,
            http,
            base,
            token,
        })
        .await;
    }
    let names: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    let mut total_bytes = 0u64;
    for p in &args.files {
        total_bytes += std::fs::metadata(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .len();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let mut totals = Totals::default();
    // A fatal error (token refused, server gone) still prints how far the import got; a
    // re-run is safe, since every line keeps its id.
    let outcome: Result<()> = async {
        let mut in_flight: JoinSet<(Vec<Origin>, Result<Value, SendError>)> = JoinSet::new();
        let mut batch = Batch {
            body: Vec::new(),
            origins: Vec::new(),
        };
        for (file_idx, path) in args.files.iter().enumerate() {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut reader = BufReader::with_capacity(
                1 << 20,
                CountingReader {
                    inner: file,
                    bar: bar.clone(),
                },
            );
            let mut line = Vec::new();
            let mut line_no = 0;
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                let text = trim_line(&line);
                if text.is_empty() {
                    continue;
                }
                totals.lines += 1;
                match convert_line(text, args.format) {
                    Ok(event) => {
                        // Serializing a JSON value cannot fail.
                        let _ = serde_json::to_writer(&mut batch.body, &event);
                        batch.body.push(b'\n');
                        batch.origins.push(Origin {
                            file: file_idx,
                            line: line_no,
                        });
                    }
                    Err(reason) => {
                        totals.reject(format!("{}:{line_no}: {reason}", names[file_idx]))
                    }
                }
                if batch.origins.len() >= args.batch {
                    let full = std::mem::replace(
                        &mut batch,
                        Batch {
                            body: Vec::new(),
                            origins: Vec::new(),
                        },
                    );
                    while in_flight.len() >= 4 {
                        if let Some(done) = in_flight.join_next().await {
                            settle(done, &mut totals, &names)?;
                        }
                    }
                    in_flight.spawn(send_batch(http.clone(), base.clone(), token.clone(), full));
                    bar.set_message(format!(
                        "accepted {} rejected {}",
                        totals.accepted, totals.rejected
                    ));
                }
            }
        }
        if !batch.origins.is_empty() {
            while in_flight.len() >= 4 {
                if let Some(done) = in_flight.join_next().await {
                    settle(done, &mut totals, &names)?;
                }
            }
            in_flight.spawn(send_batch(http.clone(), base.clone(), token.clone(), batch));
        }
        while let Some(done) = in_flight.join_next().await {
            settle(done, &mut totals, &names)?;
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();

    let secs = started.elapsed().as_secs_f64();
    let rate = totals.lines as f64 / secs.max(1e-9);
    if args.remote.json {
        println!(
            "{}",
            json!({"files": names, "lines": totals.lines, "accepted": totals.accepted, "duplicates": totals.duplicates,
                "rejected": totals.rejected, "first_rejections": totals.reasons, "elapsed_s": secs, "events_per_s": rate})
        );
    } else {
        println!("files       {}", names.join(", "));
        println!("lines       {}", totals.lines);
        println!(
            "accepted    {} ({} were already imported)",
            totals.accepted, totals.duplicates
        );
        println!("rejected    {}", totals.rejected);
        println!("elapsed     {secs:.2} s ({rate:.0} lines/s)");
        for reason in &totals.reasons {
            println!("  {reason}");
        }
    }
    outcome?;
    if totals.rejected > 0 {
        bail!(
            "{} lines were rejected; the rest were imported",
            totals.rejected
        );
    }
    Ok(())
}

pub(crate) fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    &line[start..end]
}

/// Counts bytes read into the progress bar.
struct CountingReader<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn settle(
    done: std::result::Result<(Vec<Origin>, Result<Value, SendError>), tokio::task::JoinError>,
    totals: &mut Totals,
    names: &[String],
) -> Result<()> {
    let (origins, result) = done.map_err(|e| anyhow!("a batch task failed: {e}"))?;
    let answer = result.map_err(|e| anyhow!(e.message))?;
    totals.accepted += answer.get("accepted").and_then(Value::as_u64).unwrap_or(0);
    totals.duplicates += answer
        .get("duplicates")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let rejected = answer
        .get("rejected")
        .or_else(|| answer.get("errors"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in rejected {
        let index = r.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let error = r.get("error").and_then(Value::as_str).unwrap_or("rejected");
        let place = origins.get(index).map_or_else(
            || "?".to_string(),
            |o| format!("{}:{}", names[o.file], o.line),
        );
        totals.reject(format!("{place}: {error}"));
    }
    Ok(())
}

/// Why a batch was not answered; `retry` says whether the same batch may succeed later
/// (server unavailable) or never will (token refused, batch too large).
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) retry: bool,
    pub(crate) message: String,
}

/// Posts one batch with the shared retry policy (connection failures, timeouts, 429 and 5xx).
/// A 400 (nothing valid) is an answer, not a failure: its `errors` say why.
pub(crate) async fn send_batch(
    http: Outbound<Full<Bytes>>,
    base: String,
    token: String,
    batch: Batch,
) -> (Vec<Origin>, Result<Value, SendError>) {
    let body = Bytes::from(batch.body);
    let policy = RetryPolicy::new(4, Duration::from_millis(200), Duration::from_secs(3));
    let mut attempt = 1;
    loop {
        let req = match Request::post(format!("{base}/v1/events"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                let message = format!("invalid admin URL {base}: {e}");
                return (
                    batch.origins,
                    Err(SendError {
                        retry: false,
                        message,
                    }),
                );
            }
        };
        let (result, error) = match http.fetch(req).await {
            Ok((parts, bytes)) => match answer(parts.status, &bytes) {
                Ok(value) => return (batch.origins, Ok(value)),
                Err((false, message)) => {
                    return (
                        batch.origins,
                        Err(SendError {
                            retry: false,
                            message,
                        }),
                    );
                }
                Err((true, e)) => (
                    Ok(Posted {
                        status: parts.status.as_u16(),
                        retry_after: clientele_http::parse_retry_after(&parts.headers),
                    }),
                    e,
                ),
            },
            Err(e) => {
                let text = format!(
                    "cannot reach the admin API at {base}: {e}; is `clientele serve` running?"
                );
                (Err(e), text)
            }
        };
        match policy.next_delay(attempt, &result) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                let message = error;
                return (
                    batch.origins,
                    Err(SendError {
                        retry: true,
                        message,
                    }),
                );
            }
        }
        attempt += 1;
    }
}

/// What an answer to a batch means: the report, or an error with whether to try again.
fn answer(status: StatusCode, bytes: &[u8]) -> Result<Value, (bool, String)> {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let detail = value.get("detail").and_then(Value::as_str).unwrap_or("");
    match status {
        StatusCode::ACCEPTED | StatusCode::BAD_REQUEST => Ok(value),
        StatusCode::PAYLOAD_TOO_LARGE => Err((
            false,
            "a batch is larger than the server accepts; lower --batch".into(),
        )),
        StatusCode::UNAUTHORIZED => Err((
            false,
            "the admin API refused the token; set --token or CLIENTELE_ADMIN_TOKEN".into(),
        )),
        s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => Err((
            true,
            format!("the server is unavailable ({}): {detail}", s.as_u16()),
        )),
        other => Err((false, format!("{} {detail}", other.as_u16()))),
    }
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

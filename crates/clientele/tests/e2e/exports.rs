//! Exports: `/metrics` checked by `promtool`, OTLP payloads decoded with the official protobuf
//! definitions (Python `opentelemetry-proto`), and sinks that are down or slow while the gateway
//! serves traffic. `scripts/test.sh` installs promtool and the Python package when missing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Mutex;

type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An OTLP/HTTP (or any push) receiver on loopback: records (path, content type, body), answers
/// 200 after `delay`.
async fn receiver(delay: Duration) -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ct = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        g.lock().await.push((path, ct, body));
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

async fn wait_for_path(got: &Received, path: &str, pred: impl Fn(&Bytes) -> bool) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((_, _, b)) = got
            .lock()
            .await
            .iter()
            .rev()
            .find(|(p, _, b)| p == path && pred(b))
        {
            return b.clone();
        }
        assert!(Instant::now() < deadline, "nothing received at {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Python with `opentelemetry-proto`: `CLIENTELE_TEST_PYTHON` (set by scripts/test.sh), else
/// python3.
pub(crate) fn python() -> String {
    std::env::var("CLIENTELE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn decode_otlp(kind: &str, format: &str, body: &[u8], dir: &Path) -> Value {
    let file = dir.join(format!("otlp-{kind}-{format}.bin"));
    std::fs::write(&file, body).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otlp_decode.py");
    let out = Command::new(python())
        .args([script, kind, format])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run scripts/test.sh, which installs it",
                python()
            )
        });
    assert!(
        out.status.success(),
        "the official OTLP decoder refused the {kind} payload (needs PyPI opentelemetry-proto; scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

async fn metrics_text(server: &Server, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, body) = send(
        Method::GET,
        &format!("http://{}/metrics", server.admin),
        &headers,
        None,
    )
    .await
    .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_otlp_decodes_with_the_official_schema() {
    let up = start_upstream().await;
    let (otlp, got) = receiver(Duration::ZERO).await;
    let log_path = "events.ndjson";
    let server = Server::start(
        up.addr,
        &format!(
            r#"
[exports.prometheus]
top_k = 3
scrape_token = "scrape-token-0123456789"
[exports.otlp]
endpoint = "{otlp}"
flush_interval_ms = 50
metrics_interval_ms = 300
[[exports.logs]]
kind = "file"
path = "{log_path}"
max_bytes = 4096
keep = 2
flush_interval_ms = 50
"#
        ),
    )
    .await;
    // Six consumers with different volumes; with top_k = 3 the three busiest keep their series.
    let mut keys = Vec::new();
    for i in 0..6 {
        let (_, key) = server
            .consumer_with_key(&format!("c{i}"), Some("pro"))
            .await;
        keys.push(key);
    }
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..(i + 1) * 4 {
            let (status, _, _) = get_with_key(&server, "/pets/7", key).await;
            assert_eq!(status, 200);
        }
    }
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, body) = send(
        Method::GET,
        &server.gw("/status?code=503"),
        &[("x-api-key", &keys[5]), ("traceparent", traceparent)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{body:?}");
    let (_, _, echoed) = send(
        Method::GET,
        &server.gw("/echo"),
        &[("x-api-key", &keys[5]), ("traceparent", traceparent)],
        None,
    )
    .await
    .unwrap();
    let echoed: Value = serde_json::from_slice(&echoed).unwrap();
    let upstream_parent = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();

    // Auth: no token 401; the scrape token and the admin token both work.
    assert_eq!(metrics_text(&server, None).await.0, 401);
    assert_eq!(
        metrics_text(&server, Some("wrong-token-0123456789"))
            .await
            .0,
        401
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, text) = metrics_text(&server, Some("scrape-token-0123456789")).await;
        assert_eq!(status, 200);
        if text.contains("clientele_events_stored_total 86") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "events never all counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metrics_text(&server, Some(ADMIN_TOKEN)).await.0, 200);

    // Every metric the Grafana dashboard queries is one that /metrics exposes.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/clientele.json"
    ))
    .unwrap();
    let _: Value = serde_json::from_str(&dashboard).unwrap();
    for (i, _) in dashboard.match_indices("clientele_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = name.trim_end_matches("_bucket");
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }

    // promtool, the Prometheus project's own parser and linter.
    let metrics_file = server.dir.path().join("metrics.txt");
    std::fs::write(&metrics_file, &text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).unwrap())
        .output()
        .expect("promtool is needed (Debian package prometheus; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let consumers: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("clientele_consumer_requests_total{"))
        .filter_map(|l| l.split("consumer=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        consumers.into_iter().collect::<Vec<_>>(),
        ["_other", "c3", "c4", "c5"],
        "top 3 plus _other:\n{text}"
    );
    assert!(
        text.contains("clientele_consumer_requests_total{consumer=\"c5\",status_class=\"5xx\"} 1")
    );
    assert!(text.contains(
        "clientele_requests_total{api=\"petstore\",status_class=\"2xx\",outcome=\"proxied\"} 85"
    ));

    // Traces: one span per request, decoded by the official schema. The two traced requests
    // may land in different export batches: each span is read from the batch holding it.
    let (doc, span) = traced_span(&got, server.dir.path(), "/status").await;
    assert_eq!(span["kind"], "SPAN_KIND_SERVER");
    assert_eq!(span["status"]["code"], "STATUS_CODE_ERROR");
    let a = &span["attributes"];
    assert_eq!(attr(a, "clientele.consumer").unwrap()["stringValue"], "c5");
    assert_eq!(attr(a, "clientele.plan").unwrap()["stringValue"], "pro");
    assert_eq!(attr(a, "clientele.team").unwrap()["stringValue"], "t1");
    assert_eq!(
        attr(a, "http.request.method").unwrap()["stringValue"],
        "GET"
    );
    assert_eq!(attr(a, "http.route").unwrap()["stringValue"], "/status");
    assert_eq!(
        attr(a, "http.response.status_code").unwrap()["intValue"],
        "503"
    );
    assert_eq!(
        attr(a, "client.address").unwrap()["stringValue"],
        "127.0.0.1"
    );
    assert!(
        attr(a, "clientele.latency_ms").unwrap()["doubleValue"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(attr(a, "clientele.upstream_latency_ms").is_some());
    assert_eq!(
        doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "clientele"
    );
    // The span the upstream was told is its parent is the span exported for the request.
    let (_, echo_span) = traced_span(&got, server.dir.path(), "/echo").await;
    assert_eq!(
        upstream_parent,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            echo_span["spanId"].as_str().unwrap()
        )
    );

    // Metrics: per-consumer points bounded like /metrics.
    let metrics = wait_for_path(&got, "/v1/metrics", |b| b.windows(2).any(|w| w == b"c5")).await;
    let doc = decode_otlp("metrics", "protobuf", &metrics, server.dir.path());
    let ms = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap();
    let hist = ms
        .iter()
        .find(|m| m["name"] == "clientele.consumer.request.duration")
        .unwrap();
    let points = hist["histogram"]["dataPoints"].as_array().unwrap();
    assert!(points.len() <= 4, "{points:?}");
    let sum = ms
        .iter()
        .find(|m| m["name"] == "clientele.consumer.requests")
        .unwrap();
    assert_eq!(sum["sum"]["isMonotonic"], true);
    assert_eq!(
        sum["sum"]["aggregationTemporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );

    // The NDJSON file sink rotated (4 KiB files, 2 kept) and holds the consumer.
    let dir = server.dir.path();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("events.ndjson.1").exists() {
        assert!(Instant::now() < deadline, "the file sink never rotated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current = std::fs::read_to_string(dir.join(log_path)).unwrap();
    let first: Value = serde_json::from_str(current.lines().next().unwrap()).unwrap();
    assert!(first["consumer"].as_str().unwrap().starts_with('c'));
    assert!(dir.join("events.ndjson.1").exists(), "no rotation happened");
    assert!(!dir.join("events.ndjson.3").exists(), "keep = 2");
}

/// The span of the test's traced request to `path`, with the decoded traces batch holding it.
async fn traced_span(got: &Received, dir: &Path, path: &str) -> (Value, Value) {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traces = wait_for_path(got, "/v1/traces", |b| {
        b.windows(16).any(|w| w == hex_bytes(TRACE))
            && b.windows(path.len()).any(|w| w == path.as_bytes())
    })
    .await;
    let doc = decode_otlp("traces", "protobuf", &traces, dir);
    let span = spans_of(&doc)
        .find(|s| {
            s["traceId"] == TRACE
                && attr(&s["attributes"], "url.path").is_some_and(|v| v["stringValue"] == path)
        })
        .cloned()
        .unwrap_or_else(|| panic!("the span of the traced request to {path}"));
    (doc, span)
}

/// Every span of a decoded OTLP traces document.
fn spans_of(doc: &Value) -> impl Iterator<Item = &Value> {
    doc["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|ss| ss["spans"].as_array().into_iter().flatten())
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_slow_sinks_never_slow_the_gateway_and_json_otlp_decodes() {
    let up = start_upstream().await;
    // A collector that takes 3 s per request, and a Loki that is not there at all.
    let (slow, got) = receiver(Duration::from_secs(3)).await;
    let dead_port = free_port();
    let server = Server::start(
        up.addr,
        &format!(
            r#"
[exports.otlp]
endpoint = "{slow}"
protocol = "http/json"
batch_max = 50
queue_items = 200
flush_interval_ms = 20
[[exports.logs]]
kind = "http"
name = "loki"
url = "http://127.0.0.1:{dead_port}/loki/api/v1/push"
format = "loki"
batch_max = 50
queue_items = 200
max_retries = 10
"#
        ),
    )
    .await;
    let (_, key) = server.consumer_with_key("busy", None).await;
    let started = Instant::now();
    let total = 3000;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (url, key) = (server.gw("/pets/1"), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..total / 16 + usize::from(worker < total % 16) {
                let (s, _, _) = send(Method::GET, &url, &[("x-api-key", &key)], None)
                    .await
                    .unwrap();
                ok += usize::from(s == 200);
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(ok, total, "every request answered");
    // Generous: on the 2-core machine this takes about a second. A gateway that waited on the
    // 3 s collector or the dead Loki would take minutes.
    assert!(
        elapsed < Duration::from_secs(30),
        "{total} requests took {elapsed:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = metrics_text(&server, Some(ADMIN_TOKEN)).await;
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1.0)
        };
        let dropped_loki = value("clientele_export_dropped_items_total{exporter=\"log_loki\"}");
        let dropped_traces =
            value("clientele_export_dropped_items_total{exporter=\"otlp_traces\"}");
        let stored = value("clientele_events_stored_total");
        if stored >= total as f64 && dropped_loki > 0.0 && dropped_traces > 0.0 {
            assert_eq!(
                value("clientele_events_dropped_total"),
                0.0,
                "the pipeline itself kept up"
            );
            break;
        }
        assert!(Instant::now() < deadline, "drops never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What did reach the slow collector is valid OTLP/JSON.
    let body = wait_for_path(&got, "/v1/traces", |_| true).await;
    assert_eq!(got.lock().await[0].1, "application/json");
    let doc = decode_otlp("traces", "json", &body, server.dir.path());
    let span = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(
        attr(&span["attributes"], "clientele.consumer").unwrap()["stringValue"],
        "busy"
    );
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32);
}

/// Findings reach the collector as OTLP log records once they are new: a consumer that ignores
/// its rate limit, then an evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_findings_are_exported_as_otlp_log_records() {
    let up = start_upstream().await;
    let (otlp, got) = receiver(Duration::ZERO).await;
    let server = Server::start(
        up.addr,
        &format!(
            r#"
[exports.otlp]
endpoint = "{otlp}"
traces = false
metrics = false
flush_interval_ms = 50

[plans.tiny]
rate_per_second = 1
burst = 2
"#
        ),
    )
    .await;
    let (_, key) = server.consumer_with_key("loopy", Some("tiny")).await;
    for _ in 0..60 {
        get_with_key(&server, "/pets/1", &key).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
        if stats["consumers"][0]["requests"] == 60 {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200);
    let body = wait_for_path(&got, "/v1/logs", |_| true).await;
    let decoded = decode_otlp("logs", "protobuf", &body, server.dir.path());
    let records = &decoded["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
    let record = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            attr(&r["attributes"], "clientele.finding.kind")
                .is_some_and(|v| v["stringValue"] == "rate_limited")
        })
        .unwrap_or_else(|| panic!("no rate_limited log record in {decoded}"));
    assert_eq!(
        attr(&record["attributes"], "clientele.consumer").unwrap()["stringValue"],
        "loopy"
    );
    assert!(
        record["body"]["stringValue"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{record}"
    );
    // A second evaluation of the same condition is not news: nothing more is exported.
    let before = got
        .lock()
        .await
        .iter()
        .filter(|(p, _, _)| p == "/v1/logs")
        .count();
    server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = got
        .lock()
        .await
        .iter()
        .filter(|(p, _, _)| p == "/v1/logs")
        .count();
    assert_eq!(before, after);
}

/// Events posted to `POST /v1/events` take the gateway's path: stored, folded and exported, so
/// `/metrics` counts them; a duplicate posted again is neither stored nor exported twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_events_reach_the_exporters_once() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    let body: String = (0..5)
        .map(|i| {
            format!(
                "{{\"id\":\"ing-{i}\",\"ts\":{},\"consumer\":\"ingested-co\",\"method\":\"GET\",\"path\":\"/pets/{i}\",\"status\":{},\"latency_ms\":4.5}}\n",
                now - 1000,
                if i == 4 { 503 } else { 200 }
            )
        })
        .collect();
    for _ in 0..2 {
        let (status, _, answer) = send(
            Method::POST,
            &format!("http://{}/v1/events", server.admin),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/x-ndjson"),
            ],
            Some(Bytes::from(body.clone())),
        )
        .await
        .unwrap();
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
    }
    let (status, text) = metrics_text(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    for line in [
        "clientele_consumer_requests_total{consumer=\"ingested-co\",status_class=\"2xx\"} 4",
        "clientele_consumer_requests_total{consumer=\"ingested-co\",status_class=\"5xx\"} 1",
        "clientele_events_stored_total 5",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

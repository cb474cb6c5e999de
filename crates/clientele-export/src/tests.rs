//! Exporters against real HTTP endpoints on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clientele_core::config::Config;
use clientele_core::finding::{Finding, FindingKind, Severity};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::*;
use crate::testutil::event;

/// A collector on loopback that records (path, headers, body) and answers `status`, after
/// `delay`.
async fn collector(
    status: u16,
    delay: Duration,
) -> (
    String,
    mpsc::UnboundedReceiver<(String, http::HeaderMap, Bytes)>,
    Arc<AtomicU64>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (tx, h) = (tx.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (tx, h) = (tx.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let path = req.uri().path().to_string();
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send((path, headers, body));
                        tokio::time::sleep(delay).await;
                        let mut r = http::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), rx, hits)
}

fn exports(toml: &str) -> ExportsConfig {
    Config::parse(toml, "t.toml", std::path::Path::new("/tmp"))
        .unwrap()
        .exports
}

#[tokio::test]
async fn otlp_pushes_spans_metrics_and_findings() {
    let (url, mut rx, _) = collector(200, Duration::ZERO).await;
    let cfg = exports(&format!(
        "[exports.otlp]\nendpoint = \"{url}\"\nflush_interval_ms = 20\nmetrics_interval_ms = 100\nheaders = {{ \"x-tenant\" = \"t1\" }}\n"
    ));
    let ex = Exporters::start(&cfg, &Default::default(), None).unwrap();
    ex.offer(&[event("acme", 200, 3.0), event("acme", 503, 9.0)]);
    let finding = Finding {
        id: "f1".into(),
        kind: FindingKind::IntegrationErrors,
        consumer: Some("acme".into()),
        api: Some("petstore".into()),
        route: Some("GET /pets/{id}".into()),
        severity: Severity::Critical,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_060_000,
        summary: "acme's orders fail".into(),
        evidence: serde_json::json!({"error_rate": 0.5}),
    };
    assert!(ex.findings().is_enabled());
    assert_eq!(ex.findings().offer(std::slice::from_ref(&finding)), 0);
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(Some((path, headers, body))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            assert_eq!(headers["content-type"], "application/x-protobuf");
            assert_eq!(headers["x-tenant"], "t1");
            seen.insert(path, body);
        }
    }
    let traces = &seen["/v1/traces"];
    assert!(traces.windows(4).any(|w| w == b"acme"));
    assert!(
        seen["/v1/logs"]
            .windows(18)
            .any(|w| w == b"acme's orders fail")
    );
    assert!(
        seen["/v1/metrics"]
            .windows(27)
            .any(|w| w == b"clientele.consumer.requests")
    );
    ex.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_dead_collector_never_blocks_and_drops_are_counted() {
    // Nothing listens on this port: every push fails after its retries. The bound on the time
    // to offer is loose (a shared 2-core machine); waiting on the network would take minutes.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = exports(&format!(
        "[exports.otlp]\nendpoint = \"http://127.0.0.1:{port}\"\nmetrics = false\nlogs = false\nbatch_max = 10\nqueue_items = 100\nflush_interval_ms = 10\nmax_retries = 20\n"
    ));
    let ex = Exporters::start(&cfg, &Default::default(), None).unwrap();
    let batch: Vec<_> = (0..50).map(|_| event("a", 200, 1.0)).collect();
    let started = Instant::now();
    for _ in 0..1000 {
        ex.offer(&batch);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "offering 50k events took {:?}",
        started.elapsed()
    );
    let text = ex.metrics().render();
    let dropped: f64 = text
        .lines()
        .find(|l| l.starts_with("clientele_export_dropped_items_total{exporter=\"otlp_traces\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped >= 49_900.0, "{dropped}");
    assert!(text.contains("clientele_export_queued_items{exporter=\"otlp_traces\"} 100"));
    // Shutdown is bounded even though the worker is stuck retrying.
    let t = Instant::now();
    ex.shutdown(Duration::from_millis(300)).await;
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn retries_then_delivers_and_refusals_are_not_retried() {
    let (url, mut rx, hits) = collector(503, Duration::ZERO).await;
    let cfg = exports(&format!(
        "[[exports.logs]]\nkind = \"http\"\nurl = \"{url}/hook\"\nformat = \"json\"\nflush_interval_ms = 10\nmax_retries = 2\n"
    ));
    let ex = Exporters::start(&cfg, &Default::default(), None).unwrap();
    ex.offer(&[event("a", 200, 1.0)]);
    ex.shutdown(Duration::from_secs(5)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 3, "one try and two retries");
    let (path, _, body) = rx.recv().await.unwrap();
    assert_eq!(path, "/hook");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v[0]["consumer"], "a");

    let (url, _rx, hits) = collector(400, Duration::ZERO).await;
    let cfg = exports(&format!(
        "[[exports.logs]]\nkind = \"http\"\nurl = \"{url}/hook\"\nflush_interval_ms = 10\nmax_retries = 5\n"
    ));
    let ex = Exporters::start(&cfg, &Default::default(), None).unwrap();
    let m = ex.metrics();
    ex.offer(&[event("a", 200, 1.0)]);
    ex.shutdown(Duration::from_secs(5)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 400 is final");
    assert!(
        m.render()
            .contains("clientele_export_failed_items_total{exporter=\"log_http0\"} 1")
    );
}

#[tokio::test]
async fn splunk_sink_sends_its_token_and_file_sink_samples() {
    let (url, mut rx, _) = collector(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    let cfg = exports(&format!(
        "[[exports.logs]]\nkind = \"http\"\nurl = \"{url}/services/collector/event\"\nformat = \"splunk\"\ntoken = \"hec-token\"\nflush_interval_ms = 10\n\
         [[exports.logs]]\nkind = \"file\"\npath = \"{}\"\nsample_rate = 0.0\nfields = [\"ts\", \"consumer\", \"status\"]\nflush_interval_ms = 10\n",
        path.display()
    ));
    let ex = Exporters::start(&cfg, &Default::default(), None).unwrap();
    ex.offer(&[event("ok", 200, 1.0), event("bad", 500, 1.0)]);
    let (_, headers, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(headers["authorization"], "Splunk hec-token");
    ex.shutdown(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "sample_rate 0 keeps only the error: {text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["consumer"], "bad");
    assert_eq!(v.as_object().unwrap().len(), 3);
}

/// An OTLP collector and a Loki-style log sink behind HTTPS, trusted through `[outbound]`'s
/// CA bundle; a collector whose certificate is for another name gets nothing and counts fails.
#[tokio::test]
async fn otlp_and_log_sinks_push_over_https_with_the_configured_ca() {
    use clientele_http::testing::{TestCa, TlsServer};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue("localhost", "DNS:localhost", None, false);
    let collector = TlsServer::start(&cert, &key, None, 200).await;
    let port = collector.addr.port();
    let cfg = exports(&format!(
        "[exports.otlp]\nendpoint = \"https://localhost:{port}\"\nmetrics = false\nlogs = false\nflush_interval_ms = 20\n\
         [[exports.logs]]\nkind = \"http\"\nurl = \"https://localhost:{port}/loki/api/v1/push\"\nflush_interval_ms = 20\n"
    ));
    let tls = clientele_http::TlsSettings {
        ca_file: Some(ca.ca_cert.clone()),
        ..Default::default()
    };
    let ex = Exporters::start(&cfg, &tls, None).unwrap();
    ex.offer(&[event("acme", 200, 3.0)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let paths = loop {
        let paths: Vec<String> = collector
            .requests()
            .iter()
            .map(|s| s.path.clone())
            .collect();
        if paths.len() >= 2 {
            break paths;
        }
        assert!(Instant::now() < deadline, "{paths:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(paths.contains(&"/v1/traces".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"/loki/api/v1/push".to_string()),
        "{paths:?}"
    );
    let traces = collector
        .requests()
        .into_iter()
        .find(|s| s.path == "/v1/traces")
        .unwrap();
    assert_eq!(traces.method, "POST");
    assert_eq!(traces.headers["content-type"], "application/x-protobuf");
    assert!(!traces.body.is_empty());
    ex.shutdown(Duration::from_secs(2)).await;

    // Certificate for localhost, endpoint by address: refused, not retried, counted as failed.
    let cfg = exports(&format!(
        "[exports.otlp]\nendpoint = \"https://127.0.0.1:{port}\"\nmetrics = false\nlogs = false\nflush_interval_ms = 20\n"
    ));
    let before = collector.requests().len();
    let ex = Exporters::start(&cfg, &tls, None).unwrap();
    ex.offer(&[event("acme", 200, 3.0)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = ex.metrics().render();
        if text.contains("clientele_export_failed_items_total{exporter=\"otlp_traces\"} 1") {
            assert!(
                text.contains("clientele_export_retries_total{exporter=\"otlp_traces\"} 0"),
                "a certificate error is not retried: {text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(collector.requests().len(), before);
    ex.shutdown(Duration::from_secs(2)).await;
}

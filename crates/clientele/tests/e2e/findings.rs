//! Findings end to end: back-dated history through `POST /v1/events`, `POST
//! /v1/findings/evaluate`, `GET /v1/findings`, a persisting condition updating its finding, the
//! periodic run, alerts reaching a real webhook on loopback (with a retry), and the CLI.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::*;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const MINUTE: i64 = 60_000;

/// A webhook receiver: records `(path, body)`, and answers 500 to the first request on `/hook`
/// so the dispatcher has to retry.
pub(crate) struct Receiver {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) got: Arc<Mutex<Vec<(String, Value)>>>,
}

pub(crate) async fn start_receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let status = {
                            let mut got = sink.lock().unwrap();
                            let first_hook =
                                path == "/hook" && got.iter().all(|(p, _)| p != "/hook");
                            got.push((path, value));
                            if first_hook { 500 } else { 200 }
                        };
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver { addr, got }
}

fn event(ts: i64, consumer: &str, method: &str, route: &str, status: u16) -> Value {
    json!({
        "ts": ts, "consumer": consumer, "api": "petstore", "method": method,
        "path": route, "route": route, "status": status, "latency_ms": 20.0,
    })
}

/// Where the incident goes: the current hour when enough of it has passed, else the previous
/// one, so that it falls in one hourly slot. Returns `[start, end)`.
fn incident_window(now: i64) -> (i64, i64) {
    let hour = now - now.rem_euclid(HOUR);
    if now - hour >= 25 * MINUTE {
        (hour + MINUTE, now - MINUTE)
    } else {
        (hour - HOUR + MINUTE, hour - MINUTE)
    }
}

/// Eight days of quiet history for four consumers on `POST /orders`, then `acme` failing on it
/// (a third of its calls) while the others stay fine. Returns the incident's start and how many
/// requests acme made in all.
///
/// Each day of history also holds the incident's hour at the incident's volume (90 calls for
/// acme, 30 for the others), so the only thing unusual about that hour is acme's errors: the
/// volume detectors judge each hour against the same hour of earlier days.
async fn backfill_incident(server: &Server, now: i64) -> (i64, u64) {
    let consumers = ["acme", "beta", "gamma", "delta"];
    let (start, end) = incident_window(now);
    let span = end - start;
    let mut history = Vec::new();
    for day in 1..=8 {
        for (ci, c) in consumers.iter().enumerate() {
            for i in 0..20 {
                let ts = now - day * DAY + i * 37 * MINUTE + ci as i64 * 1000;
                if ts >= start - day * DAY && ts < end - day * DAY {
                    continue;
                }
                let status = if i == 7 && day % 3 == 0 { 500 } else { 201 };
                history.push(event(ts, c, "POST", "/orders", status));
                history.push(event(ts + 500, c, "GET", "/pets/{id}", 200));
            }
            let calls = if ci == 0 { 90 } else { 30 };
            for i in 0..calls {
                let ts = start - day * DAY + span * i / calls + ci as i64 * 7;
                history.push(event(ts, c, "POST", "/orders", 201));
            }
        }
    }
    post_events(server, &history).await;
    let mut incident = Vec::new();
    for i in 0..90i64 {
        let ts = start + span * i / 90;
        incident.push(event(
            ts,
            "acme",
            "POST",
            "/orders",
            if i % 3 == 0 { 500 } else { 201 },
        ));
    }
    for c in &consumers[1..] {
        for i in 0..30i64 {
            incident.push(event(start + span * i / 30 + 7, c, "POST", "/orders", 201));
        }
    }
    post_events(server, &incident).await;
    let acme = history
        .iter()
        .chain(&incident)
        .filter(|e| e["consumer"] == "acme")
        .count();
    (start, acme as u64)
}

async fn findings_of(server: &Server, query: &str) -> Vec<Value> {
    let (status, body) = server
        .admin(Method::GET, &format!("/v1/findings{query}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["findings"].as_array().cloned().unwrap()
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_then_evaluate_finds_the_failing_integration_and_alerts_it() {
    let upstream = start_upstream().await;
    let receiver = start_receiver().await;
    // A third receiver behind HTTPS (as Slack's webhooks are), trusted through [outbound].
    let certs = tempfile::tempdir().unwrap();
    let ca = clientele_http::testing::TestCa::new(certs.path());
    let (cert, key) = ca.issue("localhost", "DNS:localhost", None, false);
    let secure = clientele_http::testing::TlsServer::start(&cert, &key, None, 200).await;
    let alerts = format!(
        r#"
[outbound]
ca_file = "{ca_file}"

[detection]
interval_secs = 0

[[alerts]]
name = "secure"
kinds = ["error_spike"]
webhook = "https://localhost:{secure_port}/secure"

[[alerts]]
name = "oncall"
kinds = ["error_spike"]
webhook = "http://{addr}/hook"
max_attempts = 3

[[alerts]]
name = "slack"
kinds = ["integration_errors"]
webhook = "http://{addr}/slack"
format = "slack"
"#,
        addr = receiver.addr,
        ca_file = ca.ca_cert.display(),
        secure_port = secure.addr.port(),
    );
    let server = Server::start(upstream.addr, &alerts).await;
    let now = clientele_core::time::now_ms();
    let (start, acme_requests) = backfill_incident(&server, now).await;
    // Ingested events reach the rollups within the pipeline's linger; wait until they have.
    wait_for("the incident in the stats", async || {
        let (_, body) = server
            .admin(Method::GET, "/v1/stats/consumers/acme?from=0", None)
            .await;
        (body["requests"].as_u64() == Some(acme_requests)).then_some(())
    })
    .await;

    let (status, report) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200, "{report}");
    let found = report["findings"].as_array().unwrap();
    let spike = found
        .iter()
        .find(|f| f["kind"] == "error_spike")
        .unwrap_or_else(|| panic!("no error_spike in {report:#}"));
    assert_eq!(spike["change"], "new");
    assert_eq!(spike["consumer"], "acme");
    assert_eq!(spike["api"], "petstore");
    assert_eq!(spike["route"], "POST /orders");
    let summary = spike["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("acme's error rate on POST /orders rose from"),
        "{summary}"
    );
    assert!(
        summary.contains("other consumers are unaffected"),
        "{summary}"
    );
    assert!(summary.contains("integration problem"), "{summary}");
    // The onset is the minute the errors started, in event time.
    let first_seen = clientele_core::time::parse_ts(spike["first_seen"].as_str().unwrap()).unwrap();
    assert_eq!(first_seen, start - start.rem_euclid(MINUTE), "{spike}");
    assert!(
        spike["evidence"]["baseline"]["error_rate"]
            .as_f64()
            .unwrap()
            < 0.05,
        "{spike}"
    );
    assert!(
        spike["evidence"]["observed"]["error_rate"]
            .as_f64()
            .unwrap()
            > 0.3,
        "{spike}"
    );
    assert!(spike["evidence"]["window"]["from"].is_string(), "{spike}");
    let integration = found
        .iter()
        .find(|f| f["kind"] == "integration_errors")
        .unwrap_or_else(|| panic!("no integration_errors in {report:#}"));
    assert_eq!(integration["consumer"], "acme");
    // Nothing blames the API, and the healthy consumers have no findings.
    assert!(
        !found.iter().any(|f| f["kind"] == "api_errors"),
        "{report:#}"
    );
    for c in ["beta", "gamma", "delta"] {
        assert!(!found.iter().any(|f| f["consumer"] == c), "{c}: {report:#}");
    }

    // GET /v1/findings shows it, with filters.
    let listed = findings_of(&server, "?kind=error_spike&consumer=acme").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], spike["id"]);
    for field in [
        "id",
        "kind",
        "consumer",
        "api",
        "route",
        "severity",
        "first_seen",
        "last_seen",
        "summary",
        "evidence",
    ] {
        assert!(listed[0].get(field).is_some(), "{field} missing");
    }
    assert!(findings_of(&server, "?consumer=beta").await.is_empty());
    assert!(findings_of(&server, "?api=other").await.is_empty());
    let later = clientele_core::time::format_ts(now + DAY);
    assert!(
        findings_of(&server, &format!("?from={later}"))
            .await
            .is_empty()
    );

    // The condition persists: more failures a little later update the same finding.
    let last_seen_before = listed[0]["last_seen"].as_str().unwrap().to_string();
    let more: Vec<Value> = (0..12)
        .map(|i| event(now - MINUTE + i * 1000, "acme", "POST", "/orders", 500))
        .collect();
    post_events(&server, &more).await;
    wait_for("the new failures in the stats", async || {
        let (_, body) = server
            .admin(Method::GET, "/v1/stats/consumers/acme?from=0", None)
            .await;
        (body["requests"].as_u64() == Some(acme_requests + 12)).then_some(())
    })
    .await;
    let (status, again) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200);
    let updated = again["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "error_spike")
        .unwrap()
        .clone();
    assert_eq!(updated["change"], "updated");
    assert_eq!(updated["id"], spike["id"]);
    let all = findings_of(&server, "?kind=error_spike").await;
    assert_eq!(
        all.len(),
        1,
        "a persisting condition is one finding: {all:#?}"
    );
    assert!(all[0]["last_seen"].as_str().unwrap() >= last_seen_before.as_str());

    // The alert reached the webhook: the first try got a 500, the retry got through.
    let hooks = wait_for("two deliveries to /hook", async || {
        let got = receiver.got.lock().unwrap().clone();
        let hooks: Vec<Value> = got
            .into_iter()
            .filter(|(p, _)| p == "/hook")
            .map(|(_, v)| v)
            .collect();
        (hooks.len() >= 2).then_some(hooks)
    })
    .await;
    assert_eq!(hooks[0], hooks[1], "a retry sends the same alert");
    assert_eq!(hooks[1]["rule"], "oncall");
    assert_eq!(hooks[1]["event"], "new");
    assert_eq!(hooks[1]["finding"]["kind"], "error_spike");
    assert_eq!(hooks[1]["finding"]["id"], spike["id"]);
    let secure_hook = wait_for("the https delivery", async || {
        secure.requests().into_iter().find(|s| s.path == "/secure")
    })
    .await;
    assert_eq!(secure_hook.method, "POST");
    let body: Value = serde_json::from_slice(&secure_hook.body).unwrap();
    assert_eq!(body["rule"], "secure");
    assert_eq!(body["finding"]["id"], spike["id"]);
    let slack = wait_for("the slack delivery", async || {
        let got = receiver.got.lock().unwrap().clone();
        got.into_iter().find(|(p, _)| p == "/slack").map(|(_, v)| v)
    })
    .await;
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .contains("integration_errors · acme · POST /orders"),
        "{slack}"
    );
    let log = wait_for("the delivery log", async || {
        let (_, body) = server
            .admin(Method::GET, "/v1/alerts/deliveries?rule=oncall", None)
            .await;
        let log = body["deliveries"].as_array().cloned().unwrap_or_default();
        (log.len() >= 2).then_some(log)
    })
    .await;
    // Newest first: the delivered retry, then the failed first attempt.
    assert_eq!(log[0]["outcome"], "delivered");
    assert_eq!(log[0]["attempt"], 2);
    assert_eq!(log[1]["outcome"], "retrying");
    assert_eq!(log[1]["http_status"], 500);
    // The update was not news (same severity, within the cooldown): no second alert.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hook_count = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/hook")
        .count();
    assert_eq!(
        hook_count, 2,
        "a persisting finding is not re-alerted within the cooldown"
    );

    // The CLI lists it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args([
            "findings",
            "--consumer",
            "acme",
            "--kind",
            "error_spike",
            "--json",
        ])
        .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
        .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["id"], spike["id"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["findings"])
        .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
        .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("error_spike") && table.contains("integration_errors"),
        "{table}"
    );
    assert!(
        table.contains("acme's error rate on POST /orders"),
        "{table}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["findings", "--kind", "nope"])
        .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
        .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kind") && !err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_endpoints_refuse_bad_parameters_by_name() {
    let upstream = start_upstream().await;
    let server = Server::start(upstream.addr, "").await;
    for (method, path, param) in [
        (Method::GET, "/v1/findings?kind=nope", "kind"),
        (Method::GET, "/v1/findings?from=yesterday", "from"),
        (Method::GET, "/v1/findings?to=soon", "to"),
        (Method::GET, "/v1/findings?limit=0", "limit"),
        (Method::GET, "/v1/findings?colour=red", "colour"),
        (
            Method::POST,
            "/v1/findings/evaluate?lookback=5x",
            "lookback",
        ),
        (
            Method::POST,
            "/v1/findings/evaluate?lookback=90d",
            "lookback",
        ),
        (Method::POST, "/v1/findings/evaluate?at=noon", "at"),
        (Method::GET, "/v1/alerts/deliveries?limit=x", "limit"),
    ] {
        let (status, headers, bytes) = send(
            method,
            &format!("http://{}{path}", server.admin),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{path}"
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains(param),
            "{path}: {body}"
        );
    }
    // No token, no findings.
    let (status, _, _) = send(
        Method::GET,
        &format!("http://{}/v1/findings", server.admin),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    // An empty store evaluates to nothing, quickly, and the OpenAPI document lists the paths.
    let (status, report) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["new"], 0);
    let (_, doc) = server.admin(Method::GET, "/v1/openapi.json", None).await;
    for p in [
        "/v1/findings",
        "/v1/findings/evaluate",
        "/v1/alerts/deliveries",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detectors_run_on_their_own() {
    let upstream = start_upstream().await;
    let server = Server::start(upstream.addr, "\n[detection]\ninterval_secs = 1\n").await;
    let now = clientele_core::time::now_ms();
    backfill_incident(&server, now).await;
    let found = wait_for("a finding from the periodic run", async || {
        let f = findings_of(&server, "?kind=error_spike").await;
        (!f.is_empty()).then_some(f)
    })
    .await;
    assert_eq!(found[0]["consumer"], "acme");
}

//! OTLP ingest: spans from the official OpenTelemetry Python SDK's OTLP/HTTP exporter become
//! events; OTLP JSON too.

use std::process::Command;

use http::Method;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_opentelemetry_sdk_become_events_per_consumer() {
    let up = start_upstream().await;
    let server = Server::start(
        up.addr,
        "[otlp_ingest]\nconsumer_attribute = \"enduser.id\"\nconsumer_header = \"X-Consumer-Username\"",
    )
    .await;
    let endpoint = format!("http://{}/v1/otlp/v1/traces", server.admin);
    let python = crate::exports::python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otel_spans.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script, &endpoint, ADMIN_TOKEN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed (needs PyPI opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http; scripts/test.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let acme = server.wait_events("acme", "", |e| e.len() >= 3).await;
    assert_eq!(acme.len(), 3, "{acme:?}");
    let mut paths: Vec<&str> = acme.iter().map(|e| e["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, vec!["/pets/0", "/pets/1", "/pets/2"]);
    for e in &acme {
        assert_eq!(e["method"], "GET");
        assert_eq!(e["route"], "/pets/{id}");
        assert_eq!(e["api"], "petstore");
        assert_eq!(e["client_ip"], "198.51.100.7");
        assert_eq!(e["user_agent"], "otel-e2e/1.0");
        assert_eq!(e["outcome"], "ingested");
        let ms = e["latency_ms"].as_f64().unwrap();
        assert!((15.0..5000.0).contains(&ms), "the span's duration: {e}");
        assert_eq!(e["trace_id"].as_str().unwrap().len(), 32, "{e}");
    }
    assert_eq!(acme.iter().filter(|e| e["status"] == 503).count(), 1);

    let initech = server.wait_events("initech", "", |e| !e.is_empty()).await;
    assert_eq!(initech[0]["method"], "POST");
    assert_eq!(initech[0]["path"], "/orders");
    assert_eq!(initech[0]["status"], 201);
    assert_eq!(initech[0]["client_ip"], "203.0.113.9");
    assert_eq!(initech[0]["user_agent"], "legacy/2");

    // The stats count them like any event.
    let (_, stats) = server
        .admin(Method::GET, "/v1/stats/consumers/acme?from=0", None)
        .await;
    assert_eq!(stats["requests"], 3, "{stats}");

    // OTLP JSON, sent twice: stored once (ids come from the trace and span ids); a span
    // without a consumer is refused in partial_success.
    let now_ns = clientele_core::time::now_ms() as u64 * 1_000_000;
    let doc = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "petstore"}}]},
        "scopeSpans": [{"spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "name": "GET /pets/{id}", "kind": 2,
             "startTimeUnixNano": now_ns.to_string(), "endTimeUnixNano": (now_ns + 7_000_000).to_string(),
             "attributes": [
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "url.path", "value": {"stringValue": "/pets/9"}},
                {"key": "http.response.status_code", "value": {"intValue": "404"}},
                {"key": "enduser.id", "value": {"stringValue": "umbrella"}}]},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "aaa19b7ec3c1b174",
             "name": "GET", "kind": "SPAN_KIND_SERVER",
             "startTimeUnixNano": now_ns.to_string(), "endTimeUnixNano": (now_ns + 1).to_string(),
             "attributes": [
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "url.path", "value": {"stringValue": "/x"}},
                {"key": "http.response.status_code", "value": {"intValue": 200}}]}
        ]}]
    }]});
    for _ in 0..2 {
        let (status, body) = server
            .admin(Method::POST, "/v1/otlp/v1/traces", Some(doc.clone()))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["partialSuccess"]["rejectedSpans"], "1", "{body}");
        let message = body["partialSuccess"]["errorMessage"].as_str().unwrap();
        assert!(
            message.contains("no consumer") && message.contains("enduser.id"),
            "{message}"
        );
    }
    let umbrella = server.wait_events("umbrella", "", |e| !e.is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let umbrella = server
        .wait_events("umbrella", "", |e| e.len() >= umbrella.len())
        .await;
    assert_eq!(umbrella.len(), 1, "{umbrella:?}");
    assert_eq!(umbrella[0]["status"], 404);
    assert_eq!(umbrella[0]["latency_ms"], 7.0);

    // Not OTLP (a length past the end): 400 naming what is wrong; no token: 401.
    let url = format!("http://{}/v1/otlp/v1/traces", server.admin);
    let garbage = || Some(bytes::Bytes::from_static(b"\x0a\x05abc"));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, body) = send(
        Method::POST,
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", auth.as_str()),
        ],
        garbage(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("not an OTLP ExportTraceServiceRequest"),
        "{body}"
    );
    let (status, _, _) = send(
        Method::POST,
        &url,
        &[("content-type", "application/x-protobuf")],
        garbage(),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_records_from_the_opentelemetry_sdk_become_events() {
    let up = start_upstream().await;
    let server = Server::start(
        up.addr,
        "[otlp_ingest]\nconsumer_attribute = \"enduser.id\"\nconsumer_header = \"X-Consumer-Username\"",
    )
    .await;
    let endpoint = format!("http://{}/v1/otlp/v1/logs", server.admin);
    let python = crate::exports::python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otel_logs.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script, &endpoint, ADMIN_TOKEN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed (needs PyPI opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http; scripts/test.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = server.wait_events("umbrella", "", |e| e.len() >= 4).await;
    assert_eq!(
        events.len(),
        4,
        "the non-HTTP record is skipped: {events:?}"
    );
    for e in &events {
        assert_eq!(e["method"], "GET");
        assert_eq!(e["route"], "/pets/{id}");
        assert_eq!(e["api"], "petstore");
        assert_eq!(e["client_ip"], "198.51.100.8");
        assert_eq!(e["user_agent"], "otel-logs/1.0");
        assert!(
            (e["latency_ms"].as_f64().unwrap() - 25.0).abs() < 1e-6,
            "{e}"
        );
    }
    assert_eq!(events.iter().filter(|e| e["status"] == 500).count(), 1);

    // OTLP JSON, fields in a kvlist body (as Envoy's OpenTelemetry access logger can send them),
    // the consumer from a captured header; sent twice, stored once. A record without a
    // duration is refused, saying which attribute to add.
    let now_ns = clientele_core::time::now_ms() as u64 * 1_000_000;
    let kv = |k: &str, v: serde_json::Value| serde_json::json!({"key": k, "value": v});
    let doc = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [kv("service.name", serde_json::json!({"stringValue": "petstore"}))]},
        "scopeLogs": [{"logRecords": [
            {"timeUnixNano": now_ns.to_string(),
             "body": {"kvlistValue": {"values": [
                kv("http.request.method", serde_json::json!({"stringValue": "POST"})),
                kv("url.path", serde_json::json!({"stringValue": "/orders"})),
                kv("http.response.status_code", serde_json::json!({"intValue": "201"})),
                kv("duration_ms", serde_json::json!({"doubleValue": 12.5})),
                kv("http.request.header.x-consumer-username", serde_json::json!({"arrayValue": {"values": [{"stringValue": "hooli"}]}}))]}}},
            {"timeUnixNano": now_ns.to_string(),
             "attributes": [
                kv("http.request.method", serde_json::json!({"stringValue": "GET"})),
                kv("url.path", serde_json::json!({"stringValue": "/pets"})),
                kv("http.response.status_code", serde_json::json!({"intValue": 200})),
                kv("enduser.id", serde_json::json!({"stringValue": "hooli"}))]}
        ]}]
    }]});
    for _ in 0..2 {
        let (status, body) = server
            .admin(Method::POST, "/v1/otlp/v1/logs", Some(doc.clone()))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["partialSuccess"]["rejectedLogRecords"], "1", "{body}");
        let message = body["partialSuccess"]["errorMessage"].as_str().unwrap();
        assert!(message.contains("no duration"), "{message}");
    }
    server.wait_events("hooli", "", |e| !e.is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let hooli = server.wait_events("hooli", "", |e| !e.is_empty()).await;
    assert_eq!(hooli.len(), 1, "{hooli:?}");
    assert_eq!(
        (hooli[0]["path"].as_str(), hooli[0]["status"].as_u64()),
        (Some("/orders"), Some(201))
    );
    assert_eq!(hooli[0]["latency_ms"], 12.5);

    // Both OTLP endpoints are in the admin API's OpenAPI document.
    let (_, doc) = server.admin(Method::GET, "/v1/openapi.json", None).await;
    for path in ["/v1/otlp/v1/traces", "/v1/otlp/v1/logs"] {
        assert!(doc["paths"][path]["post"].is_object(), "{path} missing");
    }
}

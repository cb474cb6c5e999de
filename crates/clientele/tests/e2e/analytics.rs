//! The analytics engine through the API: ingest, back-dated events, per-consumer and per-route
//! statistics, exactly-once across a crash.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::support::*;

const HOUR: i64 = 3_600_000;

/// Posts an NDJSON batch; returns status and body.
pub(crate) async fn post_ndjson(server: &Server, lines: &[Value]) -> (u16, Value) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    post_raw(server, "application/x-ndjson", Bytes::from(body)).await
}

async fn post_raw(server: &Server, content_type: &str, body: Bytes) -> (u16, Value) {
    let (status, _, bytes) = send(
        Method::POST,
        &format!("http://{}/v1/events", server.admin),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", content_type),
        ],
        Some(body),
    )
    .await
    .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Nearest rank: the smallest value with at least `q` of the values at or below it.
fn exact_quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64 - 1e-9).ceil().max(1.0) as usize;
    values[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdated_ingest_feeds_per_consumer_and_per_route_stats() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    let start = (now - 72 * HOUR) / HOUR * HOUR;

    // Three days of history: acme healthy, initech failing on POST /orders, globex small.
    let mut lines = Vec::new();
    let mut acme_latencies = Vec::new();
    for i in 0..3000i64 {
        let ts = start + i * 80_000;
        let latency = 5.0 + (i % 97) as f64 * 1.5 + if i % 50 == 0 { 900.0 } else { 0.0 };
        acme_latencies.push(latency);
        lines.push(json!({"ts": ts, "consumer": "acme", "method": "GET", "path": format!("/pets/{}", i % 40), "status": 200,
            "latency_ms": latency, "plan": "pro", "team": "retail", "response_bytes": 100}));
        if i % 3 == 0 {
            lines.push(json!({"ts": clientele_core::time::format_ts(ts), "consumer": "initech", "method": "POST", "path": "/orders",
                "status": if i % 2 == 0 { 422 } else { 201 }, "latency_ms": 20.0, "plan": "free"}));
        }
        if i % 100 == 0 {
            lines.push(json!({"ts": ts, "consumer": "acme", "method": "POST", "path": "/orders", "status": 503, "latency_ms": 30.0}));
        }
    }
    // The history in batches that fit the test's 64 KiB body limit.
    let mut accepted = 0;
    for chunk in lines.chunks(300) {
        let (status, body) = post_ndjson(&server, chunk).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["duplicates"], 0);
        accepted += body["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, lines.len() as u64);

    // Bad lines are reported by index; the good ones in the same batch still land.
    let mixed = vec![
        json!({"ts": now, "consumer": "acme", "method": "GET", "path": "/pets/1", "status": 200, "latency_ms": -3}),
        lines[0].clone(),
        json!({"ts": now + 3_600_000, "consumer": "acme", "method": "GET", "path": "/pets/1", "status": 200, "latency_ms": 3}),
    ];
    let (status, body) = post_ndjson(&server, &mixed).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0]["index"].as_u64(), rejected[1]["index"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("latency_ms")
    );
    assert!(rejected[1]["error"].as_str().unwrap().contains("future"));

    // Sending the same history again changes nothing.
    for chunk in lines.chunks(300) {
        let (status, again) = post_ndjson(&server, chunk).await;
        assert_eq!(status, 202);
        assert_eq!(again["duplicates"], chunk.len());
    }

    // Consumers seen for the first time were created with what their events carry.
    let (status, initech) = server
        .admin(Method::GET, "/v1/consumers/initech", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(initech["plan"], "free");

    let window = format!("from={}&to={}", start, now + 60_000);
    let (status, stats) = server
        .admin(Method::GET, &format!("/v1/stats/consumers?{window}"), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    let rows = stats["consumers"].as_array().unwrap();
    let acme = rows.iter().find(|r| r["consumer"] == "acme").unwrap();
    assert_eq!(acme["requests"], 3030);
    assert_eq!(acme["errors_5xx"], 30);
    assert_eq!(acme["response_bytes"], 300_000);
    assert_eq!(acme["plan"], "pro");
    let initech_row = rows.iter().find(|r| r["consumer"] == "initech").unwrap();
    assert_eq!(
        (
            initech_row["requests"].as_u64(),
            initech_row["errors_4xx"].as_u64()
        ),
        (Some(1000), Some(500))
    );
    assert_eq!(initech_row["error_rate"], 0.5);

    // Percentiles within 1% of the exact ones.
    let mut all = acme_latencies.clone();
    all.extend(std::iter::repeat_n(30.0, 30));
    for (field, q) in [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
        let exact = exact_quantile(&mut all, q);
        let got = acme[field].as_f64().unwrap();
        assert!(
            (got - exact).abs() <= exact * 0.01 + 0.001,
            "{field}: exact {exact}, got {got}"
        );
    }

    // Filters.
    let (_, free) = server
        .admin(
            Method::GET,
            &format!("/v1/stats/consumers?{window}&plan=free"),
            None,
        )
        .await;
    assert_eq!(free["consumers"].as_array().unwrap().len(), 1);

    // Routes: POST /orders errors come from initech, mostly.
    let (status, routes) = server
        .admin(Method::GET, &format!("/v1/stats/routes?{window}"), None)
        .await;
    assert_eq!(status, 200, "{routes}");
    let orders = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/orders" && r["method"] == "POST")
        .unwrap();
    assert_eq!(orders["consumers"], 2);
    let share = orders["error_share_top_consumer"].as_f64().unwrap();
    assert!((share - 500.0 / 530.0).abs() < 1e-9, "{orders}");
    assert_eq!(orders["top_error_consumer"], "initech");
    let pets = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/pets/{id}")
        .unwrap();
    assert_eq!(pets["requests"], 3000);

    // One consumer: routes and an hourly series summing to the total.
    let (status, detail) = server
        .admin(
            Method::GET,
            &format!("/v1/stats/consumers/acme?{window}&step=1h"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["requests"], 3030);
    assert_eq!(detail["routes"].as_array().unwrap().len(), 2);
    let series = detail["series"].as_array().unwrap();
    assert!(series.len() >= 72);
    assert_eq!(
        series
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum::<u64>(),
        3030
    );
    assert_eq!(
        server
            .admin(
                Method::GET,
                &format!("/v1/stats/consumers/acme?{window}&step=7s"),
                None
            )
            .await
            .0,
        400
    );
    assert_eq!(
        server
            .admin(Method::GET, "/v1/stats/consumers/nobody", None)
            .await
            .0,
        404
    );

    // The raw events are there for drill-down.
    let events = server
        .wait_events("initech", &format!("&status=4xx&from={start}"), |e| {
            e.len() >= 500
        })
        .await;
    assert_eq!(events.len(), 500);

    // The usage parts, the call fingerprint and the TLS fingerprint a shipper sends come back
    // from drill-down as sent (the fingerprint as 16 hex digits).
    let usage = json!({"ts": now - 1_000, "consumer": "umbrella", "method": "POST", "path": "/v1/chat/completions",
        "status": 200, "latency_ms": 900.0, "model": "gpt-4o", "tokens_in": 1200, "tokens_cached": 1000,
        "tokens_cache_write": 200, "tokens_out": 300, "tokens_reasoning": 250, "tls_fp": "t13d1516h2_abc",
        "call_hash": "0123456789abcdef"});
    let (status, body) = post_ndjson(&server, &[usage]).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    let events = server.wait_events("umbrella", "", |e| !e.is_empty()).await;
    let e = &events[0];
    assert_eq!(
        (
            &e["tokens_cached"],
            &e["tokens_cache_write"],
            &e["tokens_reasoning"]
        ),
        (&json!(1000), &json!(200), &json!(250))
    );
    assert_eq!(
        (&e["tls_fp"], &e["call_hash"]),
        (&json!("t13d1516h2_abc"), &json!("0123456789abcdef"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_bad_batches_clearly() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let (status, body) = post_raw(
        &server,
        "application/x-ndjson",
        Bytes::from_static(b"nope\n{\"ts\":1}\n"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);
    let (status, _) = post_raw(&server, "text/plain", Bytes::from_static(b"[]")).await;
    assert_eq!(status, 415);
    let (status, _) = post_raw(
        &server,
        "application/json",
        Bytes::from_static(b"{\"broken\":"),
    )
    .await;
    assert_eq!(status, 400);
    // Over [admin].max_body_bytes (64 KiB in the test config).
    let line = json!({"ts": clientele_core::time::now_ms(), "consumer": "acme", "method": "GET", "path": "/", "status": 200, "latency_ms": 1}).to_string();
    let big: String = std::iter::repeat_n(format!("{line}\n"), 2000).collect();
    let (status, _) = post_raw(&server, "application/x-ndjson", Bytes::from(big)).await;
    assert_eq!(status, 413);
    // A JSON array works too.
    let arr = format!("[{line}]");
    let (status, body) = post_raw(&server, "application/json", Bytes::from(arr)).await;
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_traffic_has_percentiles_and_survives_a_restart() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, "").await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;
    for i in 0..20 {
        let path = if i % 4 == 0 {
            "/status?code=500".to_string()
        } else {
            format!("/pets/{i}")
        };
        get_with_key(&server, &path, &key).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let acme = loop {
        let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
        if let Some(row) = stats["consumers"]
            .as_array()
            .and_then(|r| r.first())
            .cloned()
        {
            if row["requests"] == 20 {
                break row;
            }
        }
        assert!(Instant::now() < deadline, "stats never reached 20 requests");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(acme["errors_5xx"], 5);
    assert!(acme["p50_ms"].as_f64().unwrap() > 0.0);

    // Stop and start again on the same data: the same answer, rebuilt from the store.
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success());
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    let (_, stats) = restarted
        .admin(Method::GET, "/v1/stats/consumers", None)
        .await;
    assert_eq!(stats["consumers"][0]["requests"], 20);
    assert_eq!(stats["consumers"][0]["p50_ms"], acme["p50_ms"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_ingest_then_resend_counts_every_event_once() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    // 40 batches of 250 events, each event with content that makes its derived id unique.
    let batches: Vec<Vec<Value>> = (0..40)
        .map(|b| {
            (0..250)
                .map(|i| json!({"ts": now - 3_600_000 + b * 1000 + i, "consumer": format!("c{}", i % 7), "method": "GET",
                    "path": format!("/items/{i}"), "status": if i % 10 == 0 { 500 } else { 200 }, "latency_ms": 1.0 + i as f64}))
                .collect()
        })
        .collect();

    // Send half, then kill -9 while more batches are in flight.
    for batch in &batches[..20] {
        assert_eq!(post_ndjson(&server, batch).await.0, 202);
    }
    let pid = server.pid();
    let sender = {
        let admin = server.admin;
        let batches = batches.clone();
        tokio::spawn(async move {
            for batch in &batches[20..] {
                let body: String = batch.iter().map(|l| format!("{l}\n")).collect();
                let _ = send(
                    Method::POST,
                    &format!("http://{admin}/v1/events"),
                    &[
                        ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                        ("content-type", "application/x-ndjson"),
                    ],
                    Some(Bytes::from(body)),
                )
                .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let _ = sender.await;
    let mut child = server.child.take().unwrap();
    let _ = child.wait();

    // Restart on the same data and send everything again.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    for batch in &batches {
        assert_eq!(post_ndjson(&restarted, batch).await.0, 202);
    }
    let (_, stats) = restarted
        .admin(Method::GET, "/v1/stats/consumers", None)
        .await;
    let rows = stats["consumers"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum::<u64>(),
        10_000,
        "{stats}"
    );
    assert_eq!(
        rows.iter()
            .map(|r| r["errors_5xx"].as_u64().unwrap())
            .sum::<u64>(),
        1_000
    );
    // What holds memory is reported: the features of the 7 consumers, and the process's
    // resident set and allocator (mimalloc in this build) above them.
    let (_, status) = restarted.admin(Method::GET, "/v1/status", None).await;
    let memory = &status["memory"];
    assert_eq!(memory["governance_consumers"], 7, "{status}");
    let governance = memory["governance_bytes"].as_u64().unwrap();
    assert!(governance > 0, "{status}");
    assert!(
        memory["rss_bytes"].as_u64().unwrap() > governance,
        "{status}"
    );
    assert!(
        memory["allocator_committed_bytes"].as_u64().unwrap() > governance,
        "{status}"
    );
    assert_eq!(memory["rollup_cache_budget_bytes"], 64 << 20, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reads_every_log_shape_and_is_exactly_once_when_rerun() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    let iso = |ms: i64| clientele_core::time::format_ts(ms);
    let dir = tempfile::tempdir().unwrap();
    let mut nginx = String::new();
    let mut kong = String::new();
    let mut envoy = String::new();
    let mut native = String::new();
    for i in 0..300i64 {
        let ts = now - 2 * HOUR + i * 1000;
        nginx.push_str(&format!(
            "{}\n",
            json!({"time_iso8601": iso(ts), "remote_addr": "203.0.113.7", "request": format!("GET /pets/{i} HTTP/1.1"), "status": "200",
                "body_bytes_sent": "87", "request_time": "0.012", "upstream_response_time": "0.010", "http_x_consumer_id": "acme"})
        ));
        kong.push_str(&format!(
            "{}\n",
            json!({"request": {"method": "POST", "uri": "/orders", "size": 120}, "response": {"status": if i % 2 == 0 { 500 } else { 201 }, "size": 64},
                "latencies": {"request": 40, "kong": 2, "proxy": 38}, "consumer": {"username": "initech"}, "started_at": ts, "client_ip": "198.51.100.4"})
        ));
        envoy.push_str(&format!(
            "{}\n",
            json!({"start_time": iso(ts), "method": "GET", "path": "/search?q=x", "response_code": 200, "duration": 30, "bytes_sent": 512, "consumer": "umbrella", "request_id": format!("r{i}")})
        ));
        native.push_str(&format!("{}\n", json!({"ts": ts, "consumer": "globex", "method": "GET", "path": "/pets", "status": 404, "latency_ms": 3.0})));
    }
    nginx.push_str("this line is not json\n");
    for (name, body) in [
        ("nginx.log", &nginx),
        ("kong.log", &kong),
        ("envoy.log", &envoy),
        ("events.ndjson", &native),
    ] {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
            .arg("import")
            .args([
                "nginx.log",
                "kong.log",
                "envoy.log",
                "events.ndjson",
                "--batch",
                "200",
            ])
            .current_dir(dir.path())
            .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
            .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = tokio::task::block_in_place(run);
    assert_eq!(
        code,
        Some(1),
        "one line was rejected, so the exit code says so: {out}{err}"
    );
    assert!(
        out.contains("accepted    1200 (0 were already imported)"),
        "{out}"
    );
    assert!(
        out.contains("rejected    1") && out.contains("nginx.log:301: not JSON"),
        "{out}"
    );
    assert!(err.contains("1 lines were rejected"), "{err}");

    let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
    let by: std::collections::HashMap<String, Value> = stats["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["consumer"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    assert_eq!(by.len(), 4, "{stats}");
    assert_eq!(by["initech"]["errors_5xx"], 150);
    assert_eq!(by["acme"]["requests"], 300);
    assert!((by["acme"]["p50_ms"].as_f64().unwrap() - 12.0).abs() <= 0.12);
    assert_eq!(by["globex"]["errors_4xx"], 300);

    // Running the same import again stores nothing twice.
    let (_, out, _) = tokio::task::block_in_place(run);
    assert!(
        out.contains("accepted    1200 (1200 were already imported)"),
        "{out}"
    );
    let (_, again) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
    assert_eq!(
        again["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum::<u64>(),
        1200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_outlive_their_raw_events_through_the_archive() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    // Ten days of history, one event an hour.
    let lines: Vec<Value> = (0..240i64)
        .map(|h| json!({"ts": now - 240 * HOUR + h * HOUR, "consumer": "acme", "method": "GET", "path": "/pets/1",
            "status": if h % 4 == 0 { 500 } else { 200 }, "latency_ms": 10.0 + h as f64}))
        .collect();
    for chunk in lines.chunks(100) {
        assert_eq!(post_ndjson(&server, chunk).await.0, 202);
    }
    let window = format!("from={}&to={}", now - 241 * HOUR, now + 60_000);
    let (_, before) = server
        .admin(Method::GET, &format!("/v1/stats/consumers?{window}"), None)
        .await;
    assert_eq!(before["consumers"][0]["requests"], 240);

    // Restart with a 3-day raw retention: the older days are archived as rollups and their raw
    // events deleted.
    assert!(tokio::task::block_in_place(|| server.terminate()).success());
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let config_path = dir.path().join("clientele.toml");
    let config = std::fs::read_to_string(&config_path).unwrap().replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nraw_event_retention_days = 3",
    );
    std::fs::write(&config_path, config).unwrap();
    let mut second = Server::spawn(dir, &config_path, server.gateway, server.admin).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.stderr().contains("pruned old raw events") {
        assert!(
            Instant::now() < deadline,
            "raw events were never pruned: {}",
            second.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, after) = second
        .admin(Method::GET, &format!("/v1/stats/consumers?{window}"), None)
        .await;
    assert_eq!(after["consumers"][0]["requests"], 240, "{after}");
    assert_eq!(after["consumers"][0]["errors_5xx"], 60);

    // And again from the archive alone, after another restart.
    assert!(tokio::task::block_in_place(|| second.terminate()).success());
    let dir = std::mem::replace(&mut second.dir, tempfile::tempdir().unwrap());
    let third = Server::spawn(dir, &config_path, second.gateway, second.admin).await;
    let (_, again) = third
        .admin(Method::GET, &format!("/v1/stats/consumers?{window}"), None)
        .await;
    assert_eq!(again["consumers"][0]["requests"], 240, "{again}");
    assert_eq!(
        again["consumers"][0]["p50_ms"],
        before["consumers"][0]["p50_ms"]
    );
    // Back-dating past the raw retention is refused with the reason.
    let (status, body) = post_ndjson(&third, &[json!({"ts": now - 5 * 24 * HOUR, "consumer": "acme", "method": "GET", "path": "/", "status": 200, "latency_ms": 1})]).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("raw event retention"),
        "{body}"
    );
}

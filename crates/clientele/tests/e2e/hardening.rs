//! Hostile clients and hostile input (issue 19): idle connection floods, path spellings that
//! dodge limits or escape a prefix, broken chunked bodies, and heads the gateway must refuse.
//! Raw TCP where an HTTP client would tidy the request up first.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// Sends `request` on a new connection and reads the answer until the server closes.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The problem+json body of a raw response (asserting the content type).
fn problem_of(response: &str) -> Value {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{response}"
    );
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn get(path: &str, key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n")
}

/// A connection from a chosen loopback address, so one test can be many clients.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server has closed `stream` within `wait` (reads see EOF or a reset).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed_while_others_are_served() {
    let up = start_upstream().await;
    let server = Server::start(
        up.addr,
        "first_byte_timeout_secs = 4\nidle_timeout_secs = 3\nmax_connections = 60\nmax_connections_per_ip = 30",
    )
    .await;
    let (_, key) = server.consumer_with_key("acme", None).await;

    // 30 silent connections from one address fill its share; the next one is closed at once.
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(connect_from("127.0.0.2", server.gateway).await);
    }
    let mut over = connect_from("127.0.0.2", server.gateway).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "the 31st connection from one address is refused"
    );
    // Another address fills the rest of the global cap.
    for _ in 0..30 {
        silent.push(connect_from("127.0.0.3", server.gateway).await);
    }
    // The gateway is full of silent connections, yet a normal client gets answers: the oldest
    // connection that never sent a byte is closed to make room.
    let started = Instant::now();
    let answer = raw(server.gateway, &get("/pets/1", &key)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        closed_within(&mut silent[0], Duration::from_secs(2)).await,
        "the oldest silent connection made room"
    );
    // The admin listener answers while the gateway is full.
    let (status, _) = server.admin(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);

    // Connections that never send a byte are closed after first_byte_timeout_secs.
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(15)).await,
            "a silent connection is closed"
        );
    }
    // And with them gone, new clients are admitted again.
    assert_eq!(
        status_of(&raw(server.gateway, &get("/pets/1", &key)).await),
        200
    );

    // A keep-alive connection idle between requests is closed after idle_timeout_secs.
    let mut conn = TcpStream::connect(server.gateway).await.unwrap();
    conn.write_all(
        format!("GET /pets/1 HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut drained = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(15), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                drained = true;
                break;
            }
            Ok(Ok(_)) => continue, // the rest of the first response
            Err(_) => break,
        }
    }
    assert!(drained, "an idle keep-alive connection is closed");
    assert!(!server.stderr().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_limited_path_is_limited_and_prefixes_cannot_be_escaped() {
    let up = start_upstream().await;
    let extra = format!(
        r#"
[[apis]]
name = "public"
upstream = "http://{}/v2"
prefix = "/pub"
strip_prefix = true

[plans.limited]
rate_per_second = 100
burst = 100
[plans.limited.routes]
"GET /search" = {{ rate_per_second = 0.001, burst = 1 }}
"#,
        up.addr
    );
    let server = Server::start(up.addr, &extra).await;
    let (_, key) = server.consumer_with_key("acme", Some("limited")).await;

    assert_eq!(
        status_of(&raw(server.gateway, &get("/search", &key)).await),
        200
    );
    for spelling in [
        "//search",
        "/./search",
        "/x/../search",
        "/%73earch",
        "/a/%2e%2e/search",
    ] {
        let answer = raw(server.gateway, &get(spelling, &key)).await;
        assert_eq!(status_of(&answer), 429, "{spelling}: {answer}");
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Forwarded with the normalised path.
    let answer = raw(server.gateway, &get("/pub//a/./b", &key)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains(r#""path":"/v2/a/b""#), "{answer}");

    for (path, needle) in [
        ("/pub/../../secret", "climb above '/'"),
        ("/pub/../secret", "prefix /pub of the public API"),
        ("/pub/a%2Fb", "encoded slash"),
        ("/pub/a%zz", "hexadecimal"),
    ] {
        let answer = raw(server.gateway, &get(path, &key)).await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
        let problem = problem_of(&answer);
        assert!(
            problem["detail"].as_str().unwrap_or("").contains(needle),
            "{path}: {problem}"
        );
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_error() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let (_, key) = server.consumer_with_key("acme", None).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for (what, body) in [
        ("size zz", "zz\r\nhello\r\n0\r\n\r\n"),
        ("size mismatch", "5\r\nabc\r\n0\r\n\r\n"),
        ("bare LF", "3\nabc\n0\n\n"),
    ] {
        let answer = raw(server.gateway, &format!("{head}{body}")).await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer}");
        let problem = problem_of(&answer);
        assert_eq!(problem["status"], 400, "{what}: {problem}");
    }
    let events = server.wait_events("acme", "", |e| e.len() >= 3).await;
    // Recorded as the client's 400, never as an upstream 5xx.
    for e in &events {
        assert_eq!(e["status"], 400, "{e}");
        assert_eq!(e["outcome"], "bad_request", "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_bad_hosts_are_refused_and_many_small_headers_pass() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let (_, key) = server.consumer_with_key("acme", None).await;

    let answer = raw(
        server.gateway,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 501, "{answer}");
    assert!(
        problem_of(&answer)["detail"]
            .as_str()
            .unwrap()
            .contains("CONNECT")
    );

    let no_host = format!("GET /pets/1 HTTP/1.1\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n");
    let answer = raw(server.gateway, &no_host).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        problem_of(&answer)["detail"]
            .as_str()
            .unwrap()
            .contains("Host")
    );

    let two_hosts = format!(
        "GET /pets/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(server.gateway, &two_hosts).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // HTTP/1.0 needs no Host.
    let answer = raw(
        server.gateway,
        &format!("GET /pets/1 HTTP/1.0\r\nx-api-key: {key}\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        server.gateway,
        &format!("GET /pets/1 HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "150 small headers pass by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_count_limit_is_configurable() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "max_headers = 32").await;
    let (_, key) = server.consumer_with_key("acme", None).await;
    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        server.gateway,
        &format!("GET /pets/1 HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    // hyper answers 431, or closes the connection; either way nothing reaches the upstream.
    if !answer.is_empty() {
        assert_eq!(status_of(&answer), 431, "{answer}");
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_edges_and_ingest_bounds() {
    use bytes::Bytes;
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    server.consumer_with_key("acme", None).await;
    let (status, _) = server
        .admin(
            Method::PUT,
            "/v1/consumers/acme/limits",
            Some(serde_json::json!({"quota_per_day": 5})),
        )
        .await;
    assert_eq!(status, 200);
    // An array is not a set of limits, and must not wipe the ones there.
    let (status, problem) = server
        .admin(
            Method::PUT,
            "/v1/consumers/acme/limits",
            Some(serde_json::json!([])),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (_, consumer) = server.admin(Method::GET, "/v1/consumers/acme", None).await;
    assert_eq!(consumer["limits"]["quota_per_day"], 5, "{consumer}");

    let (status, _) = server
        .admin(Method::GET, "/v1/consumers/ghost/events", None)
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .admin(
            Method::GET,
            "/v1/consumers/acme/events?limit=&status=",
            None,
        )
        .await;
    assert_eq!(status, 200, "empty values count as absent: {body}");

    let (_, doc) = server.admin(Method::GET, "/v1/openapi.json", None).await;
    let post = &doc["paths"]["/v1/consumers"]["post"]["responses"];
    for code in ["400", "401", "415"] {
        assert!(post[code].is_object(), "{code} missing: {post}");
    }

    // Ingest: numbers past their bounds are refused per line, naming the field.
    let url = format!("http://{}/v1/events", server.admin);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let ts = clientele_core::time::now_ms();
    let line = |extra: &str| {
        format!(
            r#"{{"ts":{ts},"consumer":"acme","method":"GET","path":"/a","status":200,"latency_ms":1{extra}}}"#
        )
    };
    let body = [
        line(r#","request_bytes":18446744073709551615"#),
        line(r#","cost_usd":1e308"#),
        line(r#","path":"/a\u0000b""#),
        line(r#","request_bytes":1000"#),
    ]
    .join("\n");
    let (status, _, answer) = send(
        Method::POST,
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/x-ndjson"),
        ],
        Some(Bytes::from(body)),
    )
    .await
    .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let errors: Vec<&str> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    assert!(errors[0].contains("request_bytes"), "{errors:?}");
    assert!(errors[1].contains("cost_usd"), "{errors:?}");
    assert!(errors[2].contains("control character"), "{errors:?}");

    // A body over [admin].max_body_bytes is a problem+json 413.
    let (status, headers, _) = send(
        Method::POST,
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/x-ndjson"),
        ],
        Some(Bytes::from(vec![b' '; 70_000])),
    )
    .await
    .unwrap();
    assert_eq!(status, 413);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
}

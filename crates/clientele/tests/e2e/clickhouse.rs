//! Events in ClickHouse (`[storage] backend = "clickhouse"`, control plane in PostgreSQL): the
//! real binary, a real clickhouse-server 18.16 and a real PostgreSQL, both started by the test
//! from Debian's packages in temporary folders on free ports. Without them the tests say so and
//! pass, except on CI.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clientele_store::clickhouse::testing::ChServer;
use clientele_store::postgres::testing::PgServer;
use http::Method;
use serde_json::{Value, json};

use crate::support::{Server, config_text, get_with_key, post_events, start_upstream};

const HOUR: i64 = 3_600_000;

/// PostgreSQL (database `db`) and ClickHouse, or `None` when either is not installed.
fn servers(db: &str) -> Option<(PgServer, ChServer)> {
    let pg = PgServer::start()?;
    let ch = ChServer::start()?;
    pg.create_database(db);
    Some((pg, ch))
}

/// A node on the shared PostgreSQL and ClickHouse, with its own data dir.
async fn node(up: SocketAddr, pg: &PgServer, ch: &ChServer, extra: &str) -> Server {
    let (pg_url, ch_url) = (pg.url("clientele"), ch.url("clientele"));
    Server::start_with(tempfile::tempdir().unwrap(), |gateway, admin| {
        config_text(gateway, admin, up, extra).replace(
            "data_dir = \"data\"",
            &format!(
                "data_dir = \"data\"\nbackend = \"clickhouse\"\npostgres_url = \"{pg_url}\"\nclickhouse_url = \"{ch_url}\""
            ),
        )
    })
    .await
}

/// Three days of history for four consumers: healthy, failing, slow-tailed and small, with
/// explicit ids so both nodes are sent the very same events.
fn history(now: i64) -> Vec<Value> {
    let start = (now - 72 * HOUR) / HOUR * HOUR;
    let mut lines = Vec::new();
    for i in 0..4000i64 {
        let ts = start + i * 60_000;
        let latency = 5.0 + (i % 97) as f64 * 1.5 + if i % 50 == 0 { 900.0 } else { 0.0 };
        lines.push(json!({"id": format!("h{i}-a"), "ts": ts, "consumer": "acme", "method": "GET",
            "path": format!("/pets/{}", i % 40), "status": if i % 70 == 0 { 503 } else { 200 },
            "latency_ms": latency, "plan": "pro", "team": "retail", "response_bytes": 100 + i % 13}));
        if i % 3 == 0 {
            lines.push(json!({"id": format!("h{i}-i"), "ts": ts + 7, "consumer": "initech", "method": "POST",
                "path": "/orders", "status": if i % 2 == 0 { 422 } else { 201 },
                "latency_ms": 20.0 + (i % 11) as f64, "plan": "free"}));
        }
        if i % 5 == 0 {
            lines.push(json!({"id": format!("h{i}-g"), "ts": ts + 11, "consumer": "globex", "method": "GET",
                "path": "/pets", "status": if i % 15 == 0 { 429 } else { 200 },
                "latency_ms": 2.0 + (i % 300) as f64 * 3.3, "plan": "pro"}));
        }
        // A burst of errors for one consumer in the last day, for the detectors.
        if i > 3000 && i % 2 == 0 {
            lines.push(json!({"id": format!("h{i}-u"), "ts": ts + 13, "consumer": "umbrella", "method": "GET",
                "path": "/pets/1", "status": if i > 3800 { 500 } else { 200 }, "latency_ms": 9.0}));
        }
    }
    lines
}

/// The same JSON, except that numbers under keys ending in `_ms` (percentiles) may differ by
/// 1%; every count must be equal.
fn same(path: &str, a: &Value, b: &Value) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: Vec<_> = x.keys().collect();
            assert_eq!(keys, y.keys().collect::<Vec<_>>(), "{path}: fields differ");
            for (k, v) in x {
                let p = format!("{path}.{k}");
                if k.ends_with("_ms") && v.is_number() {
                    let (v, w) = (v.as_f64().unwrap(), y[k].as_f64().unwrap());
                    assert!(
                        (v - w).abs() <= 0.01 * v.abs().max(w.abs()),
                        "{p}: {v} against {w}"
                    );
                } else {
                    same(&p, v, &y[k]);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths differ");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                same(&format!("{path}[{i}]"), v, w);
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

async fn get(server: &Server, path: &str) -> Value {
    let (status, body) = server.admin(Method::GET, path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Waits until `count` (a query's single number) reaches `want`; returns how long it took.
fn until_count(ch: &ChServer, sql: &str, want: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got: u64 = ch.query(sql).trim().parse().unwrap_or(0);
        if got == want {
            return started.elapsed();
        }
        assert!(got < want, "{sql}: {got}, more than {want}");
        assert!(
            started.elapsed() < limit,
            "{sql}: {got} after {limit:?}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Total requests in `/v1/stats/consumers` for `window`.
async fn total_requests(server: &Server, window: &str) -> u64 {
    let stats = get(server, &format!("/v1/stats/consumers?{window}")).await;
    stats["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["requests"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_give_the_same_answers_on_sqlite_and_clickhouse() {
    let Some((pg, ch)) = servers("clientele") else {
        return;
    };
    let up = start_upstream().await;
    let embedded = Server::start(up.addr, "").await;
    let clustered = node(up.addr, &pg, &ch, "").await;
    let now = clientele_core::time::now_ms();
    let lines = history(now);
    post_events(&embedded, &lines).await;
    post_events(&clustered, &lines).await;
    // Sent twice: ignored by both, and ClickHouse holds each event once.
    post_events(&clustered, &lines[..1000]).await;
    let n = lines.len() as u64;
    let shipped = until_count(
        &ch,
        "SELECT count() FROM clientele.events",
        n,
        Duration::from_secs(20),
    );
    eprintln!("{n} events in ClickHouse {shipped:?} after the last post");
    assert_eq!(
        ch.query("SELECT uniqExact(id) FROM clientele.events")
            .trim(),
        n.to_string()
    );

    let window = format!("from={}&to={}", now - 80 * HOUR, now + 60_000);
    let mut paths = vec![
        format!("/v1/stats/consumers?{window}"),
        format!("/v1/stats/consumers?{window}&plan=pro"),
        format!("/v1/stats/routes?{window}"),
    ];
    for c in ["acme", "initech", "globex", "umbrella"] {
        paths.push(format!("/v1/stats/consumers/{c}?{window}&step=1h"));
        paths.push(format!("/v1/consumers/{c}/events?limit=50"));
    }
    let started = Instant::now();
    loop {
        if total_requests(&clustered, &window).await == n
            && total_requests(&embedded, &window).await == n
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stats never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in &paths {
        let (a, b) = (get(&embedded, path).await, get(&clustered, path).await);
        same(path, &a, &b);
    }
    // Findings: the same conditions (ids differ: each store makes its own).
    for s in [&embedded, &clustered] {
        let (status, body) = s.admin(Method::POST, "/v1/findings/evaluate", None).await;
        assert_eq!(status, 200, "{body}");
    }
    let conditions = |v: Value| {
        let mut c: Vec<String> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {} {} {} {}",
                    f["kind"], f["consumer"], f["route"], f["severity"], f["first_seen"]
                )
            })
            .collect();
        c.sort();
        c
    };
    let found = conditions(get(&embedded, "/v1/findings?limit=500").await);
    assert!(!found.is_empty(), "the history has conditions to find");
    assert_eq!(
        found,
        conditions(get(&clustered, "/v1/findings?limit=500").await)
    );
    eprintln!(
        "{} endpoints and {} findings equal on sqlite and clickhouse",
        paths.len(),
        found.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_others_traffic_and_evaluate_once() {
    let Some((pg, ch)) = servers("clientele") else {
        return;
    };
    let up = start_upstream().await;
    // Detection every second, so the lease is taken while the test runs.
    let fast = "\n[detection]\ninterval_secs = 1\n";
    let a = node(up.addr, &pg, &ch, fast).await;
    let b = node(up.addr, &pg, &ch, fast).await;
    let (_, key) = a.consumer_with_key("acme", Some("pro")).await;
    // The key reaches B within the control plane's poll.
    let started = Instant::now();
    while get_with_key(&b, "/pets/1", &key).await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = format!(
        "from={}&to={}",
        clientele_core::time::now_ms() - HOUR,
        clientele_core::time::now_ms() + HOUR
    );
    // The requests of the key check (401s, then a 200, on B) settle on both nodes first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base_b = total_requests(&b, &window).await;
    assert_eq!(
        total_requests(&a, &window).await,
        base_b,
        "A sees B's requests"
    );
    for _ in 0..40 {
        assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);
    }
    for _ in 0..25 {
        assert_eq!(get_with_key(&b, "/pets/2", &key).await.0, 200);
    }
    let want = base_b + 65;
    let mut lags = Vec::new();
    for s in [&a, &b] {
        let started = Instant::now();
        while total_requests(s, &window).await != want {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a node never showed the cluster's {want} requests: {}",
                total_requests(s, &window).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lags.push(started.elapsed());
    }
    eprintln!("both nodes show both nodes' traffic; waited {lags:?}");
    // Routes of each node's traffic are on both.
    for s in [&a, &b] {
        let routes = get(s, &format!("/v1/stats/consumers/acme?{window}")).await;
        let total: u64 = routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(total, want, "{routes}");
    }
    // One event posted to both nodes is counted once by each. Posted to B after A's copy
    // reached ClickHouse, B's shipment finds it there and does not insert it again.
    let event = |id: &str| {
        json!({"id": id, "ts": clientele_core::time::now_ms(), "consumer": "acme",
            "method": "GET", "path": "/pets/9", "status": 200, "latency_ms": 1.0})
    };
    let count = |id: &str| format!("SELECT count() FROM clientele.events WHERE id = '{id}'");
    post_events(&a, &[event("later")]).await;
    until_count(&ch, &count("later"), 1, Duration::from_secs(10));
    post_events(&b, &[event("later")]).await;
    // Posted to both at once, both checks may run before either insert: two rows, which the
    // replacing engine merges into one, and which every read counts once meanwhile.
    let (x, y) = ([event("at-once")], [event("at-once")]);
    tokio::join!(post_events(&a, &x), post_events(&b, &y));
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in [&a, &b] {
        assert_eq!(
            total_requests(s, &window).await,
            want + 2,
            "each node counts each once"
        );
    }
    assert_eq!(
        ch.query(&count("later")).trim(),
        "1",
        "the check kept one copy"
    );
    let raced: u64 = ch.query(&count("at-once")).trim().parse().unwrap();
    assert!((1..=2).contains(&raced), "{raced}");
    ch.query("OPTIMIZE TABLE clientele.events FINAL");
    assert_eq!(ch.query(&count("at-once")).trim(), "1", "merged into one");
    eprintln!(
        "an event posted to both nodes at once: {raced} row(s) in ClickHouse before the merge, 1 after"
    );
    // Detection runs on the lease holder only: one of the two nodes' names.
    let holders = pg.psql(
        "clientele",
        "SELECT holder FROM leases WHERE name = 'detection'",
    );
    let names: Vec<String> = [&a, &b]
        .iter()
        .map(|s| {
            std::fs::read_to_string(s.dir.path().join("data/node-id"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert!(
        names.contains(&holders.trim().to_string()),
        "{holders} not one of {names:?}"
    );
    // Both nodes try every second; the holder keeps it by renewing, the other never runs.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = pg.psql(
            "clientele",
            "SELECT holder FROM leases WHERE name = 'detection'",
        );
        assert_eq!(
            now.trim(),
            holders.trim(),
            "the lease changed hands while both ran"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_the_gateway_serves_a_node_restarts_and_every_event_arrives_once() {
    let Some((pg, ch)) = servers("clientele") else {
        return;
    };
    let outage = Duration::from_secs(
        std::env::var("CLIENTELE_CH_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
    );
    let up = start_upstream().await;
    let mut a = node(up.addr, &pg, &ch, "").await;
    let (_, key) = a.consumer_with_key("acme", Some("pro")).await;
    for _ in 0..20 {
        assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);
    }
    until_count(
        &ch,
        "SELECT count() FROM clientele.events",
        20,
        Duration::from_secs(10),
    );

    ch.stop();
    let started = Instant::now();
    let mut sent = 20u64;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < outage {
        let t = Instant::now();
        let (status, _, _) = get_with_key(&a, "/pets/1", &key).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(status, 200, "the gateway must keep serving");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ingest keeps accepting too.
    let posted: Vec<Value> = (0..500)
        .map(|i| json!({"id": format!("out-{i}"), "ts": clientele_core::time::now_ms() - i,
            "consumer": "acme", "method": "GET", "path": "/pets/3", "status": 200, "latency_ms": 2.0}))
        .collect();
    post_events(&a, &posted).await;
    sent += posted.len() as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _, metrics) = crate::support::send(
        Method::GET,
        &format!("http://{}/metrics", a.admin),
        &[(
            "authorization",
            &format!("Bearer {}", crate::support::ADMIN_TOKEN),
        )],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let gauge = |state: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("clientele_clickhouse_spool{{state=\"{state}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no spool gauge {state}: {metrics}"))
    };
    assert_eq!(gauge("up"), 0.0);
    // Every event of the outage waits; so may the first 20, when ClickHouse died after taking
    // their insert and before its answer reached the node (sent again, and found there).
    let pending = gauge("pending");
    assert!(
        ((sent - 20) as f64..=sent as f64).contains(&pending),
        "{pending} pending of {sent}"
    );
    eprintln!(
        "ClickHouse down {outage:?}: {} requests served (slowest {slowest:?}), {} events spooled",
        sent - 20 - posted.len() as u64,
        gauge("pending")
    );

    // The node dies (kill -9) while its spool holds the outage; the spool survives it.
    let pid = a.pid();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let _ = a.child.take().unwrap().wait();
    // It comes back while ClickHouse is still down (a restart during an outage, a machine that
    // boots first): it starts, serves, and its new events join the spool.
    let dir = std::mem::replace(&mut a.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("clientele.toml");
    let a = Server::spawn(dir, &config, a.gateway, a.admin).await;
    assert!(
        a.stderr()
            .contains("ClickHouse is unreachable at start-up: starting without it"),
        "{}",
        a.stderr()
    );
    for _ in 0..30 {
        assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gauge_after(&a, "up").await, 0.0);
    assert!(gauge_after(&a, "pending").await >= (sent - 20) as f64);
    ch.restart();
    let back = until_count(
        &ch,
        "SELECT count() FROM clientele.events",
        sent,
        Duration::from_secs(30),
    );
    eprintln!("all {sent} events in ClickHouse {back:?} after it came back to the restarted node");
    assert_eq!(
        ch.query("SELECT uniqExact(id) FROM clientele.events")
            .trim(),
        sent.to_string(),
        "none doubled"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gauge_after(&a, "pending").await, 0.0);
    drop(pg);
}

async fn gauge_after(server: &Server, state: &str) -> f64 {
    let (_, _, body) = crate::support::send(
        Method::GET,
        &format!("http://{}/metrics", server.admin),
        &[(
            "authorization",
            &format!("Bearer {}", crate::support::ADMIN_TOKEN),
        )],
        None,
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(&format!("clientele_clickhouse_spool{{state=\"{state}\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

//! Rate limits and quotas: on one node, across two nodes sharing a real Redis, and with Redis
//! going away and coming back.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use crate::support::*;

/// A real `redis-server` on a free loopback port, without persistence; killed on drop.
pub(crate) struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        // A port found free can be taken before redis-server binds it: then it exits, and we
        // try another.
        for _ in 0..5 {
            if let Some(redis) = Redis::try_start_on(free_port()) {
                return redis;
            }
        }
        panic!("redis-server could not bind a port after 5 attempts");
    }

    fn start_on(port: u16) -> Redis {
        Redis::try_start_on(port).expect("redis-server exited at start")
    }

    fn try_start_on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed; run the tests with `bash scripts/test.sh`, which installs it");
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().ok().flatten().is_some() {
            // Something else answered on the port.
            return None;
        }
        Some(Redis {
            child: Some(child),
            port,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const TINY: &str = r#"
[plans.tiny]
rate_per_second = 1
burst = 3

[plans.quota20]
rate_per_second = 100000
burst = 100000
quota_per_day = 20
"#;

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn stats_row(server: &Server, consumer: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
        if let Some(row) = stats["consumers"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["consumer"] == consumer))
        {
            if pred(row) {
                return row.clone();
            }
        }
        assert!(Instant::now() < deadline, "stats never matched: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fires `n` requests at once through the gateway; returns how many got 200 and 429.
async fn burst(server: &Server, key: &str, path: &str, n: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = server.gw(path);
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            send(Method::GET, &url, &[("x-api-key", &key)], None)
                .await
                .unwrap()
                .0
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_gets_429_with_headers_and_never_reaches_the_upstream() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, TINY).await;
    let (_, key) = server.consumer_with_key("acme", Some("tiny")).await;

    let (status, headers, _) = get_with_key(&server, "/pets/1", &key).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "ratelimit-policy"), "\"rate\";q=3;w=3");
    assert_eq!(header(&headers, "ratelimit"), "\"rate\";r=2;t=1");
    assert_eq!(header(&headers, "ratelimit-remaining"), "2");

    let before = up.hits.load(Ordering::SeqCst);
    let (ok, limited) = burst(&server, &key, "/pets/2", 10).await;
    assert_eq!(ok + limited, 10);
    assert!(ok <= 3, "a burst of 3 allows at most 3 more, got {ok}");
    assert!(limited >= 7);
    assert_eq!(
        up.hits.load(Ordering::SeqCst) - before,
        ok as u64,
        "refused requests must not reach the upstream"
    );

    let (status, headers, body) = get_with_key(&server, "/pets/3", &key).await;
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "content-type"), "application/problem+json");
    let retry: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=3).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&headers, "ratelimit-remaining"), "0");
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"].as_str().unwrap().contains("back off"),
        "{body}"
    );

    // After waiting as told, the consumer is let through again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get_with_key(&server, "/pets/4", &key).await.0, 200);

    // Refusals are events like any other, and counted in the stats.
    let refused = 1 + limited as u64;
    let row = stats_row(&server, "acme", |r| {
        r["requests"] == 2 + ok as u64 + refused
    })
    .await;
    assert_eq!(row["rate_limited"], refused);
    let events = server
        .wait_events("acme", "&status=429", |e| e.len() as u64 == refused)
        .await;
    assert!(events.iter().all(|e| e["outcome"] == "rate_limited"));

    let (_, status) = server.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status["limiter_mode"], "local");
    assert_eq!(status["limiter_refused"], refused);
}

/// A consumer refused many times in an hour used a sliver of its hourly allowance on average,
/// but all of its rate at the second it was refused: the hourly step's peak share says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refused_many_times_sees_a_high_peak_share() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, TINY).await;
    let (_, key) = server.consumer_with_key("acme", Some("tiny")).await;
    let (ok, limited) = burst(&server, &key, "/pets/2", 40).await;
    assert!(limited >= 30, "{ok} allowed, {limited} refused");
    // Wait until the refusals are in the rollups.
    stats_row(&server, "acme", |r| r["rate_limited"] == limited as u64).await;
    let (status, limits) = server
        .admin(Method::GET, "/v1/consumers/acme/limits?step=1h", None)
        .await;
    assert_eq!(status, 200, "{limits}");
    let points = limits["series"].as_array().unwrap();
    let busy = points
        .iter()
        .find(|p| p["rate_limited"].as_u64().unwrap_or(0) > 0)
        .expect("a step with refusals");
    let mean = busy["share_of_rate"].as_f64().unwrap();
    let peak = busy["peak_share_of_rate"].as_f64().unwrap();
    assert!(mean < 0.01, "the hour's mean share is small: {busy}");
    assert!(peak >= 1.0, "the peak share shows the burst: {busy}");
    assert!(
        limits["peak_share_of_rate"].as_f64().unwrap() >= 1.0,
        "{limits}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_of_20_allows_exactly_20_and_survives_a_restart() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, TINY).await;
    let (_, key) = server.consumer_with_key("acme", Some("quota20")).await;

    let (ok, limited) = burst(&server, &key, "/pets/1", 30).await;
    assert_eq!((ok, limited), (20, 10));
    let (status, headers, body) = get_with_key(&server, "/pets/1", &key).await;
    assert_eq!(status, 429);
    assert_eq!(
        body["type"].as_str().unwrap().rsplit('/').next(),
        Some("quota-exceeded")
    );
    assert!(header(&headers, "ratelimit-policy").starts_with("\"day\";q=20;w=86400"));
    let (_, limits) = server
        .admin(Method::GET, "/v1/consumers/acme/limits", None)
        .await;
    assert_eq!(limits["day"]["used"], 20);
    assert_eq!(limits["day"]["remaining"], 0);

    // A restart keeps the day's count.
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success());
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    assert_eq!(get_with_key(&restarted, "/pets/1", &key).await.0, 429);
    let (_, limits) = restarted
        .admin(Method::GET, "/v1/consumers/acme/limits", None)
        .await;
    assert_eq!(limits["day"]["used"], 20, "{limits}");

    // Raising the consumer's own quota applies at once, and keeps what was used.
    let (status, limits) = restarted
        .admin(
            Method::PUT,
            "/v1/consumers/acme/limits",
            Some(json!({"quota_per_day": 25})),
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["effective"]["quota_per_day"], 25);
    let (ok, _) = burst(&restarted, &key, "/pets/1", 10).await;
    assert_eq!(ok, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_overrides_and_route_limits_through_the_admin_api() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, TINY).await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;

    // Bad overrides are refused with a reason.
    for (body, needle) in [
        (json!({"rate_per_second": 0}), "rate_per_second"),
        (json!({"burst": 0}), "burst"),
        (json!({"quota_per_day": 0}), "quota"),
        (
            json!({"routes": {"search": {"rate_per_second": 1, "burst": 1}}}),
            "route template",
        ),
        (json!({"rate": 5}), "unknown field"),
    ] {
        let (status, problem) = server
            .admin(Method::PUT, "/v1/consumers/acme/limits", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} -> {problem}");
        assert!(
            problem["detail"].as_str().unwrap_or("").contains(needle),
            "{body} -> {problem}"
        );
    }
    let (status, _) = server
        .admin(
            Method::PUT,
            "/v1/consumers/ghost/limits",
            Some(json!({"burst": 1})),
        )
        .await;
    assert_eq!(status, 404);

    // One consumer x route limit: /search is held to 1 per second, the rest to the plan's.
    let (status, limits) = server
        .admin(
            Method::PUT,
            "/v1/consumers/acme/limits",
            Some(json!({"routes": {"GET /search": {"rate_per_second": 1, "burst": 1}}})),
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["effective"]["rate_per_second"], 100.0);
    assert_eq!(limits["effective"]["routes"][0]["route"], "GET /search");
    assert_eq!(get_with_key(&server, "/search", &key).await.0, 200);
    let (status, headers, _) = get_with_key(&server, "/search", &key).await;
    assert_eq!(status, 429);
    assert!(header(&headers, "ratelimit-policy").starts_with("\"route\";"));
    assert_eq!(get_with_key(&server, "/pets/1", &key).await.0, 200);
    // The consumer record shows the override.
    let (_, consumer) = server.admin(Method::GET, "/v1/consumers/acme", None).await;
    assert!(consumer["limits"]["routes"]["GET /search"].is_object());

    // Removing it puts the plan's limits back.
    let (status, _) = server
        .admin(Method::DELETE, "/v1/consumers/acme/limits", None)
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (ok, limited) = burst(&server, &key, "/search", 5).await;
    assert_eq!((ok, limited), (5, 0));

    // The overview lists limited consumers, the most constrained first.
    let (status, overview) = server.admin(Method::GET, "/v1/limits", None).await;
    assert_eq!(status, 200);
    assert_eq!(overview["consumers"][0]["consumer"], "acme");
    assert_eq!(overview["mode"], "local");
}

/// Starts a node against `redis` with its own data dir, or sharing `share`'s store. Redis
/// calls time out after 100 ms, as the outage tests need to be quick.
async fn redis_node(
    up: std::net::SocketAddr,
    redis: &str,
    policy: &str,
    share: Option<&Server>,
) -> Server {
    redis_node_with_timeout(up, redis, policy, share, 100).await
}

async fn redis_node_with_timeout(
    up: std::net::SocketAddr,
    redis: &str,
    policy: &str,
    share: Option<&Server>,
    timeout_ms: u64,
) -> Server {
    let extra = format!(
        "{TINY}\n[plans.shared]\nrate_per_second = 10\nburst = 10\nquota_per_day = 50\n\n[limits]\nredis_url = \"{redis}\"\nredis_timeout_ms = {timeout_ms}\non_redis_error = \"{policy}\"\n"
    );
    let Some(first) = share else {
        return Server::start(up, &extra).await;
    };
    // Point this node at the first node's store, like the shared-store test does.
    let data = first.dir.path().join("data");
    Server::start_with(tempfile::tempdir().unwrap(), |gateway, admin| {
        config_text(gateway, admin, up, &extra).replace(
            "data_dir = \"data\"",
            &format!("data_dir = {data:?}\nevent_dir = \"events-b\""),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_enforce_one_limit() {
    let redis = Redis::start();
    let up = start_upstream().await;
    // A generous timeout: this test is about one limit shared by two nodes, and a call timed
    // out on a loaded machine fails open (as configured), which would let extra requests by.
    let a = redis_node_with_timeout(up.addr, &redis.url(), "open", None, 2000).await;
    let b = redis_node_with_timeout(up.addr, &redis.url(), "open", Some(&a), 2000).await;
    let (_, key) = a.consumer_with_key("acme", Some("shared")).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while get_with_key(&b, "/pets/1", &key).await.0 == 401 {
        assert!(Instant::now() < deadline, "node B never loaded the key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That request counted against the quota (50/day) and the rate (10/s, burst 10).

    // Rate: both nodes at once for ~2 s. One shared bucket allows burst + rate x time; two
    // separate buckets would allow about twice that.
    let started = Instant::now();
    let mut allowed = 0;
    let mut refused = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        let (ok_a, no_a) = burst(&a, &key, "/pets/1", 4).await;
        let (ok_b, no_b) = burst(&b, &key, "/pets/1", 4).await;
        allowed += ok_a + ok_b;
        refused += no_a + no_b;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 10.0 + 10.0 * elapsed + 1.0;
    assert!(
        (allowed as f64) <= bound,
        "{allowed} allowed in {elapsed:.2} s across two nodes; one shared limit allows at most {bound:.0}"
    );
    assert!(refused > 0);

    // Quota: whatever is left of the 50 goes to the two nodes together, exactly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used_so_far = 1 + allowed;
    let mut total = 0;
    for _ in 0..10 {
        // Bursts of 8 stay under the rate's burst of 10, so only the quota refuses.
        let (ok_a, _) = burst(&a, &key, "/pets/1", 4).await;
        let (ok_b, _) = burst(&b, &key, "/pets/1", 4).await;
        total += ok_a + ok_b;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert_eq!(
        used_so_far + total,
        50,
        "the day's quota of 50 must be used exactly, across both nodes"
    );
    let (_, status) = a.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status["limiter_mode"], "redis");
    assert_eq!(status["limiter_redis_errors"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_without_hanging_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let up = start_upstream().await;
    let server = redis_node(up.addr, &redis.url(), "open", None).await;
    let (_, key) = server.consumer_with_key("acme", Some("tiny")).await;
    let (ok, limited) = burst(&server, &key, "/pets/1", 6).await;
    assert_eq!((ok, limited), (3, 3));

    redis.stop();
    // Every request is answered, quickly, and allowed.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get_with_key(&server, "/pets/1", &key).await.0, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "a request waited {slowest:?} for a dead Redis"
    );
    let (_, status) = server.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status["limiter_redis_up"], false);
    assert!(
        status["limiter_failed_open"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        server
            .stderr()
            .contains("the shared rate limiter (Redis) failed")
    );

    // Redis comes back: limits apply again without a restart.
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, limited) = burst(&server, &key, "/pets/1", 6).await;
        if limited > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "limits never applied again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, status) = server.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status["limiter_redis_up"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_with_503_when_configured() {
    let mut redis = Redis::start();
    let up = start_upstream().await;
    let server = redis_node(up.addr, &redis.url(), "closed", None).await;
    let (_, key) = server.consumer_with_key("acme", Some("tiny")).await;
    assert_eq!(get_with_key(&server, "/pets/1", &key).await.0, 200);
    redis.stop();
    let before = up.hits.load(Ordering::SeqCst);
    let t = Instant::now();
    let (status, headers, body) = get_with_key(&server, "/pets/1", &key).await;
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(body["title"], "Rate limiter unavailable");
    assert_eq!(up.hits.load(Ordering::SeqCst), before);
    // Consumers without limits are not held up by the limiter at all.
    let (_, free_key) = server.consumer_with_key("nolimits", None).await;
    assert_eq!(get_with_key(&server, "/pets/1", &free_key).await.0, 200);
}

#[test]
fn bad_limit_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    for (config, needle) in [
        (
            "[plans.free]\nrate_per_second = 0\nburst = 1\n".to_string(),
            "plans.free.rate_per_second",
        ),
        (
            "[plans.free]\nrate_per_second = -3\nburst = 1\n".to_string(),
            "plans.free.rate_per_second",
        ),
        (
            "[plans.free]\nrate_per_second = 1\nburst = 1\n[plans.free.routes]\n\"search\" = { rate_per_second = 1, burst = 1 }\n".to_string(),
            "plans.free.routes",
        ),
        (
            "[limits]\nredis_url = \"http://127.0.0.1:6379\"\n".to_string(),
            "limits.redis_url",
        ),
        (
            format!("[storage]\ndata_dir = \"d\"\n[limits]\nredis_url = \"redis://127.0.0.1:{dead}\"\n"),
            "limits.redis_url: cannot reach",
        ),
        (
            "[limits]\non_redis_error = \"maybe\"\n".to_string(),
            "on_redis_error",
        ),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_clientele"))
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("CLIENTELE_ADMIN_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config} was accepted");
        assert!(stderr.contains(needle), "{config}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_the_limit_and_living_near_the_quota_become_findings() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, TINY).await;
    // Live: a loop that ignores 429s.
    let (_, key) = server.consumer_with_key("loopy", Some("tiny")).await;
    let (ok, limited) = burst(&server, &key, "/search", 80).await;
    assert!(limited >= 70, "{ok} allowed, {limited} refused");
    stats_row(&server, "loopy", |r| r["requests"] == 80).await;

    // Backfilled: three days at 90% of a daily quota of 20.
    let now = clientele_core::time::now_ms();
    let today = now.div_euclid(86_400_000);
    let mut body = String::new();
    for d in 1..=3 {
        for i in 0..18 {
            let ts = (today - d) * 86_400_000 + 3_600_000 + i * 1000;
            body.push_str(
                &json!({"ts": ts, "consumer": "steady", "plan": "quota20", "method": "GET",
                        "path": "/pets/1", "status": 200, "latency_ms": 12.0})
                .to_string(),
            );
            body.push('\n');
        }
    }
    let (status, _, answer) = send(
        Method::POST,
        &format!("http://{}/v1/events", server.admin),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", "application/x-ndjson"),
        ],
        Some(bytes::Bytes::from(body)),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));

    let (status, _) = server
        .admin(Method::POST, "/v1/findings/evaluate?lookback=7d", None)
        .await;
    assert_eq!(status, 200);
    let (_, found) = server
        .admin(Method::GET, "/v1/findings?kind=rate_limited", None)
        .await;
    let f = &found["findings"][0];
    assert_eq!(f["consumer"], "loopy", "{found}");
    assert_eq!(f["severity"], "critical");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("without exponential backoff"), "{summary}");
    assert!(summary.contains("tiny plan's limit of 1/s"), "{summary}");
    assert_eq!(f["evidence"]["rate_limited"], limited as u64);

    let (_, found) = server
        .admin(Method::GET, "/v1/findings?kind=quota_pressure", None)
        .await;
    let f = &found["findings"][0];
    assert_eq!(f["consumer"], "steady", "{found}");
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains("daily quota of 20 on 3 of the last 7 days"),
        "{summary}"
    );
    assert_eq!(found["findings"].as_array().unwrap().len(), 1, "{found}");
}

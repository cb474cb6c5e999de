//! Durability of stored events: a crash under gateway load, a damaged segment, a full disk and
//! a restart over a large history, each on the real binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::analytics::post_ndjson;
use crate::support::*;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// Requests the consumer's stats count over the last day.
async fn counted(server: &Server, consumer: &str) -> u64 {
    let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
    stats["consumers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["consumer"] == consumer)
        .map(|r| r["requests"].as_u64().unwrap_or(0))
        .sum()
}

/// Polls until the consumer's count reaches `want` (or 30 s pass); returns the last count.
async fn wait_counted(server: &Server, consumer: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = counted(server, consumer).await;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn restart(server: &mut Server) -> tempfile::TempDir {
    std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_gateway_load_loses_no_answered_request() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, "").await;
    let (_, key) = server.consumer_with_key("loaded", None).await;
    let answered = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let url = server.gw("/pets/1");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (answered, killed, url, key) =
                (answered.clone(), killed.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let client = client();
                loop {
                    let req = Request::get(&url)
                        .header("x-api-key", &key)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let Ok(resp) = client.request(req).await else {
                        if killed.load(Ordering::SeqCst) {
                            return;
                        }
                        continue;
                    };
                    // Answered: the whole response reached the client.
                    if resp.into_body().collect().await.is_ok() {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = server.pid();
    killed.store(true, Ordering::SeqCst);
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
    }
    let _ = server.child.take().unwrap().wait();
    let answered = answered.load(Ordering::SeqCst);
    assert!(answered > 100, "the load ran: {answered} answered");

    let dir = restart(&mut server);
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    let stored = wait_counted(&restarted, "loaded", answered).await;
    println!("kill -9 under load: {answered} answered, {stored} counted after restart");
    // Requests in flight at the kill may have produced an event without reaching the client,
    // never the other way round.
    assert!(
        stored >= answered && stored <= answered + 4,
        "answered {answered}, counted {stored}; stderr:\n{}",
        restarted.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_is_reported_with_file_and_offset_and_the_server_keeps_serving() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    let lines: Vec<Value> = (0..200)
        .map(|i| {
            json!({"ts": now - 60_000 + i, "consumer": "dam", "method": "GET",
            "path": format!("/items/{i}"), "status": 200, "latency_ms": 2.0})
        })
        .collect();
    assert_eq!(post_ndjson(&server, &lines).await.0, 202);
    assert!(server.terminate().success());

    let events_dir = server.dir.path().join("data/events");
    let segment = std::fs::read_dir(&events_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();

    let dir = restart(&mut server);
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    let stderr = restarted.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("fails its checksum"))
        .unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(line.contains(&name) && line.contains("offset="), "{line}");
    // The frames before the damage are served; new events are stored beside them.
    let kept = counted(&restarted, "dam").await;
    assert!(kept > 0 && kept < 200, "{kept} kept");
    let more: Vec<Value> = (0..10)
        .map(|i| {
            json!({"ts": now + i, "consumer": "dam", "method": "GET", "path": "/new",
            "status": 201, "latency_ms": 1.0})
        })
        .collect();
    assert_eq!(post_ndjson(&restarted, &more).await.0, 202);
    assert_eq!(wait_counted(&restarted, "dam", kept + 10).await, kept + 10);
    let (status, body) = restarted
        .admin(Method::GET, "/v1/consumers/dam/events?limit=5", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["events"][0]["path"], "/new", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_a_large_history_answers_the_same() {
    let up = start_upstream().await;
    let mut server = Server::start(up.addr, "").await;
    let now = clientele_core::time::now_ms();
    let day = 86_400_000i64;
    // 100,000 events over 14 days from 500 consumers, in batches under the test's body limit.
    for b in 0..400i64 {
        let lines: Vec<Value> = (0..250i64)
            .map(|i| {
                let n = b * 250 + i;
                json!({"ts": now - 14 * day + n * (14 * day / 100_000), "consumer": format!("h{}", n % 500),
                    "method": "GET", "path": format!("/r{}/{}", n % 20, n), "status": if n % 50 == 0 { 500 } else { 200 },
                    "latency_ms": 1.0 + (n % 40) as f64})
            })
            .collect();
        assert_eq!(post_ndjson(&server, &lines).await.0, 202);
    }
    let q = format!("/v1/stats/consumers?from={}&to={}", now - 15 * day, now + 1);
    let (_, before) = server.admin(Method::GET, &q, None).await;
    assert!(server.terminate().success());
    let dir = restart(&mut server);
    let config = dir.path().join("clientele.toml");
    let started = Instant::now();
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    println!(
        "restart over 100,000 events: serving after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let (_, after) = restarted.admin(Method::GET, &q, None).await;
    assert_eq!(before["consumers"], after["consumers"]);
    let total: u64 = after["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100_000);
}

/// Mounts a small tmpfs, or says why the test cannot run here.
fn small_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED a_full_disk_drops_and_counts_then_recovers: mounting a tmpfs is not permitted here (needs root)"
        );
    }
    ok
}

/// Fills the file system holding `path` (returns the filler file).
fn fill(path: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_and_counts_then_recovers() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("data");
    if !small_tmpfs(&mount, "24m") {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let mut server = Server::start_in(dir, up.addr, "event_queue = 4096").await;
    let (_, key) = server.consumer_with_key("full", None).await;
    let hit = |n: usize| {
        let key = key.clone();
        let url = server.gw("/pets/1");
        async move {
            let client = client();
            let mut ok = 0;
            for _ in 0..n {
                let req = Request::get(&url)
                    .header("x-api-key", &key)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                ok += usize::from(resp.status() == 200);
                let _ = resp.into_body().collect().await;
            }
            ok
        }
    };
    assert_eq!(hit(50).await, 50);
    assert_eq!(wait_counted(&server, "full", 50).await, 50);

    let filler = fill(&mount);
    // The gateway keeps serving while no event can be stored.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(hit(50).await, 50, "the gateway serves on a full disk");
    }
    let (_, status) = server.admin(Method::GET, "/v1/status", None).await;
    let failed = status["pipeline"]["store_errors"]
        .as_u64()
        .or_else(|| status["events_store_errors"].as_u64())
        .unwrap_or(0);
    assert!(failed > 0, "store errors are counted: {status}");
    let logged = server
        .stderr()
        .lines()
        .filter(|l| l.contains("could not store events"))
        .count();
    assert!(
        logged <= 2,
        "{logged} error lines in 3 s: logged once per interval"
    );

    // Space returns: events are stored again, and what is on disk is whole.
    std::fs::remove_file(&filler).unwrap();
    let before = counted(&server, "full").await;
    assert_eq!(hit(50).await, 50);
    assert_eq!(
        wait_counted(&server, "full", before + 50).await,
        before + 50
    );
    assert!(server.terminate().success());
    let dir = restart(&mut server);
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    assert!(
        !restarted.stderr().contains("fails its checksum"),
        "{}",
        restarted.stderr()
    );
    assert_eq!(counted(&restarted, "full").await, before + 50);
}

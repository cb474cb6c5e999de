//! `clientele import --follow`: a growing nginx log, rotated the two ways logrotate does it,
//! with the follower killed and restarted, counts every line exactly once.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::support::*;

fn append(path: &Path, from: i64, count: i64, base_ts: i64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in from..from + count {
        let line = json!({"time_iso8601": clientele_core::time::format_ts(base_ts + i * 1000), "remote_addr": "203.0.113.7",
            "request": format!("GET /pets/{i} HTTP/1.1"), "status": "200", "request_time": "0.012", "http_x_consumer_id": "tailed"});
        writeln!(f, "{line}").unwrap();
    }
}

fn follower(server: &Server, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args([
            "import",
            "--follow",
            "access.log",
            "--batch",
            "7",
            "--poll-ms",
            "50",
            "--json",
        ])
        .current_dir(dir)
        .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
        .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the consumer has exactly `n` requests, then checks it stays there.
async fn expect_requests(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let count = || async {
        let (_, stats) = server
            .admin(Method::GET, "/v1/stats/consumers/tailed", None)
            .await;
        stats["requests"].as_u64().unwrap_or(0)
    };
    loop {
        let got = count().await;
        assert!(
            got <= n,
            "counted {got} requests, more than the {n} lines written"
        );
        if got == n {
            break;
        }
        assert!(Instant::now() < deadline, "only {got} of {n} lines arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing arrives twice later either.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count().await, n);
}

fn stop(mut child: Child) {
    let _ = child.kill(); // SIGKILL: no chance to save anything on the way out
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_counts_each_line_once_across_rotations_and_restarts() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let base = clientele_core::time::now_ms() - 3_600_000;

    append(&log, 0, 100, base);
    let child = follower(&server, dir.path());
    expect_requests(&server, 100).await;
    assert!(dir.path().join(".access.log.clientele-follow").exists());

    // logrotate `create`: rename, the writer appends to the old file until it reopens, new file.
    std::fs::rename(&log, &rotated).unwrap();
    append(&rotated, 100, 20, base);
    append(&log, 120, 50, base);
    expect_requests(&server, 170).await;

    // Killed; lines written while it is down are picked up from the saved offset.
    stop(child);
    append(&log, 170, 30, base);
    let child = follower(&server, dir.path());
    expect_requests(&server, 200).await;

    // logrotate `copytruncate`: copy, then truncate in place; the writer keeps its file.
    std::fs::copy(&log, &rotated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    append(&log, 200, 25, base);
    expect_requests(&server, 225).await;

    // Rotated by rename while the follower is down: the old file's tail is found by its inode.
    stop(child);
    std::fs::rename(&log, &rotated).unwrap();
    append(&rotated, 225, 10, base);
    append(&log, 235, 15, base);
    let child = follower(&server, dir.path());
    expect_requests(&server, 250).await;
    stop(child);
}

//! `append_events` throughput: 1M gateway-like events (5,000 consumers x 20 routes, ids that
//! grow with time) appended in the writer's batches of 8,192, for each event store backend.
//!
//! `cargo bench -p clientele-store --bench append` (add `-- 200000` for another count). It
//! reports; it never fails on a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use clientele_core::event::{Event, Outcome, event_id};
use clientele_store::{EventLog, EventStore, SqliteStore};

const BATCH: usize = 8192;

fn event(i: u64, ts_ms: i64) -> Event {
    let consumer = i % 5_000;
    let route = i % 20;
    Event {
        id: event_id(ts_ms),
        ts_ms,
        consumer: Some(format!("consumer-{consumer}")),
        key_id: Some(format!("key_{consumer}")),
        api: Some("shop".into()),
        method: "GET".into(),
        path: format!("/r{route}/{}", i % 997),
        route: format!("/r{route}/{{id}}"),
        status: if i % 50 == 0 { 500 } else { 200 },
        latency_ms: 3.0 + (i % 40) as f64,
        upstream_latency_ms: Some(2.5),
        request_bytes: 120,
        response_bytes: 900 + i % 300,
        client_ip: Some(format!("10.0.{}.{}", consumer / 250, consumer % 250)),
        user_agent: Some("bench/1.0".into()),
        session_id: None,
        end_user: None,
        trace_id: None,
        outcome: Outcome::Proxied,
        plan: Some("pro".into()),
        team: None,
        use_case: None,
        model: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
        close_code: None,
        call_hash: None,
        tokens_cached: None,
        tokens_cache_write: None,
        tokens_reasoning: None,
        tls_fp: None,
    }
}

fn batches(n: u64) -> Vec<Vec<Event>> {
    // 14 days of history ending now, in arrival order.
    let now = clientele_core::time::now_ms();
    let span = 14 * 86_400_000i64;
    let all: Vec<Event> = (0..n)
        .map(|i| event(i, now - span + (i as i64 * span) / n as i64))
        .collect();
    all.chunks(BATCH).map(<[Event]>::to_vec).collect()
}

async fn run(name: &str, store: &dyn EventStore, n: u64) {
    let input = batches(n);
    let started = Instant::now();
    let mut stored = 0;
    for batch in input {
        stored += store.append_events(batch).await.unwrap().len();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(stored as u64, n);
    println!(
        "{name:<8} append_events {n} events in {secs:.2} s = {:.0} events/s",
        n as f64 / secs
    );
    let q = clientele_store::EventQuery {
        consumer: "consumer-42".into(),
        from_ms: 0,
        to_ms: i64::MAX,
        status: None,
        limit: 50,
    };
    let started = Instant::now();
    let got = store.recent_events(&q).await.unwrap();
    println!(
        "{name:<8} recent_events (one consumer, 50 newest) {:.2} ms ({} events)",
        started.elapsed().as_secs_f64() * 1000.0,
        got.len()
    );
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "clientele-bench-{tag}-{}",
        clientele_core::event::random_id128()
    ))
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = temp_dir("sqlite");
        let store = SqliteStore::open(&dir).unwrap();
        run("sqlite", &store, n).await;
        drop(store);
        let _ = std::fs::remove_dir_all(dir);

        let dir = temp_dir("log");
        let archive = SqliteStore::open(&dir).unwrap();
        let store = EventLog::open(&dir.join("events"), archive).unwrap();
        run("log", &store, n).await;
        drop(store);
        let started = Instant::now();
        let archive = SqliteStore::open(&dir).unwrap();
        let store = EventLog::open(&dir.join("events"), archive).unwrap();
        println!(
            "log      reopen (checks every frame) {:.2} s, {} events",
            started.elapsed().as_secs_f64(),
            store.event_count().await.unwrap()
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    });
}

//! Governance costs. Run with `cargo bench -p clientele-governance --bench features`.
//!
//! - feature extraction per event (`FeatureStore::observe`, what the pipeline thread pays),
//!   target <= 200 ns;
//! - memory per consumer-hour kept (the resident-memory growth of the store, so every byte it
//!   holds, not a size estimate), target <= 2 KiB;
//! - one evaluation (`judge::evaluate`) over 10,000 consumers with 16 days of history,
//!   target <= 2 s;
//! - side by side: this crate's 256-register sketch against `hyperloglogplus` (HLL++ at the
//!   same precision, 8) for insert cost and bytes held per sketch.
//!
//! Five runs each, median and worst. Without `--bench` (as `cargo test --all-targets` runs
//! it, unoptimised) it only checks that it works, on a small world.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use clientele_core::event::{Event, Outcome};
use clientele_governance::FeatureStore;
use clientele_governance::features::{DAY_MS, HOUR_MS};
use clientele_governance::hll::{Hll, hash_bytes};

/// Resident memory, bytes (the workspace forbids unsafe code, so no counting allocator: the
/// memory figures are RSS differences over thousands of consumers or sketches).
fn live() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`). The machine is
/// shared by several builds at once, so wall time measures the queue for a core as much as
/// the code; CPU time is what the pipeline thread pays.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// 2026-01-05 00:00 UTC.
const BASE_DAY: i64 = 20_458;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One consumer-hour of `n` calls: a mix of list and item calls from a few networks and
/// agents, some with end users.
fn hour_of(rng: &mut Rng, consumer: usize, hour: i64, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let item = rng.next() % 3 != 0;
            let id = rng.next() % 100_000;
            Event {
                id: String::new(),
                ts_ms: hour * HOUR_MS + (i as i64 * HOUR_MS / n as i64),
                consumer: Some(format!("consumer-{consumer}")),
                key_id: None,
                api: Some("shop".into()),
                method: "GET".into(),
                path: if item {
                    format!("/items/{id}")
                } else {
                    "/items".into()
                },
                route: if item {
                    "/items/{id}".into()
                } else {
                    "/items".into()
                },
                status: if rng.next() % 50 == 0 { 404 } else { 200 },
                latency_ms: 10.0,
                upstream_latency_ms: None,
                request_bytes: 0,
                response_bytes: 0,
                client_ip: Some(format!(
                    "10.{}.{}.{}",
                    consumer % 200,
                    rng.next() % 4,
                    rng.next() % 250
                )),
                user_agent: Some(format!("client-{}/2.{}", consumer % 50, rng.next() % 3)),
                session_id: Some(format!("s{}", rng.next() % 20)),
                end_user: (consumer % 4 == 0).then(|| format!("u{}", rng.next() % 500)),
                trace_id: None,
                outcome: Outcome::Proxied,
                plan: Some(["free", "pro", "enterprise"][consumer % 3].into()),
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
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A table the size of iptoasn.com's IPv4 one (about 400,000 ranges), in its format.
fn big_ip_table() -> clientele_governance::iptable::IpTable {
    let text: String = (0..400_000u32)
        .map(|i| {
            let start = std::net::Ipv4Addr::from(i * 10_000 + 1);
            let end = std::net::Ipv4Addr::from(i * 10_000 + 9_999);
            format!("{start}\t{end}\t{}\tUS\tAS{i}\n", 1 + i % 60_000)
        })
        .collect();
    clientele_governance::iptable::IpTable::parse(&text).expect("synthetic table")
}

fn extraction(runs: usize, consumers: usize) {
    extraction_with(runs, consumers, None);
    extraction_with(runs, consumers, Some(std::sync::Arc::new(big_ip_table())));
}

fn extraction_with(
    runs: usize,
    consumers: usize,
    table: Option<std::sync::Arc<clientele_governance::iptable::IpTable>>,
) {
    let mut rng = Rng(1);
    // Pre-built: only `observe` is timed.
    let batches: Vec<Vec<Event>> = (0..24)
        .map(|h| {
            (0..consumers)
                .flat_map(|c| hour_of(&mut rng, c, BASE_DAY * 24 + h, 8))
                .collect()
        })
        .collect();
    // A day before, not timed: the steady state of a running server, whose consumers' hour
    // buffers are already allocated.
    let warm: Vec<Vec<Event>> = (0..24)
        .map(|h| {
            (0..consumers)
                .flat_map(|c| hour_of(&mut rng, c, (BASE_DAY - 1) * 24 + h, 2))
                .collect()
        })
        .collect();
    let events: usize = batches.iter().map(Vec::len).sum();
    let mut per_event = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..runs {
        let store = match &table {
            Some(t) => FeatureStore::with_ip_table(t.clone()),
            None => FeatureStore::new(),
        };
        for b in &warm {
            store.observe(b);
        }
        let started = Instant::now();
        let cpu = cpu_ns();
        for b in &batches {
            for chunk in b.chunks(8192) {
                store.observe(chunk);
            }
        }
        per_event.push((cpu_ns() - cpu) as f64 / events as f64);
        wall.push(started.elapsed().as_nanos() as f64 / events as f64);
    }
    let worst = per_event.iter().copied().fold(0.0, f64::max);
    println!(
        "extraction{}: {events} events over {consumers} consumers: median {:.0} CPU-ns/event, worst {worst:.0} (wall {:.0} ns) (target <= 200)",
        if table.is_some() {
            " with a 400,000-range ip_table"
        } else {
            ""
        },
        median(&mut per_event),
        median(&mut wall)
    );
}

fn memory(consumers: usize) {
    let before = live();
    let store = FeatureStore::new();
    let mut rng = Rng(2);
    // Two days of every hour: the store keeps 48 hours, two open days and sealed days.
    for h in 0..48 {
        let batch: Vec<Event> = (0..consumers)
            .flat_map(|c| hour_of(&mut rng, c, BASE_DAY * 24 + h, 20))
            .collect();
        store.observe(&batch);
    }
    let held = live().saturating_sub(before);
    let (_, counted) = store.memory();
    let hours = store.consumer_hours();
    println!(
        "memory: {consumers} consumers, {hours} consumer-hours kept: RSS +{held} bytes = {:.0} bytes per consumer-hour ({:.1} KiB per consumer); the store's own count {:.0} bytes per consumer-hour (target <= 2048)",
        held as f64 / hours as f64,
        held as f64 / consumers as f64 / 1024.0,
        counted as f64 / hours as f64,
    );
    drop(store);
}

fn evaluation(runs: usize, consumers: usize) {
    let store = FeatureStore::new();
    let mut rng = Rng(3);
    let started = Instant::now();
    // 16 days, 4 calls in each of 24 hours per consumer-day.
    for d in 0..16 {
        for h in 0..24 {
            let batch: Vec<Event> = (0..consumers)
                .flat_map(|c| hour_of(&mut rng, c, (BASE_DAY + d) * 24 + h, 4))
                .collect();
            store.observe(&batch);
        }
    }
    println!(
        "evaluation world: {consumers} consumers x 16 days built in {:.1?}",
        started.elapsed()
    );
    let now = (BASE_DAY + 16) * DAY_MS - 1;
    let plans = BTreeMap::new();
    for (label, lookback) in [
        ("periodic (3 h)", 3 * HOUR_MS),
        ("evaluate (24 h)", 24 * HOUR_MS),
    ] {
        let mut times = Vec::new();
        let mut wall = Vec::new();
        let mut found = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let cpu = cpu_ns();
            let judged = clientele_governance::judge::evaluate(&store, now, lookback, &[], &plans);
            times.push((cpu_ns() - cpu) as f64 / 1e6);
            wall.push(t.elapsed().as_secs_f64() * 1000.0);
            found = judged.findings.len();
        }
        let worst = times.iter().copied().fold(0.0, f64::max);
        println!(
            "evaluation {label}: {consumers} consumers: median {:.0} CPU-ms, worst {worst:.0} (wall {:.0} ms), {found} findings (target <= 2000 ms)",
            median(&mut times),
            median(&mut wall)
        );
    }
}

fn peer(runs: usize) {
    use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
    let keys: Vec<String> = (0..200_000)
        .map(|i| format!("10.{}.{}.0", i / 250, i % 250))
        .collect();
    let mut ours_ns = Vec::new();
    let mut peer_ns = Vec::new();
    for _ in 0..runs {
        let mut h = Hll::<256>::default();
        // Long enough (10M inserts) for the scheduler's CPU-time accounting to be exact.
        let t = cpu_ns();
        for _ in 0..50 {
            for k in &keys {
                h.insert(hash_bytes(k.as_bytes()));
            }
        }
        ours_ns.push((cpu_ns() - t) as f64 / (50 * keys.len()) as f64);
        std::hint::black_box(h.estimate());
        let mut p: HyperLogLogPlus<str, _> =
            HyperLogLogPlus::new(8, std::collections::hash_map::RandomState::new()).unwrap();
        let t = cpu_ns();
        for _ in 0..50 {
            for k in &keys {
                p.insert(k.as_str());
            }
        }
        peer_ns.push((cpu_ns() - t) as f64 / (50 * keys.len()) as f64);
        std::hint::black_box(p.count());
    }
    // Bytes held per sketch after 10 and after 1,000 distinct items, over 5,000 sketches.
    let size = |n: usize| {
        const SKETCHES: usize = 5_000;
        let before = live();
        let ours: Vec<Hll<256>> = (0..SKETCHES)
            .map(|s| {
                let mut h = Hll::<256>::default();
                for k in keys.iter().skip(s).take(n) {
                    h.insert(hash_bytes(k.as_bytes()));
                }
                h
            })
            .collect();
        let a = live().saturating_sub(before) / SKETCHES;
        let before = live();
        let peers: Vec<HyperLogLogPlus<str, _>> = (0..SKETCHES)
            .map(|s| {
                let mut p = HyperLogLogPlus::new(8, std::collections::hash_map::RandomState::new())
                    .unwrap();
                for k in keys.iter().skip(s).take(n) {
                    p.insert(k.as_str());
                }
                let _ = p.count();
                p
            })
            .collect();
        let b = live().saturating_sub(before) / SKETCHES;
        std::hint::black_box((ours.len(), peers.len()));
        (a, b)
    };
    let (o10, p10) = size(10);
    let (o1k, p1k) = size(1000);
    println!(
        "sketch insert (CPU time): ours median {:.1} ns, hyperloglogplus (p=8) median {:.1} ns ({:.2}x)",
        median(&mut ours_ns),
        median(&mut peer_ns),
        median(&mut peer_ns) / median(&mut ours_ns)
    );
    println!(
        "sketch bytes: ours {o10} B (10 items) / {o1k} B (1,000 items); hyperloglogplus {p10} B / {p1k} B"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let (runs, mut consumers) = if full { (5, 10_000) } else { (1, 50) };
    // GOVERNANCE_BENCH_CONSUMERS=100 runs a world that fits in the caches.
    if let Some(n) = std::env::var("GOVERNANCE_BENCH_CONSUMERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        consumers = n;
    }
    // `-- memory` (or extraction, evaluation, peer) runs one part. Memory goes first, in a
    // fresh process, so that its RSS growth is not hidden by memory freed earlier.
    let parts: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.contains(&p);
    if want("memory") {
        memory(consumers);
    }
    if want("peer") {
        peer(runs);
    }
    if want("extraction") {
        extraction(runs, consumers);
    }
    if want("evaluation") {
        evaluation(runs, consumers);
    }
}

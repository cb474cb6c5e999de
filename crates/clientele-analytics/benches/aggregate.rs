//! In-process aggregation throughput: events per second per core folded into minute, hour and
//! day rollups. Run with `cargo bench -p clientele-analytics --bench aggregate`.
//!
//! The workload: 2,000 consumers, 20 routes, mixed statuses and long-tailed latencies, in time
//! order over 7 days, ingested in batches of 8,192 as the pipeline does. Prints the median of
//! five runs and the engine's size afterwards.

use std::time::Instant;

use clientele_analytics::{Engine, EventRef, Retention, Sample};

const FULL_EVENTS: usize = 2_000_000;
const CONSUMERS: usize = 2_000;
const ROUTES: usize = 20;
const SPAN_MS: i64 = 7 * 86_400_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo test --all-targets` runs this too, unoptimised and without `--bench`: then it only
    // checks that it works, on a small sample.
    let full = std::env::args().any(|a| a == "--bench");
    let events: usize = if full { FULL_EVENTS } else { 20_000 };
    let consumers: Vec<String> = (0..CONSUMERS).map(|i| format!("consumer-{i:04}")).collect();
    let routes: Vec<String> = (0..ROUTES)
        .map(|i| format!("/v1/resource{i}/{{id}}"))
        .collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // The last 7 days, so every tier is within its retention and every event is folded into
    // minutes, hours and days.
    let start_ts = clientele_core::time::now_ms() - SPAN_MS;
    let samples: Vec<(i64, usize, usize, u16, f64)> = (0..events)
        .map(|i| {
            let r = next();
            let status = match r % 100 {
                0..=1 => 500,
                2..=6 => 404,
                7 => 429,
                _ => 200,
            };
            // Long tail: mostly 5-50 ms, some seconds.
            let latency = 5.0 + (r >> 20) as f64 % 45.0 + if r % 97 == 0 { 2_000.0 } else { 0.0 };
            (
                start_ts + i as i64 * SPAN_MS / events as i64,
                (r >> 8) as usize % CONSUMERS,
                (r >> 32) as usize % ROUTES,
                status,
                latency,
            )
        })
        .collect();

    let mut rates = Vec::new();
    let mut last = None;
    for run in 0..5 {
        let rss_before = rss_kib();
        let engine = Engine::new(Retention {
            minute_ms: 30 * 86_400_000,
            ..Retention::default()
        });
        let t = Instant::now();
        for chunk in samples.chunks(8192) {
            engine.ingest(chunk.iter().map(|(ts, c, r, s, l)| EventRef {
                ts_ms: *ts,
                consumer: &consumers[*c],
                api: "bench",
                method: "GET",
                route: &routes[*r],
                sample: Sample {
                    status: *s,
                    latency_ms: *l,
                    request_bytes: 200,
                    response_bytes: 2_000,
                    ..Default::default()
                },
            }));
        }
        let secs = t.elapsed().as_secs_f64();
        let rate = events as f64 / secs;
        println!(
            "run {run}: {events} events in {secs:.3} s = {:.2} M events/s",
            rate / 1e6
        );
        rates.push(rate);
        if run == 0 {
            // Only the first run sees fresh memory; later runs reuse what the allocator kept.
            last = Some((engine.stats(), rss_kib().saturating_sub(rss_before)));
        }
        drop(engine);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median: {:.2} M events/s (one core, one thread)",
        rates[2] / 1e6
    );
    // Dense: 200 consumers, 5 routes, the last hour.
    let dense: Vec<(i64, usize, usize)> = (0..events)
        .map(|i| {
            let r = next();
            (
                clientele_core::time::now_ms() - 3_600_000 + (i as i64 * 3_600_000 / events as i64),
                (r >> 8) as usize % 200,
                (r >> 32) as usize % 5,
            )
        })
        .collect();
    let mut dense_rates = Vec::new();
    for _ in 0..5 {
        let engine = Engine::default();
        let t = Instant::now();
        for chunk in dense.chunks(8192) {
            engine.ingest(chunk.iter().map(|(ts, c, r)| EventRef {
                ts_ms: *ts,
                consumer: &consumers[*c],
                api: "bench",
                method: "GET",
                route: &routes[*r],
                sample: Sample {
                    status: 200,
                    latency_ms: 12.5 + (*ts % 50) as f64,
                    request_bytes: 200,
                    response_bytes: 2_000,
                    ..Default::default()
                },
            }));
        }
        dense_rates.push(events as f64 / t.elapsed().as_secs_f64());
    }
    dense_rates.sort_by(f64::total_cmp);
    println!(
        "dense (200 consumers x 5 routes, one hour): median {:.2} M events/s",
        dense_rates[2] / 1e6
    );
    if let Some((stats, rss)) = last {
        let rollups = stats.series_rollups + stats.consumer_rollups;
        println!(
            "engine after {events} events over 7 days: {} buckets, {} series rollups, {} consumer rollups; RSS +{} MiB = {:.0} bytes per rollup",
            stats.buckets,
            stats.series_rollups,
            stats.consumer_rollups,
            rss / 1024,
            rss as f64 * 1024.0 / rollups.max(1) as f64
        );
    }
}

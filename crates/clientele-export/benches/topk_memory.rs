//! Memory of the per-consumer series as the number of distinct consumers grows, against the
//! unbounded map a naive exporter would keep. Run: `cargo bench -p clientele-export`.
//! Under `cargo test` (no `--bench` argument) it runs a small sample only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clientele_export::topk::{ConsumerSeries, TopK};
use std::collections::HashMap;

/// Resident set size of this process, from /proc (Linux); 0 elsewhere.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if full {
        &[1_000, 10_000, 100_000, 1_000_000]
    } else {
        &[10_000]
    };
    let k = 100;
    println!(
        "consumers  events   topk_series  topk_approx_KiB  topk_rss_delta_KiB  naive_rss_delta_KiB"
    );
    for &n in sizes {
        let events = n * 3;
        let before = rss_bytes();
        let mut t = TopK::new(k);
        for i in 0..events {
            // A skewed workload: a few heavy consumers and a long tail, as real traffic is.
            let c = if i % 4 == 0 {
                format!("heavy{}", i % 40)
            } else {
                format!("c{}", (i * 7919) % n)
            };
            t.series_for(&c, 1).record(200, 5.0, 100, 1000);
        }
        let topk_delta = rss_bytes().saturating_sub(before);
        let series = t.series_count();
        let approx = t.approx_bytes();
        drop(t);
        let before = rss_bytes();
        let mut naive: HashMap<String, ConsumerSeries> = HashMap::new();
        for i in 0..events {
            let c = if i % 4 == 0 {
                format!("heavy{}", i % 40)
            } else {
                format!("c{}", (i * 7919) % n)
            };
            naive.entry(c).or_default().record(200, 5.0, 100, 1000);
        }
        let naive_delta = rss_bytes().saturating_sub(before);
        assert!(series <= k + 1, "{series} series for k = {k}");
        println!(
            "{n:>9}  {events:>7}  {series:>11}  {:>15}  {:>18}  {:>19}",
            approx / 1024,
            topk_delta / 1024,
            naive_delta / 1024
        );
        drop(naive);
    }
}

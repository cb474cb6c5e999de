//! The local limiter's cost per request and its memory per consumer, at 1, 10k and 1M
//! consumers. Run with `cargo bench -p clientele-core --bench limiter`.
//!
//! For each size it builds a key index of that many consumers (one key each, on a plan with a
//! rate limit and a daily quota, as the gateway holds them) and measures:
//! - `check`: one `LimitSlot::check` (GCRA cell + quota counter) on a random consumer's slot;
//! - `lookup+check`: the key lookup the gateway does anyway (HMAC + map probe) plus the check,
//!   which is the whole "identify and limit" step of a request;
//! - memory: resident-set growth per consumer for the slots alone (index built without limits,
//!   then with them), and for the whole index entry including the key.
//!
//! Medians of five runs; the 2-core machine is noisy, so read ratios, not digits.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use clientele_core::config::PlanConfig;
use clientele_core::keys::{KeyEntry, KeyHasher, KeyIndex, Lookup};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn plans() -> BTreeMap<String, PlanConfig> {
    BTreeMap::from([(
        "pro".to_string(),
        PlanConfig {
            // High enough that no check in the loop is refused: the allowed path is the
            // common one and the one to measure.
            rate_per_second: 1e9,
            burst: 1_000_000_000,
            quota_per_day: Some(u64::MAX >> 30),
            quota_per_month: None,
            budget_usd_per_day: None,
            budget_usd_per_month: None,
            tokens_per_day: None,
            tokens_per_month: None,
            budget_usd_per_session: None,
            tokens_per_session: None,
            routes: BTreeMap::new(),
            policy: None,
        },
    )])
}

fn entries(hasher: &KeyHasher, n: usize, plan: Option<&str>) -> (Vec<KeyEntry>, Vec<String>) {
    let mut keys = Vec::with_capacity(n);
    let entries = (0..n)
        .map(|i| {
            let key = format!("ck_bench_key_{i:010}_padding_to_forty3");
            let e = KeyEntry {
                key_id: format!("key_{i}").into(),
                hash: hasher.hash(&key),
                consumer: format!("consumer-{i:07}").into(),
                plan: plan.map(Into::into),
                team: None,
                use_case: None,
                expires_at_ms: None,
                revoked: false,
                limits: None,
                slot: None,
            };
            keys.push(key);
            e
        })
        .collect();
    (entries, keys)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full {
        &[1, 10_000, 1_000_000]
    } else {
        &[1, 1_000]
    };
    let iters: usize = if full { 2_000_000 } else { 10_000 };
    let hasher = KeyHasher::new([7; 32]);
    // The slot's own size is exact; the resident-set growth below also counts the maps and
    // temporaries of building the index, so it is an upper bound.
    println!(
        "LimitSlot: {} bytes + 16 for its Arc, one per consumer (shared by its keys)",
        std::mem::size_of::<clientele_core::limits::LimitSlot>()
    );
    println!(
        "| consumers | check ns (median) | lookup+check ns | RSS growth from limits, bytes/consumer | RSS of the key index, bytes/consumer |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for &n in sizes {
        // Memory: the index without limits, then the same index with them.
        let base = rss_kib();
        let plain = KeyIndex::with_plans(hasher.clone(), plans());
        plain.replace_all(entries(&hasher, n, None).0);
        let without = rss_kib();
        let index = KeyIndex::with_plans(hasher.clone(), plans());
        let (with_limits, keys) = entries(&hasher, n, Some("pro"));
        index.replace_all(with_limits);
        let with = rss_kib();
        drop(plain);
        let slot_bytes = (with.saturating_sub(without) as f64 * 1024.0) / n as f64;
        let index_bytes = (without.saturating_sub(base) as f64 * 1024.0) / n as f64;

        let slots: Vec<_> = index.slots().into_values().collect();
        assert_eq!(slots.len(), n);
        let now = clientele_core::time::now_ms();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut check_ns = Vec::new();
        let mut full_ns = Vec::new();
        for _ in 0..5 {
            let picks: Vec<usize> = (0..iters).map(|_| (next() % n as u64) as usize).collect();
            let t = Instant::now();
            for &i in &picks {
                black_box(slots[i].check("GET", "/v1/things", now));
            }
            check_ns.push(t.elapsed().as_nanos() as f64 / iters as f64);
            let t = Instant::now();
            for &i in &picks {
                if let Lookup::Valid(e) = index.lookup(&keys[i], now) {
                    if let Some(slot) = &e.slot {
                        black_box(slot.check("GET", "/v1/things", now));
                    }
                }
            }
            full_ns.push(t.elapsed().as_nanos() as f64 / iters as f64);
        }
        println!(
            "| {n} | {:.0} | {:.0} | {} | {} |",
            median(check_ns),
            median(full_ns),
            if n >= 10_000 {
                format!("{slot_bytes:.0}")
            } else {
                "(too few to measure)".into()
            },
            if n >= 10_000 {
                format!("{index_bytes:.0}")
            } else {
                "(too few to measure)".into()
            },
        );
    }
    budgets(iters);
}

/// The budget path: `check_with` reserving against all four budgets, then `settle`, on one
/// slot, alone and with two threads contending for it (every request of one consumer on
/// one counter: the worst case for the compare-and-swap loop).
// The plan and policy are built right above: a bench that cannot build them should stop.
#[allow(clippy::expect_used)]
fn budgets(iters: usize) {
    use clientele_core::limits::{BudgetCharge, LimitPolicy, LimitSlot};
    let mut plan = plans().remove("pro").expect("the bench plan");
    plan.tokens_per_day = Some(1 << 39);
    plan.tokens_per_month = Some(1 << 39);
    plan.budget_usd_per_day = Some(500_000.0);
    plan.budget_usd_per_month = Some(500_000.0);
    let without =
        LimitSlot::new(LimitPolicy::resolve(Some(&plans()["pro"]), None).expect("a policy"));
    let slot = std::sync::Arc::new(LimitSlot::new(
        LimitPolicy::resolve(Some(&plan), None).expect("a policy"),
    ));
    let now = clientele_core::time::now_ms();
    let charge = BudgetCharge {
        tokens: 1,
        micro_usd: 1,
    };
    let actual = BudgetCharge {
        tokens: 0,
        micro_usd: 0,
    };
    let mut plain = Vec::new();
    let mut alone = Vec::new();
    let mut contended = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(without.check("POST", "/v1/chat/completions", now));
        }
        plain.push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        for _ in 0..iters {
            let (d, r) = slot.check_with("POST", "/v1/chat/completions", now, charge);
            black_box(d);
            if let Some(r) = r {
                slot.settle(&r, actual);
            }
        }
        alone.push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let slot = slot.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters / 2 {
                        let (d, r) = slot.check_with("POST", "/v1/chat/completions", now, charge);
                        black_box(d);
                        if let Some(r) = r {
                            slot.settle(&r, actual);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            let _ = th.join();
        }
        contended.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    println!();
    println!("| budget path (4 budgets, one slot) | ns per request (median) |");
    println!("|---|---:|");
    println!(
        "| check, no budgets (rate + daily quota) | {:.0} |",
        median(plain)
    );
    println!("| check_with + settle, 1 thread | {:.0} |", median(alone));
    println!(
        "| check_with + settle, 2 threads on the same slot (wall time / requests) | {:.0} |",
        median(contended)
    );
}

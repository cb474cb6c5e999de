//! The labelled scenario: five weeks of seasonal traffic from hundreds of consumers (office-hours
//! integrations, round-the-clock ones, nightly batches, tiny consumers, bursty AI agents, young
//! consumers), with behaviours injected into some of them in the last week. Every detector runs
//! once over that week, as `POST /v1/findings/evaluate` does after a backfill.
//!
//! A finding is a true positive when an injected behaviour of its kind, consumer and route
//! overlaps it in time; anything else is a false positive. Target: every behaviour found, and at
//! most one false positive per 1,000 consumer-days judged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod naive;
mod synth;

use clientele_analytics::{DAY_MS, HOUR_MS};
use clientele_core::finding::{Finding, FindingKind};
use clientele_detect::{EvalContext, Registry};

/// A Monday, 12:30 UTC: the evaluation time, fixed so the world is the same on every run.
const NOW_MS: i64 = 1_794_227_400_000;
const SEED: u64 = 0x00C1_1E47_E1E5;

fn matches(f: &Finding, l: &synth::Label) -> bool {
    f.kind == l.kind
        && f.consumer == l.consumer
        && (l.route.is_none() || f.route.is_none() || f.route == l.route)
        && f.first_seen_ms < l.to_ms + HOUR_MS
        && f.last_seen_ms > l.from_ms - HOUR_MS
}

#[test]
fn labelled_scenario_recall_and_false_positives() {
    // 2026-11-09 is a Monday; check the constant says what the comment says.
    assert_eq!(
        clientele_core::time::format_ts(NOW_MS),
        "2026-11-09T12:30:00.000Z"
    );
    let consumers = 400;
    let started = std::time::Instant::now();
    // SCENARIO_SEED explores other worlds; the committed assertion is on SEED.
    let seed = std::env::var("SCENARIO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let world = synth::build(consumers, seed, NOW_MS, 28, 7);
    let built = started.elapsed();
    let plans = Default::default();
    let ctx = EvalContext::new(
        &world.engine,
        world.now_ms,
        world.judged_days * DAY_MS,
        &world.consumers,
        &plans,
    );
    let started = std::time::Instant::now();
    let (findings, timings) = Registry::standard().evaluate(&ctx);
    let evaluated = started.elapsed();

    let mut found = vec![false; world.labels.len()];
    let mut false_positives = Vec::new();
    for f in &findings {
        let mut hit = false;
        for (i, l) in world.labels.iter().enumerate() {
            if matches(f, l) {
                found[i] = true;
                hit = true;
            }
        }
        if !hit {
            false_positives.push(f);
        }
    }
    let consumer_days = (world.consumers.len() as i64 * world.judged_days) as f64;
    let fp_per_1000 = false_positives.len() as f64 / consumer_days * 1000.0;
    let recall = found.iter().filter(|x| **x).count() as f64 / found.len() as f64;
    println!(
        "scenario: {consumers} consumers ({} agents), {} series rollups, built in {built:.1?}, evaluated in {evaluated:.1?}",
        world.agents.len(),
        world.series_rollups
    );
    for t in &timings {
        println!(
            "  {:<14} {:>8.1} ms  {} findings",
            t.detector, t.elapsed_ms, t.findings
        );
    }
    for (l, ok) in world.labels.iter().zip(&found) {
        println!(
            "  [{}] {:<19} {:<7} {:<20} {}",
            if *ok { "found" } else { "MISSED" },
            l.kind.as_str(),
            l.consumer.as_deref().unwrap_or("(api)"),
            l.route.as_deref().unwrap_or(""),
            l.note
        );
    }
    for (l, ok) in world.labels.iter().zip(&found) {
        if !*ok {
            for f in findings.iter().filter(|f| f.consumer == l.consumer) {
                println!(
                    "  about the missed {:?}: {} {}",
                    l.consumer, f.kind, f.summary
                );
            }
        }
    }
    for f in &false_positives {
        let shape = f
            .consumer
            .as_deref()
            .and_then(|c| world.consumers.iter().find(|x| x.id == c))
            .and_then(|c| c.use_case.clone())
            .unwrap_or_default();
        println!(
            "  false positive: {} {:?} ({shape}) {:?}: {}\n    evidence: {}",
            f.kind, f.consumer, f.route, f.summary, f.evidence
        );
        println!(
            "    seen hours {}..{}",
            f.first_seen_ms / HOUR_MS,
            f.last_seen_ms / HOUR_MS
        );
        for l in world.labels.iter().filter(|l| l.consumer == f.consumer) {
            println!(
                "    its label: {} {:?} {} (hours {}..{})",
                l.kind,
                l.route,
                l.note,
                l.from_ms / HOUR_MS,
                l.to_ms / HOUR_MS
            );
        }
    }
    println!(
        "recall {:.0}% ({}/{}), false positives {} over {consumer_days} consumer-days = {fp_per_1000:.2} per 1,000",
        recall * 100.0,
        found.iter().filter(|x| **x).count(),
        found.len(),
        false_positives.len()
    );
    for kind in [
        FindingKind::VolumeSpike,
        FindingKind::VolumeDrop,
        FindingKind::NewEndpoint,
        FindingKind::ErrorSpike,
        FindingKind::IntegrationErrors,
        FindingKind::ApiErrors,
        FindingKind::LatencyRegression,
    ] {
        if let Some(f) = findings.iter().find(|f| f.kind == kind) {
            println!("  e.g. {kind}: {}", f.summary);
        }
    }
    for f in findings
        .iter()
        .filter(|f| f.kind == FindingKind::LatencyRegression && f.consumer.is_none())
    {
        println!("  API-wide latency: {:?}: {}", f.route, f.summary);
    }
    // The naive detector on the same world, side by side.
    let naive = naive::detect(&world, seed);
    let (naive_recall, naive_fp) = score(&naive, &world.labels, consumer_days);
    let quiet: Vec<usize> = (0..world.labels.len())
        .filter(|i| world.labels[*i].note.starts_with("quiet"))
        .collect();
    let naive_quiet = quiet
        .iter()
        .filter(|i| naive.iter().any(|f| matches(f, &world.labels[**i])))
        .count();
    let ours_quiet = quiet.iter().filter(|i| found[**i]).count();
    println!(
        "side by side (seed {seed:#x}): ours recall {:.0}% (quiet {ours_quiet}/{}), {fp_per_1000:.2} false positives per 1,000 consumer-days; naive (last 15 min vs 7-day mean) recall {:.0}% (quiet {naive_quiet}/{}), {naive_fp:.2} per 1,000",
        recall * 100.0,
        quiet.len(),
        naive_recall * 100.0,
        quiet.len()
    );
    assert!(
        world.labels.len() >= 25,
        "the scenario injects enough behaviours"
    );
    assert_eq!(recall, 1.0, "every injected behaviour must be found");
    assert!(
        fp_per_1000 <= 1.0,
        "{fp_per_1000} false positives per 1,000 consumer-days"
    );
    // Bursty agents with a full history that behave like themselves are never flagged (young
    // ones are judged against a short record, and count in the false-positive budget above).
    let oldest = world
        .consumers
        .iter()
        .map(|c| c.created_at_ms)
        .min()
        .unwrap();
    for a in &world.agents {
        let labelled = world
            .labels
            .iter()
            .any(|l| l.consumer.as_deref() == Some(a));
        let full_history = world
            .consumers
            .iter()
            .any(|c| &c.id == a && c.created_at_ms == oldest);
        if !labelled && full_history {
            assert!(
                !findings.iter().any(|f| f.consumer.as_deref() == Some(a)),
                "agent {a} was flagged for its normal bursts"
            );
        }
    }
    // The API-wide incidents are not blamed on any one integration of their route.
    for incident in world
        .labels
        .iter()
        .filter(|l| l.kind == FindingKind::ApiErrors)
    {
        let blamed: Vec<&Finding> = findings
            .iter()
            .filter(|f| {
                matches!(
                    f.kind,
                    FindingKind::IntegrationErrors | FindingKind::ErrorSpike
                ) && f.route == incident.route
                    && f.first_seen_ms < incident.to_ms
                    && f.last_seen_ms > incident.from_ms
                    && !world.labels.iter().any(|l| matches(f, l))
            })
            .collect();
        assert!(blamed.is_empty(), "{}: {blamed:?}", incident.note);
    }
}

/// Recall and false positives per 1,000 consumer-days of a list of findings.
fn score(findings: &[Finding], labels: &[synth::Label], consumer_days: f64) -> (f64, f64) {
    let found = labels
        .iter()
        .filter(|l| findings.iter().any(|f| matches(f, l)))
        .count();
    let fps = findings
        .iter()
        .filter(|f| !labels.iter().any(|l| matches(f, l)))
        .count();
    (
        found as f64 / labels.len() as f64,
        fps as f64 / consumer_days * 1000.0,
    )
}

/// Other worlds than the committed one: the same targets should hold on them.
#[test]
fn other_seeds_meet_the_same_targets() {
    for seed in [SEED ^ 0x5A00, SEED ^ 0xA5] {
        let world = synth::build(250, seed, NOW_MS, 28, 7);
        let plans = Default::default();
        let ctx = EvalContext::new(
            &world.engine,
            world.now_ms,
            world.judged_days * DAY_MS,
            &world.consumers,
            &plans,
        );
        let (findings, _) = Registry::standard().evaluate(&ctx);
        let consumer_days = (world.consumers.len() as i64 * world.judged_days) as f64;
        let (recall, fp) = score(&findings, &world.labels, consumer_days);
        let (naive_recall, naive_fp) =
            score(&naive::detect(&world, seed), &world.labels, consumer_days);
        println!(
            "seed {seed:#x}: ours recall {:.0}%, {fp:.2} FP per 1,000 consumer-days; naive recall {:.0}%, {naive_fp:.2}",
            recall * 100.0,
            naive_recall * 100.0
        );
        for l in world
            .labels
            .iter()
            .filter(|l| !findings.iter().any(|f| matches(f, l)))
        {
            println!(
                "  MISSED {} {:?} {:?} {} (hours {}..{})",
                l.kind,
                l.consumer,
                l.route,
                l.note,
                l.from_ms / HOUR_MS,
                l.to_ms / HOUR_MS
            );
            for f in findings.iter().filter(|f| f.consumer == l.consumer) {
                println!("    about it: {} {:?} {}", f.kind, f.route, f.summary);
            }
        }
        for f in findings
            .iter()
            .filter(|f| !world.labels.iter().any(|l| matches(f, l)))
        {
            println!(
                "  false positive: {} {:?}: {}",
                f.kind, f.consumer, f.summary
            );
        }
        assert_eq!(
            recall, 1.0,
            "seed {seed:#x}: every injected behaviour must be found"
        );
        assert!(
            fp <= 1.0,
            "seed {seed:#x}: {fp} false positives per 1,000 consumer-days"
        );
    }
}

/// Event time: evaluating every hour as the server would have (3-hour lookback) finds the same
/// conditions as one evaluation over the whole day afterwards, as after a backfill. (A batch
/// spanning two days takes every slot's baseline before its first day, `history_days`, where a
/// live evaluation takes it before the slot's own day: on this world they agree, but a
/// condition judged on a borderline baseline could differ.)
#[test]
fn live_hourly_evaluations_agree_with_one_evaluation_after_a_backfill() {
    // A Wednesday, so the two judged days are weekdays with behaviours injected.
    let now = NOW_MS + 2 * DAY_MS;
    let world = synth::build(150, SEED ^ 0x5EED, now, 28, 2);
    let plans = Default::default();
    let registry = Registry::standard();
    let day = DAY_MS;
    let batch_ctx = EvalContext::new(&world.engine, now, day, &world.consumers, &plans);
    let (batch, _) = registry.evaluate(&batch_ctx);
    let key = |f: &Finding| f.dedup_key();
    let mut live: Vec<Finding> = Vec::new();
    // Hourly over the same day, on the hour (the world holds every event up to now, so an
    // earlier evaluation must not see a partly elapsed hour that is in fact complete), then at
    // now itself, whose hour is partial in the data too.
    let mut t = now - day + 3 * HOUR_MS - now.rem_euclid(HOUR_MS);
    while t <= now {
        let ctx = EvalContext::new(&world.engine, t, 3 * HOUR_MS, &world.consumers, &plans);
        live.extend(registry.evaluate(&ctx).0);
        t += HOUR_MS;
    }
    let ctx = EvalContext::new(&world.engine, now, 3 * HOUR_MS, &world.consumers, &plans);
    live.extend(registry.evaluate(&ctx).0);
    let batch_window_start = now - day;
    let live_keys: std::collections::BTreeSet<String> = live
        .iter()
        .filter(|f| f.last_seen_ms > batch_window_start)
        .map(key)
        .collect();
    let batch_keys: std::collections::BTreeSet<String> = batch.iter().map(key).collect();
    println!(
        "batch: {} findings, live: {} distinct conditions",
        batch_keys.len(),
        live_keys.len()
    );
    assert!(!batch_keys.is_empty(), "the world has behaviours to find");
    let only_batch: Vec<_> = batch_keys.difference(&live_keys).collect();
    let only_live: Vec<_> = live_keys.difference(&batch_keys).collect();
    assert!(
        only_batch.is_empty() && only_live.is_empty(),
        "live and after-the-fact evaluations found different conditions: only after the fact {only_batch:?}, only live {only_live:?}"
    );
}

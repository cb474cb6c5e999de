#![allow(clippy::unwrap_used)]

use super::*;
use clientele_analytics::{Engine, EventRef, Retention, Sample};

#[test]
fn months_parse_with_their_previous_month() {
    let m = portfolio::Month::parse("2026-01").unwrap();
    assert_eq!(m.label(), "2026-01");
    assert_eq!(
        clientele_core::time::format_ts(m.prev_start_ms),
        "2025-12-01T00:00:00.000Z"
    );
    assert_eq!(
        clientele_core::time::format_ts(m.end_ms),
        "2026-02-01T00:00:00.000Z"
    );
    for bad in ["2026-13", "26-01", "2026/01", "", "2026-1"] {
        assert!(portfolio::Month::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn share_at_most_counts_by_rank() {
    let engine = Engine::new(Retention {
        minute_ms: i64::MAX / 4,
        hour_ms: i64::MAX / 4,
        day_ms: i64::MAX / 4,
    });
    let events: Vec<EventRef<'static>> = (0..100)
        .map(|i| EventRef {
            ts_ms: 1_700_000_000_000,
            consumer: "a",
            api: "x",
            method: "GET",
            route: "/",
            sample: Sample {
                status: 200,
                latency_ms: f64::from(i + 1) * 10.0,
                ..Default::default()
            },
        })
        .collect();
    engine.ingest(events);
    let rows = engine.consumer_totals(&clientele_analytics::Query {
        from_ms: 1_699_000_000_000,
        to_ms: 1_701_000_000_000,
        ..Default::default()
    });
    let r = &rows[0].rollup;
    // 10..=1000 ms: 50 at most 500 ms, all at most 2000 ms; within the sketch's 1%.
    assert!((share_at_most(r, 500.0) - 0.5).abs() <= 0.02);
    assert_eq!(share_at_most(r, 5000.0), 1.0);
    assert_eq!(share_at_most(r, 1.0), 0.0);
    // Apdex: 50 satisfied, 50 tolerating (501..=1000 <= 2000) => 0.75.
    let s = satisfaction(r, 100, 500.0).unwrap();
    assert!((s - 0.75).abs() <= 0.02, "{s}");
    // Half the requests failed (counted in requests, absent from `ok`): halves it.
    assert!((satisfaction(r, 200, 500.0).unwrap() - 0.375).abs() <= 0.02);
}

#[test]
fn slo_proposals_are_never_tighter_than_observed() {
    assert_eq!(sla::proposed_availability(0.99995), 0.9999);
    assert_eq!(sla::proposed_availability(0.9991), 0.999);
    assert_eq!(sla::proposed_availability(0.999), 0.999);
    assert_eq!(sla::proposed_availability(0.3), 0.0);
    assert_eq!(sla::proposed_latency(180.0), 200.0);
    assert_eq!(sla::proposed_latency(200.0), 200.0);
    assert_eq!(sla::proposed_latency(7200.0), 8000.0);
}

#[test]
fn plans_rank_by_what_they_allow() {
    let plan = |rate: f64, q: Option<u64>| clientele_core::config::PlanConfig {
        rate_per_second: rate,
        burst: 1,
        quota_per_day: q,
        quota_per_month: None,
        routes: Default::default(),
        policy: None,
    };
    let plans = std::collections::BTreeMap::from([
        ("enterprise".to_string(), plan(100.0, None)),
        ("free".to_string(), plan(5.0, Some(1000))),
        ("pro".to_string(), plan(5.0, None)),
    ]);
    let order: Vec<&str> = plans_by_value(&plans).into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, ["free", "pro", "enterprise"]);
}

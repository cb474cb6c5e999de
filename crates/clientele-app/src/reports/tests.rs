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
        budget_usd_per_day: None,
        budget_usd_per_month: None,
        tokens_per_day: None,
        tokens_per_month: None,
        budget_usd_per_session: None,
        tokens_per_session: None,
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

#[test]
fn sunset_follows_the_slowest_callers_pace() {
    use clientele_analytics::DAY_MS;
    use clientele_contract::{DeprecatedCaller, DeprecatedOperation};
    let engine = Engine::new(Retention {
        minute_ms: i64::MAX / 4,
        hour_ms: i64::MAX / 4,
        day_ms: i64::MAX / 4,
    });
    let today = 1_700_000_000_000 / DAY_MS * DAY_MS;
    let mut events = Vec::new();
    // fast: 50% -> 100% on the replacement; slow: 20% -> 30% (7 more weeks); stuck: 0% -> 0%.
    for (consumer, [old0, new0, old1, new1]) in [
        ("fast", [10u32, 10, 0, 20]),
        ("slow", [80, 20, 70, 30]),
        ("stuck", [50, 0, 50, 0]),
    ] {
        for (n, route, week) in [
            (old0, "/v1/pets", 0),
            (new0, "/v2/pets", 0),
            (old1, "/v1/pets", 1),
            (new1, "/v2/pets", 1),
        ] {
            for i in 0..n {
                events.push(EventRef {
                    ts_ms: today - (2 - week) * 7 * DAY_MS + i64::from(i) * 1000,
                    consumer,
                    api: "shop",
                    method: "GET",
                    route,
                    sample: Sample {
                        status: 200,
                        latency_ms: 10.0,
                        ..Default::default()
                    },
                });
            }
        }
    }
    engine.ingest(events);
    let caller = |c: &str| DeprecatedCaller {
        consumer: c.into(),
        calls: 1,
        last_call: String::new(),
        last_call_ms: 0,
        replacement_calls: 0,
        migration_progress: None,
    };
    let op = |callers: Vec<DeprecatedCaller>| DeprecatedOperation {
        api: "shop".into(),
        route: "GET /v1/pets".into(),
        operation_id: None,
        pointer: "#/paths/~1v1~1pets/get".into(),
        replaced_by: Some("GET /v2/pets".into()),
        source: "spec",
        sunset: None,
        consumers: callers,
    };
    // As of the last day of the second week: the weeks are the 14 days ending with it.
    let at = today - 1;
    let r = deprecation::deprecation(&engine, &[op(vec![caller("fast"), caller("slow")])], at);
    let item = &r.items[0];
    assert_eq!(
        item.consumers[0].projected_done.as_deref(),
        Some(&*clientele_core::time::format_ts(today))
    );
    // slow: 30% now, +10 points a week => 7 weeks, then two weeks' grace.
    let expected = today + 7 * 7 * DAY_MS + deprecation::GRACE_MS;
    assert_eq!(
        item.proposed_sunset,
        Some(clientele_core::time::format_ts(expected))
    );
    assert!(item.blocked_by.is_empty());
    let r = deprecation::deprecation(&engine, &[op(vec![caller("slow"), caller("stuck")])], at);
    assert_eq!(r.items[0].proposed_sunset, None);
    assert_eq!(r.items[0].blocked_by, ["stuck"]);
}

use proptest::prelude::*;

use super::*;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a day boundary

fn ev<'a>(
    ts_ms: i64,
    consumer: &'a str,
    route: &'a str,
    status: u16,
    latency_ms: f64,
) -> EventRef<'a> {
    EventRef {
        ts_ms,
        consumer,
        api: "shop",
        method: "GET",
        route,
        sample: Sample {
            status,
            latency_ms,
            request_bytes: 10,
            response_bytes: 100,
            ..Default::default()
        },
    }
}

fn engine_far_retention() -> Engine {
    // Retention long enough that T0 (in the past) is never pruned or widened.
    Engine::new(Retention {
        minute_ms: 100_000 * DAY_MS,
        hour_ms: 100_000 * DAY_MS,
        day_ms: 100_000 * DAY_MS,
    })
}

#[test]
fn plan_tiles_the_window_with_coarse_buckets() {
    let e = engine_far_retention();
    let now = T0 + 400 * DAY_MS;
    let from = T0 + 5 * MINUTE_MS;
    let to = T0 + 3 * DAY_MS + 2 * HOUR_MS + 7 * MINUTE_MS;
    let plan = e.plan(from, to, now, Tier::Day);
    assert_eq!(
        plan,
        vec![
            (Tier::Minute, from, T0 + HOUR_MS),
            (Tier::Hour, T0 + HOUR_MS, T0 + DAY_MS),
            (Tier::Day, T0 + DAY_MS, T0 + 3 * DAY_MS),
            (Tier::Hour, T0 + 3 * DAY_MS, T0 + 3 * DAY_MS + 2 * HOUR_MS),
            (Tier::Minute, T0 + 3 * DAY_MS + 2 * HOUR_MS, to),
        ]
    );
    // Contiguous and complete.
    for w in plan.windows(2) {
        assert_eq!(w[0].2, w[1].1);
    }
    // A short window stays in minutes.
    assert_eq!(
        e.plan(T0 + 60_000, T0 + 120_000, now, Tier::Day),
        vec![(Tier::Minute, T0 + 60_000, T0 + 120_000)]
    );
    // Minutes only when asked.
    assert_eq!(
        e.plan(from, to, now, Tier::Minute),
        vec![(Tier::Minute, from, to)]
    );
}

#[test]
fn old_edges_widen_to_the_tiers_that_still_exist() {
    let e = Engine::new(Retention {
        minute_ms: DAY_MS,
        hour_ms: 10 * DAY_MS,
        day_ms: 400 * DAY_MS,
    });
    let now = T0 + 30 * DAY_MS;
    let plan = e.plan(T0 + 5 * MINUTE_MS, now, now, Tier::Day);
    assert_eq!(plan[0].0, Tier::Day, "{plan:?}");
    assert_eq!(plan[0].1, T0);
}

#[test]
fn consumer_totals_and_percentiles_over_a_long_window() {
    let e = engine_far_retention();
    let mut events = Vec::new();
    for i in 0..1000i64 {
        events.push(ev(
            T0 + i * 7 * MINUTE_MS,
            "acme",
            "/pets/{id}",
            if i % 10 == 0 { 503 } else { 200 },
            (i % 100 + 1) as f64,
        ));
    }
    events.push(ev(T0 + 5, "globex", "/search", 429, 3.0));
    e.ingest(events);
    let rows = e.consumer_totals(&Query {
        from_ms: T0,
        to_ms: T0 + 30 * DAY_MS,
        ..Default::default()
    });
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].consumer, "acme");
    let c = rows[0].rollup.counters;
    assert_eq!((c.requests, c.s5xx, c.s2xx), (1000, 100, 900));
    let p50 = rows[0].rollup.quantile(0.5).unwrap();
    assert!((p50 - 50.0).abs() <= 0.5 + 1e-9, "{p50}");
    assert_eq!(rows[1].rollup.counters.rate_limited, 1);

    // A narrow window sees only its minutes.
    let rows = e.consumer_totals(&Query {
        from_ms: T0,
        to_ms: T0 + 7 * MINUTE_MS,
        ..Default::default()
    });
    assert_eq!(
        rows.iter().map(|r| r.rollup.counters.requests).sum::<u64>(),
        2
    );

    // Filters.
    let only = e.consumer_totals(&Query {
        from_ms: T0,
        to_ms: T0 + 30 * DAY_MS,
        consumers: Some(["globex".to_string()].into()),
        ..Default::default()
    });
    assert_eq!(only.len(), 1);
    let none = e.consumer_totals(&Query {
        from_ms: T0,
        to_ms: T0 + DAY_MS,
        api: Some("other".into()),
        ..Default::default()
    });
    assert!(none.is_empty());
}

#[test]
fn route_error_concentration() {
    let e = engine_far_retention();
    let mut events = Vec::new();
    for i in 0..100 {
        events.push(ev(
            T0 + i,
            "initech",
            "/orders",
            if i < 30 { 422 } else { 200 },
            5.0,
        ));
        events.push(ev(
            T0 + i,
            "acme",
            "/orders",
            if i < 2 { 500 } else { 200 },
            5.0,
        ));
        events.push(ev(T0 + i, "acme", "/pets", 200, 5.0));
    }
    e.ingest(events);
    let routes = e.routes(
        &Query {
            from_ms: T0,
            to_ms: T0 + HOUR_MS,
            ..Default::default()
        },
        None,
    );
    let orders = routes.iter().find(|r| r.route == "/orders").unwrap();
    assert_eq!(orders.consumers, 2);
    assert_eq!(orders.rollup.counters.errors(), 32);
    assert_eq!(orders.top_consumer_errors, 30);
    assert_eq!(orders.top_consumer.as_deref(), Some("initech"));
    let mine = e.routes(
        &Query {
            from_ms: T0,
            to_ms: T0 + HOUR_MS,
            ..Default::default()
        },
        Some("acme"),
    );
    assert_eq!(mine.len(), 2);
}

#[test]
fn series_fill_every_step() {
    let e = engine_far_retention();
    e.ingest(vec![
        ev(T0 + 30_000, "acme", "/a", 200, 1.0),
        ev(T0 + 2 * HOUR_MS + 1, "acme", "/a", 500, 1.0),
    ]);
    let q = Query {
        from_ms: T0,
        to_ms: T0 + 3 * HOUR_MS,
        ..Default::default()
    };
    let s = e.consumer_series(&q, "acme", HOUR_MS);
    assert_eq!(s.len(), 3);
    assert_eq!(
        s.iter()
            .map(|(_, r)| r.counters.requests)
            .collect::<Vec<_>>(),
        [1, 0, 1]
    );
    assert_eq!(s[2].1.counters.s5xx, 1);
    let m = e.consumer_series(&q, "acme", MINUTE_MS);
    assert_eq!(m.len(), 180);
    assert_eq!(m[0].1.counters.requests, 1);
}

#[test]
fn total_series_is_the_sum_of_the_allowed_consumers() {
    let e = engine_far_retention();
    e.ingest(vec![
        ev(T0 + 30_000, "acme", "/a", 200, 1.0),
        ev(T0 + 40_000, "globex", "/a", 500, 9.0),
        ev(T0 + HOUR_MS + 1, "globex", "/b", 404, 2.0),
        ev(T0 + HOUR_MS + 2, "initech", "/b", 200, 3.0),
    ]);
    let mut q = Query {
        from_ms: T0,
        to_ms: T0 + 2 * HOUR_MS,
        ..Default::default()
    };
    let all = e.total_series(&q, HOUR_MS);
    let counts = |s: &[(i64, Rollup)]| -> Vec<(u64, u64)> {
        s.iter()
            .map(|(_, r)| (r.counters.requests, r.counters.errors()))
            .collect()
    };
    assert_eq!(counts(&all), [(2, 1), (2, 1)]);
    assert_eq!(all[0].1.quantile(1.0).map(|v| v.round()), Some(9.0));
    q.consumers = Some(["acme".to_string(), "initech".to_string()].into());
    assert_eq!(counts(&e.total_series(&q, HOUR_MS)), [(1, 0), (1, 0)]);
    q.consumers = None;
    q.api = Some("other".into());
    assert_eq!(counts(&e.total_series(&q, HOUR_MS)), [(0, 0), (0, 0)]);
    q.api = Some("shop".into());
    assert_eq!(counts(&e.total_series(&q, MINUTE_MS))[0], (2, 1));
}

#[test]
fn export_and_import_round_trip() {
    let a = engine_far_retention();
    a.ingest(vec![
        ev(T0, "acme", "/a", 200, 12.0),
        ev(T0 + HOUR_MS, "acme", "/b", 404, 20.0),
    ]);
    let rows = a.export(Tier::Hour, T0, T0 + DAY_MS);
    assert_eq!(rows.len(), 2);
    let b = engine_far_retention();
    b.import(rows);
    b.import(a.export(Tier::Day, T0, T0 + DAY_MS));
    let q = Query {
        from_ms: T0,
        to_ms: T0 + DAY_MS,
        ..Default::default()
    };
    let (ra, rb) = (a.consumer_totals(&q), b.consumer_totals(&q));
    assert_eq!(ra[0].rollup.counters, rb[0].rollup.counters);
    assert_eq!(ra[0].rollup.quantile(0.99), rb[0].rollup.quantile(0.99));
}

#[test]
fn prune_drops_only_expired_buckets() {
    let e = Engine::new(Retention {
        minute_ms: HOUR_MS,
        hour_ms: DAY_MS,
        day_ms: 10 * DAY_MS,
    });
    let now = clientele_core::time::now_ms();
    e.ingest(vec![ev(now - 30 * MINUTE_MS, "acme", "/a", 200, 1.0)]);
    assert_eq!(e.stats().buckets, 3);
    e.prune(now + 2 * HOUR_MS);
    let s = e.stats();
    assert_eq!(s.buckets, 2, "minute gone, hour and day kept: {s:?}");
}

#[test]
fn backdated_events_skip_tiers_past_their_retention() {
    let e = Engine::new(Retention {
        minute_ms: HOUR_MS,
        hour_ms: DAY_MS,
        day_ms: 10 * DAY_MS,
    });
    let now = clientele_core::time::now_ms();
    e.ingest(vec![ev(now - 3 * DAY_MS, "acme", "/a", 200, 1.0)]);
    assert_eq!(
        e.stats().buckets,
        1,
        "only the day tier keeps a 3-day-old event"
    );
    let rows = e.consumer_totals(&Query {
        from_ms: now - 4 * DAY_MS,
        to_ms: now,
        ..Default::default()
    });
    assert_eq!(rows[0].rollup.counters.requests, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn an_hour_equals_the_merge_of_its_minutes(
        events in prop::collection::vec((0i64..HOUR_MS, 0usize..3, prop::sample::select(vec![200u16, 201, 404, 429, 500, 503]), 0.1f64..5_000.0), 1..400)
    ) {
        let e = engine_far_retention();
        let consumers = ["acme", "globex", "initech"];
        e.ingest(events.iter().map(|(t, c, s, l)| ev(T0 + t, consumers[*c], "/x", *s, *l)));
        let hour = e.export(Tier::Hour, T0, T0 + HOUR_MS);
        let minutes = e.export(Tier::Minute, T0, T0 + HOUR_MS);
        for h in &hour {
            let mut merged = Rollup::default();
            for m in minutes.iter().filter(|m| (m.consumer.as_str(), m.status_class) == (h.consumer.as_str(), h.status_class)) {
                merged.merge(&m.rollup);
            }
            prop_assert_eq!(merged.counters, h.rollup.counters);
            for q in [0.5, 0.95, 0.99] {
                prop_assert_eq!(merged.quantile(q), h.rollup.quantile(q));
            }
        }
        // And a query over the hour answers the same whichever tier serves it.
        let by_minutes = e.consumer_series(&Query { from_ms: T0, to_ms: T0 + HOUR_MS, ..Default::default() }, "acme", MINUTE_MS);
        let mut merged = Rollup::default();
        for (_, r) in &by_minutes { merged.merge(r); }
        let by_hour = e.consumer_series(&Query { from_ms: T0, to_ms: T0 + HOUR_MS, ..Default::default() }, "acme", HOUR_MS);
        prop_assert_eq!(merged.counters, by_hour[0].1.counters);
    }
}

#[test]
fn an_engine_restored_from_archived_rollups_answers_the_same() {
    let retention = Retention {
        minute_ms: 3 * DAY_MS,
        hour_ms: 35 * DAY_MS,
        day_ms: 400 * DAY_MS,
    };
    let now = clientele_core::time::now_ms();
    let events: Vec<(i64, f64)> = (0..240i64)
        .map(|h| (now - 240 * HOUR_MS + h * HOUR_MS, 10.0 + h as f64))
        .collect();
    let a = Engine::new(retention);
    a.ingest(
        events
            .iter()
            .map(|(t, l)| ev(*t, "acme", "/pets/{id}", 200, *l)),
    );
    let cutoff = floor_to(now - 3 * DAY_MS, DAY_MS);
    let mut rows = a.export(Tier::Hour, 0, cutoff);
    rows.extend(a.export(Tier::Day, 0, cutoff));
    let rows: Vec<ExportedRollup> = rows
        .into_iter()
        .map(|mut r| {
            r.rollup = Rollup::from_parts(r.rollup.counters, &r.rollup.sketch_bytes()).unwrap();
            r
        })
        .collect();
    let b = Engine::new(retention);
    b.import(rows);
    b.ingest(
        events
            .iter()
            .filter(|(t, _)| *t >= cutoff)
            .map(|(t, l)| ev(*t, "acme", "/pets/{id}", 200, *l)),
    );
    let q = Query {
        from_ms: now - 241 * HOUR_MS,
        to_ms: now + MINUTE_MS,
        ..Default::default()
    };
    let (ra, rb) = (a.consumer_totals(&q), b.consumer_totals(&q));
    assert_eq!(ra[0].rollup.counters, rb[0].rollup.counters);
    assert_eq!(
        ra[0].rollup.quantiles([0.5, 0.99]),
        rb[0].rollup.quantiles([0.5, 0.99])
    );
}

/// (consumers, series) blobs of one bucket.
type Parts = (Vec<u8>, Vec<u8>);

/// A `BucketStore` in memory, counting reads, for the eviction tests.
#[derive(Default)]
struct MemStore {
    buckets: std::sync::Mutex<HashMap<(u8, i64), Parts>>,
    loads: std::sync::atomic::AtomicUsize,
    /// Day counts written for a day whose day bucket was not on disk once the save was.
    untrusty_days: std::sync::atomic::AtomicUsize,
}

impl BucketStore for MemStore {
    fn save(&self, save: Save) -> Result<(), String> {
        let mut b = self.buckets.lock().unwrap();
        for s in save.buckets {
            b.insert((s.tier as u8, s.start_ms), (s.consumers, s.series));
        }
        for (day, _) in save.days {
            // A day with rollups must be whole on disk before start-up may trust its count.
            let any = b.keys().any(|(_, s)| (day..day + DAY_MS).contains(s));
            if any && !b.contains_key(&(Tier::Day as u8, day)) {
                self.untrusty_days
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn load(&self, tier: Tier, start_ms: i64, part: Part) -> Result<Option<Vec<u8>>, String> {
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = self.buckets.lock().unwrap();
        Ok(b.get(&(tier as u8, start_ms)).map(|(c, s)| match part {
            Part::Consumers => c.clone(),
            Part::Series => s.clone(),
        }))
    }
}

/// Ten days of traffic from three consumers on three routes, ending a few minutes ago.
fn ten_days(now: i64) -> Vec<(i64, &'static str, &'static str, u16, f64)> {
    let consumers = ["acme", "globex", "initech"];
    let routes = ["/pets", "/pets/{id}", "/orders"];
    (0..6000i64)
        .map(|i| {
            let ts = now - 10 * DAY_MS + i * (10 * DAY_MS - 5 * MINUTE_MS) / 6000;
            let status = if i % 17 == 0 { 503 } else { 200 };
            (
                ts,
                consumers[(i % 3) as usize],
                routes[((i / 3) % 3) as usize],
                status,
                5.0 + (i % 97) as f64 * 1.3,
            )
        })
        .collect()
}

fn same_answers(a: &Engine, b: &Engine, now: i64) {
    let windows = [
        (now - 11 * DAY_MS, now + MINUTE_MS),
        (
            now - 3 * DAY_MS - 17 * MINUTE_MS,
            now - 5 * HOUR_MS + 7 * MINUTE_MS,
        ),
        (now - 2 * HOUR_MS, now),
    ];
    for (from_ms, to_ms) in windows {
        for api in [None, Some("shop".to_string())] {
            let q = Query {
                from_ms,
                to_ms,
                api: api.clone(),
                ..Default::default()
            };
            let (ta, tb) = (a.consumer_totals(&q), b.consumer_totals(&q));
            assert_eq!(ta.len(), tb.len());
            for (x, y) in ta.iter().zip(&tb) {
                assert_eq!(x.consumer, y.consumer);
                assert_eq!(x.rollup.counters, y.rollup.counters);
                assert_eq!(
                    x.rollup.quantiles([0.5, 0.95, 0.99]),
                    y.rollup.quantiles([0.5, 0.95, 0.99])
                );
            }
            let (ra, rb) = (a.routes(&q, None), b.routes(&q, Some("acme")));
            let ra_acme = a.routes(&q, Some("acme"));
            assert_eq!(ra_acme.len(), rb.len());
            for (x, y) in ra_acme.iter().zip(&rb) {
                assert_eq!((&x.route, x.rollup.counters), (&y.route, y.rollup.counters));
                assert_eq!(x.rollup.quantile(0.99), y.rollup.quantile(0.99));
            }
            let rb_all = b.routes(&q, None);
            assert_eq!(ra.len(), rb_all.len());
            for (x, y) in ra.iter().zip(&rb_all) {
                assert_eq!(
                    (
                        &x.route,
                        x.consumers,
                        x.top_consumer_errors,
                        &x.top_consumer
                    ),
                    (
                        &y.route,
                        y.consumers,
                        y.top_consumer_errors,
                        &y.top_consumer
                    )
                );
                assert_eq!(x.rollup.counters, y.rollup.counters);
            }
            for step in [MINUTE_MS * 30, HOUR_MS, DAY_MS] {
                let (sa, sb) = (
                    a.consumer_series(&q, "globex", step),
                    b.consumer_series(&q, "globex", step),
                );
                assert_eq!(sa.len(), sb.len());
                for (x, y) in sa.iter().zip(&sb) {
                    assert_eq!(x.0, y.0);
                    assert_eq!(x.1.counters, y.1.counters, "step {step} at {}", x.0);
                    assert_eq!(x.1.quantile(0.9), y.1.quantile(0.9));
                }
                let (sa, sb) = (a.total_series(&q, step), b.total_series(&q, step));
                for (x, y) in sa.iter().zip(&sb) {
                    assert_eq!(x.1.counters, y.1.counters);
                }
            }
        }
    }
    for tier in Tier::ALL {
        let (from, to) = (now - 11 * DAY_MS, now + DAY_MS);
        let (ga, gb) = (
            a.consumer_grid(tier, from, to),
            b.consumer_grid(tier, from, to),
        );
        let (na, nb) = (a.names(), b.names());
        let rows = |g: &ConsumerGrid, names: &[Arc<str>]| {
            let mut rows: Vec<(String, Vec<u32>)> = g
                .consumers
                .iter()
                .enumerate()
                .map(|(i, c)| (names[*c as usize].to_string(), g.row(i).to_vec()))
                .collect();
            rows.sort();
            rows
        };
        assert_eq!(rows(&ga, &na), rows(&gb, &nb), "{tier:?}");
        let sum = |e: &Engine| {
            let mut n = (0u64, 0u64);
            e.scan_series(tier, from, to, |_, _, r| {
                n.0 += r.counters.requests;
                n.1 += r.counters.s5xx;
            });
            e.scan_consumers(tier, from, to, |_, _, r| n.0 += r.counters.requests);
            n
        };
        assert_eq!(sum(a), sum(b), "{tier:?}");
    }
}

fn fold(e: &Engine, events: &[(i64, &'static str, &'static str, u16, f64)]) {
    e.ingest(events.iter().map(|(t, c, r, s, l)| ev(*t, c, r, *s, *l)));
}

#[test]
fn answers_from_evicted_buckets_equal_answers_from_memory() {
    let now = clientele_core::time::now_ms();
    let events = ten_days(now);
    let a = Engine::default();
    let b = Engine::default();
    let store = Arc::new(MemStore::default());
    // A cache far smaller than the history, so answers come from decoded reads too.
    b.attach(store.clone(), Persisted::default(), 64 * 1024)
        .unwrap();
    for chunk in events.chunks(500) {
        fold(&a, chunk);
        fold(&b, chunk);
    }
    // Before any flush, hours and days are read from the minutes (and the hours past the
    // minutes' retention) they will be built from.
    same_answers(&a, &b, now);
    let flushed = b.flush(now).unwrap();
    assert!(flushed.buckets > 100, "{flushed:?}");
    let (sa, sb) = (a.stats(), b.stats());
    assert!(
        sb.series_rollups * 20 < sa.series_rollups,
        "memory keeps only the open buckets: {sa:?} vs {sb:?}"
    );
    assert!(sb.persisted_buckets > 100);
    same_answers(&a, &b, now);
    assert!(store.loads.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // A second flush has nothing to write.
    assert_eq!(b.flush(now).unwrap().buckets, 0);
}

#[test]
fn late_events_for_written_buckets_are_counted_before_and_after_the_next_flush() {
    let now = clientele_core::time::now_ms();
    let events = ten_days(now);
    let a = Engine::default();
    let b = Engine::default();
    b.attach(Arc::new(MemStore::default()), Persisted::default(), 1 << 20)
        .unwrap();
    fold(&a, &events);
    fold(&b, &events);
    b.flush(now).unwrap();
    let open = b.stats();
    // Late and back-dated events into buckets already on disk, of every tier, and a new name.
    let late: Vec<_> = (0..200i64)
        .map(|i| {
            let ts = now - 2 * DAY_MS - i * 7 * MINUTE_MS;
            let consumer = if i % 5 == 0 { "hooli" } else { "acme" };
            (
                ts,
                consumer,
                "/pets/{id}",
                if i % 3 == 0 { 500 } else { 201 },
                50.0 + i as f64,
            )
        })
        .collect();
    fold(&a, &late);
    fold(&b, &late);
    assert!(
        b.stats().buckets > open.buckets,
        "the late events wait in deltas"
    );
    same_answers(&a, &b, now);
    let flushed = b.flush(now).unwrap();
    assert!(flushed.buckets > 0);
    let after = b.stats();
    assert_eq!(
        (after.buckets, after.series_rollups),
        (open.buckets, open.series_rollups),
        "deltas merged into the buckets on disk"
    );
    same_answers(&a, &b, now);
}

#[test]
fn open_hours_and_days_are_read_from_their_minutes_and_built_once_closed() {
    let now = clientele_core::time::now_ms();
    // Three hours and a half of traffic, flushed every minute as the housekeeping tick would.
    let from = floor_to(now, MINUTE_MS) - 210 * MINUTE_MS;
    let a = Engine::default();
    let b = Engine::default();
    let store = Arc::new(MemStore::default());
    b.attach(store.clone(), Persisted::default(), 1 << 20)
        .unwrap();
    let consumers = ["acme", "globex", "initech", "hooli"];
    let routes = ["/pets", "/pets/{id}", "/orders"];
    let mut most = 0;
    for minute in 0..210i64 {
        let events: Vec<_> = (0..24i64)
            .map(|k| {
                (
                    from + minute * MINUTE_MS + k * 2_500,
                    consumers[(k % 4) as usize],
                    routes[((k + minute) % 3) as usize],
                    if (k * minute) % 13 == 0 { 502 } else { 200 },
                    3.0 + ((k * 7 + minute) % 41) as f64,
                )
            })
            .collect();
        fold(&a, &events);
        fold(&b, &events);
        b.flush(from + (minute + 1) * MINUTE_MS).unwrap();
        most = most.max(b.stats().buckets);
        if minute == 100 {
            // Mid-way: the open hour and day are answered from minutes and hours alone.
            same_answers(&a, &b, now);
        }
    }
    assert!(
        most <= 4,
        "memory holds the open minute and those in their grace, never an hour or a day: {most}"
    );
    // Every closed hour was built, each from its minutes.
    let hours: Vec<i64> = {
        let built = store.buckets.lock().unwrap();
        let mut h: Vec<i64> = built
            .keys()
            .filter(|(t, _)| *t == Tier::Hour as u8)
            .map(|(_, s)| *s)
            .collect();
        h.sort_unstable();
        h
    };
    let closed = (from..now - HOUR_MS - GRACE_MS)
        .step_by(HOUR_MS as usize)
        .filter(|s| s % HOUR_MS == 0)
        .count();
    assert!(hours.len() >= 2, "{hours:?}");
    assert!(
        hours.len() >= closed.saturating_sub(1),
        "{hours:?} of {closed}"
    );
    same_answers(&a, &b, now);
    // Late events into a built hour, and into an hour and day of no traffic yet, are counted
    // before and after the next flush.
    let late: Vec<_> = (0..30i64)
        .map(|i| (from + i * 3 * MINUTE_MS, "acme", "/pets", 200, 9.0))
        .chain((0..5).map(|i| {
            (
                from - DAY_MS - 5 * HOUR_MS + i * 1_000,
                "late",
                "/x",
                503,
                1.0,
            )
        }))
        .collect();
    fold(&a, &late);
    fold(&b, &late);
    same_answers(&a, &b, now);
    b.flush(now).unwrap();
    b.flush(now).unwrap();
    same_answers(&a, &b, now);
    assert_eq!(
        store
            .untrusty_days
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a day's count is written only with (or after) its day bucket"
    );
}

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clientele_analytics::{Engine, Retention};
use clientele_core::event::Event;
use clientele_core::pipeline::PipelineStats;
use clientele_store::testsuite::event;
use clientele_store::{EventStore, SqliteStore};

use crate::{EventObserver, Pipeline};

/// Counts what it is told, to show each event reaches an observer exactly once.
#[derive(Default)]
struct Tally(AtomicUsize);

impl EventObserver for Tally {
    fn observe(&self, events: &[Event]) {
        self.0.fetch_add(events.len(), Ordering::Relaxed);
    }
}

fn now() -> i64 {
    clientele_core::time::now_ms() - 60_000
}

fn pipeline(store: Arc<dyn EventStore>, tally: Arc<Tally>) -> (Pipeline, Arc<Engine>) {
    let engine = Arc::new(Engine::new(Retention::default()));
    let p = Pipeline::new(store, Arc::new(PipelineStats::default()))
        .with_observer(engine.clone())
        .with_observer(tally);
    (p, engine)
}

#[tokio::test]
async fn each_event_reaches_every_observer_once_live_or_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let tally = Arc::new(Tally::default());
    let (p, engine) = pipeline(store.clone(), tally.clone());
    let t = now();
    let batch: Vec<Event> = (0..3)
        .map(|i| event(&format!("e{i}"), "acme", t, 200))
        .collect();
    assert_eq!(p.submit(batch.clone()).await.unwrap(), 3);
    let mut again = batch;
    again.push(event("e3", "acme", t, 500));
    assert_eq!(
        p.submit(again).await.unwrap(),
        1,
        "duplicates are stored once and folded once"
    );
    assert_eq!(tally.0.load(Ordering::Relaxed), 4);
    assert_eq!(p.stats().snapshot().stored, 4);
    let q = clientele_analytics::Query {
        from_ms: 0,
        to_ms: i64::MAX / 2,
        ..Default::default()
    };
    let counts = |e: &Engine| -> Vec<(String, u64, u64)> {
        e.consumer_totals(&q)
            .into_iter()
            .map(|r| {
                (
                    r.consumer,
                    r.rollup.counters.requests,
                    r.rollup.counters.s5xx,
                )
            })
            .collect()
    };
    let live = counts(&engine);
    assert_eq!(live, vec![("acme".to_string(), 4, 1)]);

    // A restart rebuilds the same state from the store through the same observers.
    let tally2 = Arc::new(Tally::default());
    let (p2, engine2) = pipeline(store, tally2.clone());
    crate::rollups::restore(&p2, &engine2).await.unwrap();
    assert_eq!(tally2.0.load(Ordering::Relaxed), 4);
    assert_eq!(counts(&engine2), live);
}

mod persisted {
    use super::*;
    use clientele_analytics::{DAY_MS, HOUR_MS, MINUTE_MS, Query};
    use clientele_store::{BucketFile, EventLog};

    use crate::rollups::{Restored, restore_persisted};

    /// What a test compares: totals per consumer, one consumer's hours, every route.
    type Answers = (
        Vec<(String, clientele_analytics::Counters, [Option<f64>; 2])>,
        Vec<(i64, clientele_analytics::Counters)>,
        Vec<(String, clientele_analytics::Counters, usize)>,
    );

    fn answers(e: &Engine, now: i64) -> Answers {
        let q = Query {
            from_ms: now - 25 * DAY_MS,
            to_ms: now + MINUTE_MS,
            ..Default::default()
        };
        let totals = e
            .consumer_totals(&q)
            .into_iter()
            .map(|r| {
                (
                    r.consumer,
                    r.rollup.counters,
                    r.rollup.quantiles([0.5, 0.99]),
                )
            })
            .collect();
        let hours = e
            .consumer_series(&q, "c3", HOUR_MS)
            .into_iter()
            .map(|(t, r)| (t, r.counters))
            .collect();
        let routes = e
            .routes(&q, None)
            .into_iter()
            .map(|r| (r.route, r.rollup.counters, r.consumers))
            .collect();
        (totals, hours, routes)
    }

    fn history(now: i64, n: i64, tag: &str) -> Vec<Event> {
        (0..n)
            .map(|i| {
                let ts = now - 20 * DAY_MS + i * (20 * DAY_MS - 10 * MINUTE_MS) / n;
                let mut e = event(
                    &format!("{tag}{i}"),
                    &format!("c{}", i % 7),
                    ts,
                    if i % 11 == 0 { 502 } else { 200 },
                );
                e.route = format!("/r{}/{{id}}", i % 5);
                e.latency_ms = 3.0 + (i % 89) as f64 * 0.7;
                e
            })
            .collect()
    }

    struct Node {
        pipeline: Pipeline,
        engine: Arc<Engine>,
        tally: Arc<Tally>,
        restored: Restored,
    }

    async fn start(dir: &std::path::Path) -> Node {
        let sqlite = SqliteStore::open(dir).unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(EventLog::open(&dir.join("events"), sqlite).unwrap());
        let tally = Arc::new(Tally::default());
        let (pipeline, engine) = pipeline(store, tally.clone());
        let file = Arc::new(BucketFile::open(dir).unwrap());
        let restored = restore_persisted(&pipeline, &engine, file, 1 << 20)
            .await
            .unwrap();
        Node {
            pipeline,
            engine,
            tally,
            restored,
        }
    }

    async fn submit(p: &Pipeline, events: Vec<Event>) {
        for chunk in events.chunks(2_000) {
            p.submit(chunk.to_vec()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_restart_reads_history_from_disk_and_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let now = clientele_core::time::now_ms();
        let events = history(now, 30_000, "h");
        let reference = Engine::new(Retention::default());
        reference.ingest_events(&events);

        let a = start(dir.path()).await;
        submit(&a.pipeline, events.clone()).await;
        a.engine.flush(clientele_core::time::now_ms()).unwrap();
        let before = answers(&a.engine, now);
        assert_eq!(before, answers(&reference, now));
        let in_memory = a.engine.stats();
        assert!(
            in_memory.persisted_buckets > 400,
            "closed buckets are on disk: {in_memory:?}"
        );
        drop(a);

        let b = start(dir.path()).await;
        // Only the open day (and yesterday, in the minutes after midnight) is rebuilt from raw
        // events; the other 19 days are read from disk, not replayed into the rollups.
        let today = now.div_euclid(DAY_MS) * DAY_MS;
        assert!(
            b.restored.days_rebuilt.iter().all(|d| *d >= today - DAY_MS),
            "{:?}",
            b.restored
        );
        assert!(b.restored.days_trusted >= 19, "{:?}", b.restored);
        assert_eq!(
            b.restored.events_read, 30_000,
            "other observers still see every event"
        );
        assert_eq!(b.tally.0.load(Ordering::Relaxed), 30_000);
        assert_eq!(answers(&b.engine, now), before);
        assert!(b.engine.stats().series_rollups <= in_memory.series_rollups + 50);

        // Late events for days already on disk, then a crash before they are written: the next
        // start finds those days incomplete and rebuilds them from the raw events.
        let late: Vec<Event> = (0..300)
            .map(|i| {
                let mut e = event(
                    &format!("late{i}"),
                    "c3",
                    now - 5 * DAY_MS - i * HOUR_MS / 7,
                    500,
                );
                e.route = "/r9/{id}".into();
                e
            })
            .collect();
        submit(&b.pipeline, late.clone()).await;
        reference.ingest_events(&late);
        let with_late = answers(&reference, now);
        assert_ne!(with_late, before);
        assert_eq!(
            answers(&b.engine, now),
            with_late,
            "deltas are counted at once"
        );
        drop(b);

        let c = start(dir.path()).await;
        let rebuilt: Vec<i64> = c.restored.days_rebuilt.clone();
        assert!(
            rebuilt.contains(&((now - 5 * DAY_MS).div_euclid(DAY_MS) * DAY_MS)),
            "{rebuilt:?}"
        );
        assert_eq!(answers(&c.engine, now), with_late);
        // Written this time: the next start trusts the day again.
        c.engine.flush(clientele_core::time::now_ms()).unwrap();
        drop(c);
        let d = start(dir.path()).await;
        assert!(d.restored.days_rebuilt.iter().all(|d| *d >= today - DAY_MS));
        assert_eq!(answers(&d.engine, now), with_late);
    }
}

mod governance_persisted {
    use super::*;
    use clientele_analytics::{DAY_MS, MINUTE_MS};
    use clientele_governance::FeatureStore;
    use clientele_governance::judge;
    use clientele_store::{BucketFile, EventLog};

    use crate::rollups::{Restored, restore_persisted};

    struct Node {
        pipeline: Pipeline,
        engine: Arc<Engine>,
        features: Arc<FeatureStore>,
        file: Arc<BucketFile>,
        restored: Restored,
        replay_from: Option<i64>,
    }

    /// A node the way the binary wires it: features loaded first, then the rollup restore.
    async fn start(dir: &std::path::Path) -> Node {
        let sqlite = SqliteStore::open(dir).unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(EventLog::open(&dir.join("events"), sqlite).unwrap());
        let engine = Arc::new(Engine::new(Retention::default()));
        let features = Arc::new(FeatureStore::new());
        let pipeline = Pipeline::new(store.clone(), Arc::new(PipelineStats::default()))
            .with_observer(engine.clone())
            .with_observer(features.clone());
        let file = Arc::new(BucketFile::open(dir).unwrap());
        let loaded = crate::governance::restore(&features, file.clone(), &store)
            .await
            .unwrap();
        let restored = restore_persisted(&pipeline, &engine, file.clone(), 1 << 20)
            .await
            .unwrap();
        Node {
            pipeline,
            engine,
            features,
            file,
            restored,
            replay_from: loaded.replay_from,
        }
    }

    /// Three weeks of six consumers from a few networks and agents; `c3` walks an id space
    /// in sequence yesterday (a scraping finding).
    fn history(now: i64) -> Vec<Event> {
        let start = now - 20 * DAY_MS;
        let mut out: Vec<Event> = (0..24_000i64)
            .map(|i| {
                let ts = start + i * (20 * DAY_MS - 10 * MINUTE_MS) / 24_000;
                let mut e = event(&format!("h{i}"), &format!("c{}", i % 6), ts, 200);
                e.client_ip = Some(format!("10.{}.{}.1", i % 6, i % 3));
                e.user_agent = Some(format!("app/{}", i % 2));
                e.end_user = Some(format!("u{}", i % 13));
                e.tls_fp = Some(format!("t13d15h2_{:012}_x", i % 2));
                e
            })
            .collect();
        let yesterday = (now - DAY_MS).div_euclid(DAY_MS) * DAY_MS;
        out.extend((0..600i64).map(|i| {
            let mut e = event(
                &format!("w{i}"),
                "c3",
                yesterday + 3_600_000 + i * 2_000,
                200,
            );
            e.route = "/items/{id}".into();
            e.path = format!("/items/{}", 1_000 + i);
            e
        }));
        out
    }

    /// What a test compares: every consumer's days and hours, and the findings.
    fn answers(f: &FeatureStore, now: i64) -> (Vec<String>, Vec<String>) {
        let mut days: Vec<String> = (0..6)
            .map(|c| format!("{:?}", f.consumer(&format!("c{c}")).unwrap()))
            .collect();
        days.push(format!(
            "{:?}",
            (
                f.total(now.div_euclid(DAY_MS)),
                f.total(now.div_euclid(DAY_MS) - 3)
            )
        ));
        let judged = judge::evaluate(f, now, 3 * DAY_MS, &[], &Default::default());
        let findings = judged
            .findings
            .iter()
            .map(|x| format!("{:?} {:?} {} {}", x.kind, x.consumer, x.summary, x.evidence))
            .collect();
        (days, findings)
    }

    async fn submit(p: &Pipeline, events: Vec<Event>) {
        for chunk in events.chunks(2_000) {
            p.submit(chunk.to_vec()).await.unwrap();
        }
    }

    fn sorted(mut events: Vec<Event>) -> Vec<Event> {
        events.sort_by_key(|e| e.ts_ms);
        events
    }

    #[tokio::test]
    async fn a_restart_loads_the_features_and_replays_only_what_they_lack() {
        let dir = tempfile::tempdir().unwrap();
        let now = clientele_core::time::now_ms();
        let today = now.div_euclid(DAY_MS) * DAY_MS;
        let events = sorted(history(now));

        let a = start(dir.path()).await;
        assert_eq!(a.replay_from, None, "nothing saved yet");
        submit(&a.pipeline, events.clone()).await;
        a.engine.flush(clientele_core::time::now_ms()).unwrap();
        crate::governance::save(&a.features, &a.file).unwrap();
        let before = answers(&a.features, now);
        assert!(
            before
                .1
                .iter()
                .any(|f| f.starts_with("Scraping Some(\"c3\")")),
            "{:?}",
            before.1
        );
        drop(a);

        // Everything saved: the features replay nothing, and only the engine's open day is
        // read from the raw events.
        let b = start(dir.path()).await;
        assert_eq!(
            b.replay_from, None,
            "every day is complete in the saved state"
        );
        let today_events = events.iter().filter(|e| e.ts_ms >= today).count();
        let engine_from = b
            .restored
            .days_rebuilt
            .iter()
            .min()
            .copied()
            .unwrap_or(i64::MAX);
        let expected = events.iter().filter(|e| e.ts_ms >= engine_from).count();
        assert!(engine_from >= today - DAY_MS, "{:?}", b.restored);
        assert_eq!(
            b.restored.events_read, expected,
            "older raw events are not read"
        );
        assert!(expected <= today_events + 1_300, "{expected}");
        assert_eq!(answers(&b.features, now), before);

        // Late events for a day five days back, then a crash before the next save: that day
        // and the later ones are rebuilt from raw events, the older ones are loaded.
        let late_day = today - 5 * DAY_MS;
        let late: Vec<Event> = (0..200i64)
            .map(|i| {
                let mut e = event(
                    &format!("late{i}"),
                    "c1",
                    late_day + 7_200_000 + i * 1_000,
                    200,
                );
                e.client_ip = Some(format!("172.16.{i}.9"));
                e
            })
            .collect();
        submit(&b.pipeline, late.clone()).await;
        b.engine.flush(clientele_core::time::now_ms()).unwrap();
        drop(b);
        let c = start(dir.path()).await;
        assert_eq!(c.replay_from, Some(late_day));
        let mut all = events.clone();
        all.extend(late);
        let all = sorted(all);
        let reference = FeatureStore::new();
        reference.observe(&all);
        // The same distinct counts and calls as features built from every event in order
        // (the think time and id steps restart at the cut, so they are left out here).
        let shape = |f: &FeatureStore| -> Vec<(i64, u64, u32, u32, u32, u32)> {
            let mut out = Vec::new();
            for c in 0..6 {
                for d in f.consumer(&format!("c{c}")).unwrap().0 {
                    out.push((
                        d.day,
                        d.counts.requests,
                        d.networks,
                        d.user_agents,
                        d.end_users,
                        d.tls_clients,
                    ));
                }
            }
            out
        };
        assert_eq!(shape(&c.features), shape(&reference));
        let c1_late = c
            .features
            .consumer("c1")
            .unwrap()
            .0
            .into_iter()
            .find(|d| d.day * DAY_MS == late_day)
            .unwrap();
        assert!(
            c1_late.networks >= 150,
            "late events count in the rebuilt day: {c1_late:?}"
        );
        assert!(
            c.restored.events_read < all.len(),
            "days before the cut are not read"
        );
    }
}

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

//! The one path an event takes once it has left the gateway or been posted: store, fold, export.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clientele_analytics::Engine;
use clientele_contract::Contracts;
use clientele_core::event::Event;
use clientele_core::pipeline::PipelineStats;
use clientele_export::Exporters;
use clientele_store::{EventStore, StoreError};

/// Derived state built from stored events: the rollups, the contract usage table, and what comes
/// next (governance features, AI usage). Told of each event exactly once: when the store newly
/// accepts it, or when it is replayed at start-up from after the archive watermark.
///
/// Runs on the blocking pool, never on the async workers; it must not wait on the network.
pub trait EventObserver: Send + Sync {
    fn observe(&self, events: &[Event]);

    /// Events replayed from the store at start-up. An observer whose state is persisted skips
    /// what it already holds; the others rebuild from them as from live events.
    fn replay(&self, events: &[Event]) {
        self.observe(events);
    }

    /// The earliest event time this observer needs replayed at start-up: `None` for every
    /// raw event kept, `Some(i64::MAX)` for none. The replay reads from the earliest of all.
    fn replay_from(&self) -> Option<i64> {
        None
    }
}

impl EventObserver for Engine {
    fn observe(&self, events: &[Event]) {
        self.ingest_events(events);
        // A bulk import of history closes many buckets at once: write them now rather than at
        // the next housekeeping tick, so memory stays bounded.
        self.flush_if_large(clientele_core::time::now_ms());
    }

    fn replay(&self, events: &[Event]) {
        // Days complete on disk are skipped: start-up does not re-fold history.
        self.replay_events(events);
        self.flush_if_large(clientele_core::time::now_ms());
    }

    /// `rollups::restore_persisted` asks for the engine's days itself: only it knows which
    /// days the log holds that the bucket file does not.
    fn replay_from(&self) -> Option<i64> {
        Some(i64::MAX)
    }
}

impl EventObserver for Contracts {
    fn observe(&self, events: &[Event]) {
        // Drift is counted here, off the gateway's path, from stored events only.
        Contracts::observe(self, events);
    }

    /// The usage table is not persisted: with a spec it needs every raw event kept; without
    /// one (`observe` ignores everything) none.
    fn replay_from(&self) -> Option<i64> {
        self.is_empty().then_some(i64::MAX)
    }
}

impl EventObserver for clientele_governance::FeatureStore {
    fn observe(&self, events: &[Event]) {
        // Behaviour per consumer-hour: networks, agents, end users, id walks (governance).
        clientele_governance::FeatureStore::observe(self, events);
    }

    fn replay(&self, events: &[Event]) {
        // Only what the state loaded from rollups.db does not hold (`governance::restore`).
        clientele_governance::FeatureStore::replay(self, events);
    }

    fn replay_from(&self) -> Option<i64> {
        clientele_governance::FeatureStore::replay_from(self)
    }
}

/// Store → every [`EventObserver`] → exporters. Cheap to clone; every source holds one.
#[derive(Clone)]
pub struct Pipeline {
    store: Arc<dyn EventStore>,
    stats: Arc<PipelineStats>,
    observers: Arc<[Arc<dyn EventObserver>]>,
    exporters: Option<Arc<Exporters>>,
}

impl Pipeline {
    /// A pipeline that stores into `store` and counts into `stats`, with no observers yet.
    pub fn new(store: Arc<dyn EventStore>, stats: Arc<PipelineStats>) -> Pipeline {
        Pipeline {
            store,
            stats,
            observers: Arc::new([]),
            exporters: None,
        }
    }

    /// Adds a consumer of newly stored events; observers run in the order they were added.
    pub fn with_observer(mut self, observer: Arc<dyn EventObserver>) -> Pipeline {
        let mut all = self.observers.to_vec();
        all.push(observer);
        self.observers = all.into();
        self
    }

    /// Live events (not replays) are offered to these after they are stored and folded.
    pub fn with_exporters(mut self, exporters: Arc<Exporters>) -> Pipeline {
        self.exporters = Some(exporters);
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// The earliest event time some observer needs replayed at start-up (`None`: all).
    pub fn replay_from(&self) -> Option<i64> {
        let mut from = i64::MAX;
        for o in self.observers.iter() {
            from = from.min(o.replay_from()?);
        }
        Some(from)
    }

    /// Stores a batch, folds the events the store newly accepted (not duplicates) into every
    /// observer, then offers them to the exporters. Returns how many were new. When it returns
    /// `Ok`, the events are durable and counted.
    pub async fn submit(&self, events: Vec<Event>) -> Result<usize, StoreError> {
        let n = events.len() as u64;
        let fresh = match self.store.append_events(events).await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.stats.store_errors.fetch_add(n, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.stats
            .stored
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        let fresh = self.fold(fresh).await;
        if let Some(exporters) = &self.exporters {
            // Never waits: metrics are updated in memory and exporters' queues drop when full.
            exporters.offer(&fresh);
        }
        Ok(fresh.len())
    }

    /// Folds already stored events into every observer, without storing or exporting them: the
    /// start-up replay of raw events after the archive watermark.
    pub async fn replay(&self, events: Vec<Event>) {
        self.fold_with(events, true).await;
    }

    /// Folds events another node stored (and this node's log has just taken as new) into every
    /// observer, as if they had arrived here, without storing or exporting them: each node's
    /// rollups, contracts and detectors then see the whole cluster's traffic (`backend =
    /// "clickhouse"`), while each node's exporters report its own.
    pub async fn observe_stored(&self, events: Vec<Event>) {
        self.fold(events).await;
    }

    async fn fold(&self, events: Vec<Event>) -> Vec<Event> {
        self.stats
            .note_folded(&events, clientele_core::time::now_ms());
        self.fold_with(events, false).await
    }

    /// Runs the observers on the blocking pool and hands the events back.
    async fn fold_with(&self, events: Vec<Event>, replay: bool) -> Vec<Event> {
        if self.observers.is_empty() || events.is_empty() {
            return events;
        }
        let observers = self.observers.clone();
        let n = events.len();
        match tokio::task::spawn_blocking(move || {
            for o in observers.iter() {
                if replay {
                    o.replay(&events);
                } else {
                    o.observe(&events);
                }
            }
            events
        })
        .await
        {
            Ok(events) => events,
            Err(e) => {
                // The events are stored; what was not folded is rebuilt at the next start-up.
                tracing::error!(error = %e, events = n, "folding stored events failed");
                Vec::new()
            }
        }
    }
}

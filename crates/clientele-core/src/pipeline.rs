//! The hand-off between the hot path and the event pipeline.
//!
//! The gateway offers each event to a bounded channel and never waits: when the pipeline falls
//! behind, the event is dropped and counted. Traffic is never slowed by analytics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::event::Event;

/// Counters about the pipeline, readable from anywhere (admin API, logs, metrics).
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events handed to the pipeline.
    pub offered: AtomicU64,
    /// Events dropped because the queue was full or the pipeline had stopped.
    pub dropped: AtomicU64,
    /// Events written to the store.
    pub stored: AtomicU64,
    /// Events the store refused or failed to write.
    pub store_errors: AtomicU64,
}

impl PipelineStats {
    pub fn snapshot(&self) -> PipelineSnapshot {
        PipelineSnapshot {
            offered: self.offered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            store_errors: self.store_errors.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PipelineSnapshot {
    pub offered: u64,
    pub dropped: u64,
    pub stored: u64,
    pub store_errors: u64,
}

/// The sending side, cheap to clone and never blocking.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    stats: Arc<PipelineStats>,
}

impl EventSink {
    /// A sink with room for `capacity` events, and the receiver the pipeline drains.
    pub fn bounded(
        capacity: usize,
        stats: Arc<PipelineStats>,
    ) -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (EventSink { tx, stats }, rx)
    }

    /// Hands an event over without waiting. Returns false when it had to be dropped.
    pub fn offer(&self, event: Event) -> bool {
        self.stats.offered.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }
}

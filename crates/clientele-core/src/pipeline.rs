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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let stats = Arc::new(PipelineStats::default());
        let (sink, mut rx) = EventSink::bounded(2, stats.clone());
        let event = crate::event::Event {
            id: "e".into(),
            ts_ms: 0,
            consumer: None,
            key_id: None,
            api: None,
            method: "GET".into(),
            path: "/".into(),
            route: "/".into(),
            status: 200,
            latency_ms: 1.0,
            upstream_latency_ms: None,
            request_bytes: 0,
            response_bytes: 0,
            client_ip: None,
            user_agent: None,
            session_id: None,
            end_user: None,
            trace_id: None,
            outcome: crate::event::Outcome::Proxied,
            plan: None,
            team: None,
            use_case: None,
            model: None,
            tokens_in: None,
            tokens_out: None,
            cost_usd: None,
        };
        assert!(sink.offer(event.clone()));
        assert!(sink.offer(event.clone()));
        assert!(
            !sink.offer(event.clone()),
            "the third does not fit and must not block"
        );
        let s = stats.snapshot();
        assert_eq!((s.offered, s.dropped), (3, 1));
        assert!(rx.try_recv().is_ok());
        assert!(
            sink.offer(event.clone()),
            "room again once the pipeline drains"
        );
        drop(rx);
        assert!(!sink.offer(event), "a stopped pipeline drops too");
        assert_eq!(stats.snapshot().dropped, 2);
    }
}

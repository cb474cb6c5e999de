//! The hand-off between the hot path and the event pipeline.
//!
//! The gateway offers each event to a bounded channel and never waits: when the pipeline falls
//! behind, the event is dropped and counted. Traffic is never slowed by analytics.
//!
//! With a [`Ring`] ([`EventSink::durable`]), each offered event is also copied into a
//! memory-mapped file, which survives a crash of the process; the receiver's
//! [`EventReceiver::commit`] releases what the pipeline has stored, and the next start replays
//! the rest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::event::Event;
use crate::record;
use crate::ring::Ring;

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
    /// When (wall-clock ms) events more than an hour old were last folded: a backfill or an
    /// import of history is arriving, and until it ends the recent hours look emptier than
    /// they will be (see [`PipelineStats::backfilling`]). 0: never.
    pub backdated_at_ms: AtomicI64,
}

/// Events older than this when they are folded are history arriving, not live traffic.
pub const BACKDATED_MS: i64 = 3_600_000;
/// How long after the last back-dated batch history is taken to be still arriving. A backfill
/// posts its batches back to back; this is several of its gaps even on a loaded machine.
pub const BACKFILL_QUIET_MS: i64 = 5_000;

impl PipelineStats {
    /// Notes that a batch is being folded; marks a backfill when it holds history.
    pub fn note_folded(&self, events: &[Event], now_ms: i64) {
        if events.iter().any(|e| e.ts_ms < now_ms - BACKDATED_MS) {
            self.backdated_at_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Whether history was folded within the last [`BACKFILL_QUIET_MS`]: judging the recent
    /// hours now would take the part not yet arrived for a drop.
    pub fn backfilling(&self, now_ms: i64) -> bool {
        let at = self.backdated_at_ms.load(Ordering::Relaxed);
        at > 0 && now_ms - at < BACKFILL_QUIET_MS
    }

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
    ring: Option<Arc<Mutex<Ring>>>,
}

/// The receiving side, drained by the pipeline's writer.
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::Receiver<Event>,
    /// Events the ring held at start-up, served before new ones.
    replay: VecDeque<Event>,
    ring: Option<Arc<Mutex<Ring>>>,
    /// Events handed out since the last commit.
    uncommitted: usize,
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    // A panic while holding the lock cannot leave the ring half-updated in a way a reader
    // trusts: frames are checked when replayed.
    ring.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventSink {
    /// A sink with room for `capacity` events, and the receiver the pipeline drains.
    pub fn bounded(capacity: usize, stats: Arc<PipelineStats>) -> (EventSink, EventReceiver) {
        Self::with_ring(capacity, stats, None, Vec::new())
    }

    /// Like [`EventSink::bounded`], every event also held in `ring` until the receiver commits
    /// it. `replayed` (from [`Ring::open`]) is handed out first.
    pub fn durable(
        capacity: usize,
        stats: Arc<PipelineStats>,
        ring: Ring,
        replayed: Vec<Event>,
    ) -> (EventSink, EventReceiver) {
        Self::with_ring(capacity, stats, Some(Arc::new(Mutex::new(ring))), replayed)
    }

    fn with_ring(
        capacity: usize,
        stats: Arc<PipelineStats>,
        ring: Option<Arc<Mutex<Ring>>>,
        replayed: Vec<Event>,
    ) -> (EventSink, EventReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let receiver = EventReceiver {
            rx,
            replay: replayed.into(),
            ring: ring.clone(),
            uncommitted: 0,
        };
        (EventSink { tx, stats, ring }, receiver)
    }

    /// Hands an event over without waiting. Returns false when it had to be dropped.
    pub fn offer(&self, event: Event) -> bool {
        self.stats.offered.fetch_add(1, Ordering::Relaxed);
        let sent = match &self.ring {
            None => self.tx.try_send(event).is_ok(),
            Some(ring) => self.offer_durably(ring, event),
        };
        if !sent {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Copies the event into the ring, then queues it, under the ring's lock so that the ring
    /// and the channel hold events in the same order. The lock covers a `memcpy` of a few
    /// hundred bytes and a `try_send`: nothing that waits.
    fn offer_durably(&self, ring: &Mutex<Ring>, event: Event) -> bool {
        thread_local! {
            static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAME.with(|frame| {
            let mut frame = frame.borrow_mut();
            frame.clear();
            record::encode_frame(&event, &mut frame);
            let mut ring = lock(ring);
            if !ring.push(&frame) {
                return false;
            }
            if self.tx.try_send(event).is_err() {
                ring.unpush();
                return false;
            }
            true
        })
    }
}

impl EventReceiver {
    /// The next event; `None` once every sink is dropped and everything was handed out.
    pub async fn recv(&mut self) -> Option<Event> {
        let next = match self.replay.pop_front() {
            Some(e) => Some(e),
            None => self.rx.recv().await,
        };
        self.uncommitted += usize::from(next.is_some());
        next
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        let next = match self.replay.pop_front() {
            Some(e) => Ok(e),
            None => self.rx.try_recv(),
        };
        self.uncommitted += usize::from(next.is_ok());
        next
    }

    /// Every event received so far is stored (or was counted as failed): the ring may reuse
    /// its room. Until this is called the events are replayed after a crash.
    pub fn commit(&mut self) {
        if let Some(ring) = &self.ring {
            lock(ring).release(self.uncommitted);
        }
        self.uncommitted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_marks_a_backfill_for_a_few_seconds_and_live_traffic_does_not() {
        let stats = PipelineStats::default();
        let now = 1_800_000_000_000;
        let at = |ts_ms| Event { ts_ms, ..event() };
        stats.note_folded(&[at(now - 1_000), at(now - 60_000)], now);
        assert!(
            !stats.backfilling(now),
            "live and a minute late: not history"
        );
        stats.note_folded(&[at(now - 1_000), at(now - 3 * BACKDATED_MS)], now);
        assert!(stats.backfilling(now));
        assert!(stats.backfilling(now + BACKFILL_QUIET_MS - 1));
        assert!(
            !stats.backfilling(now + BACKFILL_QUIET_MS),
            "the backfill ended"
        );
    }

    fn event() -> Event {
        crate::event::Event {
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
            close_code: None,
            call_hash: None,
            tokens_cached: None,
            tokens_cache_write: None,
            tokens_reasoning: None,
            tls_fp: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let stats = Arc::new(PipelineStats::default());
        let (sink, mut rx) = EventSink::bounded(2, stats.clone());
        let event = event();
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

    #[test]
    fn a_durable_sink_replays_what_was_not_committed() {
        let path = std::env::temp_dir().join(format!(
            "clientele-sink-ring-{}",
            crate::event::random_id128()
        ));
        let stats = Arc::new(PipelineStats::default());
        let (ring, replay) = Ring::open(&path, 1 << 16).unwrap();
        assert!(replay.events.is_empty());
        let (sink, mut rx) = EventSink::durable(16, stats.clone(), ring, replay.events);
        let mut e = event();
        for i in 0..3 {
            e.id = format!("e{i}");
            assert!(sink.offer(e.clone()));
        }
        assert_eq!(rx.try_recv().unwrap().id, "e0");
        assert_eq!(rx.try_recv().unwrap().id, "e1");
        rx.commit();
        // The process dies here: e2 was handed over but never stored.
        drop((sink, rx));
        let (ring, replay) = Ring::open(&path, 1 << 16).unwrap();
        let ids: Vec<_> = replay.events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, ["e2"]);
        let (sink, mut rx) = EventSink::durable(16, stats, ring, replay.events);
        e.id = "e3".into();
        assert!(sink.offer(e));
        assert_eq!(rx.try_recv().unwrap().id, "e2", "replayed first");
        assert_eq!(rx.try_recv().unwrap().id, "e3");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_full_ring_drops_and_counts() {
        let path = std::env::temp_dir().join(format!(
            "clientele-sink-ring-{}",
            crate::event::random_id128()
        ));
        let stats = Arc::new(PipelineStats::default());
        let (ring, _) = Ring::open(&path, 1024).unwrap();
        let (sink, mut rx) = EventSink::durable(1_000, stats.clone(), ring, Vec::new());
        let accepted = (0..100).filter(|_| sink.offer(event())).count();
        assert!(accepted > 0 && accepted < 100);
        assert_eq!(stats.snapshot().dropped, 100 - accepted as u64);
        for _ in 0..accepted {
            rx.try_recv().unwrap();
        }
        rx.commit();
        assert!(sink.offer(event()), "room again once committed");
        let _ = std::fs::remove_file(path);
    }
}

//! The way events reach ClickHouse without the gateway or the pipeline ever waiting for it.
//!
//! [`SpooledLog`] is the node's event store with `backend = "clickhouse"`: every batch is first
//! appended to the [`Spool`] (a local file of checksummed frames, bounded, in arrival order),
//! then to the node's own [`EventLog`], which stays the node's durable, exactly-once record
//! (rollups, drill-down and start-up read it). [`ship`] sends the spool to ClickHouse in
//! batches of up to [`SHIP_EVENTS`], about every [`SHIP_EVERY`], and moves a persisted cursor
//! only after ClickHouse acknowledged the insert.
//!
//! Exactness: the spool is written before the log, so a crash between the two replays the
//! batch (the hand-off ring) into the spool again, never leaves a stored event unshipped. What
//! is sent twice (that replay, a batch resent after a crash or a timeout whose insert had
//! landed) is dropped by [`ClickHouseStore::append_from`]'s existence check: none lost, none
//! doubled. An outage only grows the spool; past its bound, batches are dropped from the spool
//! (counted in [`SpoolStats::dropped`], still in the node's own log).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clientele_core::event::Event;
use clientele_core::record;

use super::{ClickHouseStore, DAY_MS};
use crate::{EventCursor, EventLog, EventQuery, EventStore, Result, StoreError, StoredRollup};

/// Events sent in one shipment (split into one insert per day of event time).
pub const SHIP_EVENTS: usize = 50_000;
/// How often the shipper looks for new events when it has caught up.
pub const SHIP_EVERY: Duration = Duration::from_millis(500);
/// The longest wait between attempts while ClickHouse is away: bounds how long after its return
/// the spool starts draining.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The default bound of the spool on disk.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// What the spool did, for `/metrics`.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Events waiting to be sent.
    pub pending: AtomicU64,
    /// Bytes of the spool file not yet sent.
    pub pending_bytes: AtomicU64,
    /// Events ClickHouse took (new ids only).
    pub shipped: AtomicU64,
    /// Events sent that ClickHouse already had (resends, duplicates): not inserted again.
    pub already_there: AtomicU64,
    /// Events not spooled because the spool was full (they stay in the node's own log).
    pub dropped: AtomicU64,
    /// Whether the last call to ClickHouse succeeded.
    pub up: AtomicBool,
}

struct State {
    file: File,
    cursor_path: PathBuf,
    /// Length of the spool file.
    len: u64,
    /// Where the next shipment starts.
    offset: u64,
    /// The next insert number this node uses (reserved before each insert).
    next_seq: u64,
}

/// The local file of events not yet in ClickHouse, and its cursor.
pub struct Spool {
    state: Mutex<State>,
    max_bytes: u64,
    pub stats: SpoolStats,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. A frame cut short by a crash at the end is cut
    /// off; the cursor is read back.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("spool");
        let cursor_path = dir.join("cursor");
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let (mut offset, next_seq) = match std::fs::read_to_string(&cursor_path) {
            Ok(text) => {
                let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
                match (f.next().flatten(), f.next().flatten()) {
                    (Some(o), Some(s)) => (o, s),
                    _ => {
                        return Err(StoreError::Backend(format!(
                            "{}: unreadable cursor `{}`",
                            cursor_path.display(),
                            text.trim()
                        )));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 1),
            Err(e) => return Err(io(&cursor_path, e)),
        };
        let mut len = file.metadata().map_err(|e| io(&path, e))?.len();
        // A crash after emptying the file and before writing the cursor leaves it past the end.
        if offset > len {
            offset = 0;
        }
        // Count what waits, and cut a torn last frame.
        let mut pending = 0u64;
        let mut bytes = vec![0; usize::try_from(len - offset).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| io(&path, e))?;
        let mut at = 0;
        while at < bytes.len() {
            match record::read_frame(&bytes[at..]) {
                Ok((_, n)) => {
                    at += n;
                    pending += 1;
                }
                Err(_) => break,
            }
        }
        if (at as u64) < len - offset {
            tracing::warn!(file = %path.display(), offset = offset + at as u64, "the ClickHouse spool ends in a torn or damaged frame; cut there");
            len = offset + at as u64;
            file.set_len(len).map_err(|e| io(&path, e))?;
        }
        let spool = Spool {
            state: Mutex::new(State {
                file,
                cursor_path,
                len,
                offset,
                next_seq,
            }),
            max_bytes,
            stats: SpoolStats::default(),
        };
        spool.stats.pending.store(pending, Ordering::Relaxed);
        spool
            .stats
            .pending_bytes
            .store(len - offset, Ordering::Relaxed);
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves the state as consistent as the file: keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `events`; false (and counted) when the spool is full. Blocking: call it off the
    /// async workers.
    pub fn push(&self, events: &[Event]) -> Result<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            record::encode_frame(e, &mut buf);
        }
        let mut s = self.lock();
        if s.len - s.offset + buf.len() as u64 > self.max_bytes {
            self.stats
                .dropped
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            return Ok(false);
        }
        if let Err(e) = s.file.write_all(&buf) {
            // Cut back to the last whole frame, so the file stays readable.
            let len = s.len;
            let _ = s.file.set_len(len);
            return Err(StoreError::Backend(format!("ClickHouse spool: {e}")));
        }
        s.len += buf.len() as u64;
        self.stats
            .pending
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats
            .pending_bytes
            .store(s.len - s.offset, Ordering::Relaxed);
        Ok(true)
    }

    /// Up to `max` events from the cursor, and the offset after them.
    pub fn peek(&self, max: usize) -> Result<(Vec<Event>, u64)> {
        let s = self.lock();
        let want = (s.len - s.offset).min(64 << 20);
        let mut bytes = vec![0; usize::try_from(want).unwrap_or(0)];
        s.file
            .read_exact_at(&mut bytes, s.offset)
            .map_err(|e| StoreError::Backend(format!("ClickHouse spool: {e}")))?;
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() && events.len() < max {
            let (payload, n) = match record::read_frame(&bytes[at..]) {
                Ok(f) => f,
                // The last frame of a 64 MiB read may be cut: the next peek starts at it.
                Err(record::RecordError::Truncated) => break,
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "ClickHouse spool: damaged frame at {}: {e}",
                        s.offset + at as u64
                    )));
                }
            };
            events.push(
                record::decode(payload)
                    .map_err(|e| StoreError::Backend(format!("ClickHouse spool: {e}")))?,
            );
            at += n;
        }
        Ok((events, s.offset + at as u64))
    }

    /// Reserves `count` insert numbers: persisted before the inserts use them, so a number is
    /// never reused after a crash (other nodes tail by it).
    pub fn reserve(&self, count: u64) -> Result<u64> {
        let mut s = self.lock();
        let first = s.next_seq;
        s.next_seq += count;
        Self::save(&s)?;
        Ok(first)
    }

    /// The events up to `offset` are in ClickHouse: moves the cursor, and empties the file when
    /// everything was sent.
    pub fn commit(&self, offset: u64, events: u64) -> Result<()> {
        let mut s = self.lock();
        s.offset = offset.min(s.len);
        if s.offset == s.len {
            s.file
                .set_len(0)
                .map_err(|e| StoreError::Backend(format!("ClickHouse spool: {e}")))?;
            s.len = 0;
            s.offset = 0;
        }
        Self::save(&s)?;
        let _ = self
            .stats
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(events))
            });
        self.stats
            .pending_bytes
            .store(s.len - s.offset, Ordering::Relaxed);
        Ok(())
    }

    fn save(s: &State) -> Result<()> {
        // Written aside and renamed: a crash leaves the old cursor or the new one, whole.
        let tmp = s.cursor_path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}\n", s.offset, s.next_seq))
            .and_then(|()| std::fs::rename(&tmp, &s.cursor_path))
            .map_err(|e| io(&s.cursor_path, e))
    }
}

/// Sends the spool to ClickHouse until `shutdown`: a shipment of up to [`SHIP_EVENTS`] events,
/// numbered for other nodes' tails, as one insert per day; the cursor moves after the insert
/// is acknowledged. Failures are retried with backoff (1 s doubling to [`MAX_BACKOFF`]), said once per
/// 10 s; nothing else waits for this.
pub async fn ship(
    spool: Arc<Spool>,
    ch: ClickHouseStore,
    node: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let failing = clientele_core::ratelog::Every::new(Duration::from_secs(10));
    let mut backoff = Duration::from_secs(1);
    let mut wait = SHIP_EVERY;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = SHIP_EVERY;
        loop {
            match ship_once(&spool, &ch, &node).await {
                Ok(0) => break,
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    spool.stats.up.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    spool.stats.up.store(false, Ordering::Relaxed);
                    clientele_core::warn_every!(
                        failing,
                        error = %e,
                        pending = spool.stats.pending.load(Ordering::Relaxed),
                        "cannot send events to ClickHouse; they wait in the local spool"
                    );
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
    }
}

/// One shipment; returns how many events it covered (0: nothing waiting).
pub async fn ship_once(spool: &Arc<Spool>, ch: &ClickHouseStore, node: &str) -> Result<usize> {
    let s = spool.clone();
    let (events, end) = tokio::task::spawn_blocking(move || s.peek(SHIP_EVENTS))
        .await
        .map_err(|e| StoreError::Backend(format!("spool task failed: {e}")))??;
    if events.is_empty() {
        return Ok(0);
    }
    let n = events.len();
    let days: BTreeSet<i64> = events.iter().map(|e| e.ts_ms.div_euclid(DAY_MS)).collect();
    let s = spool.clone();
    let first = tokio::task::spawn_blocking(move || s.reserve(days.len() as u64))
        .await
        .map_err(|e| StoreError::Backend(format!("spool task failed: {e}")))??;
    let (fresh, _) = ch.append_from(events, node, first).await?;
    spool
        .stats
        .shipped
        .fetch_add(fresh.len() as u64, Ordering::Relaxed);
    spool
        .stats
        .already_there
        .fetch_add((n - fresh.len()) as u64, Ordering::Relaxed);
    let s = spool.clone();
    tokio::task::spawn_blocking(move || s.commit(end, n as u64))
        .await
        .map_err(|e| StoreError::Backend(format!("spool task failed: {e}")))??;
    Ok(n)
}

/// The node's event store with `backend = "clickhouse"`: the spool, then the node's own log.
/// Every read is the log's, which holds this node's events and those tailed from the others.
#[derive(Clone)]
pub struct SpooledLog {
    pub log: EventLog,
    pub spool: Arc<Spool>,
    /// Retention applies to ClickHouse's copy too (no `TTL` on 18.16): its day partitions are
    /// dropped with the log's days.
    pub ch: ClickHouseStore,
}

#[async_trait]
impl EventStore for SpooledLog {
    async fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        let spool = self.spool.clone();
        // The spool first: a crash between the two then resends rather than loses.
        let events = tokio::task::spawn_blocking(move || spool.push(&events).map(|_| events))
            .await
            .map_err(|e| StoreError::Backend(format!("spool task failed: {e}")))??;
        self.log.append_events(events).await
    }

    async fn scan_events(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> Result<(Vec<Event>, Option<EventCursor>)> {
        self.log.scan_events(from_ms, after, page).await
    }

    async fn recent_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        self.log.recent_events(query).await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64> {
        let n = self.log.prune_events(before_ms).await?;
        // Every node prunes; dropping a partition already gone is nothing. A failure is said
        // and retried at the next hourly prune.
        if let Err(e) = self.ch.prune_events(before_ms).await {
            tracing::warn!(error = %e, "pruning raw events in ClickHouse failed; retried next hour");
        }
        Ok(n)
    }

    async fn event_count(&self) -> Result<u64> {
        self.log.event_count().await
    }

    async fn day_counts(&self) -> Result<Vec<(i64, u64)>> {
        self.log.day_counts().await
    }

    async fn archive_rollups(&self, rows: Vec<StoredRollup>, until_ms: i64) -> Result<()> {
        self.log.archive_rollups(rows, until_ms).await
    }

    async fn archived_rollups(&self) -> Result<(Vec<StoredRollup>, i64)> {
        self.log.archived_rollups().await
    }

    async fn prune_rollups(&self, tier: u8, before_ms: i64) -> Result<u64> {
        self.log.prune_rollups(tier, before_ms).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testsuite::event;

    fn dir() -> tempfile_dir::Dir {
        tempfile_dir::Dir::new()
    }

    /// A folder removed when dropped (the crate has no tempfile dependency).
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "clientele-spool-{}",
                    clientele_core::event::random_id128()
                ));
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_spool_keeps_its_cursor_and_empties_once_everything_is_sent() {
        let d = dir();
        let spool = Spool::open(&d.0, 1 << 20).unwrap();
        let batch: Vec<Event> = (0..10)
            .map(|i| event(&format!("e{i}"), "acme", i, 200))
            .collect();
        assert!(spool.push(&batch).unwrap());
        let (got, end) = spool.peek(4).unwrap();
        assert_eq!(got, batch[..4]);
        assert_eq!(spool.reserve(2).unwrap(), 1);
        spool.commit(end, 4).unwrap();
        drop(spool);
        // Reopened: the cursor and the insert numbers survive; the rest is still waiting.
        let spool = Spool::open(&d.0, 1 << 20).unwrap();
        assert_eq!(spool.stats.pending.load(Ordering::Relaxed), 6);
        let (got, end) = spool.peek(100).unwrap();
        assert_eq!(got, batch[4..]);
        assert_eq!(spool.reserve(1).unwrap(), 3, "numbers are never reused");
        spool.commit(end, 6).unwrap();
        assert_eq!(std::fs::metadata(d.0.join("spool")).unwrap().len(), 0);
        assert!(spool.peek(100).unwrap().0.is_empty());
    }

    #[test]
    fn a_torn_last_frame_is_cut_and_a_full_spool_drops_and_counts() {
        let d = dir();
        let spool = Spool::open(&d.0, 1 << 20).unwrap();
        spool
            .push(&[event("a", "acme", 1, 200), event("b", "acme", 2, 200)])
            .unwrap();
        drop(spool);
        // A crash in the middle of a write leaves half a frame at the end.
        let path = d.0.join("spool");
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let spool = Spool::open(&d.0, 400).unwrap();
        assert_eq!(spool.peek(10).unwrap().0, [event("a", "acme", 1, 200)]);
        // Past the bound, a batch is refused whole and counted.
        let big: Vec<Event> = (0..10)
            .map(|i| event(&format!("x{i}"), "acme", i, 200))
            .collect();
        assert!(!spool.push(&big).unwrap());
        assert_eq!(spool.stats.dropped.load(Ordering::Relaxed), 10);
        assert_eq!(spool.peek(10).unwrap().0.len(), 1);
    }
}

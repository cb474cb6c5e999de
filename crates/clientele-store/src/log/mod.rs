//! The embedded event store: raw events in an append-only log of checksummed binary records,
//! one set of segment files per UTC day of event time, instead of a SQLite row per event.
//!
//! - **Appends** encode a batch once and write it with one `pwrite` per day touched. When
//!   [`EventStore::append_events`] returns, the events are in the kernel's page cache: a crash of
//!   the process loses none of them. A background thread `fdatasync`s written segments every
//!   [`FSYNC_INTERVAL`], so a power loss loses at most that much.
//! - **Duplicates** are found by 128-bit fingerprints of event ids, exactly, for every stored
//!   day, in memory that does not grow with traffic. The gateway's ids carry their event's time
//!   (*time ids*, `index::time_id_ms`): only the last [`RECENT_MINUTES`]' fingerprints are kept,
//!   by minute, and an older one is looked for in the blocks whose time ids cover its
//!   millisecond (read back, once per block and batch). Any other id (a client's, a content
//!   hash) is a *plain id*: its day's fingerprints are kept for at most [`ID_DAYS`] days at a
//!   time (today's, yesterday's, and the days a backfill touches), and a day not in memory is
//!   read back from its segments when a batch touches it. Keeping every id of three days, as
//!   before, held 20-34 bytes per event: gigabytes a day for a busy gateway.
//! - **Drill-down** reads only the blocks whose index entry (time range, status classes, a
//!   Bloom filter of consumers) may hold the consumer, newest first, and stops once the
//!   answer is complete.
//! - **Retention** deletes the files of whole days.
//! - **Start-up** reads every segment once, checking each frame's checksum. A segment that
//!   fails is reported with its file and offset; what precedes the damage is kept, what follows
//!   is never read, and new events go to a new segment.
//!
//! The rollup archive is not raw events: those calls go to the SQLite store given at open.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use clientele_core::event::Event;
use clientele_core::record;
use clientele_core::time::DAY_MS;

use crate::{EventCursor, EventQuery, EventStore, Result, SqliteStore, StoreError, StoredRollup};

mod index;
mod read;
mod segment;

#[cfg(test)]
use index::{ConsumerProbe, classes_of};
use index::{IdSet, fingerprint, time_id_ms};
#[cfg(test)]
use segment::HEADER_LEN;
use segment::Segment;

pub use segment::MAX_SEGMENT_BYTES;

/// How often written segments are flushed to the disk: the most a power loss can take.
pub const FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Days whose plain id fingerprints are held in memory at once (16 bytes and a little per
/// event with a plain id).
pub const ID_DAYS: usize = 3;
/// Minutes of time id fingerprints held in memory, by the minute the ids carry: duplicates of
/// the gateway's own events come from a replay of its ring or a retried batch, seconds later.
pub const RECENT_MINUTES: i64 = 3;
const MINUTE_MS: i64 = 60_000;

/// A segment that failed its checksum at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// The segment log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    archive: SqliteStore,
    damaged: Vec<SegmentDamage>,
}

#[derive(Default)]
struct State {
    days: BTreeMap<i64, Day>,
    next_id: u32,
    /// Bumped by every append; orders days by last use for evicting id sets.
    tick: u64,
    /// Fingerprints of the time ids stored, by the minute they carry, from `covered_from` on:
    /// every stored time id of those minutes is here.
    recent: BTreeMap<i64, IdSet>,
    /// The first minute `recent` holds completely; older time ids are looked for on disk.
    covered_from: i64,
    /// Segments written since the last flush.
    dirty: BTreeMap<u32, Arc<File>>,
    /// A segment was created or deleted since the last flush of the folder.
    dir_dirty: bool,
}

#[derive(Default)]
struct Day {
    segments: Vec<Segment>,
    /// Fingerprints of the day's ids, when loaded.
    ids: Option<IdSet>,
    used: u64,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

fn backend(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

impl EventLog {
    /// Opens (creating if needed) the log in `dir`, checking every segment. Archived rollups
    /// are kept in `archive`.
    pub fn open(dir: &Path, archive: SqliteStore) -> Result<EventLog> {
        std::fs::create_dir_all(dir).map_err(|e| {
            backend(
                "cannot create the event log folder",
                dir,
                format!("{e}; check [storage].data_dir and its permissions"),
            )
        })?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| backend("cannot read", dir, e))? {
            let entry = entry.map_err(|e| backend("cannot read", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((day, seq)) = segment::parse_name(&name) {
                names.push((day, seq, entry.path()));
            }
        }
        names.sort();
        // The newest days' ids are collected while their segments are checked anyway; older
        // days are read back only if a batch touches them.
        let mut newest: Vec<i64> = names.iter().map(|(d, _, _)| *d).collect();
        newest.dedup();
        let newest = newest.split_off(newest.len().saturating_sub(ID_DAYS));
        let mut state = State::default();
        let mut damaged = Vec::new();
        for (day, seq, path) in names {
            let id = state.next_id;
            state.next_id += 1;
            let entry = state.days.entry(day).or_default();
            let mut ids = newest
                .contains(&day)
                .then(|| entry.ids.take().unwrap_or_default());
            let opened = Segment::open(&path, day, seq, id, |head| {
                if let Some(ids) = ids.as_mut() {
                    if time_id_ms(head.id, head.ts_ms).is_none() {
                        ids.insert(fingerprint(head.id));
                    }
                }
            });
            entry.ids = ids;
            match opened {
                Ok((seg, damage)) => {
                    if let Some(d) = damage {
                        tracing::error!(file = %path.display(), offset = d.offset, reason = %d.reason, kept_events = seg.count, "event segment fails its checksum; the rest of the file is skipped and new events go to a new segment");
                        damaged.push(SegmentDamage {
                            file: path.clone(),
                            offset: d.offset,
                            reason: d.reason,
                        });
                    }
                    entry.segments.push(seg);
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot open event segment; skipped");
                    damaged.push(SegmentDamage {
                        file: path.clone(),
                        offset: 0,
                        reason: e.to_string(),
                    });
                }
            }
        }
        // Nothing is in `recent` yet: it covers only minutes after any time id stored (an
        // event from a fast clock may carry a minute ahead of now) and after this one.
        let newest_id_ms = state
            .days
            .values()
            .flat_map(|d| d.segments.iter())
            .flat_map(|s| s.blocks.iter())
            .map(|b| b.max_id_ms)
            .max()
            .unwrap_or(i64::MIN);
        state.covered_from = clientele_core::time::now_ms()
            .max(newest_id_ms)
            .div_euclid(MINUTE_MS)
            .saturating_add(1);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            archive,
            damaged,
        });
        start_flusher(Arc::downgrade(&inner));
        Ok(EventLog { inner })
    }

    /// Segments that failed their checksum when the log was opened.
    pub fn damaged(&self) -> &[SegmentDamage] {
        &self.inner.damaged
    }

    /// Id fingerprints held in memory: the plain ids of the days loaded and the recent minutes'
    /// time ids.
    pub fn fingerprints_in_memory(&self) -> usize {
        let st = self.inner.lock();
        st.days
            .values()
            .filter_map(|d| d.ids.as_ref())
            .map(IdSet::len)
            .sum::<usize>()
            + st.recent.values().map(IdSet::len).sum::<usize>()
    }

    /// Days whose plain id fingerprints are in memory now (at most [`ID_DAYS`] between appends).
    pub fn loaded_id_days(&self) -> Vec<i64> {
        let st = self.inner.lock();
        st.days
            .iter()
            .filter(|(_, d)| d.ids.is_some())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Moves the events of an older data folder's SQLite `events` table into the log, then
    /// empties that table. Safe to repeat after a crash: duplicates are ignored.
    pub async fn adopt_sqlite_events(&self, old: &SqliteStore) -> Result<u64> {
        let mut moved = 0u64;
        if old.event_count().await? == 0 {
            return Ok(0);
        }
        let mut cursor = None;
        loop {
            let (page, next) = old.scan_events(i64::MIN, cursor, 50_000).await?;
            moved += page.len() as u64;
            self.append_events(page).await?;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        self.flush().await?;
        old.prune_events(i64::MAX).await?;
        Ok(moved)
    }

    /// Flushes written segments to the disk now (the flusher does it every [`FSYNC_INTERVAL`]).
    pub async fn flush(&self) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || inner.flush()).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

/// Flushes every [`FSYNC_INTERVAL`] until the log is dropped.
fn start_flusher(inner: Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("clientele-fsync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FSYNC_INTERVAL);
                let Some(inner) = inner.upgrade() else { return };
                if let Err(e) = inner.flush() {
                    tracing::warn!(error = %e, "flushing the event log failed; will retry");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the event log's flusher; segments are flushed only at shutdown");
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "flushing the event log at shutdown failed");
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush(&self) -> Result<()> {
        let (files, dir_dirty) = {
            let mut st = self.lock();
            let dir_dirty = std::mem::take(&mut st.dir_dirty);
            (std::mem::take(&mut st.dirty), dir_dirty)
        };
        for file in files.values() {
            file.sync_data()
                .map_err(|e| backend("cannot flush a segment in", &self.dir, e))?;
        }
        if dir_dirty {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| backend("cannot flush", &self.dir, e))?;
        }
        Ok(())
    }

    fn append(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        self.append_at(events, clientele_core::time::now_ms())
    }

    /// [`Inner::append`] at the wall-clock time `now_ms`, which moves the recent window.
    fn append_at(&self, events: Vec<Event>, now_ms: i64) -> Result<Vec<Event>> {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        st.advance_recent(now_ms);
        let plans = st.plan_append(&events, tick)?;
        st.write_plans(&self.dir, &plans)?;
        st.commit_plans(&plans, &events);
        st.evict_id_days(tick);
        let mut fresh: Vec<usize> = plans
            .values()
            .flat_map(|p| p.frames.iter().map(|f| f.2))
            .collect();
        fresh.sort_unstable();
        let mut keep = vec![false; events.len()];
        for i in fresh {
            keep[i] = true;
        }
        Ok(events
            .into_iter()
            .zip(keep)
            .filter_map(|(e, k)| k.then_some(e))
            .collect())
    }
}

/// The new frames of one append for one day.
#[derive(Default)]
struct DayWrite {
    buf: Vec<u8>,
    /// (start in `buf`, end in `buf`, index of the event in the batch).
    frames: Vec<(u64, u64, usize)>,
    /// Each new frame's fingerprint, with the minute its id carries when it is a time id.
    fingerprints: Vec<(u128, Option<i64>)>,
}

impl State {
    /// Phase one of an append: which events are new, encoded per day. Nothing changes on disk.
    fn plan_append(&mut self, events: &[Event], tick: u64) -> Result<BTreeMap<i64, DayWrite>> {
        let mut plans: BTreeMap<i64, DayWrite> = BTreeMap::new();
        let mut in_batch = IdSet::with_capacity_and_hasher(events.len(), Default::default());
        // Blocks read back for older time ids, once per batch: (day, segment, block).
        let mut read_back: BTreeMap<(i64, usize, usize), IdSet> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let day = day_of(e.ts_ms);
            let fp = fingerprint(&e.id);
            let time_id = time_id_ms(&e.id, e.ts_ms);
            let minute = time_id.map(|ms| ms.div_euclid(MINUTE_MS));
            let known = match (time_id, minute) {
                (Some(_), Some(m)) if m >= self.covered_from => {
                    self.recent.get(&m).is_some_and(|ids| ids.contains(&fp))
                }
                (Some(ms), _) => self.on_disk(day, ms, fp, &mut read_back)?,
                _ => self.day_ids(day, tick)?.contains(&fp),
            };
            if known || !in_batch.insert(fp) {
                continue;
            }
            let plan = plans.entry(day).or_default();
            let start = plan.buf.len() as u64;
            record::encode_frame(e, &mut plan.buf);
            plan.frames.push((start, plan.buf.len() as u64, i));
            plan.fingerprints.push((fp, minute));
        }
        Ok(plans)
    }

    /// Whether a time id carrying `ms` with fingerprint `fp` is stored in `day`: looked for in
    /// the blocks whose time ids cover `ms`, each read back at most once per batch.
    fn on_disk(
        &self,
        day: i64,
        ms: i64,
        fp: u128,
        read_back: &mut BTreeMap<(i64, usize, usize), IdSet>,
    ) -> Result<bool> {
        let Some(entry) = self.days.get(&day) else {
            return Ok(false);
        };
        for (si, seg) in entry.segments.iter().enumerate() {
            for (bi, block) in seg.blocks.iter().enumerate() {
                if !block.may_hold_id_ms(ms) {
                    continue;
                }
                let ids = match read_back.entry((day, si, bi)) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let mut ids = IdSet::default();
                        load_block_ids(seg, block, &mut ids, |_| true)?;
                        v.insert(ids)
                    }
                };
                if ids.contains(&fp) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Moves the recent window to the last [`RECENT_MINUTES`] before `now_ms`; the minutes it
    /// leaves are found on disk from then on.
    fn advance_recent(&mut self, now_ms: i64) {
        let from = now_ms.div_euclid(MINUTE_MS) - RECENT_MINUTES;
        if from > self.covered_from {
            self.covered_from = from;
            self.recent = self.recent.split_off(&from);
        }
    }

    /// The id fingerprints of `day`, read back from its segments when not in memory.
    fn day_ids(&mut self, day: i64, tick: u64) -> Result<&IdSet> {
        let entry = self.days.entry(day).or_default();
        entry.used = tick;
        if entry.ids.is_none() {
            let mut ids = IdSet::default();
            for seg in &entry.segments {
                load_ids(seg, &mut ids)?;
            }
            entry.ids = Some(ids);
        }
        Ok(entry.ids.get_or_insert_default())
    }

    /// Phase two: writes each day's frames at the end of its open segment (a new one when the
    /// open one is full or sealed). If any write fails, those already written are cut back, so
    /// the append either stores the whole batch or nothing.
    fn write_plans(&mut self, dir: &Path, plans: &BTreeMap<i64, DayWrite>) -> Result<()> {
        let mut written: Vec<(i64, usize)> = Vec::new();
        let mut result = Ok(());
        for (&day, plan) in plans {
            match self.segment_for(dir, day, plan.buf.len() as u64) {
                Ok(i) => {
                    let seg = &self.days[&day].segments[i];
                    if let Err(e) = seg.write(&plan.buf) {
                        result = Err(backend("cannot write events to", &seg.path, e));
                        break;
                    }
                    written.push((day, i));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            for (day, i) in written {
                self.days[&day].segments[i].rollback();
            }
        }
        result
    }

    /// The index of the segment of `day` that takes `bytes` more, creating one if needed.
    fn segment_for(&mut self, dir: &Path, day: i64, bytes: u64) -> Result<usize> {
        let next_id = self.next_id;
        let entry = self.days.entry(day).or_default();
        // Frames only ever go to a day's last segment, so a day's segments stay in order.
        if entry.segments.last().is_some_and(|s| s.has_room(bytes)) {
            return Ok(entry.segments.len() - 1);
        }
        let seq = entry.segments.last().map_or(0, |s| s.seq + 1);
        let seg = Segment::create(dir, day, seq, next_id)
            .map_err(|e| backend("cannot create an event segment in", dir, e))?;
        entry.segments.push(seg);
        let i = entry.segments.len() - 1;
        self.next_id += 1;
        self.dir_dirty = true;
        Ok(i)
    }

    /// Phase three, once every write succeeded: the index and the id sets learn the frames.
    fn commit_plans(&mut self, plans: &BTreeMap<i64, DayWrite>, events: &[Event]) {
        for (&day, plan) in plans {
            let Some(entry) = self.days.get_mut(&day) else {
                continue;
            };
            // write_plans chose the last segment of the day for every plan it wrote.
            let Some(seg) = entry.segments.last_mut() else {
                continue;
            };
            let base = seg.len;
            for &(start, end, i) in &plan.frames {
                let e = &events[i];
                let head = record::Head {
                    id: &e.id,
                    ts_ms: e.ts_ms,
                    status: e.status,
                    consumer: e.consumer.as_deref(),
                };
                seg.index(base + start, base + end, &head);
            }
            if seg.len >= MAX_SEGMENT_BYTES {
                seg.sealed = true;
            }
            self.dirty.insert(seg.id, seg.file.clone());
            for &(fp, minute) in &plan.fingerprints {
                match minute {
                    Some(m) if m >= self.covered_from => {
                        self.recent.entry(m).or_default().insert(fp);
                    }
                    // Older time ids are found from their block's range.
                    Some(_) => {}
                    None => {
                        if let Some(ids) = entry.ids.as_mut() {
                            ids.insert(fp);
                        }
                    }
                }
            }
        }
    }

    /// Keeps the id sets of at most [`ID_DAYS`] days, the most recently used.
    fn evict_id_days(&mut self, tick: u64) {
        let mut loaded: Vec<(u64, i64)> = self
            .days
            .iter()
            .filter(|(_, d)| d.ids.is_some())
            .map(|(k, d)| (d.used, *k))
            .collect();
        if loaded.len() <= ID_DAYS {
            return;
        }
        loaded.sort_unstable_by(|a, b| b.cmp(a));
        for &(used, day) in &loaded[ID_DAYS..] {
            debug_assert!(used <= tick);
            if let Some(d) = self.days.get_mut(&day) {
                d.ids = None;
            }
        }
    }
}

/// Adds the plain id fingerprints of a segment's frames to `ids`.
fn load_ids(seg: &Segment, ids: &mut IdSet) -> Result<()> {
    for block in &seg.blocks {
        load_block_ids(seg, block, ids, |head| {
            time_id_ms(head.id, head.ts_ms).is_none()
        })?;
    }
    Ok(())
}

/// Adds the fingerprints of the ids of a block's frames that `want` accepts to `ids`.
fn load_block_ids(
    seg: &Segment,
    block: &index::Block,
    ids: &mut IdSet,
    want: impl Fn(&record::Head<'_>) -> bool,
) -> Result<()> {
    let bytes = segment::read_range(&seg.file, block.start, block.end)
        .map_err(|e| backend("cannot read", &seg.path, e))?;
    let mut at = 0usize;
    while at < bytes.len() {
        let (payload, len) = record::read_frame(&bytes[at..])
            .map_err(|e| backend("event frame damaged in", &seg.path, e))?;
        let head = record::decode_head(payload)
            .map_err(|e| backend("event frame damaged in", &seg.path, e))?;
        if want(&head) {
            ids.insert(fingerprint(head.id));
        }
        at += len;
    }
    Ok(())
}

impl Inner {
    fn prune(&self, before_ms: i64) -> Result<u64> {
        let mut st = self.lock();
        // Days that end at or before the cut: day d covers [d, d + 1) days.
        let keep_from = before_ms.div_euclid(DAY_MS);
        let old: Vec<i64> = st.days.range(..keep_from).map(|(d, _)| *d).collect();
        let mut removed = 0;
        for day in old {
            let Some(entry) = st.days.remove(&day) else {
                continue;
            };
            for seg in entry.segments {
                st.dirty.remove(&seg.id);
                removed += seg.count;
                if let Err(e) = std::fs::remove_file(&seg.path) {
                    tracing::warn!(file = %seg.path.display(), error = %e, "cannot delete an expired event segment");
                }
            }
            st.dir_dirty = true;
        }
        Ok(removed)
    }

    fn day_counts(&self) -> Vec<(i64, u64)> {
        let st = self.lock();
        st.days
            .iter()
            .map(|(day, d)| (day * DAY_MS, d.segments.iter().map(|s| s.count).sum()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn count(&self) -> u64 {
        let st = self.lock();
        st.days
            .values()
            .flat_map(|d| d.segments.iter())
            .map(|s| s.count)
            .sum()
    }
}

#[async_trait]
impl EventStore for EventLog {
    async fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(events);
        }
        let inner = self.inner.clone();
        blocking(move || inner.append(events)).await
    }

    async fn scan_events(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> Result<(Vec<Event>, Option<EventCursor>)> {
        let inner = self.inner.clone();
        blocking(move || inner.scan(from_ms, after, page)).await
    }

    async fn recent_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let inner = self.inner.clone();
        let q = query.clone();
        blocking(move || inner.recent(&q)).await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64> {
        let inner = self.inner.clone();
        blocking(move || inner.prune(before_ms)).await
    }

    async fn event_count(&self) -> Result<u64> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.count())).await
    }

    async fn day_counts(&self) -> Result<Vec<(i64, u64)>> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.day_counts())).await
    }

    async fn archive_rollups(&self, rows: Vec<StoredRollup>, until_ms: i64) -> Result<()> {
        self.inner.archive.archive_rollups(rows, until_ms).await
    }

    async fn archived_rollups(&self) -> Result<(Vec<StoredRollup>, i64)> {
        self.inner.archive.archived_rollups().await
    }

    async fn prune_rollups(&self, tier: u8, before_ms: i64) -> Result<u64> {
        self.inner.archive.prune_rollups(tier, before_ms).await
    }
}

#[cfg(test)]
mod tests;

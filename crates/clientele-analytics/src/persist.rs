//! Closed buckets on disk, read back through a bounded cache.
//!
//! With a [`BucketStore`] attached ([`Engine::attach`]), memory holds only the open minute
//! buckets (and those that closed less than [`GRACE_MS`] ago). Hour and day buckets are not
//! kept open: once an hour has closed, [`Engine::flush`] builds it from its minutes on disk,
//! and a day from its hours. Until then queries read the open hour as its minutes and the open
//! day as its hours (`whole_segments`), so memory follows the series active in the last few
//! minutes, not in the day. [`Engine::flush`] writes every closed minute in one transaction with
//! the names it refers to and the event counts of the days it completes, and only then drops it
//! from memory; each built hour or day is one more transaction. Queries read a persisted
//! bucket back through a cache of encoded parts bounded in bytes (`[analytics].rollup_cache_mib`).
//!
//! An event for a bucket already written (a late or back-dated one) goes into a small in-memory
//! delta that queries add to the persisted bucket, and that the next flush merges into it. So
//! answers are the same whether a bucket was evicted or not.
//!
//! A day's count is written with its day bucket (or with its last deltas), never before: so
//! start-up (see `clientele_app::rollups::restore`) trusts a day whose persisted event count
//! equals the event log's count for that day; any other day with raw events is forgotten and
//! rebuilt from them. A crash therefore loses nothing derived from durable events, and start-up
//! replays only the days not yet complete on disk (today's, typically).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap as HashMap;

use crate::{Bucket, DAY_MS, Engine, MINUTE_MS, Rollup, SeriesKey, State, Tier, ceil_to, floor_to};

/// How long a closed bucket stays in memory before it is written: late events within it are
/// folded in place.
pub const GRACE_MS: i64 = 2 * MINUTE_MS;

/// Closed rollups in memory that make an observer flush at once rather than wait for the
/// housekeeping tick, so a bulk import or the start-up replay of a busy day stays bounded.
pub const FLUSH_ROLLUPS: usize = 200_000;

/// The default of `[analytics].rollup_cache_mib`.
pub const DEFAULT_CACHE_MIB: u64 = 64;

const FORMAT: u8 = 1;

/// Where closed buckets go. Synchronous: the engine calls it from the blocking pool.
pub trait BucketStore: Send + Sync {
    /// Writes names, buckets and completed days in one transaction.
    fn save(&self, save: Save) -> Result<(), String>;
    /// One part of one persisted bucket, as written.
    fn load(&self, tier: Tier, start_ms: i64, part: Part) -> Result<Option<Vec<u8>>, String>;
}

/// Which half of a bucket a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// One rollup per consumer.
    Consumers,
    /// One rollup per (consumer, api, method, route, status class).
    Series,
}

/// One persisted bucket.
#[derive(Debug, Clone)]
pub struct SavedBucket {
    pub tier: Tier,
    pub start_ms: i64,
    pub consumers: Vec<u8>,
    pub series: Vec<u8>,
}

/// What one flush writes.
#[derive(Debug, Clone, Default)]
pub struct Save {
    /// The names with ids `first_name..`.
    pub first_name: u32,
    pub names: Vec<String>,
    pub buckets: Vec<SavedBucket>,
    /// (UTC day start, events folded) of days whose buckets are now all on disk.
    pub days: Vec<(i64, u64)>,
}

/// What is on disk at start-up.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    /// The name table, ids in order.
    pub names: Vec<String>,
    /// Every persisted (tier, start).
    pub buckets: Vec<(Tier, i64)>,
    /// Completed days and their event counts.
    pub days: Vec<(i64, u64)>,
    /// Days to skip when replaying raw events: their buckets on disk already hold them.
    pub trusted_days: BTreeSet<i64>,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    pub buckets: usize,
    pub rollups: usize,
    pub days: usize,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a bucket blob; every read is checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub(crate) fn u64_le(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn id(&mut self) -> Option<u32> {
        u32::try_from(self.varint()?).ok()
    }
}

fn encode_consumers(map: &HashMap<u32, Rollup>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + map.len() * 40);
    out.push(FORMAT);
    put_varint(&mut out, map.len() as u64);
    // Sorted, so the same bucket always encodes to the same bytes.
    let mut rows: Vec<_> = map.iter().collect();
    rows.sort_unstable_by_key(|(c, _)| **c);
    for (c, r) in rows {
        put_varint(&mut out, u64::from(*c));
        r.encode(&mut out);
    }
    out
}

fn encode_series(map: &HashMap<SeriesKey, Rollup>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + map.len() * 48);
    out.push(FORMAT);
    put_varint(&mut out, map.len() as u64);
    let mut rows: Vec<_> = map.iter().collect();
    rows.sort_unstable_by_key(|(k, _)| (k.consumer, k.api, k.method, k.route, k.class));
    for (k, r) in rows {
        for id in [k.consumer, k.api, k.method, k.route] {
            put_varint(&mut out, u64::from(id));
        }
        out.push(k.class);
        r.encode(&mut out);
    }
    out
}

/// Calls `f` with each consumer rollup of a consumers blob, in id order, until it answers
/// false; `None` for bytes this build did not write.
fn walk_consumers(bytes: &[u8], mut f: impl FnMut(u32, &Rollup) -> bool) -> Option<()> {
    let mut r = Reader::new(bytes);
    if r.u8()? != FORMAT {
        return None;
    }
    let n = r.varint()?;
    for _ in 0..n {
        let c = r.id()?;
        let rollup = Rollup::decode(&mut r)?;
        if !f(c, &rollup) {
            return Some(());
        }
    }
    r.buf.is_empty().then_some(())
}

/// Calls `f` with each series rollup of a series blob; `None` for bytes this build did not write.
fn walk_series(bytes: &[u8], mut f: impl FnMut(&SeriesKey, &Rollup)) -> Option<()> {
    let mut r = Reader::new(bytes);
    if r.u8()? != FORMAT {
        return None;
    }
    let n = r.varint()?;
    for _ in 0..n {
        let key = SeriesKey {
            consumer: r.id()?,
            api: r.id()?,
            method: r.id()?,
            route: r.id()?,
            class: r.u8()?,
        };
        f(&key, &Rollup::decode(&mut r)?);
    }
    r.buf.is_empty().then_some(())
}

/// Decodes one part into a bucket holding only that part. `None` for bytes this build did not
/// write.
fn decode(part: Part, bytes: &[u8]) -> Option<Bucket> {
    let mut bucket = Bucket::default();
    match part {
        Part::Consumers => walk_consumers(bytes, |c, r| {
            bucket.consumers.insert(c, r.clone());
            true
        })?,
        Part::Series => walk_series(bytes, |k, r| {
            bucket.series.insert(*k, r.clone());
        })?,
    }
    Some(bucket)
}

/// A bucket as a reader sees it: in memory, or one part of it as read back, decoded as it is
/// walked. Parts stay encoded in the cache (about 40 bytes a rollup instead of 200), so the
/// cache holds weeks of a busy API, and walking one allocates nothing for inline rollups.
pub(crate) enum View<'a> {
    Mem(&'a Bucket),
    Blob(Part, &'a [u8]),
}

impl View<'_> {
    /// Each consumer rollup.
    pub(crate) fn consumers(&self, mut f: impl FnMut(u32, &Rollup)) {
        match self {
            View::Mem(b) => {
                for (c, r) in &b.consumers {
                    f(*c, r);
                }
            }
            View::Blob(Part::Consumers, bytes) => {
                // Checked when loaded, so a walk never stops half-way.
                let _ = walk_consumers(bytes, |c, r| {
                    f(c, r);
                    true
                });
            }
            View::Blob(Part::Series, _) => debug_assert!(false, "consumers of a series part"),
        }
    }

    /// Each series rollup.
    pub(crate) fn series(&self, mut f: impl FnMut(&SeriesKey, &Rollup)) {
        match self {
            View::Mem(b) => {
                for (k, r) in &b.series {
                    f(k, r);
                }
            }
            View::Blob(Part::Series, bytes) => {
                let _ = walk_series(bytes, f);
            }
            View::Blob(Part::Consumers, _) => debug_assert!(false, "series of a consumers part"),
        }
    }

    /// One consumer's rollup, if it has one here.
    pub(crate) fn consumer(&self, consumer: u32, f: impl FnOnce(&Rollup)) {
        match self {
            View::Mem(b) => {
                if let Some(r) = b.consumers.get(&consumer) {
                    f(r);
                }
            }
            View::Blob(Part::Consumers, bytes) => {
                let mut f = Some(f);
                // Ids are in order: stop at the first one past the wanted consumer.
                let _ = walk_consumers(bytes, |c, r| {
                    if c == consumer {
                        if let Some(f) = f.take() {
                            f(r);
                        }
                    }
                    c < consumer
                });
            }
            View::Blob(Part::Series, _) => debug_assert!(false, "consumers of a series part"),
        }
    }
}

/// A cached part: (tier, bucket start, part).
type CacheKey = (u8, i64, Part);

/// A part as read, its bytes and when it was last used.
struct Cached {
    blob: Arc<[u8]>,
    bytes: usize,
    used: u64,
}

/// Decoded buckets, least recently used dropped first once over the byte budget.
struct Cache {
    budget: usize,
    used: usize,
    tick: u64,
    entries: HashMap<CacheKey, Cached>,
}

impl Cache {
    fn get(&mut self, key: CacheKey) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|e| {
            e.used = tick;
            e.blob.clone()
        })
    }

    fn insert(&mut self, key: CacheKey, blob: Arc<[u8]>) {
        // The map entry and the allocation's header, beside the bytes.
        let bytes = blob.len() + 64;
        if bytes > self.budget {
            return;
        }
        self.tick += 1;
        let used = self.tick;
        if let Some(old) = self.entries.insert(key, Cached { blob, bytes, used }) {
            self.used -= old.bytes;
        }
        self.used += bytes;
        if self.used > self.budget {
            // Evict down to 90% at once, so a scan over more than the budget sorts once per
            // tenth of the cache rather than once per bucket.
            let mut by_age: Vec<_> = self.entries.iter().map(|(k, e)| (e.used, *k)).collect();
            by_age.sort_unstable_by_key(|(t, _)| *t);
            for (_, k) in by_age {
                if self.used <= self.budget / 10 * 9 {
                    break;
                }
                if let Some(e) = self.entries.remove(&k) {
                    self.used -= e.bytes;
                }
            }
        }
    }

    fn forget(&mut self, tier: u8, start: i64) {
        for part in [Part::Consumers, Part::Series] {
            if let Some(e) = self.entries.remove(&(tier, start, part)) {
                self.used -= e.bytes;
            }
        }
    }
}

/// What [`Engine::attach`] adds to an engine.
pub(crate) struct Persist {
    store: Arc<dyn BucketStore>,
    cache: Mutex<Cache>,
    /// One flush at a time; the state's write lock is held only while a flush applies.
    flushing: Mutex<()>,
    errors: clientele_core::ratelog::Every,
}

/// Per UTC day: events folded, and how many of them the disk's day mark holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DayCount {
    pub(crate) folded: u64,
    pub(crate) saved: u64,
}

/// The persisted side of the engine's state.
#[derive(Default)]
pub(crate) struct Disk {
    /// Buckets on disk, per tier. A bucket both here and in memory is a delta in memory.
    pub(crate) buckets: [BTreeSet<i64>; 3],
    pub(crate) days: BTreeMap<i64, DayCount>,
    /// Names with ids below this are on disk.
    pub(crate) names_saved: usize,
    pub(crate) trusted_days: BTreeSet<i64>,
}

impl Engine {
    /// (bytes held, budget) of the rollup read cache; `None` without a store attached.
    pub fn rollup_cache_bytes(&self) -> Option<(usize, usize)> {
        let p = self.persist.get()?;
        let cache = p.cache.lock().unwrap_or_else(|e| e.into_inner());
        Some((cache.used, cache.budget))
    }

    /// Persists closed buckets in `store` from now on: memory keeps only the open ones, and
    /// queries read the others back through a cache of `cache_bytes`. `persisted` is what the
    /// store already holds. Call before the first event; an engine already holding names
    /// refuses (their ids would clash with the store's).
    pub fn attach(
        &self,
        store: Arc<dyn BucketStore>,
        persisted: Persisted,
        cache_bytes: usize,
    ) -> Result<(), String> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !state.names.names.is_empty() || self.persist.get().is_some() {
            return Err("attach is called once, before any event".into());
        }
        for name in &persisted.names {
            let id = state.names.names.len() as u32;
            let name: Arc<str> = name.as_str().into();
            state.names.names.push(name.clone());
            // A duplicate name (never written by this engine) keeps its first id.
            state.names.ids.entry(name).or_insert(id);
        }
        state.disk.names_saved = state.names.names.len();
        for (tier, start) in persisted.buckets {
            state.disk.buckets[tier as usize].insert(start);
        }
        for (day, events) in persisted.days {
            state.disk.days.insert(
                day,
                DayCount {
                    folded: events,
                    saved: events,
                },
            );
        }
        state.disk.trusted_days = persisted.trusted_days;
        let persist = Persist {
            store,
            cache: Mutex::new(Cache {
                budget: cache_bytes,
                used: 0,
                tick: 0,
                entries: HashMap::default(),
            }),
            flushing: Mutex::new(()),
            errors: clientele_core::ratelog::Every::new(std::time::Duration::from_secs(60)),
        };
        self.persist
            .set(persist)
            .map_err(|_| "attach is called once".to_string())
    }

    /// Whether buckets are persisted.
    pub fn is_persisted(&self) -> bool {
        self.persist.get().is_some()
    }

    /// Folds events replayed at start-up, skipping in the rollups those of days whose buckets
    /// on disk already hold them. Token usage and sessions are not persisted: they take every
    /// replayed event.
    pub fn replay_events(&self, events: &[clientele_core::event::Event]) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let trusted = &state.disk.trusted_days;
        let wanted: Vec<clientele_core::event::Event> = if trusted.is_empty() {
            Vec::new()
        } else {
            events
                .iter()
                .filter(|e| !trusted.contains(&(e.ts_ms.div_euclid(DAY_MS) * DAY_MS)))
                .cloned()
                .collect()
        };
        let all = trusted.is_empty();
        drop(state);
        self.fold_rollups(if all { events } else { &wanted });
        self.models.ingest(events);
        self.sessions.ingest(events);
    }

    /// Rollups in closed buckets still in memory.
    fn closed_rollups(state: &State, now_ms: i64) -> usize {
        let mut n = 0;
        for tier in Tier::ALL {
            let end = now_ms - tier.size_ms() - GRACE_MS;
            for bucket in state.tiers[tier as usize].range(..=end).map(|(_, b)| b) {
                n += bucket.series.len() + bucket.consumers.len();
            }
        }
        n
    }

    /// Flushes when closed buckets in memory hold more than [`FLUSH_ROLLUPS`] rollups (a bulk
    /// import, a replay); the housekeeping tick flushes the rest.
    pub fn flush_if_large(&self, now_ms: i64) {
        if self.persist.get().is_none() {
            return;
        }
        let large = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            Self::closed_rollups(&state, now_ms) > FLUSH_ROLLUPS
        };
        if large {
            let _ = self.flush(now_ms);
        }
    }

    /// Writes every bucket that closed at least [`GRACE_MS`] before `now_ms`: closed minutes
    /// and deltas first (merged into what is on disk), with the names they use and the days
    /// they complete, in one transaction; then builds each closed hour from its minutes and
    /// each closed day from its hours, one transaction each. Written buckets leave memory. On
    /// error the step that failed changes nothing: what it would have written stays in memory
    /// (or on disk, for the parts of a bucket not yet built) and the next flush tries again.
    pub fn flush(&self, now_ms: i64) -> Result<Flushed, String> {
        let Some(p) = self.persist.get() else {
            return Ok(Flushed::default());
        };
        let _one = p.flushing.lock().unwrap_or_else(|e| e.into_inner());
        let mut flushed = self.flush_closed(p, now_ms)?;
        for tier in [Tier::Hour, Tier::Day] {
            for start in self.unbuilt(tier, now_ms) {
                let built = self.build(p, tier, start, now_ms)?;
                flushed.buckets += built.buckets;
                flushed.rollups += built.rollups;
                flushed.days += built.days;
            }
        }
        Ok(flushed)
    }

    /// The first step of [`Engine::flush`]: closed minutes, and deltas of buckets already
    /// written, in one transaction.
    fn flush_closed(&self, p: &Persist, now_ms: i64) -> Result<Flushed, String> {
        // The write lock is held from choosing to dropping, so no event can land in a chosen
        // bucket after it was encoded. Flushes are small (a minute's closed buckets) except in
        // a bulk import, where ingest waiting is the back-pressure wanted.
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (save, chosen, rollups) = {
            let mut save = Self::unsaved_names(&state);
            let mut chosen = Vec::new();
            let mut rollups = 0;
            for tier in Tier::ALL {
                let end = now_ms - tier.size_ms() - GRACE_MS;
                for (start, bucket) in state.tiers[tier as usize].range(..=end) {
                    // An hour or day not yet written is built from its finer tier, after this.
                    if tier != Tier::Minute && !bucket.delta {
                        continue;
                    }
                    let merged;
                    let full = if bucket.delta {
                        let mut base = Bucket::default();
                        for part in [Part::Consumers, Part::Series] {
                            let bytes = p.store.load(tier, *start, part)?.unwrap_or_default();
                            let got = if bytes.is_empty() {
                                Bucket::default()
                            } else {
                                decode(part, &bytes).ok_or_else(|| {
                                    format!("persisted bucket {tier:?} {start} cannot be read")
                                })?
                            };
                            base.series.extend(got.series);
                            base.consumers.extend(got.consumers);
                        }
                        base.merge(bucket);
                        merged = base;
                        &merged
                    } else {
                        bucket
                    };
                    rollups += full.series.len() + full.consumers.len();
                    save.buckets.push(SavedBucket {
                        tier,
                        start_ms: *start,
                        consumers: encode_consumers(&full.consumers),
                        series: encode_series(&full.series),
                    });
                    chosen.push((tier, *start));
                }
            }
            for (day, c) in &state.disk.days {
                // A day whose bucket is still to be built has its count written with it, so
                // start-up never trusts a day that is not whole on disk.
                if day + DAY_MS + GRACE_MS <= now_ms
                    && c.folded != c.saved
                    && (state.disk.buckets[Tier::Day as usize].contains(day)
                        || !Self::has_rollups(&state, *day))
                {
                    save.days.push((*day, c.folded));
                }
            }
            (save, chosen, rollups)
        };
        if save.buckets.is_empty() && save.days.is_empty() && save.names.is_empty() {
            return Ok(Flushed::default());
        }
        let names = save.first_name as usize + save.names.len();
        let days: Vec<(i64, u64)> = save.days.clone();
        let flushed = Flushed {
            buckets: save.buckets.len(),
            rollups,
            days: days.len(),
        };
        if let Err(e) = p.store.save(save) {
            clientele_core::warn_every!(p.errors, error = %e, "persisting closed rollup buckets failed; they stay in memory until a flush succeeds");
            return Err(e);
        }
        let mut cache = p.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (tier, start) in chosen {
            state.tiers[tier as usize].remove(&start);
            state.disk.buckets[tier as usize].insert(start);
            cache.forget(tier as u8, start);
        }
        Self::mark_saved(&mut state, names, &days);
        Ok(flushed)
    }

    /// A save holding the names not yet on disk, which any bucket written with it may use.
    fn unsaved_names(state: &State) -> Save {
        Save {
            first_name: state.disk.names_saved as u32,
            names: state.names.names[state.disk.names_saved..]
                .iter()
                .map(|n| n.to_string())
                .collect(),
            ..Default::default()
        }
    }

    /// After a save succeeded: names below `names` and the days' counts are on disk.
    fn mark_saved(state: &mut State, names: usize, days: &[(i64, u64)]) {
        state.disk.names_saved = state.disk.names_saved.max(names);
        for (day, n) in days {
            if let Some(c) = state.disk.days.get_mut(day) {
                c.saved = *n;
            }
        }
    }

    /// Whether any rollup of the UTC day starting at `day` is in memory or on disk.
    fn has_rollups(state: &State, day: i64) -> bool {
        let range = day..day + DAY_MS;
        Tier::ALL.iter().any(|t| {
            state.tiers[*t as usize]
                .range(range.clone())
                .next()
                .is_some()
                || state.disk.buckets[*t as usize]
                    .range(range.clone())
                    .next()
                    .is_some()
        })
    }

    /// Closed buckets of `tier` (hour or day) not yet written that have something to be built
    /// from: finer buckets in memory or on disk, or events of their own.
    fn unbuilt(&self, tier: Tier, now_ms: i64) -> Vec<i64> {
        let Some(finer) = tier.finer() else {
            return Vec::new();
        };
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let size = tier.size_ms();
        let end = now_ms - size - GRACE_MS;
        let written = &state.disk.buckets[tier as usize];
        let own = state.tiers[tier as usize]
            .iter()
            .filter(|(_, b)| !b.delta)
            .map(|(s, _)| *s);
        let parts = state.tiers[finer as usize]
            .keys()
            .chain(&state.disk.buckets[finer as usize])
            .map(|s| floor_to(*s, size));
        let out: BTreeSet<i64> = own
            .chain(parts)
            .filter(|s| *s <= end && !written.contains(s))
            .collect();
        out.into_iter().collect()
    }

    /// Builds one closed bucket of `tier` from its finer buckets and writes it. The finer
    /// buckets on disk are read without the state lock (only a flush changes them, and this is
    /// the flush); what arrived since they were written (deltas in memory) is added under the
    /// write lock, in which the bucket is also written and marked, so no event is missed or
    /// counted twice.
    fn build(&self, p: &Persist, tier: Tier, start: i64, now_ms: i64) -> Result<Flushed, String> {
        let Some(finer) = tier.finer() else {
            return Ok(Flushed::default());
        };
        let range = start..start + tier.size_ms();
        // A bucket past its finer tier's retention took every event itself (see `ingest`):
        // its finer buckets would count some twice.
        let (aged, parts) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let aged = start < now_ms - self.retention.of(finer)
                && state.tiers[tier as usize].contains_key(&start);
            let parts: Vec<i64> = if aged {
                Vec::new()
            } else {
                state.disk.buckets[finer as usize]
                    .range(range.clone())
                    .copied()
                    .collect()
            };
            (aged, parts)
        };
        let mut built = Bucket::default();
        for part_start in parts {
            let unreadable = || format!("persisted bucket {finer:?} {part_start} cannot be read");
            if let Some(bytes) = p.store.load(finer, part_start, Part::Consumers)? {
                walk_consumers(&bytes, |c, r| {
                    built.consumers.entry(c).or_default().merge(r);
                    true
                })
                .ok_or_else(unreadable)?;
            }
            if let Some(bytes) = p.store.load(finer, part_start, Part::Series)? {
                walk_series(&bytes, |k, r| {
                    built.series.entry(*k).or_default().merge(r);
                })
                .ok_or_else(unreadable)?;
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !aged {
            for (_, b) in state.tiers[finer as usize].range(range.clone()) {
                built.merge(b);
            }
        }
        if tier == Tier::Day && !aged {
            // Minutes of an hour not built yet (late events that arrived after the hours were
            // built, before this): the hour is built from them later, but the day is now.
            let State { tiers, disk, .. } = &*state;
            for (m, b) in tiers[Tier::Minute as usize].range(range.clone()) {
                if !disk.buckets[Tier::Hour as usize].contains(&floor_to(*m, crate::HOUR_MS)) {
                    built.merge(b);
                }
            }
        }
        if let Some(own) = state.tiers[tier as usize].get(&start) {
            built.merge(own);
        }
        let mut save = Self::unsaved_names(&state);
        if tier == Tier::Day {
            // The day's count goes with its bucket, unless finer deltas still wait in memory:
            // then the next flush writes them and the count together.
            let waiting = [Tier::Minute, Tier::Hour].iter().any(|t| {
                state.tiers[*t as usize]
                    .range(range.clone())
                    .next()
                    .is_some()
            });
            if let Some(c) = state.disk.days.get(&start) {
                if !waiting && c.folded != c.saved {
                    save.days.push((start, c.folded));
                }
            }
        }
        let rollups = built.series.len() + built.consumers.len();
        save.buckets.push(SavedBucket {
            tier,
            start_ms: start,
            consumers: encode_consumers(&built.consumers),
            series: encode_series(&built.series),
        });
        drop(built);
        let names = save.first_name as usize + save.names.len();
        let days = save.days.clone();
        if let Err(e) = p.store.save(save) {
            clientele_core::warn_every!(p.errors, error = %e, "persisting a closed rollup bucket failed; it is built again at the next flush");
            return Err(e);
        }
        state.tiers[tier as usize].remove(&start);
        state.disk.buckets[tier as usize].insert(start);
        p.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(tier as u8, start);
        Self::mark_saved(&mut state, names, &days);
        Ok(Flushed {
            buckets: 1,
            rollups,
            days: days.len(),
        })
    }

    /// Whether a bucket holds all its requests itself. Without a store every bucket does; with
    /// one, an hour or day does once built (on disk), or when its finer tier no longer reaches
    /// back to it. Until then its finer buckets answer for it.
    pub(crate) fn whole(&self, state: &State, tier: Tier, start: i64, now: i64) -> bool {
        match tier.finer() {
            None => true,
            Some(finer) => {
                self.persist.get().is_none()
                    || start < now - self.retention.of(finer)
                    || state.disk.buckets[tier as usize].contains(&start)
            }
        }
    }

    /// Buckets of `tier` starting in `[from, to)` as segments of whole buckets: one not yet
    /// built is replaced by the finer buckets it is made of (recursively), so the open hour is
    /// read as its minutes and the open day as its hours.
    pub(crate) fn whole_segments(
        &self,
        state: &State,
        tier: Tier,
        from: i64,
        to: i64,
        now: i64,
        out: &mut Vec<(Tier, i64, i64)>,
    ) {
        let push = |out: &mut Vec<(Tier, i64, i64)>, t: Tier, a: i64, b: i64| {
            if a < b {
                out.push((t, a, b));
            }
        };
        if from >= to {
            return;
        }
        let Some(finer) = tier.finer().filter(|_| self.persist.get().is_some()) else {
            push(out, tier, from, to);
            return;
        };
        let size = tier.size_ms();
        // Before `lo` every bucket is whole (its finer tier is past retention); after the last
        // bucket of this tier or a finer one there is nothing to be made of.
        let lo = ceil_to(from, size).max(floor_to(now - self.retention.of(finer), size));
        let last = Tier::ALL[..=tier as usize]
            .iter()
            .flat_map(|t| {
                [
                    state.tiers[*t as usize].keys().next_back().copied(),
                    state.disk.buckets[*t as usize].last().copied(),
                ]
            })
            .flatten()
            .max();
        let hi = last.map_or(lo, |l| to.min(floor_to(l, size) + size));
        let mut run = from;
        let mut s = lo;
        while s < hi {
            if !self.whole(state, tier, s, now) {
                push(out, tier, run, s);
                self.whole_segments(state, finer, s, s + size, now, out);
                run = s + size;
            }
            s += size;
        }
        push(out, tier, run, to);
    }

    /// [`Engine::each_bucket`] over whole buckets: one of `tier` not yet built is visited as
    /// the finer buckets it is made of, each reported with its own start floored to `tier`.
    /// Callers therefore add up what they see per start, never keep only the last.
    pub(crate) fn each_whole(
        &self,
        state: &State,
        tier: Tier,
        from: i64,
        to: i64,
        part: Part,
        mut f: impl FnMut(i64, View<'_>),
    ) {
        let mut segments = Vec::new();
        self.whole_segments(
            state,
            tier,
            from,
            to,
            clientele_core::time::now_ms(),
            &mut segments,
        );
        let size = tier.size_ms();
        for (t, a, b) in segments {
            self.each_bucket(state, t, a, b, part, |start, v| f(floor_to(start, size), v));
        }
    }

    /// A persisted bucket's part, from the cache or the store; checked before it is cached.
    fn load_blob(&self, p: &Persist, tier: Tier, start: i64, part: Part) -> Option<Arc<[u8]>> {
        let key = (tier as u8, start, part);
        if let Some(b) = p.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Some(b);
        }
        let bytes = match p.store.load(tier, start, part) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                clientele_core::warn_every!(p.errors, error = %e, "reading a persisted rollup bucket failed; answers leave it out");
                return None;
            }
        };
        let readable = match part {
            Part::Consumers => walk_consumers(&bytes, |_, _| true),
            Part::Series => walk_series(&bytes, |_, _| {}),
        };
        if readable.is_none() {
            clientele_core::warn_every!(p.errors, tier = ?tier, start, "a persisted rollup bucket cannot be read; answers leave it out");
            return None;
        }
        let blob: Arc<[u8]> = bytes.into();
        p.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, blob.clone());
        Some(blob)
    }

    /// Visits every bucket of `tier` starting in `[from, to)` in time order, in memory or on
    /// disk (with any delta added). Only `part` of a bucket read back is filled.
    pub(crate) fn each_bucket(
        &self,
        state: &State,
        tier: Tier,
        from: i64,
        to: i64,
        part: Part,
        mut f: impl FnMut(i64, View<'_>),
    ) {
        if from >= to {
            return;
        }
        let mem = &state.tiers[tier as usize];
        let Some(p) = self.persist.get() else {
            for (start, bucket) in mem.range(from..to) {
                f(*start, View::Mem(bucket));
            }
            return;
        };
        let disk = &state.disk.buckets[tier as usize];
        let mut m = mem.range(from..to).peekable();
        let mut d = disk.range(from..to).peekable();
        loop {
            let next = match (m.peek(), d.peek()) {
                (None, None) => return,
                (Some((a, _)), None) => **a,
                (None, Some(b)) => **b,
                (Some((a, _)), Some(b)) => (**a).min(**b),
            };
            let in_mem = m.next_if(|(a, _)| **a == next).map(|(_, b)| b);
            let on_disk = d.next_if(|b| **b == next).is_some();
            match (in_mem, on_disk) {
                (Some(bucket), false) => f(next, View::Mem(bucket)),
                (delta, true) => {
                    let Some(blob) = self.load_blob(p, tier, next, part) else {
                        if let Some(bucket) = delta {
                            f(next, View::Mem(bucket));
                        }
                        continue;
                    };
                    match delta {
                        None => f(next, View::Blob(part, &blob)),
                        Some(delta) => {
                            // Rare (late events since the last flush): decode, add, answer.
                            let mut merged = decode(part, &blob).unwrap_or_default();
                            merged.merge(delta);
                            f(next, View::Mem(&merged));
                        }
                    }
                }
                (None, false) => return,
            }
        }
    }

    /// Drops persisted buckets past each tier's retention from the index (the caller prunes the
    /// store), and the day counts past the day tier's.
    pub(crate) fn prune_disk(state: &mut State, tier: Tier, cutoff: i64) {
        let keep = state.disk.buckets[tier as usize].split_off(&cutoff);
        state.disk.buckets[tier as usize] = keep;
        if tier == Tier::Day {
            let keep = state.disk.days.split_off(&cutoff);
            state.disk.days = keep;
        }
    }
}

impl Bucket {
    /// Adds another bucket's rollups (a delta) to this one.
    fn merge(&mut self, o: &Bucket) {
        for (k, r) in &o.series {
            self.series.entry(*k).or_default().merge(r);
        }
        for (c, r) in &o.consumers {
            self.consumers.entry(*c).or_default().merge(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;

    #[test]
    fn parts_round_trip_bit_for_bit() {
        let mut bucket = Bucket::default();
        let key = SeriesKey {
            consumer: 1,
            api: 2,
            method: 3,
            route: 300,
            class: 2,
        };
        for i in 0..3 {
            bucket.series.entry(key).or_default().add(&Sample {
                status: 200,
                latency_ms: 1.5 + f64::from(i),
                cost_usd: 0.1,
                ..Default::default()
            });
        }
        for i in 0..50 {
            bucket.consumers.entry(7).or_default().add(&Sample {
                status: 503,
                latency_ms: 0.37 * f64::from(i),
                ..Default::default()
            });
        }
        let back = decode(Part::Series, &encode_series(&bucket.series)).unwrap();
        let (a, b) = (&bucket.series[&key], &back.series[&key]);
        assert_eq!(a.counters, b.counters);
        assert_eq!(a.quantiles([0.5, 0.99]), b.quantiles([0.5, 0.99]));
        let back = decode(Part::Consumers, &encode_consumers(&bucket.consumers)).unwrap();
        let (a, b) = (&bucket.consumers[&7], &back.consumers[&7]);
        assert_eq!(a.counters, b.counters);
        assert_eq!(b.latency_samples(), 50);
        assert_eq!(a.quantiles([0.5, 0.99]), b.quantiles([0.5, 0.99]));
        // Damage is refused, not misread.
        let bytes = encode_series(&bucket.series);
        assert!(decode(Part::Series, &bytes[..bytes.len() - 3]).is_none());
        assert!(decode(Part::Series, &[9, 1]).is_none());
    }
}

//! Persisting the feature store, so that start-up does not replay raw events for governance.
//!
//! Each save hands over the store-wide state (the calls per day and, for every day, the number
//! of events folded in) and the consumers changed since the last one written, encoded in
//! batches as they are written ([`FeatureStore::begin_save`]). The caller writes them in one transaction
//! (`rollups.db` in the binary). At start-up [`FeatureStore::load`] compares each day's folded
//! count with the event log's own count of the day: days whose events are all in the saved
//! state are trusted; from the first day that is not (today's after a crash, a day that took
//! late events after the last save) the loaded state is cut off and that day and every later
//! one are rebuilt from raw events ([`FeatureStore::replay`] skips the rest). A graceful stop
//! saves last, so the next start replays nothing.
//!
//! The encoding is this crate's own: little-endian numbers, sketches written sparse (the
//! nonzero registers) when that is smaller. A blob that does not decode (another version, a
//! damaged file) makes the whole load fail, and everything is rebuilt from raw events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clientele_core::event::Event;

use crate::features::{
    ConsumerFeatures, Countries, Counts, DAY_MS, DaySummary, FeatureStore, HOUR_MS, HourFeatures,
    Inner, OpenDay,
};
use crate::hll::Hll;

/// The version of the encoding; a blob of another is not read.
const FORMAT: u8 = 1;

/// What one save writes.
#[derive(Debug, Default)]
pub struct FeatureSave {
    /// (consumer, encoded state) of the consumers changed since the previous save.
    pub consumers: Vec<(String, Vec<u8>)>,
    /// The store-wide state (calls and folded events per day), replacing the previous one.
    pub meta: Vec<u8>,
    /// The store's change number the save holds.
    pub change: u64,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub consumers: usize,
    /// The first day (ms) rebuilt from raw events: `None` when every day is in the saved state.
    pub replay_from: Option<i64>,
}

/// Consumers encoded per batch of a save: each batch takes the read lock once, so the pipeline
/// waits for one batch (about a millisecond) rather than every consumer, and a save holds one
/// batch of blobs at a time rather than the whole store's (10,000 consumers: megabytes, every
/// 10 minutes, which the allocator does not always give back).
pub const SAVE_BATCH: usize = 256;

/// A save begun by [`FeatureStore::begin_save`]: the store-wide state and the consumers to
/// write, fixed at one moment; their states are encoded batch by batch as it is written.
#[derive(Debug)]
pub struct SavePlan {
    /// The store-wide state (calls and folded events per day), replacing the previous one.
    pub meta: Vec<u8>,
    /// The store's change number the save holds: hand it to [`FeatureStore::saved`] once written.
    pub change: u64,
    consumers: Vec<Arc<str>>,
}

impl SavePlan {
    /// Consumers the save writes.
    pub fn consumers(&self) -> usize {
        self.consumers.len()
    }

    /// (consumer, encoded state) batches of at most [`SAVE_BATCH`], each encoded when it is
    /// asked for.
    pub fn batches<'a>(
        &'a self,
        features: &'a FeatureStore,
    ) -> impl Iterator<Item = Vec<(String, Vec<u8>)>> + 'a {
        self.consumers
            .chunks(SAVE_BATCH)
            .map(|ids| features.encode(ids))
    }
}

impl FeatureStore {
    /// Begins a save of the consumers changed since the last one written. The store-wide state
    /// is taken now, before any consumer is encoded, so it never counts an event the saved
    /// consumers lack: a consumer encoded later may hold more, and a day whose saved count is
    /// short of the event log's is rebuilt at load, so the extra is never counted twice.
    /// Consumers that change after their batch is encoded keep a change number above
    /// [`SavePlan::change`] and are written again by the next save.
    pub fn begin_save(&self) -> SavePlan {
        let since = self.saved_change.load(Ordering::Acquire);
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        SavePlan {
            meta: encode_meta(&inner),
            change: inner.change,
            consumers: inner
                .consumers
                .iter()
                .filter(|(_, c)| c.changed > since)
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// The current state of each consumer named, encoded under one read lock.
    fn encode(&self, ids: &[Arc<str>]) -> Vec<(String, Vec<u8>)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .filter_map(|id| Some((id.to_string(), encode_consumer(inner.consumers.get(id)?))))
            .collect()
    }

    /// A whole save at once: what [`FeatureStore::begin_save`] and its batches write.
    pub fn take_changes(&self) -> FeatureSave {
        let plan = self.begin_save();
        FeatureSave {
            consumers: plan.batches(self).flatten().collect(),
            meta: plan.meta,
            change: plan.change,
        }
    }

    /// Records that a save ([`SavePlan::change`]) was written.
    pub fn saved(&self, change: u64) {
        self.saved_change.fetch_max(change, Ordering::AcqRel);
    }

    /// Loads a saved state at start-up, before the replay. `log_days` is the event log's count
    /// of events per UTC day (day start in ms). Without a saved state (`meta` is `None`),
    /// nothing is loaded and the replay rebuilds everything, as before persistence.
    pub fn load(
        &self,
        consumers: Vec<(String, Vec<u8>)>,
        meta: Option<&[u8]>,
        log_days: &BTreeMap<i64, u64>,
    ) -> Result<Loaded, String> {
        let Some(meta) = meta else {
            return Ok(Loaded::default());
        };
        let (totals, folded) = decode_meta(meta)?;
        let mut loaded: Vec<(Arc<str>, ConsumerFeatures)> = Vec::with_capacity(consumers.len());
        for (id, blob) in consumers {
            let c = decode_consumer(&blob).map_err(|e| format!("consumer {id:?}: {e}"))?;
            loaded.push((Arc::from(id.as_str()), c));
        }
        // Days older than the folded counts kept are past what the features hold anyway.
        let oldest = folded.front().map_or(i64::MAX, |(d, _)| *d);
        let first_missing = log_days
            .iter()
            .map(|(ms, n)| (ms.div_euclid(DAY_MS), *n))
            .filter(|(d, _)| *d >= oldest)
            .find(|(d, n)| {
                let have = folded.iter().find(|(x, _)| x == d).map_or(0, |(_, c)| *c);
                have < *n
            })
            .map(|(d, _)| d);
        // Change 1: what the cut leaves differs from the saved rows, which start as saved (0).
        let mut inner = Inner {
            totals,
            folded,
            change: 1,
            ..Inner::default()
        };
        let count = loaded.len();
        for (id, c) in loaded {
            inner.consumers.insert(id, c);
        }
        if let Some(day) = first_missing {
            cut_at(&mut inner, day);
        }
        inner.replay_from = Some(first_missing.map_or(i64::MAX, |d| d * DAY_MS));
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = inner;
        self.saved_change.store(0, Ordering::Release);
        Ok(Loaded {
            consumers: count,
            replay_from: first_missing.map(|d| d * DAY_MS),
        })
    }

    /// The earliest event time the start-up replay must bring: `None` (everything) unless a
    /// saved state was loaded, `i64::MAX` when it holds every day.
    pub fn replay_from(&self) -> Option<i64> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .replay_from
    }

    /// Start-up replay: folds the events the loaded state does not hold.
    pub fn replay(&self, events: &[Event]) {
        match self.replay_from() {
            None => self.observe(events),
            Some(from) => {
                if events.iter().all(|e| e.ts_ms >= from) {
                    self.observe(events);
                } else {
                    let wanted: Vec<Event> =
                        events.iter().filter(|e| e.ts_ms >= from).cloned().collect();
                    self.observe(&wanted);
                }
            }
        }
    }
}

/// Drops everything of `day` (a day number) and later: it is rebuilt from raw events.
fn cut_at(inner: &mut Inner, day: i64) {
    let first_hour = day * DAY_MS / HOUR_MS;
    let from_ms = day * DAY_MS;
    inner.totals.retain(|(d, _)| *d < day);
    inner.folded.retain(|(d, _)| *d < day);
    inner.consumers.retain(|_, c| {
        c.hours.retain(|h| h.hour < first_hour);
        c.open.retain(|d| d.day < day);
        c.sealed.retain(|d| d.day < day);
        if c.last_ts.is_some_and(|t| t >= from_ms) {
            // The order state (think time, id steps) restarts with the replay.
            c.last_ts = None;
            c.cursors = Default::default();
            c.next_cursor = 0;
        }
        // What remains differs from the saved rows: write it again at the next save.
        c.changed = 1;
        !(c.hours.is_empty() && c.open.is_empty() && c.sealed.is_empty())
    });
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    /// Sparse (index, value) pairs when fewer than a third of the registers are set.
    fn hll<const M: usize>(&mut self, h: &Hll<M>) {
        let regs = h.to_registers();
        let set = regs.iter().filter(|&&r| r != 0).count();
        if set * 3 < M {
            self.u8(1);
            self.len(set);
            for (i, &r) in regs.iter().enumerate().filter(|(_, r)| **r != 0) {
                self.u16(u16::try_from(i).unwrap_or(u16::MAX));
                self.u8(r);
            }
        } else {
            self.u8(0);
            self.0.extend_from_slice(&regs);
        }
    }
    fn counts(&mut self, c: &Counts) {
        for v in [
            c.requests,
            c.errors,
            c.rate_limited,
            c.item_requests,
            c.item_not_found,
            c.id_steps,
            c.sequential_steps,
            c.gap_n,
        ] {
            self.u64(v);
        }
        self.f64(c.gap_mean_ms);
        self.f64(c.gap_m2);
    }
    fn countries<const N: usize>(&mut self, c: &Countries<N>) {
        self.u8(c.len);
        self.u8(u8::from(c.overflow));
        for &code in &c.codes[..usize::from(c.len)] {
            self.u16(code);
        }
    }
    fn hour_requests(&mut self, h: &[u32; 24]) {
        for &v in h {
            self.u32(v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

type Decoded<T> = Result<T, String>;

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Decoded<&[u8]> {
        if self.0.len() < n {
            return Err("truncated".to_string());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Decoded<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Decoded<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Decoded<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn f64(&mut self) -> Decoded<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// A length, checked against what is left so that a damaged one cannot allocate much.
    fn len(&mut self, item_bytes: usize) -> Decoded<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_bytes.max(1)) > self.0.len() {
            return Err("length beyond the end".to_string());
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Decoded<&[u8]> {
        let n = self.len(1)?;
        self.take(n)
    }
    fn hll<const M: usize>(&mut self) -> Decoded<Hll<M>> {
        let mut regs = [0u8; M];
        match self.u8()? {
            0 => regs.copy_from_slice(self.take(M)?),
            1 => {
                let n = self.len(3)?;
                for _ in 0..n {
                    let i = usize::from(self.u16()?);
                    let r = self.u8()?;
                    *regs.get_mut(i).ok_or("register index out of range")? = r;
                }
            }
            other => return Err(format!("unknown sketch encoding {other}")),
        }
        Ok(Hll::from_registers(regs))
    }
    fn counts(&mut self) -> Decoded<Counts> {
        Ok(Counts {
            requests: self.u64()?,
            errors: self.u64()?,
            rate_limited: self.u64()?,
            item_requests: self.u64()?,
            item_not_found: self.u64()?,
            id_steps: self.u64()?,
            sequential_steps: self.u64()?,
            gap_n: self.u64()?,
            gap_mean_ms: self.f64()?,
            gap_m2: self.f64()?,
        })
    }
    fn countries<const N: usize>(&mut self) -> Decoded<Countries<N>> {
        let len = self.u8()?;
        let overflow = self.u8()? != 0;
        if usize::from(len) > N {
            return Err("too many countries".to_string());
        }
        let mut c = Countries::<N> {
            len,
            overflow,
            ..Countries::default()
        };
        for slot in &mut c.codes[..usize::from(len)] {
            *slot = self.u16()?;
        }
        Ok(c)
    }
    fn hour_requests(&mut self) -> Decoded<[u32; 24]> {
        let mut out = [0u32; 24];
        for v in &mut out {
            *v = self.u32()?;
        }
        Ok(out)
    }
}

/// (day number, count) per day, oldest first.
type PerDay = VecDeque<(i64, u64)>;

fn days_list(w: &mut Writer, days: &PerDay) {
    w.len(days.len());
    for (d, n) in days {
        w.i64(*d);
        w.u64(*n);
    }
}

fn read_days_list(r: &mut Reader<'_>) -> Decoded<PerDay> {
    let n = r.len(16)?;
    (0..n).map(|_| Ok((r.i64()?, r.u64()?))).collect()
}

fn encode_meta(inner: &Inner) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(1 + 8 * inner.totals.len() * 4));
    w.u8(FORMAT);
    days_list(&mut w, &inner.totals);
    days_list(&mut w, &inner.folded);
    w.0
}

fn decode_meta(blob: &[u8]) -> Decoded<(PerDay, PerDay)> {
    let mut r = Reader(blob);
    let version = r.u8()?;
    if version != FORMAT {
        return Err(format!(
            "saved features of format {version}, this build reads {FORMAT}"
        ));
    }
    Ok((read_days_list(&mut r)?, read_days_list(&mut r)?))
}

pub(crate) fn encode_consumer(c: &ConsumerFeatures) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(1024));
    w.u8(FORMAT);
    w.bytes(c.plan.as_deref().unwrap_or("").as_bytes());
    w.len(c.hours.len());
    for h in &c.hours {
        w.i64(h.hour);
        w.counts(&h.counts);
        w.hll(&h.networks);
        w.hll(&h.tls_clients);
        w.countries(&h.countries);
        w.u32(h.max_per_second);
        w.i64(h.second);
        w.u32(h.in_second);
    }
    w.len(c.open.len());
    for d in &c.open {
        w.i64(d.day);
        w.counts(&d.counts);
        w.hour_requests(&d.hour_requests);
        w.hll(&d.networks);
        w.hll(&d.asns);
        w.countries(&d.countries);
        w.u32(d.max_countries_per_hour);
        w.hll(&d.user_agents);
        w.hll(&d.tls_clients);
        w.hll(&d.sessions);
        w.hll(&d.end_users);
        w.hll(&d.ids);
        w.u64(d.id_min);
        w.u64(d.id_max);
        w.u32(d.max_per_second);
    }
    w.len(c.sealed.len());
    for s in &c.sealed {
        w.i64(s.day);
        w.counts(&s.counts);
        w.hour_requests(&s.hour_requests);
        for v in [s.networks, s.asns] {
            w.u32(v);
        }
        w.countries(&s.countries);
        for v in [
            s.max_countries_per_hour,
            s.user_agents,
            s.tls_clients,
            s.max_tls_clients_per_hour,
            s.sessions,
            s.end_users,
            s.distinct_ids,
        ] {
            w.u32(v);
        }
        w.u64(s.id_min);
        w.u64(s.id_max);
        w.u32(s.max_per_second);
    }
    for (route, id) in &c.cursors {
        w.u64(*route);
        w.u64(*id);
    }
    w.u64(c.next_cursor as u64);
    match c.last_ts {
        Some(t) => {
            w.u8(1);
            w.i64(t);
        }
        None => w.u8(0),
    }
    w.0
}

pub(crate) fn decode_consumer(blob: &[u8]) -> Decoded<ConsumerFeatures> {
    let mut r = Reader(blob);
    let version = r.u8()?;
    if version != FORMAT {
        return Err(format!("format {version}, this build reads {FORMAT}"));
    }
    let plan = std::str::from_utf8(r.bytes()?).map_err(|e| e.to_string())?;
    let mut c = ConsumerFeatures {
        plan: (!plan.is_empty()).then(|| Arc::from(plan)),
        ..ConsumerFeatures::default()
    };
    let hours = r.len(8)?;
    for _ in 0..hours {
        c.hours.push_back(HourFeatures {
            hour: r.i64()?,
            counts: r.counts()?,
            networks: r.hll()?,
            tls_clients: r.hll()?,
            countries: r.countries()?,
            max_per_second: r.u32()?,
            second: r.i64()?,
            in_second: r.u32()?,
        });
    }
    let open = r.len(8)?;
    for _ in 0..open {
        c.open.push(OpenDay {
            day: r.i64()?,
            counts: r.counts()?,
            hour_requests: r.hour_requests()?,
            networks: r.hll()?,
            asns: r.hll()?,
            countries: r.countries()?,
            max_countries_per_hour: r.u32()?,
            user_agents: r.hll()?,
            tls_clients: r.hll()?,
            sessions: r.hll()?,
            end_users: r.hll()?,
            ids: r.hll()?,
            id_min: r.u64()?,
            id_max: r.u64()?,
            max_per_second: r.u32()?,
        });
    }
    let sealed = r.len(8)?;
    for _ in 0..sealed {
        c.sealed.push_back(DaySummary {
            day: r.i64()?,
            counts: r.counts()?,
            hour_requests: r.hour_requests()?,
            networks: r.u32()?,
            asns: r.u32()?,
            countries: r.countries()?,
            max_countries_per_hour: r.u32()?,
            user_agents: r.u32()?,
            tls_clients: r.u32()?,
            max_tls_clients_per_hour: r.u32()?,
            sessions: r.u32()?,
            end_users: r.u32()?,
            distinct_ids: r.u32()?,
            id_min: r.u64()?,
            id_max: r.u64()?,
            max_per_second: r.u32()?,
        });
    }
    for slot in &mut c.cursors {
        *slot = (r.u64()?, r.u64()?);
    }
    c.next_cursor = usize::try_from(r.u64()?).unwrap_or(0);
    c.last_ts = match r.u8()? {
        0 => None,
        _ => Some(r.i64()?),
    };
    if !r.0.is_empty() {
        return Err("trailing bytes".to_string());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::tests::event;

    /// Ten days of three consumers, with networks, agents, end users, TLS clients and an id
    /// walk, so that every sketch and counter has something in it.
    fn traffic() -> Vec<Event> {
        let day0 = 20_400 * DAY_MS;
        let mut out = Vec::new();
        for i in 0..6_000i64 {
            let c = format!("c{}", i % 3);
            let mut e = event(
                &c,
                day0 + i * (10 * DAY_MS / 6_000),
                &format!("/items/{}", i / 3),
                "/items/{id}",
            );
            e.client_ip = Some(format!("10.{}.{}.1", i % 3, i % 17));
            e.user_agent = Some(format!("agent/{}", i % 4));
            e.end_user = Some(format!("user-{}", i % 40));
            e.session_id = Some(format!("s{}", i % 9));
            e.tls_fp = Some(format!("t13d15h2_{:012}_c", i % 5));
            if i % 13 == 0 {
                e.status = 404;
            }
            out.push(e);
        }
        out
    }

    fn log_days(events: &[Event]) -> BTreeMap<i64, u64> {
        let mut days = BTreeMap::new();
        for e in events {
            *days.entry(e.ts_ms.div_euclid(DAY_MS) * DAY_MS).or_default() += 1;
        }
        days
    }

    fn state(f: &FeatureStore) -> Vec<ConsumerFeatures> {
        let inner = f.inner.read().unwrap();
        let mut out: Vec<(String, ConsumerFeatures)> = inner
            .consumers
            .iter()
            .map(|(k, c)| {
                let mut c = c.clone();
                c.changed = 0;
                (k.to_string(), c)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, c)| c).collect()
    }

    #[test]
    fn a_saved_store_loads_back_exactly_and_saves_only_what_changed() {
        let events = traffic();
        let a = FeatureStore::new();
        a.observe(&events);
        let save = a.take_changes();
        assert_eq!(save.consumers.len(), 3);
        // Not written: the next save holds them again.
        assert_eq!(a.take_changes().consumers.len(), 3);
        a.saved(save.change);
        // A consumer's blob stays small: sketches of few values are written sparse.
        let bytes: usize = save.consumers.iter().map(|(_, b)| b.len()).sum();
        assert!(bytes < 3 * 24 * 1024, "{bytes}");
        assert!(
            a.take_changes().consumers.is_empty(),
            "nothing changed since"
        );

        let b = FeatureStore::new();
        let loaded = b
            .load(save.consumers, Some(&save.meta), &log_days(&events))
            .unwrap();
        assert_eq!(loaded.consumers, 3);
        assert_eq!(loaded.replay_from, None, "every day is in the saved state");
        assert_eq!(state(&b), state(&a));
        assert_eq!(b.total(20_405), a.total(20_405));
        // The replay brings nothing the state holds.
        b.replay(&events);
        assert_eq!(state(&b), state(&a));
        // One new event: only its consumer is saved next.
        let mut e = event("c1", 20_410 * DAY_MS, "/x", "/x");
        e.id = "new".into();
        b.observe(&[e]);
        assert_eq!(b.take_changes().consumers.len(), 1);
        // A save taken, then a change before it is recorded: the change is not lost.
        let first = b.take_changes();
        let mut e = event("c2", 20_410 * DAY_MS, "/x", "/x");
        e.id = "newer".into();
        b.observe(&[e]);
        b.saved(first.change);
        let next: Vec<String> = b
            .take_changes()
            .consumers
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(next, ["c2"]);
    }

    #[test]
    fn a_save_in_batches_that_traffic_overtakes_still_loads_to_the_same_answers() {
        // More consumers than one batch, so the save takes several.
        let n = SAVE_BATCH * 2 + 17;
        let day0 = 20_400 * DAY_MS;
        let mut events: Vec<Event> = (0..n * 4)
            .map(|i| {
                let mut e = event(
                    &format!("c{}", i % n),
                    day0 + (i as i64) * 1_000,
                    &format!("/items/{i}"),
                    "/items/{id}",
                );
                e.client_ip = Some(format!("10.0.{}.1", i % 7));
                e
            })
            .collect();
        let a = FeatureStore::new();
        a.observe(&events);
        let plan = a.begin_save();
        assert_eq!(plan.consumers(), n);
        let mut batches = plan.batches(&a);
        let mut rows = batches.next().expect("a first batch");
        assert_eq!(rows.len(), SAVE_BATCH);
        // Traffic of the next day for every consumer arrives while the save is under way:
        // the first batch was encoded without it, the others with it.
        let more: Vec<Event> = (0..n)
            .map(|i| {
                let mut e = event(&format!("c{i}"), day0 + DAY_MS + i as i64, "/x", "/x");
                e.id = format!("late-{i}");
                e.client_ip = Some("192.168.1.1".into());
                e
            })
            .collect();
        a.observe(&more);
        rows.extend(batches.flatten());
        assert_eq!(rows.len(), n, "every consumer is written once");
        a.saved(plan.change);
        // The consumers the late traffic changed are written again by the next save.
        assert_eq!(a.begin_save().consumers(), n);

        events.extend(more);
        let b = FeatureStore::new();
        let loaded = b.load(rows, Some(&plan.meta), &log_days(&events)).unwrap();
        // The meta was taken first: it does not count the late day, which is rebuilt.
        assert_eq!(loaded.replay_from, Some(day0 + DAY_MS));
        b.replay(&events);
        for i in 0..n {
            let id = format!("c{i}");
            assert_eq!(b.consumer(&id), a.consumer(&id), "{id}");
        }
        assert_eq!(b.total(20_401), a.total(20_401));
    }

    #[test]
    fn a_day_missing_from_the_save_is_cut_and_replayed() {
        let events = traffic();
        let a = FeatureStore::new();
        a.observe(&events);
        let save = a.take_changes();
        // The log holds one more event on day 20_406 than the save: from that day on, the
        // state is rebuilt from the replay.
        let mut late = event("c2", 20_406 * DAY_MS + 5_000, "/items/9999", "/items/{id}");
        late.client_ip = Some("192.168.77.1".into());
        let mut all = events.clone();
        all.push(late);
        all.sort_by_key(|e| e.ts_ms);
        let b = FeatureStore::new();
        let loaded = b
            .load(save.consumers, Some(&save.meta), &log_days(&all))
            .unwrap();
        assert_eq!(loaded.replay_from, Some(20_406 * DAY_MS));
        b.replay(&all);
        let reference = FeatureStore::new();
        reference.observe(&all);
        let (days_b, hours_b) = b.consumer("c2").unwrap();
        let (days_r, hours_r) = reference.consumer("c2").unwrap();
        assert_eq!(hours_b, hours_r);
        for (x, y) in days_b.iter().zip(&days_r) {
            assert_eq!(
                (
                    x.day,
                    x.counts.requests,
                    x.networks,
                    x.tls_clients,
                    x.end_users
                ),
                (
                    y.day,
                    y.counts.requests,
                    y.networks,
                    y.tls_clients,
                    y.end_users
                )
            );
        }
        assert_eq!(days_b.len(), days_r.len());
        assert_eq!(b.total(20_406), reference.total(20_406));
    }

    #[test]
    fn a_damaged_save_is_refused_whole() {
        let a = FeatureStore::new();
        a.observe(&traffic());
        let mut save = a.take_changes();
        let blob = &mut save.consumers[0].1;
        blob.truncate(blob.len() / 2);
        let b = FeatureStore::new();
        assert!(
            b.load(save.consumers, Some(&save.meta), &BTreeMap::new())
                .is_err()
        );
        assert_eq!(
            b.replay_from(),
            None,
            "nothing loaded: the replay rebuilds everything"
        );
        assert!(b.load(Vec::new(), Some(&[9, 0]), &BTreeMap::new()).is_err());
    }
}

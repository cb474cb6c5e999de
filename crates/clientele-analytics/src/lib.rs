//! Clientele's per-consumer analytics engine.
//!
//! Every event is folded into rollups keyed by (consumer, api, method, route, status class) in
//! three tiers: minutes, hours and days. Each rollup holds additive counters and a DDSketch of
//! latency (`sketch`: the crate's mapping over a compact store), which merges without loss, so the hour tier is exactly the merge of its minutes.
//! A query over a window is planned into the coarsest buckets that tile it (minutes at the
//! ragged edges, hours, then whole days), so a 30-day window touches about as many rollups as a
//! one-hour window does. Queries never read raw events.
//!
//! Besides the series rollups, each bucket keeps one rollup per consumer across all its routes,
//! because "every consumer over the last week" is the question asked most.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use clientele_core::event::Event;
use rustc_hash::FxHashMap as HashMap;

pub mod models;
mod persist;
pub mod rollup;
mod scan;
pub mod sessions;
mod sketch;
mod wire;

use persist::View;
pub use persist::{
    BucketStore, DEFAULT_CACHE_MIB, FLUSH_ROLLUPS, Flushed, GRACE_MS, Part, Persisted, Save,
    SavedBucket,
};
pub use rollup::{Counters, Rollup, Sample};
pub use scan::{ConsumerGrid, SeriesIds, detector_errors};

pub use clientele_core::time::{DAY_MS, HOUR_MS, MINUTE_MS};

/// The resolutions rollups are kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Minute = 0,
    Hour = 1,
    Day = 2,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Minute, Tier::Hour, Tier::Day];

    pub fn size_ms(self) -> i64 {
        match self {
            Tier::Minute => MINUTE_MS,
            Tier::Hour => HOUR_MS,
            Tier::Day => DAY_MS,
        }
    }

    pub fn from_index(i: u8) -> Option<Tier> {
        Tier::ALL.get(i as usize).copied()
    }

    /// The tier a bucket of this one is made of.
    pub fn finer(self) -> Option<Tier> {
        match self {
            Tier::Minute => None,
            Tier::Hour => Some(Tier::Minute),
            Tier::Day => Some(Tier::Hour),
        }
    }
}

/// How long each tier is kept, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub minute_ms: i64,
    pub hour_ms: i64,
    pub day_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            minute_ms: 3 * DAY_MS,
            hour_ms: 35 * DAY_MS,
            day_ms: 400 * DAY_MS,
        }
    }
}

impl Retention {
    fn of(&self, tier: Tier) -> i64 {
        match tier {
            Tier::Minute => self.minute_ms,
            Tier::Hour => self.hour_ms,
            Tier::Day => self.day_ms,
        }
    }
}

/// An event as the engine sees it: borrowed names and the numbers.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub ts_ms: i64,
    pub consumer: &'a str,
    pub api: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub sample: Sample,
}

impl<'a> EventRef<'a> {
    /// `None` for events not attributed to a consumer: per-consumer analytics has nothing to
    /// say about them (the gateway still stores them).
    pub fn from_event(e: &'a Event) -> Option<EventRef<'a>> {
        Some(EventRef {
            ts_ms: e.ts_ms,
            consumer: e.consumer.as_deref()?,
            api: e.api.as_deref().unwrap_or(""),
            method: &e.method,
            route: &e.route,
            sample: Sample {
                status: e.status,
                latency_ms: e.latency_ms,
                request_bytes: e.request_bytes,
                response_bytes: e.response_bytes,
                tokens_in: e.tokens_in.unwrap_or(0),
                tokens_out: e.tokens_out.unwrap_or(0),
                cost_usd: e.cost_usd.unwrap_or(0.0),
                unpriced: e.cost_usd.is_none()
                    && (e.tokens_in.is_some_and(|t| t > 0) || e.tokens_out.is_some_and(|t| t > 0)),
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    consumer: u32,
    api: u32,
    method: u32,
    route: u32,
    class: u8,
}

#[derive(Default, Clone)]
struct Bucket {
    series: HashMap<SeriesKey, Rollup>,
    consumers: HashMap<u32, Rollup>,
    /// The bucket is on disk and this holds only what arrived since (see `persist`).
    delta: bool,
}

/// Names are stored once and referred to by number in every rollup key.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = s.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn lookup(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }
}

#[derive(Default)]
struct State {
    names: Interner,
    /// Buckets in memory: all of them, or with a store attached the open ones and deltas.
    tiers: [BTreeMap<i64, Bucket>; 3],
    disk: persist::Disk,
}

/// What a query covers.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only this API's traffic.
    pub api: Option<String>,
    /// Only these consumers (already resolved from plan/team/use_case filters).
    pub consumers: Option<HashSet<String>>,
}

#[derive(Debug, Clone)]
pub struct ConsumerRow {
    pub consumer: String,
    pub rollup: Rollup,
}

#[derive(Debug, Clone)]
pub struct RouteRow {
    pub api: String,
    pub method: String,
    pub route: String,
    pub rollup: Rollup,
    /// Distinct consumers that called the route.
    pub consumers: usize,
    /// Errors of the consumer with the most errors on this route.
    pub top_consumer_errors: u64,
    pub top_consumer: Option<String>,
}

/// Size of the engine's state, for operators and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub buckets: usize,
    pub series_rollups: usize,
    pub consumer_rollups: usize,
    pub names: usize,
    /// Buckets on disk (with a store attached), read back on demand.
    pub persisted_buckets: usize,
}

/// The analytics engine. Shared by the pipeline (writer) and the query API (readers).
pub struct Engine {
    state: RwLock<State>,
    retention: Retention,
    /// Where closed buckets go, once [`Engine::attach`]ed.
    persist: OnceLock<persist::Persist>,
    /// Tokens and cost per hour, consumer and model (LLM traffic only).
    pub models: models::ModelTable,
    /// Sessions (the client's header or idle gaps), for `GET /v1/sessions`.
    pub sessions: sessions::SessionTable,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Retention::default())
    }
}

pub(crate) fn floor_to(t: i64, size: i64) -> i64 {
    t.div_euclid(size) * size
}

pub(crate) fn ceil_to(t: i64, size: i64) -> i64 {
    -floor_to(-t, size)
}

fn status_class(status: u16) -> u8 {
    (status / 100).min(9) as u8
}

impl Engine {
    pub fn new(retention: Retention) -> Engine {
        Engine {
            state: RwLock::new(State::default()),
            retention,
            persist: OnceLock::new(),
            models: models::ModelTable::default(),
            sessions: sessions::SessionTable::default(),
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Folds events into every tier. Takes the write lock once per batch.
    pub fn ingest<'a>(&self, events: impl IntoIterator<Item = EventRef<'a>>) {
        self.ingest_counted(events, &[]);
    }

    /// [`Engine::ingest`], adding `days` (UTC day start, events) to the per-day counts under
    /// the same lock, so a flush never sees a day's count without its rollups.
    fn ingest_counted<'a>(
        &self,
        events: impl IntoIterator<Item = EventRef<'a>>,
        days: &[(i64, u64)],
    ) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let State { names, tiers, disk } = &mut *state;
        for (day, n) in days {
            disk.days.entry(*day).or_default().folded += n;
        }
        let keyed: Vec<(i64, SeriesKey, Sample)> = events
            .into_iter()
            .map(|e| {
                let key = SeriesKey {
                    consumer: names.id(e.consumer),
                    api: names.id(e.api),
                    method: names.id(e.method),
                    route: names.id(e.route),
                    class: status_class(e.sample.status),
                };
                (e.ts_ms, key, e.sample)
            })
            .collect();
        let now = clientele_core::time::now_ms();
        let derive = self.persist.get().is_some();
        for tier in Tier::ALL {
            let map = &mut tiers[tier as usize];
            let on_disk = &disk.buckets[tier as usize];
            // Back-dated events older than a tier's retention skip that tier: the bucket would
            // be pruned at once, and queries over that time read coarser tiers anyway.
            let oldest = floor_to(now - self.retention.of(tier), tier.size_ms());
            // With a store attached, an hour or day bucket is built from its minutes or hours
            // once it closes (see `persist`), so it takes only the events no finer tier keeps,
            // and late ones for a bucket already built (a delta). The open hour and day then
            // cost no memory at all. A bucket starting before `aged_before` (the hour straddling
            // the minutes' retention, or older) holds its events itself, as queries read it
            // whole; one starting after it has all its events in the finer tier.
            let aged_before = tier
                .finer()
                .filter(|_| derive)
                .map(|f| now - self.retention.of(f));
            // Events mostly arrive in time order, so consecutive events share a bucket: look
            // the bucket up once per run rather than once per event.
            let mut current: Option<(i64, &mut Bucket)> = None;
            let mut built: Option<(i64, bool)> = None;
            for (ts, key, sample) in &keyed {
                let start = floor_to(*ts, tier.size_ms());
                if start < oldest {
                    continue;
                }
                if aged_before.is_some_and(|aged| start >= aged) {
                    let written = match built {
                        Some((s, w)) if s == start => w,
                        _ => {
                            let w = on_disk.contains(&start);
                            built = Some((start, w));
                            w
                        }
                    };
                    if !written {
                        continue;
                    }
                }
                let bucket = match current {
                    Some((s, bucket)) if s == start => bucket,
                    _ => map.entry(start).or_insert_with(|| Bucket {
                        // A bucket already written gets a delta, merged into it at the next flush.
                        delta: on_disk.contains(&start),
                        ..Bucket::default()
                    }),
                };
                bucket.series.entry(*key).or_default().add(sample);
                bucket
                    .consumers
                    .entry(key.consumer)
                    .or_default()
                    .add(sample);
                current = Some((start, bucket));
            }
        }
    }

    pub fn ingest_events(&self, events: &[Event]) {
        self.fold_rollups(events);
        self.models.ingest(events);
        self.sessions.ingest(events);
    }

    /// The rollup part of [`Engine::ingest_events`].
    fn fold_rollups(&self, events: &[Event]) {
        // Every stored event counts towards its day, attributed or not: start-up compares the
        // count with the event log's to know whether the day on disk is complete.
        let mut days: Vec<(i64, u64)> = Vec::new();
        if self.persist.get().is_some() {
            for e in events {
                let day = floor_to(e.ts_ms, DAY_MS);
                match days.last_mut() {
                    Some((d, n)) if *d == day => *n += 1,
                    _ => days.push((day, 1)),
                }
            }
        }
        self.ingest_counted(events.iter().filter_map(EventRef::from_event), &days);
    }

    /// Drops buckets past each tier's retention.
    pub fn prune(&self, now_ms: i64) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        for tier in Tier::ALL {
            let cutoff = now_ms - self.retention.of(tier);
            let map = &mut state.tiers[tier as usize];
            let keep = map.split_off(&floor_to(cutoff, tier.size_ms()));
            *map = keep;
            Self::prune_disk(&mut state, tier, floor_to(cutoff, tier.size_ms()));
        }
        drop(state);
        self.models.prune(now_ms - self.retention.hour_ms);
        self.sessions.prune(now_ms - self.retention.hour_ms);
    }

    /// Splits `[from, to)` into the coarsest aligned buckets that tile it, using no tier
    /// coarser than `max_tier`. Edges older than a tier's retention are widened to the next
    /// tier's boundaries, since the finer buckets no longer exist.
    fn plan(&self, from: i64, to: i64, now: i64, max_tier: Tier) -> Vec<(Tier, i64, i64)> {
        let mut from = floor_to(from, MINUTE_MS);
        let mut to = ceil_to(to, MINUTE_MS);
        if from < now - self.retention.minute_ms {
            from = floor_to(from, HOUR_MS);
        }
        if from < now - self.retention.hour_ms {
            from = floor_to(from, DAY_MS);
        }
        if to < now - self.retention.minute_ms {
            to = ceil_to(to, HOUR_MS);
        }
        if to < now - self.retention.hour_ms {
            to = ceil_to(to, DAY_MS);
        }
        let mut segments = Vec::with_capacity(5);
        let mut t = from;
        let mut push = |tier: Tier, a: i64, b: i64, t: &mut i64| {
            if a < b {
                segments.push((tier, a, b));
                *t = b;
            }
        };
        let use_hours = max_tier >= Tier::Hour;
        let use_days = max_tier >= Tier::Day;
        if !use_hours {
            push(Tier::Minute, t, to, &mut t);
            return segments;
        }
        let hour_start = ceil_to(t, HOUR_MS).min(to);
        push(Tier::Minute, t, hour_start, &mut t);
        let hours_end = floor_to(to, HOUR_MS).max(t);
        if use_days {
            let day_start = ceil_to(t, DAY_MS).min(hours_end).max(t);
            push(Tier::Hour, t, day_start, &mut t);
            let days_end = floor_to(to, DAY_MS).max(t);
            push(Tier::Day, t, days_end, &mut t);
        }
        push(Tier::Hour, t, hours_end, &mut t);
        push(Tier::Minute, t, to, &mut t);
        segments
    }

    /// Visits every bucket covering the query window; only `part` is read of buckets on disk.
    fn visit(
        &self,
        state: &State,
        q: &Query,
        max_tier: Tier,
        part: Part,
        mut f: impl FnMut(i64, View<'_>),
    ) {
        let now = clientele_core::time::now_ms();
        let mut segments = Vec::new();
        for (tier, a, b) in self.plan(q.from_ms, q.to_ms, now, max_tier) {
            self.whole_segments(state, tier, a, b, now, &mut segments);
        }
        for (tier, a, b) in segments {
            self.each_bucket(state, tier, a, b, part, &mut f);
        }
    }

    fn allowed(state: &State, q: &Query) -> Option<HashSet<u32>> {
        q.consumers
            .as_ref()
            .map(|set| set.iter().filter_map(|c| state.names.lookup(c)).collect())
    }

    /// Totals per consumer over the window, busiest first.
    pub fn consumer_totals(&self, q: &Query) -> Vec<ConsumerRow> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let allowed = Self::allowed(&state, q);
        let api = match &q.api {
            Some(a) => match state.names.lookup(a) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let mut acc: HashMap<u32, Rollup> = HashMap::default();
        let part = if api.is_some() {
            Part::Series
        } else {
            Part::Consumers
        };
        self.visit(&state, q, Tier::Day, part, |_, bucket| match api {
            None => bucket.consumers(|c, r| {
                if allowed.as_ref().is_none_or(|s| s.contains(&c)) {
                    acc.entry(c).or_default().merge(r);
                }
            }),
            Some(api) => bucket.series(|k, r| {
                if k.api == api && allowed.as_ref().is_none_or(|s| s.contains(&k.consumer)) {
                    acc.entry(k.consumer).or_default().merge(r);
                }
            }),
        });
        let mut rows: Vec<ConsumerRow> = acc
            .into_iter()
            .map(|(c, rollup)| ConsumerRow {
                consumer: state.names.name(c).to_string(),
                rollup,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.rollup
                .counters
                .requests
                .cmp(&a.rollup.counters.requests)
                .then_with(|| a.consumer.cmp(&b.consumer))
        });
        rows
    }

    /// Per-route rollups over the window, for one consumer or (with `None`) for all, busiest
    /// first, with how many consumers call each route and how concentrated its errors are.
    pub fn routes(&self, q: &Query, consumer: Option<&str>) -> Vec<RouteRow> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let allowed = Self::allowed(&state, q);
        let only = match consumer {
            Some(c) => match state.names.lookup(c) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let api = match &q.api {
            Some(a) => match state.names.lookup(a) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        struct Acc {
            rollup: Rollup,
            per_consumer: HashMap<u32, u64>,
        }
        let mut acc: HashMap<(u32, u32, u32), Acc> = HashMap::default();
        self.visit(&state, q, Tier::Day, Part::Series, |_, bucket| {
            bucket.series(|k, r| {
                if only.is_some_and(|c| c != k.consumer)
                    || api.is_some_and(|a| a != k.api)
                    || allowed.as_ref().is_some_and(|s| !s.contains(&k.consumer))
                {
                    return;
                }
                let entry = acc
                    .entry((k.api, k.method, k.route))
                    .or_insert_with(|| Acc {
                        rollup: Rollup::default(),
                        per_consumer: HashMap::default(),
                    });
                entry.rollup.merge(r);
                *entry.per_consumer.entry(k.consumer).or_default() += r.counters.errors();
            });
        });
        let mut rows: Vec<RouteRow> = acc
            .into_iter()
            .map(|((api, method, route), a)| {
                let top = a
                    .per_consumer
                    .iter()
                    .max_by_key(|(c, errors)| (**errors, std::cmp::Reverse(**c)));
                RouteRow {
                    api: state.names.name(api).to_string(),
                    method: state.names.name(method).to_string(),
                    route: state.names.name(route).to_string(),
                    consumers: a.per_consumer.len(),
                    top_consumer_errors: top.map_or(0, |(_, e)| *e),
                    top_consumer: top
                        .filter(|(_, e)| **e > 0)
                        .map(|(c, _)| state.names.name(*c).to_string()),
                    rollup: a.rollup,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.rollup
                .counters
                .requests
                .cmp(&a.rollup.counters.requests)
                .then_with(|| (&a.api, &a.route, &a.method).cmp(&(&b.api, &b.route, &b.method)))
        });
        rows
    }

    /// One consumer's rollups per `step` over the window, empty steps included. The step must
    /// be a whole number of minutes; buckets come from the coarsest tier that divides it.
    pub fn consumer_series(&self, q: &Query, consumer: &str, step_ms: i64) -> Vec<(i64, Rollup)> {
        self.series(q, Some(consumer), step_ms)
    }

    /// Every consumer's traffic together (within `q.consumers` when set) per `step`, empty
    /// steps included: the whole API's series, for the dashboard's overview.
    pub fn total_series(&self, q: &Query, step_ms: i64) -> Vec<(i64, Rollup)> {
        self.series(q, None, step_ms)
    }

    fn series(&self, q: &Query, consumer: Option<&str>, step_ms: i64) -> Vec<(i64, Rollup)> {
        let step_ms = ceil_to(step_ms.max(MINUTE_MS), MINUTE_MS);
        let max_tier = if step_ms % DAY_MS == 0 {
            Tier::Day
        } else if step_ms % HOUR_MS == 0 {
            Tier::Hour
        } else {
            Tier::Minute
        };
        let first = floor_to(q.from_ms, step_ms);
        let steps = ((q.to_ms - first).max(0) + step_ms - 1) / step_ms;
        // Bound the answer; callers validate, this only guards memory.
        let steps = steps.clamp(0, 100_000) as usize;
        let mut out: Vec<(i64, Rollup)> = (0..steps)
            .map(|i| (first + i as i64 * step_ms, Rollup::default()))
            .collect();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        // `None` = every consumer the query allows.
        let only = match consumer {
            Some(name) => match state.names.lookup(name) {
                Some(c) => Some(c),
                None => return out,
            },
            None => None,
        };
        let allowed = Self::allowed(&state, q);
        let wanted = |c: &u32| {
            only.is_none_or(|o| o == *c) && allowed.as_ref().is_none_or(|s| s.contains(c))
        };
        let api = q.api.as_deref().map(|a| state.names.lookup(a));
        if api == Some(None) {
            return out;
        }
        let api = api.flatten();
        let part = if api.is_some() {
            Part::Series
        } else {
            Part::Consumers
        };
        self.visit(&state, q, max_tier, part, |start, bucket| {
            let idx = ((floor_to(start, step_ms) - first) / step_ms) as usize;
            let Some((_, slot)) = out.get_mut(idx) else {
                return;
            };
            match (api, only) {
                (None, Some(c)) => {
                    if wanted(&c) {
                        bucket.consumer(c, |r| slot.merge(r));
                    }
                }
                (None, None) => bucket.consumers(|c, r| {
                    if wanted(&c) {
                        slot.merge(r);
                    }
                }),
                (Some(api), _) => bucket.series(|k, r| {
                    if k.api == api && wanted(&k.consumer) {
                        slot.merge(r);
                    }
                }),
            }
        });
        out
    }

    pub fn stats(&self) -> EngineStats {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut s = EngineStats {
            names: state.names.names.len(),
            persisted_buckets: state.disk.buckets.iter().map(|b| b.len()).sum(),
            ..Default::default()
        };
        for tier in &state.tiers {
            s.buckets += tier.len();
            for b in tier.values() {
                s.series_rollups += b.series.len();
                s.consumer_rollups += b.consumers.len();
            }
        }
        s
    }

    /// Series rollups of one tier in `[from, to)`, for persisting them before their raw events
    /// are pruned.
    pub fn export(&self, tier: Tier, from_ms: i64, to_ms: i64) -> Vec<ExportedRollup> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        self.each_whole(
            &state,
            tier,
            from_ms,
            to_ms,
            Part::Series,
            |start, bucket| {
                bucket.series(|k, r| {
                    out.push(ExportedRollup {
                        tier,
                        bucket_ms: start,
                        consumer: state.names.name(k.consumer).to_string(),
                        api: state.names.name(k.api).to_string(),
                        method: state.names.name(k.method).to_string(),
                        route: state.names.name(k.route).to_string(),
                        status_class: k.class,
                        rollup: r.clone(),
                    });
                })
            },
        );
        out
    }

    /// Loads persisted series rollups (the inverse of [`Engine::export`]); consumer totals are
    /// rebuilt from them.
    pub fn import(&self, rows: Vec<ExportedRollup>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let State { names, tiers, disk } = &mut *state;
        for row in rows {
            let key = SeriesKey {
                consumer: names.id(&row.consumer),
                api: names.id(&row.api),
                method: names.id(&row.method),
                route: names.id(&row.route),
                class: row.status_class,
            };
            let on_disk = disk.buckets[row.tier as usize].contains(&row.bucket_ms);
            let bucket = tiers[row.tier as usize]
                .entry(row.bucket_ms)
                .or_insert_with(|| Bucket {
                    delta: on_disk,
                    ..Bucket::default()
                });
            bucket
                .consumers
                .entry(key.consumer)
                .or_default()
                .merge(&row.rollup);
            bucket.series.entry(key).or_default().merge(&row.rollup);
        }
    }
}

/// A series rollup with its names, as persisted.
#[derive(Debug, Clone)]
pub struct ExportedRollup {
    pub tier: Tier,
    pub bucket_ms: i64,
    pub consumer: String,
    pub api: String,
    pub method: String,
    pub route: String,
    pub status_class: u8,
    pub rollup: Rollup,
}

#[cfg(test)]
mod tests;

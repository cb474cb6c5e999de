//! The feature store: behaviour per consumer, per hour and per UTC day, in bounded memory.
//!
//! [`FeatureStore::observe`] folds events in on the pipeline's thread (never the gateway's):
//! counters, and HyperLogLog sketches for the distinct counts. Per consumer it keeps the last
//! [`HOURS_KEPT`] hours (counters and a small network sketch), up to [`OPEN_DAYS`] recent days
//! with full sketches, and [`DAYS_KEPT`] older days sealed into numbers. Memory per consumer is
//! therefore fixed whatever the traffic.
//!
//! Events usually arrive in time order (live traffic, the start-up replay, backfills); one for
//! a day already sealed still counts in that day's counters, but can no longer add to its
//! distinct counts.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use clientele_core::event::Event;
use clientele_core::policy::PolicyRule;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::hll::{Hll, hash_bytes, mix};
use crate::iptable::{IpTable, Owner, country_str};

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// Hours kept per consumer (a rolling two days: enough for "the last 24 hours" and concurrency).
pub const HOURS_KEPT: usize = 48;
/// Days kept with full sketches; older days are sealed into numbers.
pub const OPEN_DAYS: usize = 2;
/// Sealed days kept per consumer: the own-history baseline.
pub const DAYS_KEPT: usize = 35;
/// Per-route id cursors kept per consumer, for spotting sequential walks.
const ROUTE_CURSORS: usize = 4;
/// Gaps between calls longer than this are idle time, not think time.
const MAX_THINK_MS: i64 = 60_000;

/// Additive counts of one hour or one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub requests: u64,
    /// Responses with status >= 400 other than 429.
    pub errors: u64,
    pub rate_limited: u64,
    /// Calls to item routes (a template with a parameter, such as `/items/{id}`).
    pub item_requests: u64,
    /// Item calls answered 404.
    pub item_not_found: u64,
    /// Item calls whose id followed the previous call's on the same route (numeric ids).
    pub id_steps: u64,
    /// Of those, calls whose id was the previous id plus or minus one.
    pub sequential_steps: u64,
    /// Think time between consecutive calls (Welford: n, mean, sum of squares).
    pub gap_n: u64,
    pub gap_mean_ms: f64,
    pub gap_m2: f64,
}

impl Counts {
    fn add_gap(&mut self, gap_ms: f64) {
        self.gap_n += 1;
        let d = gap_ms - self.gap_mean_ms;
        self.gap_mean_ms += d / self.gap_n as f64;
        self.gap_m2 += d * (gap_ms - self.gap_mean_ms);
    }

    /// Coefficient of variation of think time: near 0 for a machine's fixed interval, near 1
    /// or above for people. `None` with too few gaps to say.
    pub fn gap_cv(&self) -> Option<f64> {
        if self.gap_n < 20 || self.gap_mean_ms <= 0.0 {
            return None;
        }
        let sd = (self.gap_m2 / (self.gap_n - 1) as f64).sqrt();
        Some(sd / self.gap_mean_ms)
    }

    pub fn sequential_share(&self) -> f64 {
        ratio(self.sequential_steps, self.id_steps)
    }

    pub fn not_found_share(&self) -> f64 {
        ratio(self.item_not_found, self.item_requests)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A small exact set of country codes (packed two letters, see [`crate::iptable`]): the first
/// `N` distinct ones, and whether more were seen. Serialised as the list of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Countries<const N: usize> {
    pub(crate) codes: [u16; N],
    pub(crate) len: u8,
    /// More than `N` distinct countries were seen.
    pub overflow: bool,
}

impl<const N: usize> Default for Countries<N> {
    fn default() -> Self {
        Countries {
            codes: [0; N],
            len: 0,
            overflow: false,
        }
    }
}

impl<const N: usize> Countries<N> {
    fn insert(&mut self, code: u16) {
        let held = &self.codes[..usize::from(self.len)];
        if code == 0 || held.contains(&code) {
            return;
        }
        match self.codes.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = code;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    /// Distinct countries held (at least this many when `overflow`).
    pub fn len(&self) -> u32 {
        u32::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn codes(&self) -> impl Iterator<Item = String> + '_ {
        self.codes[..usize::from(self.len)]
            .iter()
            .map(|c| country_str(*c))
    }

    pub fn contains(&self, code: u16) -> bool {
        self.codes[..usize::from(self.len)].contains(&code)
    }

    /// The codes held, packed.
    pub fn packed(&self) -> &[u16] {
        &self.codes[..usize::from(self.len)]
    }
}

impl<const N: usize> Serialize for Countries<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.codes())
    }
}

/// One consumer-hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourFeatures {
    /// Hour number (`ms / HOUR_MS`).
    pub hour: i64,
    pub counts: Counts,
    pub networks: Hll<64>,
    /// Distinct TLS clients (`Event::tls_fp`: set where the gateway terminates TLS).
    pub tls_clients: Hll<64>,
    /// Countries of the hour's client addresses (with `governance.ip_table` only).
    pub countries: Countries<4>,
    /// The most calls seen in one second of the hour: a lower bound of concurrency.
    pub max_per_second: u32,
    pub(crate) second: i64,
    pub(crate) in_second: u32,
}

/// One consumer-day still taking events, with full sketches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenDay {
    pub(crate) day: i64,
    pub(crate) counts: Counts,
    pub(crate) hour_requests: [u32; 24],
    pub(crate) networks: Hll<256>,
    /// Autonomous systems and countries (with `governance.ip_table` only).
    pub(crate) asns: Hll<64>,
    pub(crate) countries: Countries<16>,
    pub(crate) max_countries_per_hour: u32,
    pub(crate) user_agents: Hll<128>,
    pub(crate) tls_clients: Hll<128>,
    pub(crate) sessions: Hll<256>,
    pub(crate) end_users: Hll<256>,
    pub(crate) ids: Hll<256>,
    pub(crate) id_min: u64,
    pub(crate) id_max: u64,
    pub(crate) max_per_second: u32,
}

/// One consumer-day as numbers: what judging and the risk score read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DaySummary {
    /// Day number (`ms / DAY_MS`, UTC).
    pub day: i64,
    pub counts: Counts,
    /// Requests per hour of day (UTC).
    pub hour_requests: [u32; 24],
    /// Distinct client networks (IPv4 /24, IPv6 /48).
    pub networks: u32,
    /// Distinct autonomous systems of the client addresses (0 without `governance.ip_table`).
    pub asns: u32,
    /// The countries of the client addresses (empty without `governance.ip_table`).
    pub countries: Countries<16>,
    /// The most countries seen within one hour of the day: one application is rarely in
    /// three countries in the same hour, a key shared across the world is.
    pub max_countries_per_hour: u32,
    pub user_agents: u32,
    /// Distinct TLS clients (fingerprints of the ClientHello, see `Event::tls_fp`; 0 for
    /// traffic that did not come over TLS terminated by the gateway).
    pub tls_clients: u32,
    /// The most TLS clients within one hour of the day (of the hours kept, the last 48).
    pub max_tls_clients_per_hour: u32,
    pub sessions: u32,
    pub end_users: u32,
    /// Distinct item ids called.
    pub distinct_ids: u32,
    /// The numeric id range called (0, 0 when none).
    pub id_min: u64,
    pub id_max: u64,
    pub max_per_second: u32,
}

impl DaySummary {
    /// Hours of the day holding at least 2% of its calls: about 8-10 for business hours, 24
    /// for a flat around-the-clock profile, a few for a nightly job.
    pub fn active_hours(&self) -> u32 {
        let total: u64 = self.hour_requests.iter().map(|&r| u64::from(r)).sum();
        if total == 0 {
            return 0;
        }
        self.hour_requests
            .iter()
            .filter(|&&r| u64::from(r) * 50 >= total)
            .count() as u32
    }

    /// The share of the observed numeric id range that was called, 0-1.
    pub fn id_coverage(&self) -> f64 {
        if self.id_max < self.id_min || self.distinct_ids == 0 {
            return 0.0;
        }
        let span = (self.id_max - self.id_min).saturating_add(1) as f64;
        (f64::from(self.distinct_ids) / span).min(1.0)
    }
}

impl OpenDay {
    fn new(day: i64) -> OpenDay {
        OpenDay {
            day,
            counts: Counts::default(),
            hour_requests: [0; 24],
            networks: Hll::default(),
            asns: Hll::default(),
            countries: Countries::default(),
            max_countries_per_hour: 0,
            user_agents: Hll::default(),
            tls_clients: Hll::default(),
            sessions: Hll::default(),
            end_users: Hll::default(),
            ids: Hll::default(),
            id_min: u64::MAX,
            id_max: 0,
            max_per_second: 0,
        }
    }

    /// Bytes its sketches hold on the heap.
    fn heap_bytes(&self) -> usize {
        self.networks.heap_bytes()
            + self.asns.heap_bytes()
            + self.user_agents.heap_bytes()
            + self.tls_clients.heap_bytes()
            + self.sessions.heap_bytes()
            + self.end_users.heap_bytes()
            + self.ids.heap_bytes()
    }

    /// The day as numbers; `hours` (the consumer's hours kept) give the per-hour maxima.
    fn summary(&self, hours: &VecDeque<HourFeatures>) -> DaySummary {
        let numeric = self.id_min <= self.id_max;
        let max_tls_clients_per_hour = hours
            .iter()
            .filter(|h| h.hour.div_euclid(24) == self.day && !h.tls_clients.is_empty())
            .map(|h| h.tls_clients.count())
            .max()
            .unwrap_or(0);
        DaySummary {
            day: self.day,
            counts: self.counts,
            hour_requests: self.hour_requests,
            networks: self.networks.count(),
            asns: self.asns.count(),
            countries: self.countries,
            max_countries_per_hour: self.max_countries_per_hour,
            user_agents: self.user_agents.count(),
            tls_clients: self.tls_clients.count(),
            max_tls_clients_per_hour,
            sessions: self.sessions.count(),
            end_users: self.end_users.count(),
            distinct_ids: self.ids.count(),
            id_min: if numeric { self.id_min } else { 0 },
            id_max: if numeric { self.id_max } else { 0 },
            max_per_second: self.max_per_second,
        }
    }
}

/// Everything kept about one consumer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerFeatures {
    /// The plan the latest event named (the control plane's answer is preferred when judging).
    pub plan: Option<Arc<str>>,
    pub(crate) hours: VecDeque<HourFeatures>,
    pub(crate) open: Vec<OpenDay>,
    pub(crate) sealed: VecDeque<DaySummary>,
    pub(crate) cursors: [(u64, u64); ROUTE_CURSORS],
    pub(crate) next_cursor: usize,
    pub(crate) last_ts: Option<i64>,
    /// The store's change number when this consumer last changed (not persisted): saved when
    /// above the last saved one.
    pub(crate) changed: u64,
}

/// What one event contributes, extracted once.
struct Extract {
    network: Option<u64>,
    owner: Option<Owner>,
    item: Option<ItemId>,
    /// The hash of the TLS client fingerprint.
    tls: Option<u64>,
}

struct ItemId {
    route: u64,
    hash: u64,
    numeric: Option<u64>,
}

impl ConsumerFeatures {
    fn observe(&mut self, e: &Event, x: &Extract) {
        let hour = e.ts_ms.div_euclid(HOUR_MS);
        let day = e.ts_ms.div_euclid(DAY_MS);
        let gap = self
            .last_ts
            .map(|t| e.ts_ms - t)
            .filter(|g| (0..=MAX_THINK_MS).contains(g));
        if self.last_ts.is_none_or(|t| e.ts_ms >= t) {
            self.last_ts = Some(e.ts_ms);
        }
        let step = x.item.as_ref().and_then(|i| self.step(i));
        let second = e.ts_ms.div_euclid(1000);
        let mut hour_peak = 0;
        let mut hour_countries = 0;
        if let Some(h) = self.hour_mut(hour) {
            // Think time is judged per day; the hour's counts leave it out (two divisions less).
            add_counts(&mut h.counts, e, x, None, step);
            if let Some(n) = x.network {
                h.networks.insert(n);
            }
            if let Some(t) = x.tls {
                h.tls_clients.insert(t);
            }
            if let Some(o) = x.owner {
                h.countries.insert(o.country);
                hour_countries = h.countries.len();
            }
            if h.second == second {
                h.in_second += 1;
            } else {
                h.second = second;
                h.in_second = 1;
            }
            h.max_per_second = h.max_per_second.max(h.in_second);
            hour_peak = h.max_per_second;
        }
        match self.open_day_mut(day) {
            Some(d) => {
                add_counts(&mut d.counts, e, x, gap, step);
                let hod = (hour.rem_euclid(24)) as usize;
                d.hour_requests[hod] = d.hour_requests[hod].saturating_add(1);
                add_sketches(d, e, x);
                d.max_per_second = d.max_per_second.max(hour_peak);
                d.max_countries_per_hour = d.max_countries_per_hour.max(hour_countries);
            }
            None => {
                // A day already sealed: its counters still move, its distinct counts cannot.
                if let Some(s) = self.sealed.iter_mut().find(|s| s.day == day) {
                    add_counts(&mut s.counts, e, x, gap, step);
                    let hod = (hour.rem_euclid(24)) as usize;
                    s.hour_requests[hod] = s.hour_requests[hod].saturating_add(1);
                }
            }
        }
    }

    /// The id step of an item call against the previous call on the same route: `Some(true)`
    /// for a sequential one (±1).
    fn step(&mut self, item: &ItemId) -> Option<bool> {
        let id = item.numeric?;
        let slot = self.cursors.iter().position(|(r, _)| *r == item.route);
        match slot {
            Some(i) => {
                let prev = self.cursors[i].1;
                self.cursors[i].1 = id;
                Some(prev.abs_diff(id) == 1)
            }
            None => {
                let i = self.next_cursor % ROUTE_CURSORS;
                self.next_cursor = self.next_cursor.wrapping_add(1);
                self.cursors[i] = (item.route, id);
                None
            }
        }
    }

    fn hour_mut(&mut self, hour: i64) -> Option<&mut HourFeatures> {
        let newest = self.hours.back().map_or(i64::MIN, |h| h.hour);
        if hour == newest {
            // The common case (events in time order): no search.
            return self.hours.back_mut();
        }
        if hour > newest {
            self.hours.push_back(HourFeatures {
                hour,
                ..HourFeatures::default()
            });
            while self.hours.len() > HOURS_KEPT {
                self.hours.pop_front();
            }
            return self.hours.back_mut();
        }
        if newest - hour >= HOURS_KEPT as i64 {
            return None;
        }
        let at = self.hours.partition_point(|h| h.hour < hour);
        if self.hours.get(at).is_some_and(|h| h.hour == hour) {
            return self.hours.get_mut(at);
        }
        if self.hours.len() >= HOURS_KEPT && at == 0 {
            // Older than everything kept, with no room: not kept.
            return None;
        }
        self.hours.insert(
            at,
            HourFeatures {
                hour,
                ..HourFeatures::default()
            },
        );
        let mut at = at;
        if self.hours.len() > HOURS_KEPT {
            self.hours.pop_front();
            at = at.saturating_sub(1);
        }
        self.hours.get_mut(at)
    }

    /// The open day `day`, opening it (and sealing the oldest open day) when needed. `None`
    /// when the day is already sealed.
    fn open_day_mut(&mut self, day: i64) -> Option<&mut OpenDay> {
        if let Some(i) = self.open.iter().position(|d| d.day == day) {
            return self.open.get_mut(i);
        }
        if self.sealed.iter().any(|s| s.day == day) {
            return None;
        }
        self.open.push(OpenDay::new(day));
        while self.open.len() > OPEN_DAYS {
            let oldest = self
                .open
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| d.day)
                .map(|(i, _)| i)?;
            let d = self.open.swap_remove(oldest);
            let summary = d.summary(&self.hours);
            self.seal(summary);
        }
        self.open.iter_mut().find(|d| d.day == day)
    }

    fn seal(&mut self, s: DaySummary) {
        let at = self.sealed.partition_point(|x| x.day < s.day);
        self.sealed.insert(at, s);
        while self.sealed.len() > DAYS_KEPT {
            self.sealed.pop_front();
        }
    }

    /// Every day kept, oldest first, open ones estimated now.
    pub fn days(&self) -> Vec<DaySummary> {
        let mut out: Vec<DaySummary> = self.sealed.iter().cloned().collect();
        out.extend(self.open.iter().map(|d| d.summary(&self.hours)));
        out.sort_by_key(|d| d.day);
        out
    }

    /// The hours kept, oldest first.
    pub fn hours(&self) -> impl Iterator<Item = &HourFeatures> {
        self.hours.iter()
    }

    /// Bytes held for this consumer (the struct and its buffers), for the memory benchmark.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<ConsumerFeatures>()
            + self.hours.capacity() * std::mem::size_of::<HourFeatures>()
            + self.open.capacity() * std::mem::size_of::<OpenDay>()
            + self.sealed.capacity() * std::mem::size_of::<DaySummary>()
            + self
                .hours
                .iter()
                .map(|h| h.networks.heap_bytes() + h.tls_clients.heap_bytes())
                .sum::<usize>()
            + self.open.iter().map(OpenDay::heap_bytes).sum::<usize>()
    }
}

fn add_counts(c: &mut Counts, e: &Event, x: &Extract, gap: Option<i64>, step: Option<bool>) {
    c.requests += 1;
    if e.status == 429 {
        c.rate_limited += 1;
    } else if e.status >= 400 {
        c.errors += 1;
    }
    if x.item.is_some() {
        c.item_requests += 1;
        if e.status == 404 {
            c.item_not_found += 1;
        }
    }
    if let Some(seq) = step {
        c.id_steps += 1;
        if seq {
            c.sequential_steps += 1;
        }
    }
    if let Some(g) = gap {
        c.add_gap(g as f64);
    }
}

fn add_sketches(d: &mut OpenDay, e: &Event, x: &Extract) {
    if let Some(n) = x.network {
        d.networks.insert(n);
    }
    if let Some(o) = x.owner {
        d.asns.insert(mix(u64::from(o.asn)));
        d.countries.insert(o.country);
    }
    for (sketch, value) in [
        (&mut d.sessions, &e.session_id),
        (&mut d.end_users, &e.end_user),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            sketch.insert(hash_bytes(v.as_bytes()));
        }
    }
    if let Some(ua) = e.user_agent.as_deref().filter(|v| !v.is_empty()) {
        d.user_agents.insert(hash_bytes(ua.as_bytes()));
    }
    if let Some(t) = x.tls {
        d.tls_clients.insert(t);
    }
    if let Some(item) = &x.item {
        d.ids.insert(item.hash);
        if let Some(n) = item.numeric {
            d.id_min = d.id_min.min(n);
            d.id_max = d.id_max.max(n);
        }
    }
}

/// The client network of an address: IPv4 /24 or IPv6 /48, as one number.
pub fn network_of(ip: &str) -> Option<u64> {
    parse_ip(ip).map(network)
}

fn network(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4) >> 8),
            // Tagged so that a /48 never equals an IPv4 /24.
            None => (1 << 63) | (u128::from(v6) >> 80) as u64,
        },
    }
}

/// An address, with dotted-quad IPv4 parsed by hand: the standard parser was a tenth of the
/// per-event cost. Anything unusual falls back to it.
fn parse_ip(ip: &str) -> Option<std::net::IpAddr> {
    match ipv4(ip) {
        Some(v4) => Some(std::net::IpAddr::V4(v4.into())),
        None => ip.parse().ok(),
    }
}

/// Dotted-quad IPv4 in one pass over the bytes: `str::split` and `str::parse` were two fifths
/// of the per-event cost (callgrind). Parts of up to three digits (leading zeros allowed) and
/// at most 255; anything else is not dotted-quad.
fn ipv4(ip: &str) -> Option<u32> {
    let b = ip.as_bytes();
    if !(7..=15).contains(&b.len()) {
        return None;
    }
    let (mut out, mut part, mut digits, mut dots) = (0u32, 0u32, 0u32, 0u32);
    for &c in b {
        if c.is_ascii_digit() {
            part = part * 10 + u32::from(c - b'0');
            digits += 1;
            if digits > 3 {
                return None;
            }
        } else if c == b'.' {
            if digits == 0 || part > 255 || dots == 3 {
                return None;
            }
            out = (out << 8) | part;
            (part, digits) = (0, 0);
            dots += 1;
        } else {
            return None;
        }
    }
    (dots == 3 && digits > 0 && part <= 255).then_some((out << 8) | part)
}

/// A decimal u64 of ASCII digits only (no sign), or `None`.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// The item id of a call on an item route: the path segment where the template has its first
/// parameter. Templates are relative to the API, paths may carry its prefix, so the two are
/// aligned from the end.
fn item_of(route: &str, path: &str) -> Option<ItemId> {
    // Runs for every event: no allocation, byte scans from the end (memrchr) rather than
    // `str::rsplit`, whose char searcher showed in the profile.
    let route_b = route.as_bytes();
    let param = route_b.iter().position(|&b| b == b'{')?;
    let mut path = path.as_bytes();
    if let Some(q) = path.iter().position(|&b| b == b'?') {
        path = &path[..q];
    }
    while let [rest @ .., b'/'] = path {
        path = rest;
    }
    let mut route_t = route_b;
    while let [rest @ .., b'/'] = route_t {
        route_t = rest;
    }
    // Segments after the parameter's segment, counted in the template...
    let after = route_t
        .get(param..)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b == b'/')
        .count();
    // ...are skipped from the end of the path, whose next segment is the value.
    let mut end = path.len();
    for _ in 0..after {
        end = path[..end].iter().rposition(|&b| b == b'/')?;
    }
    let start = path[..end]
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(0, |i| i + 1);
    let value = &path[start..end];
    if value.is_empty() {
        return None;
    }
    let route_hash = hash_bytes(route_b);
    Some(ItemId {
        route: route_hash,
        hash: mix(hash_bytes(value) ^ route_hash),
        numeric: decimal(value),
    })
}

/// Where block verdicts go: given every consumer to block now (the complete list, so that
/// a consumer missing from it is unblocked).
pub type BlockHook = Box<dyn Fn(&[(String, PolicyRule)]) + Send + Sync>;

/// The feature store, shared by the pipeline (writer) and the evaluation (reader).
#[derive(Default)]
pub struct FeatureStore {
    pub(crate) inner: RwLock<Inner>,
    /// Owners of addresses (`governance.ip_table`), when configured.
    ip_table: Option<Arc<IpTable>>,
    blocks: RwLock<Option<BlockHook>>,
    /// The latest block list, for the dashboard.
    blocked: RwLock<Vec<(String, PolicyRule)>>,
    /// The change number the last successful save held (see [`crate::persist`]).
    pub(crate) saved_change: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) consumers: HashMap<Arc<str>, ConsumerFeatures>,
    /// All attributed calls per day, for each consumer's share of traffic.
    pub(crate) totals: VecDeque<(i64, u64)>,
    /// Every event folded per day, attributed or not: what start-up compares with the event
    /// log's own count of the day to know whether the persisted state holds all of it.
    pub(crate) folded: VecDeque<(i64, u64)>,
    /// Set by a start-up load ([`FeatureStore::load`]): replayed events before this time are
    /// already in the loaded state and are skipped.
    pub(crate) replay_from: Option<i64>,
    /// Bumped by every `observe`: what saves compare consumers' `changed` with.
    pub(crate) change: u64,
}

impl FeatureStore {
    pub fn new() -> FeatureStore {
        FeatureStore::default()
    }

    /// A store that also counts the autonomous systems and countries of client addresses.
    pub fn with_ip_table(table: Arc<IpTable>) -> FeatureStore {
        FeatureStore {
            ip_table: Some(table),
            ..FeatureStore::default()
        }
    }

    /// Folds newly stored events in. Called where the pipeline folds events into the rollups:
    /// the writer, the ingest endpoint and the start-up replay.
    pub fn observe(&self, events: &[Event]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        inner.change += 1;
        let change = inner.change;
        for e in events {
            add_total(&mut inner.folded, e.ts_ms.div_euclid(DAY_MS));
            let Some(consumer) = e.consumer.as_deref() else {
                continue;
            };
            let ip = e.client_ip.as_deref().and_then(parse_ip);
            let x = Extract {
                network: ip.map(|ip| mix(network(ip))),
                owner: ip.and_then(|ip| self.ip_table.as_ref()?.lookup(ip)),
                item: item_of(&e.route, &e.path),
                tls: e
                    .tls_fp
                    .as_deref()
                    .filter(|v| !v.is_empty())
                    .map(|v| hash_bytes(v.as_bytes())),
            };
            let entry = match inner.consumers.get_mut(consumer) {
                Some(c) => c,
                None => inner.consumers.entry(Arc::from(consumer)).or_default(),
            };
            if let Some(plan) = e.plan.as_deref() {
                if entry.plan.as_deref() != Some(plan) {
                    entry.plan = Some(Arc::from(plan));
                }
            }
            entry.observe(e, &x);
            entry.changed = change;
            add_total(&mut inner.totals, e.ts_ms.div_euclid(DAY_MS));
        }
    }

    /// Installs where block verdicts go (the server sets them on the key index's slots).
    pub fn on_blocks(&self, hook: BlockHook) {
        *self.blocks.write().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Hands the verdicts of an evaluation to the hook.
    pub fn apply_blocks(&self, blocks: &[(String, PolicyRule)]) {
        if let Some(hook) = &*self.blocks.read().unwrap_or_else(|e| e.into_inner()) {
            hook(blocks);
        }
        *self.blocked.write().unwrap_or_else(|e| e.into_inner()) = blocks.to_vec();
    }

    /// The consumers the latest evaluation blocked, with the rule.
    pub fn blocked(&self) -> Vec<(String, PolicyRule)> {
        self.blocked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `f` over every consumer under one read lock. Keep `f` short (copy numbers out): the
    /// pipeline waits for the lock.
    pub fn with_consumers<R>(&self, f: impl FnOnce(&dyn ConsumerSource) -> R) -> R {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&*inner)
    }

    /// One consumer's days and hours, copied out.
    pub fn consumer(&self, id: &str) -> Option<(Vec<DaySummary>, Vec<HourFeatures>)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let c = inner.consumers.get(id)?;
        Some((c.days(), c.hours.iter().cloned().collect()))
    }

    /// All attributed calls of `day`.
    pub fn total(&self, day: i64) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.total(day)
    }

    /// (consumers, bytes held), for the memory benchmark.
    pub fn memory(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let bytes = inner
            .consumers
            .iter()
            .map(|(k, c)| c.memory_bytes() + k.len())
            .sum::<usize>()
            + inner.consumers.capacity() * std::mem::size_of::<(Arc<str>, ConsumerFeatures)>();
        (inner.consumers.len(), bytes)
    }

    /// Consumer-hours kept (hours with at least one call), for the memory benchmark.
    pub fn consumer_hours(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.consumers.values().map(|c| c.hours.len()).sum()
    }
}

fn add_total(totals: &mut VecDeque<(i64, u64)>, day: i64) {
    if let Some(t) = totals.iter_mut().rev().find(|(d, _)| *d == day) {
        t.1 += 1;
        return;
    }
    let at = totals.partition_point(|(d, _)| *d < day);
    totals.insert(at, (day, 1));
    while totals.len() > DAYS_KEPT + OPEN_DAYS {
        totals.pop_front();
    }
}

/// Read access to the consumers, for the evaluation.
pub trait ConsumerSource {
    fn each(&self, f: &mut dyn FnMut(&str, &ConsumerFeatures));
    fn total(&self, day: i64) -> u64;
}

impl ConsumerSource for Inner {
    fn each(&self, f: &mut dyn FnMut(&str, &ConsumerFeatures)) {
        for (k, c) in &self.consumers {
            f(k, c);
        }
    }

    fn total(&self, day: i64) -> u64 {
        self.totals
            .iter()
            .find(|(d, _)| *d == day)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event(consumer: &str, ts_ms: i64, path: &str, route: &str) -> Event {
        Event {
            id: String::new(),
            ts_ms,
            consumer: Some(consumer.into()),
            key_id: None,
            api: None,
            method: "GET".into(),
            path: path.into(),
            route: route.into(),
            status: 200,
            latency_ms: 1.0,
            upstream_latency_ms: None,
            request_bytes: 0,
            response_bytes: 0,
            client_ip: Some("10.0.0.1".into()),
            user_agent: Some("ua".into()),
            session_id: None,
            end_user: None,
            trace_id: None,
            outcome: clientele_core::event::Outcome::Ingested,
            plan: Some("free".into()),
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
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(network_of("10.1.2.3"), network_of("10.1.2.200"));
        assert_ne!(network_of("10.1.2.3"), network_of("10.1.3.3"));
        assert_eq!(
            network_of("2001:db8:1::1"),
            network_of("2001:db8:1:ffff::2")
        );
        assert_ne!(network_of("2001:db8:1::1"), network_of("2001:db8:2::1"));
        assert_eq!(network_of("::ffff:10.1.2.3"), network_of("10.1.2.9"));
        assert_eq!(network_of("not an ip"), None);
    }

    #[test]
    fn dotted_quads_parse_by_hand_as_the_standard_parser_does() {
        for ip in ["10.1.2.3", "0.0.0.0", "255.255.255.255", "1.22.133.4"] {
            let std: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4(ip), Some(u32::from(std)), "{ip}");
        }
        let padded = std::net::Ipv4Addr::new(192, 168, 1, 10);
        assert_eq!(ipv4("192.168.001.010"), Some(u32::from(padded)));
        for ip in [
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "1.2.3.4a",
            "1234.1.1.1",
            "",
            "::1",
        ] {
            assert_eq!(ipv4(ip), None, "{ip}");
        }
        assert_eq!(network_of("2001:db8::1"), network_of("2001:db8:0:1::1"));
    }

    #[test]
    fn items_align_templates_with_prefixed_paths() {
        let i = item_of("/items/{id}", "/shop/items/42").unwrap();
        assert_eq!(i.numeric, Some(42));
        assert!(item_of("/items", "/items").is_none());
        assert_eq!(
            item_of("/items/{id}", "/items/ab-12").unwrap().numeric,
            None
        );
        // Trailing slashes and queries; segments after the parameter; a bare value.
        assert_eq!(
            item_of("/items/{id}/", "/items/7/?x=1").unwrap().numeric,
            Some(7)
        );
        assert_eq!(
            item_of("/users/{id}/orders", "/api/users/99/orders")
                .unwrap()
                .numeric,
            Some(99)
        );
        assert!(item_of("/users/{id}/orders", "orders").is_none());
        assert_eq!(item_of("{id}", "5").unwrap().numeric, Some(5));
        assert_eq!(
            item_of("/items/{id}", "/items/99999999999999999999999")
                .unwrap()
                .numeric,
            None
        );
    }

    #[test]
    fn a_sequential_walk_counts_steps_ids_and_coverage() {
        let store = FeatureStore::new();
        let day0 = 20_000 * DAY_MS;
        let events: Vec<Event> = (1..=500u64)
            .map(|i| {
                let mut e = event(
                    "s",
                    day0 + i as i64 * 1000,
                    &format!("/items/{i}"),
                    "/items/{id}",
                );
                e.client_ip = Some(format!("10.0.{}.1", i % 7));
                if i % 10 == 0 {
                    e.status = 404;
                }
                e
            })
            .collect();
        store.observe(&events);
        let (days, hours) = store.consumer("s").unwrap();
        let d = &days[0];
        assert_eq!(d.counts.requests, 500);
        assert_eq!(d.counts.sequential_steps, 499);
        assert!((d.counts.not_found_share() - 0.1).abs() < 1e-9);
        assert_eq!(d.networks, 7);
        assert!(d.id_coverage() > 0.9, "{d:?}");
        assert!(d.counts.gap_cv().unwrap() < 0.01);
        assert_eq!(hours.iter().map(|h| h.counts.requests).sum::<u64>(), 500);
        assert_eq!(store.total(20_000), 500);
    }

    #[test]
    fn old_days_are_sealed_and_memory_stays_bounded() {
        let store = FeatureStore::new();
        for day in 0..100i64 {
            let events: Vec<Event> = (0..50)
                .map(|i| {
                    let mut e = event("c", day * DAY_MS + i * 60_000, "/x", "/x");
                    e.end_user = Some(format!("u{i}"));
                    e
                })
                .collect();
            store.observe(&events);
        }
        let (days, hours) = store.consumer("c").unwrap();
        assert_eq!(days.len(), DAYS_KEPT + OPEN_DAYS);
        assert!(hours.len() <= HOURS_KEPT);
        assert!((48..=52).contains(&days[0].end_users), "{:?}", days[0]);
        assert_eq!(days.last().unwrap().day, 99);
        let (_, bytes) = store.memory();
        assert!(bytes < 64 * 1024, "{bytes}");
    }
}

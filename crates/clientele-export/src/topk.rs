//! Bounded per-consumer series: the top-K consumers by traffic get their own series, everyone
//! else is folded into `_other`.
//!
//! Which consumers are "top" is decided by a Space-Saving sketch (Metwally et al., 2005) with a
//! fixed number of counters, so memory does not grow with the number of distinct consumers: a
//! consumer whose share of traffic exceeds 1/capacity is always tracked, and the estimates
//! over-count by at most the smallest counter. Per-consumer Prometheus/OTLP series exist only
//! for at most K members; when a consumer overtakes the smallest member, the member's totals are
//! added to `_other` (so `_other`, like every counter, only goes up) and its series disappears,
//! which Prometheus treats as an ended series.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::hist::Hist;

/// The label value of everything outside the top K.
pub const OTHER: &str = "_other";
/// The label value of requests no consumer could be identified for (no or unknown key).
pub const ANONYMOUS: &str = "_anonymous";

/// Status classes, in label order.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

pub fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// Totals for one consumer series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerSeries {
    pub requests: [u64; 6],
    pub duration: Hist,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl ConsumerSeries {
    pub fn record(&mut self, status: u16, latency_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.requests[status_class_index(status)] += 1;
        self.duration.observe(latency_ms / 1000.0);
        self.request_bytes += req_bytes;
        self.response_bytes += resp_bytes;
    }

    pub fn merge(&mut self, other: &ConsumerSeries) {
        for (a, b) in self.requests.iter_mut().zip(other.requests) {
            *a += b;
        }
        self.duration.merge(&other.duration);
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
    }

    pub fn total(&self) -> u64 {
        self.requests.iter().sum()
    }
}

/// Space-Saving over consumer ids with a fixed number of counters. Each counter keeps the
/// count it inherited when it replaced the smallest one (its error), so `count - error` is a
/// guaranteed lower bound of the true count.
#[derive(Debug)]
pub struct SpaceSaving {
    capacity: usize,
    counts: HashMap<Arc<str>, (u64, u64)>,
    /// The same counters ordered by count, to find the smallest in O(log n).
    order: BTreeSet<(u64, Arc<str>)>,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counts: HashMap::with_capacity(capacity.max(1)),
            order: BTreeSet::new(),
        }
    }

    /// Counts `n` occurrences of `item`; returns its guaranteed count (count minus error).
    pub fn add(&mut self, item: &str, n: u64) -> u64 {
        if let Some((key, &(count, err))) = self.counts.get_key_value(item) {
            let key = key.clone();
            self.order.remove(&(count, key.clone()));
            let new = count + n;
            self.order.insert((new, key.clone()));
            self.counts.insert(key, (new, err));
            return new - err;
        }
        let mut base = 0;
        if self.counts.len() >= self.capacity {
            // Replace the smallest counter; the newcomer inherits its count as its error.
            if let Some((min, victim)) = self.order.pop_first() {
                self.counts.remove(&victim);
                base = min;
            }
        }
        let key: Arc<str> = Arc::from(item);
        let new = base + n;
        self.order.insert((new, key.clone()));
        self.counts.insert(key, (new, base));
        n
    }

    /// The estimated count (an upper bound), 0 if `item` is not tracked.
    pub fn estimate(&self, item: &str) -> u64 {
        self.counts.get(item).map_or(0, |c| c.0)
    }

    /// The guaranteed count (a lower bound), 0 if `item` is not tracked.
    pub fn guaranteed(&self, item: &str) -> u64 {
        self.counts.get(item).map_or(0, |c| c.0 - c.1)
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The bounded set of consumer series.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    sketch: SpaceSaving,
    series: HashMap<Arc<str>, ConsumerSeries>,
    other: ConsumerSeries,
    /// A lower bound of the smallest guaranteed count among members: a stale value is still a
    /// valid bound while members stay in the sketch, and the exact minimum is recomputed only
    /// when a newcomer's count exceeds it.
    floor: u64,
    pub evictions: u64,
}

impl TopK {
    /// `k` series at most. The sketch keeps eight counters per series, at least 256: any
    /// consumer with more than 1/capacity of the traffic is certain to be tracked, and
    /// newcomers are compared by guaranteed counts, so a burst of one-off consumers cannot push
    /// out steady members.
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            sketch: SpaceSaving::new((k.saturating_mul(8)).max(256)),
            series: HashMap::with_capacity(k),
            other: ConsumerSeries::default(),
            floor: 0,
            evictions: 0,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Adds `n` requests' worth of traffic for `consumer` to the sketch and returns the series
    /// the requests must be recorded in.
    pub fn series_for(&mut self, consumer: &str, n: u64) -> &mut ConsumerSeries {
        if self.k == 0 {
            return &mut self.other;
        }
        let count = self.sketch.add(consumer, n);
        if self.series.contains_key(consumer) {
            // Looked up twice because the borrow of a `get_mut` hit cannot be returned while the
            // other branches also borrow `self` (a known borrow-checker limitation).
            return self
                .series
                .get_mut(consumer)
                .unwrap_or_else(|| unreachable!("checked just above"));
        }
        if self.series.len() < self.k {
            return self.series.entry(Arc::from(consumer)).or_default();
        }
        // One-off consumers (a guaranteed count of 1) never displace a member.
        if count < 2 || count <= self.floor {
            return &mut self.other;
        }
        // The newcomer may have overtaken the smallest member: find it exactly.
        let mut smallest: Option<(u64, Arc<str>)> = None;
        for name in self.series.keys() {
            let e = self.sketch.guaranteed(name);
            if smallest.as_ref().is_none_or(|(m, _)| e < *m) {
                smallest = Some((e, name.clone()));
            }
        }
        let Some((min, victim)) = smallest else {
            return &mut self.other;
        };
        self.floor = min;
        if count <= min {
            return &mut self.other;
        }
        if let Some(evicted) = self.series.remove(&victim) {
            self.other.merge(&evicted);
        }
        self.evictions += 1;
        // The newcomer may be the new smallest member.
        self.floor = self.floor.min(count);
        self.series.entry(Arc::from(consumer)).or_default()
    }

    /// Every series with its label value, `_other` last (present once anything folded into it).
    pub fn snapshot(&self) -> Vec<(String, ConsumerSeries)> {
        let mut out: Vec<(String, ConsumerSeries)> = self
            .series
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if self.other.total() > 0 {
            out.push((OTHER.to_string(), self.other.clone()));
        }
        out
    }

    /// Number of per-consumer series, `_other` included.
    pub fn series_count(&self) -> usize {
        self.series.len() + usize::from(self.other.total() > 0)
    }

    /// Bytes held, estimated from capacities: what stays flat however many consumers appear.
    pub fn approx_bytes(&self) -> usize {
        let per_key = std::mem::size_of::<Arc<str>>() + 16 + 64; // Arc header + id text, typical
        let sketch = self.sketch.counts.capacity() * (per_key + 8 + 8)
            + self.sketch.order.len() * (per_key + 8 + 16);
        let series = self.series.capacity() * (per_key + std::mem::size_of::<ConsumerSeries>() + 8);
        sketch + series + std::mem::size_of::<TopK>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_saving_finds_the_heavy_hitters() {
        let mut ss = SpaceSaving::new(10);
        for round in 0..1000u64 {
            ss.add("heavy-a", 5);
            ss.add("heavy-b", 3);
            ss.add(&format!("tail-{round}"), 1);
        }
        assert!(ss.len() <= 10);
        assert!(ss.estimate("heavy-a") >= 5000);
        assert!(ss.estimate("heavy-b") >= 3000);
        assert!(ss.guaranteed("heavy-a") <= 5000);
        assert!(ss.guaranteed("heavy-a") >= 5000 - 9000 / 10 - 1);
        // Over-counting is bounded by the smallest counter, which is about N/capacity.
        assert!(ss.estimate("heavy-a") <= 5000 + 9000 / 10 + 1);
    }

    #[test]
    fn at_most_k_plus_one_series_however_many_consumers() {
        let mut t = TopK::new(10);
        for i in 0..100_000u64 {
            let c = format!("c{i}");
            t.series_for(&c, 1).record(200, 5.0, 1, 1);
            // Ten heavy consumers, each 1% of the traffic.
            if i % 10 == 0 {
                let heavy = format!("heavy{}", (i / 10) % 10);
                t.series_for(&heavy, 1).record(500, 5.0, 1, 1);
            }
        }
        assert!(t.series_count() <= 11, "{}", t.series_count());
        let snap = t.snapshot();
        let names: Vec<&str> = snap.iter().map(|(n, _)| n.as_str()).collect();
        for h in 0..10 {
            assert!(
                names.contains(&format!("heavy{h}").as_str()),
                "heavy{h} missing: {names:?}"
            );
        }
        assert_eq!(names.last(), Some(&OTHER));
        // Nothing is lost: the series add up to every request.
        let total: u64 = snap.iter().map(|(_, s)| s.total()).sum();
        assert_eq!(total, 110_000);
        // And memory is bounded by k, not by the 100k consumers seen.
        assert!(t.sketch.len() <= 256);
    }

    #[test]
    fn zero_k_folds_everything() {
        let mut t = TopK::new(0);
        t.series_for("a", 1).record(200, 1.0, 0, 0);
        assert_eq!(t.snapshot().len(), 1);
        assert_eq!(t.snapshot()[0].0, OTHER);
    }

    #[test]
    fn other_only_grows_when_members_are_evicted() {
        let mut t = TopK::new(1);
        t.series_for("a", 1).record(200, 1.0, 0, 0);
        let mut last_other = 0;
        for _ in 0..5 {
            t.series_for("b", 1).record(200, 1.0, 0, 0);
            let other = t
                .snapshot()
                .iter()
                .find(|(n, _)| n == OTHER)
                .map_or(0, |(_, s)| s.total());
            assert!(other >= last_other);
            last_other = other;
        }
        let snap = t.snapshot();
        assert_eq!(snap[0].0, "b", "b overtook a: {snap:?}");
        assert_eq!(snap.iter().map(|(_, s)| s.total()).sum::<u64>(), 6);
    }
}

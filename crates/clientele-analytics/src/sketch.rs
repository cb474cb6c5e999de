//! The latency sketch: DDSketch (relative error 1%, mergeable without loss) with the
//! `sketches-ddsketch` crate's logarithmic mapping, key for key, over a compact store.
//!
//! Why not the crate's own type: its dense store holds `u64` bins in chunks of 128 (1 KiB
//! before the first value, 3 KiB for latencies spread over three decades) and a second store for
//! negative values that latencies never have. The open hour and day buckets hold one sketch per
//! series, so at 10,000 consumers that store was most of the server's memory (the 30-minute
//! soak: about 100 KiB per consumer). This one holds exactly the range of keys seen, in bins
//! of 16 bits that widen to 32 and then 64 when a count needs it: about a tenth of the size.
//!
//! The answers are the crate's: the same keys, the same value per key, the same rank walk. The
//! persisted form is the crate's serde layout (config, positive store, negative store, min,
//! max, sum, zero count), so bucket files and archived rollups written before read back as
//! they were, and tests prove both directions against the crate.

use serde::{Deserialize, Serialize};

/// Relative accuracy of latency percentiles: within 1% of the true value.
const ALPHA: f64 = 0.01;
/// The most keys a sketch holds (the crate's `max_num_bins`): 2,048 keys at 1% cover a factor
/// of about 10^17, so latencies from a microsecond up never reach it; past it the lowest keys
/// collapse into one, as the crate's collapsing-lowest store does.
const MAX_BINS: usize = 2048;
/// Latencies are milliseconds; anything at or below a microsecond counts as zero.
const MIN_VALUE: f64 = 1e-3;

/// The mapping's constants, computed exactly as the crate computes them so that every key and
/// value is bit-identical.
struct Mapping {
    gamma: f64,
    gamma_ln: f64,
    /// The crate's `Config::offset`, only carried in the persisted form.
    offset: i32,
}

fn mapping() -> &'static Mapping {
    static MAPPING: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
    MAPPING.get_or_init(|| {
        let gamma = (1.0 + ALPHA) / (1.0 - ALPHA);
        let gamma_ln = gamma.ln();
        Mapping {
            gamma,
            gamma_ln,
            offset: 1 - ((MIN_VALUE.ln() / gamma_ln) as i32),
        }
    })
}

fn key_of(v: f64) -> i32 {
    (v.ln() / mapping().gamma_ln).floor() as i32
}

fn value_of(key: i32) -> f64 {
    let m = mapping();
    ((key as f64) * m.gamma_ln).exp() * (2.0 * m.gamma / (1.0 + m.gamma))
}

/// Bin counts, as narrow as the largest count allows.
#[derive(Clone, Debug)]
enum Bins {
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

impl Bins {
    fn len(&self) -> usize {
        match self {
            Bins::U16(b) => b.len(),
            Bins::U32(b) => b.len(),
            Bins::U64(b) => b.len(),
        }
    }

    fn get(&self, i: usize) -> u64 {
        match self {
            Bins::U16(b) => u64::from(b[i]),
            Bins::U32(b) => u64::from(b[i]),
            Bins::U64(b) => b[i],
        }
    }

    /// Adds `n` to bin `i`, widening every bin first when the sum does not fit. Saturates at
    /// `u64::MAX`, which no real count reaches.
    fn add(&mut self, i: usize, n: u64) {
        let sum = self.get(i).saturating_add(n);
        if sum > u64::from(u32::MAX) {
            self.widen_to_u64();
        } else if sum > u64::from(u16::MAX) && matches!(self, Bins::U16(_)) {
            let Bins::U16(b) = self else { return };
            *self = Bins::U32(b.iter().map(|&c| u32::from(c)).collect());
        }
        match self {
            // The widening above guarantees the sum fits the width.
            Bins::U16(b) => b[i] = sum as u16,
            Bins::U32(b) => b[i] = sum as u32,
            Bins::U64(b) => b[i] = sum,
        }
    }

    fn widen_to_u64(&mut self) {
        let wide: Vec<u64> = (0..self.len()).map(|i| self.get(i)).collect();
        *self = Bins::U64(wide);
    }

    /// The same counts with `front` zero bins before them and `back` after, allocated to fit.
    fn grow(&mut self, front: usize, back: usize) {
        fn grown<T: Copy + Default>(b: &[T], front: usize, back: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(front + b.len() + back);
            out.resize(front, T::default());
            out.extend_from_slice(b);
            out.resize(front + b.len() + back, T::default());
            out
        }
        match self {
            Bins::U16(b) => *b = grown(b, front, back),
            Bins::U32(b) => *b = grown(b, front, back),
            Bins::U64(b) => *b = grown(b, front, back),
        }
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        match self {
            Bins::U16(b) => b.capacity() * 2,
            Bins::U32(b) => b.capacity() * 4,
            Bins::U64(b) => b.capacity() * 8,
        }
    }
}

/// A DDSketch of non-negative values.
#[derive(Clone, Debug)]
pub(crate) struct Sketch {
    /// Values added, including those counted as zero.
    count: u64,
    zero_count: u64,
    min: f64,
    max: f64,
    sum: f64,
    /// The key of `bins[0]`; the bins cover `min_key .. min_key + bins.len()`.
    min_key: i32,
    bins: Bins,
}

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch {
            count: 0,
            zero_count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            min_key: 0,
            bins: Bins::U16(Vec::new()),
        }
    }
}

impl Sketch {
    pub(crate) fn add(&mut self, v: f64) {
        self.add_count(v, 1);
    }

    fn add_count(&mut self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        if v > MIN_VALUE {
            self.add_to_key(key_of(v), n);
        } else {
            // NaN and negative values too: latencies are never below zero.
            self.zero_count = self.zero_count.saturating_add(n);
        }
        self.count = self.count.saturating_add(n);
        if v < self.min {
            self.min = v;
        }
        if self.max < v {
            self.max = v;
        }
        self.sum += v * n as f64;
    }

    /// Counts `n` at `key`, extending the bins to cover it. Past [`MAX_BINS`] keys the lowest
    /// collapse into the lowest bin kept.
    fn add_to_key(&mut self, key: i32, n: u64) {
        let len = self.bins.len();
        if len == 0 {
            self.min_key = key;
            self.bins.grow(0, 1);
            self.bins.add(0, n);
            return;
        }
        let max_key = self.min_key + len as i32 - 1;
        if key > max_key {
            let back = (key - max_key) as usize;
            self.bins.grow(0, back);
            self.collapse_lowest();
        } else if key < self.min_key {
            if len == MAX_BINS {
                self.bins.add(0, n);
                return;
            }
            let front = ((self.min_key - key) as usize).min(MAX_BINS - len);
            self.bins.grow(front, 0);
            self.min_key -= front as i32;
        }
        let i = (key.max(self.min_key) - self.min_key) as usize;
        self.bins.add(i, n);
    }

    /// Folds the bins below the highest [`MAX_BINS`] into the lowest one kept.
    fn collapse_lowest(&mut self) {
        let len = self.bins.len();
        if len <= MAX_BINS {
            return;
        }
        let drop = len - MAX_BINS;
        let folded = (0..=drop).fold(0u64, |s, i| s.saturating_add(self.bins.get(i)));
        let kept: Vec<u64> = std::iter::once(folded)
            .chain((drop + 1..len).map(|i| self.bins.get(i)))
            .collect();
        self.min_key += drop as i32;
        self.bins = Bins::U16(Vec::new());
        self.bins.grow(0, kept.len());
        for (i, c) in kept.into_iter().enumerate() {
            if c > 0 {
                self.bins.add(i, c);
            }
        }
    }

    pub(crate) fn merge(&mut self, o: &Sketch) {
        if o.count == 0 {
            return;
        }
        for i in 0..o.bins.len() {
            let c = o.bins.get(i);
            if c > 0 {
                self.add_to_key(o.min_key + i as i32, c);
            }
        }
        self.zero_count = self.zero_count.saturating_add(o.zero_count);
        self.count = self.count.saturating_add(o.count);
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The value at 0-based `rank` of the values in order: the exact minimum and maximum at the
    /// ends, else the value of the key holding that rank (the crate's answer for that rank).
    pub(crate) fn at_rank(&self, rank: u64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        if rank == 0 {
            return Some(self.min);
        }
        if rank + 1 >= self.count {
            return Some(self.max);
        }
        if rank < self.zero_count {
            return Some(0.0);
        }
        let mut seen = self.zero_count;
        for i in 0..self.bins.len() {
            seen = seen.saturating_add(self.bins.get(i));
            if seen > rank {
                return Some(value_of(self.min_key + i as i32));
            }
        }
        Some(value_of(self.min_key + self.bins.len() as i32 - 1))
    }

    /// Heap bytes held beside the struct.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.bins.heap_bytes()
    }
}

/// The crate's serde layout of a `DDSketch`, field for field, which is what bucket files and
/// archived rollups hold.
#[derive(Serialize, Deserialize)]
struct Persisted {
    config: PersistedConfig,
    store: PersistedStore,
    negative_store: PersistedStore,
    min: f64,
    max: f64,
    sum: f64,
    zero_count: u64,
}

#[derive(Serialize, Deserialize)]
struct PersistedConfig {
    max_num_bins: u32,
    gamma: f64,
    gamma_ln: f64,
    min_value: f64,
    offset: i32,
}

#[derive(Serialize, Deserialize)]
struct PersistedStore {
    bins: Vec<u64>,
    count: u64,
    min_key: i32,
    max_key: i32,
    offset: i32,
    bin_limit: usize,
    is_collapsed: bool,
}

impl PersistedStore {
    fn empty() -> PersistedStore {
        PersistedStore {
            bins: Vec::new(),
            count: 0,
            min_key: i32::MAX,
            max_key: i32::MIN,
            offset: 0,
            bin_limit: MAX_BINS,
            is_collapsed: false,
        }
    }
}

impl Serialize for Sketch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = mapping();
        let positive = self.count - self.zero_count;
        let store = if positive == 0 {
            PersistedStore::empty()
        } else {
            // Trim the zero bins at the ends: min_key and max_key are the keys with counts.
            let first = (0..self.bins.len())
                .find(|&i| self.bins.get(i) > 0)
                .unwrap_or(0);
            let last = (0..self.bins.len())
                .rfind(|&i| self.bins.get(i) > 0)
                .unwrap_or(first);
            PersistedStore {
                bins: (first..=last).map(|i| self.bins.get(i)).collect(),
                count: positive,
                min_key: self.min_key + first as i32,
                max_key: self.min_key + last as i32,
                offset: self.min_key + first as i32,
                bin_limit: MAX_BINS,
                is_collapsed: false,
            }
        };
        Persisted {
            config: PersistedConfig {
                max_num_bins: MAX_BINS as u32,
                gamma: m.gamma,
                gamma_ln: m.gamma_ln,
                min_value: MIN_VALUE,
                offset: m.offset,
            },
            store,
            negative_store: PersistedStore::empty(),
            // An empty sketch's bounds are infinite, which JSON cannot carry; the crate's own
            // empty sketch would not read back. Any finite bound reads as empty (count 0).
            min: if self.count == 0 { 0.0 } else { self.min },
            max: if self.count == 0 { 0.0 } else { self.max },
            sum: self.sum,
            zero_count: self.zero_count,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sketch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sketch, D::Error> {
        use serde::de::Error;
        let p = Persisted::deserialize(d)?;
        let m = mapping();
        let c = &p.config;
        // A sketch of another mapping would answer with other keys: refused, never misread.
        if c.gamma.to_bits() != m.gamma.to_bits()
            || c.gamma_ln.to_bits() != m.gamma_ln.to_bits()
            || c.min_value.to_bits() != MIN_VALUE.to_bits()
        {
            return Err(D::Error::custom("a sketch with another configuration"));
        }
        if p.negative_store.count != 0 || p.negative_store.bins.iter().any(|&b| b > 0) {
            return Err(D::Error::custom("a latency sketch with negative values"));
        }
        let st = &p.store;
        if st.bins.len() > MAX_BINS {
            return Err(D::Error::custom("a sketch with more bins than its limit"));
        }
        let mut sketch = Sketch::default();
        let mut positive = 0u64;
        let first = st.bins.iter().position(|&c| c > 0);
        let last = st.bins.iter().rposition(|&c| c > 0);
        if let (Some(first), Some(last)) = (first, last) {
            // Sized once for the keys with counts (at most MAX_BINS, checked above), then filled.
            sketch.min_key = st
                .offset
                .checked_add(first as i32)
                .and_then(|k| k.checked_add((last - first) as i32).map(|_| k))
                .ok_or_else(|| D::Error::custom("a sketch key out of range"))?;
            sketch.bins.grow(0, last - first + 1);
            for (i, &c) in st.bins[first..=last].iter().enumerate() {
                if c > 0 {
                    sketch.bins.add(i, c);
                    positive = positive
                        .checked_add(c)
                        .ok_or_else(|| D::Error::custom("a sketch count out of range"))?;
                }
            }
        }
        if positive != st.count {
            return Err(D::Error::custom(
                "a sketch whose bins do not add up to its count",
            ));
        }
        sketch.zero_count = p.zero_count;
        sketch.count = positive
            .checked_add(p.zero_count)
            .ok_or_else(|| D::Error::custom("a sketch count out of range"))?;
        if sketch.count > 0
            && matches!(
                p.min.partial_cmp(&p.max),
                None | Some(std::cmp::Ordering::Greater)
            )
        {
            return Err(D::Error::custom(
                "a sketch whose minimum is above its maximum",
            ));
        }
        if sketch.count > 0 {
            sketch.min = p.min;
            sketch.max = p.max;
        }
        sketch.sum = p.sum;
        Ok(sketch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sketches_ddsketch::{Config, DDSketch};

    fn crate_sketch(values: &[f64]) -> DDSketch {
        let mut s = DDSketch::new(Config::new(ALPHA, MAX_BINS as u32, MIN_VALUE));
        for v in values {
            s.add(*v);
        }
        s
    }

    fn ours(values: &[f64]) -> Sketch {
        let mut s = Sketch::default();
        for v in values {
            s.add(*v);
        }
        s
    }

    /// The crate's answer at a 0-based rank, asked the way the rollups used to ask it.
    fn crate_at_rank(s: &DDSketch, rank: u64) -> Option<f64> {
        let n = s.count() as u64;
        let q = if rank == 0 {
            0.0
        } else if rank + 1 >= n {
            1.0
        } else {
            (rank as f64 + 0.5) / (n - 1) as f64
        };
        s.quantile(q).ok().flatten()
    }

    fn latencies() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![
                Just(0.0),
                0.0f64..0.002,
                0.01f64..5.0,
                1.0f64..60_000.0,
                1e6f64..1e9
            ],
            0..400,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_rank_answers_as_the_crate_does(values in latencies()) {
            let a = ours(&values);
            let b = crate_sketch(&values);
            prop_assert_eq!(a.count(), b.count() as u64);
            for rank in 0..values.len() as u64 {
                prop_assert_eq!(a.at_rank(rank), crate_at_rank(&b, rank), "rank {}", rank);
            }
        }

        #[test]
        fn merged_answers_as_the_crate_merged(x in latencies(), y in latencies()) {
            let mut a = ours(&x);
            a.merge(&ours(&y));
            let mut b = crate_sketch(&x);
            b.merge(&crate_sketch(&y)).unwrap();
            prop_assert_eq!(a.count(), b.count() as u64);
            for rank in 0..a.count() {
                prop_assert_eq!(a.at_rank(rank), crate_at_rank(&b, rank));
            }
        }

        #[test]
        fn the_persisted_form_is_the_crates_both_ways(values in latencies()) {
            let a = ours(&values);
            let b = crate_sketch(&values);
            // Ours, read by the crate.
            let as_crate: DDSketch = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
            // The crate's (what older files hold), read by ours, in JSON and the bucket form.
            // (The crate writes an empty sketch's infinite bounds as JSON nulls that nothing reads
            // back; the rollups never persist an empty one as JSON.)
            let from_json: Sketch = if values.is_empty() {
                Sketch::default()
            } else {
                serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap()
            };
            let mut bytes = Vec::new();
            crate::wire::to_bytes(&b, &mut bytes).unwrap();
            let from_wire: Sketch = crate::wire::from_bytes(&bytes).unwrap();
            for rank in 0..values.len() as u64 {
                let want = crate_at_rank(&b, rank);
                prop_assert_eq!(crate_at_rank(&as_crate, rank), want);
                prop_assert_eq!(from_json.at_rank(rank), want);
                prop_assert_eq!(from_wire.at_rank(rank), want);
            }
            prop_assert_eq!(as_crate.sum(), b.sum());
        }
    }

    #[test]
    fn counts_widen_instead_of_wrapping() {
        let mut s = Sketch::default();
        s.add_count(5.0, 60_000);
        assert!(matches!(s.bins, Bins::U16(_)));
        s.add_count(5.0, 10_000);
        assert!(matches!(s.bins, Bins::U32(_)));
        s.add_count(7.0, u64::from(u32::MAX) + 1);
        assert!(matches!(s.bins, Bins::U64(_)));
        assert_eq!(s.count(), 70_001 + u64::from(u32::MAX));
        assert_eq!(s.at_rank(69_999).map(key_of), Some(key_of(5.0)));
        assert_eq!(s.at_rank(70_000).map(key_of), Some(key_of(7.0)));
    }

    #[test]
    fn a_spread_of_latencies_costs_a_tenth_of_the_crates_store() {
        // An hour of one series: a few hundred requests from half a millisecond to a second.
        let values: Vec<f64> = (0..300)
            .map(|i| 0.5 * (1.0f64 + (i * 37 % 300) as f64 / 300.0 * 7.6).exp())
            .collect();
        let s = ours(&values);
        // 0.5 ms .. 1 s is about 380 keys: 760 bytes of u16, where the crate holds 3 KiB.
        assert!(s.heap_bytes() <= 800, "{}", s.heap_bytes());
    }

    #[test]
    fn past_the_bin_limit_the_lowest_keys_collapse() {
        let mut s = Sketch::default();
        s.add(2e-3);
        s.add(1e15);
        s.add(1e16);
        assert!(s.bins.len() <= MAX_BINS);
        assert_eq!(s.count(), 3);
        assert_eq!(s.at_rank(0), Some(2e-3), "the exact minimum");
        assert_eq!(s.at_rank(2), Some(1e16), "the exact maximum");
        let mut low = Sketch::default();
        low.add(1e16);
        low.add(2e-3);
        assert!(low.bins.len() <= MAX_BINS);
        assert_eq!(low.count(), 2);
    }

    #[test]
    fn hostile_persisted_forms_are_refused() {
        let good = serde_json::to_value(ours(&[1.0, 2.0, 3.0])).unwrap();
        let mut bad_count = good.clone();
        bad_count["store"]["count"] = 99.into();
        let mut other_gamma = good.clone();
        other_gamma["config"]["gamma"] = 1.5.into();
        let mut negative = good.clone();
        negative["negative_store"]["count"] = 1.into();
        negative["negative_store"]["bins"] = serde_json::json!([1]);
        let mut huge_key = good.clone();
        huge_key["store"]["offset"] = i32::MAX.into();
        for (what, v) in [
            ("count", bad_count),
            ("gamma", other_gamma),
            ("negative", negative),
            ("key", huge_key),
        ] {
            assert!(serde_json::from_value::<Sketch>(v).is_err(), "{what}");
        }
        assert!(serde_json::from_value::<Sketch>(good).is_ok());
    }
}

//! One rollup: the counters and latency sketch of a set of requests.

use crate::sketch::Sketch;

/// Request counters, all additive so that rollups merge by addition.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub requests: u64,
    pub s2xx: u64,
    pub s3xx: u64,
    pub s4xx: u64,
    pub s5xx: u64,
    /// 429s, also counted in `s4xx`.
    pub rate_limited: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    /// Requests that used tokens of a model without a price: their cost is unknown, not 0.
    pub unpriced: u64,
}

impl Counters {
    /// Adds `o`. Counters saturate rather than wrap, and the cost stays finite, so a sum that
    /// could not be represented reads as the largest value, the same before and after a restart
    /// (ingest bounds each event, so real traffic never gets near).
    pub fn merge(&mut self, o: &Counters) {
        self.requests = self.requests.saturating_add(o.requests);
        self.s2xx = self.s2xx.saturating_add(o.s2xx);
        self.s3xx = self.s3xx.saturating_add(o.s3xx);
        self.s4xx = self.s4xx.saturating_add(o.s4xx);
        self.s5xx = self.s5xx.saturating_add(o.s5xx);
        self.rate_limited = self.rate_limited.saturating_add(o.rate_limited);
        self.request_bytes = self.request_bytes.saturating_add(o.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
        self.tokens_in = self.tokens_in.saturating_add(o.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(o.tokens_out);
        self.cost_usd = finite_sum(self.cost_usd, o.cost_usd);
        self.unpriced = self.unpriced.saturating_add(o.unpriced);
    }

    /// The integer counters in a fixed order, for persistence; `cost_usd` travels beside them.
    pub fn to_array(&self) -> [u64; 11] {
        [
            self.requests,
            self.s2xx,
            self.s3xx,
            self.s4xx,
            self.s5xx,
            self.rate_limited,
            self.request_bytes,
            self.response_bytes,
            self.tokens_in,
            self.tokens_out,
            self.unpriced,
        ]
    }

    /// The inverse of [`Counters::to_array`]. Rows archived before `unpriced` existed read
    /// it as 0.
    pub fn from_array(a: [u64; 11], cost_usd: f64) -> Counters {
        let [
            requests,
            s2xx,
            s3xx,
            s4xx,
            s5xx,
            rate_limited,
            request_bytes,
            response_bytes,
            tokens_in,
            tokens_out,
            unpriced,
        ] = a;
        Counters {
            requests,
            s2xx,
            s3xx,
            s4xx,
            s5xx,
            rate_limited,
            request_bytes,
            response_bytes,
            tokens_in,
            tokens_out,
            cost_usd,
            unpriced,
        }
    }

    /// Responses with status >= 400.
    pub fn errors(&self) -> u64 {
        self.s4xx.saturating_add(self.s5xx)
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors() as f64 / self.requests as f64
        }
    }
}

/// `a + b`, held at `f64::MAX` instead of reaching infinity (which JSON cannot carry). A
/// non-finite input (never admitted by ingest) counts as nothing.
pub(crate) fn finite_sum(a: f64, b: f64) -> f64 {
    let b = if b.is_finite() { b } else { 0.0 };
    let sum = a + b;
    if sum.is_finite() { sum } else { f64::MAX }
}

/// What one request contributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub status: u16,
    pub latency_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    /// Tokens were used but their model has no price.
    pub unpriced: bool,
}

/// How many latencies a rollup keeps inline, without a heap allocation. Most rollups of a
/// sparse tier (one consumer, one route, one minute) hold one or two requests, and a sketch
/// costs allocations that dominate ingest.
const INLINE_VALUES: usize = 4;

/// How many latencies a rollup keeps as plain values (sorted, on the heap) before it builds a
/// sketch. 32 values (256 bytes) cost about what a sketch of the same values does, and their
/// quantiles are exact. Past this, a sketch: bounded whatever the count.
const PLAIN_VALUES: usize = 32;

/// The latencies of a rollup: plain values while there are few (sorted, so quantiles are an
/// index), then a sketch.
#[derive(Clone)]
enum Digest {
    Inline {
        len: u8,
        values: [f64; INLINE_VALUES],
    },
    Values(Vec<f64>),
    Sketch(Box<Sketch>),
}

impl Default for Digest {
    fn default() -> Self {
        Digest::Inline {
            len: 0,
            values: [0.0; INLINE_VALUES],
        }
    }
}

/// Inserts `v` into the sorted `values` after any equal ones.
fn insert_sorted(values: &mut [f64], len: usize, v: f64) {
    let at = values[..len].partition_point(|x| x.total_cmp(&v).is_le());
    values.copy_within(at..len, at + 1);
    values[at] = v;
}

impl Digest {
    /// The plain values, sorted; `None` once a sketch holds them.
    fn plain(&self) -> Option<&[f64]> {
        match self {
            Digest::Inline { len, values } => Some(&values[..*len as usize]),
            Digest::Values(values) => Some(values),
            Digest::Sketch(_) => None,
        }
    }

    fn add(&mut self, v: f64) {
        match self {
            Digest::Inline { len, values } if (*len as usize) < INLINE_VALUES => {
                insert_sorted(values, *len as usize, v);
                *len += 1;
            }
            Digest::Inline { values, .. } => {
                let mut spilled = Vec::with_capacity(2 * INLINE_VALUES);
                spilled.extend_from_slice(values);
                let at = spilled.partition_point(|x| x.total_cmp(&v).is_le());
                spilled.insert(at, v);
                *self = Digest::Values(spilled);
            }
            Digest::Values(values) if values.len() < PLAIN_VALUES => {
                if values.len() == values.capacity() {
                    // Doubling, but never past the most it will hold.
                    values.reserve_exact(values.len().min(PLAIN_VALUES - values.len()));
                }
                let at = values.partition_point(|x| x.total_cmp(&v).is_le());
                values.insert(at, v);
            }
            Digest::Values(values) => {
                let mut sketch = Sketch::default();
                for x in values.iter() {
                    sketch.add(*x);
                }
                sketch.add(v);
                *self = Digest::Sketch(Box::new(sketch));
            }
            Digest::Sketch(sketch) => sketch.add(v),
        }
    }

    fn merge(&mut self, other: &Digest) {
        if let Some(values) = other.plain() {
            for v in values {
                self.add(*v);
            }
            return;
        }
        let Digest::Sketch(o) = other else { return };
        if let Digest::Sketch(s) = self {
            s.merge(o);
            return;
        }
        let mut sketch = o.clone();
        for v in self.plain().unwrap_or_default() {
            sketch.add(*v);
        }
        *self = Digest::Sketch(sketch);
    }

    fn to_sketch(&self) -> std::borrow::Cow<'_, Sketch> {
        match self {
            Digest::Sketch(s) => std::borrow::Cow::Borrowed(s),
            plain => {
                let mut sketch = Sketch::default();
                for v in plain.plain().unwrap_or_default() {
                    sketch.add(*v);
                }
                std::borrow::Cow::Owned(sketch)
            }
        }
    }
}

/// The 0-based index of the nearest-rank `q` quantile of `n` sorted values: `ceil(q * n) - 1`,
/// at least 0. `None` for no values or a `q` outside 0..=1.
pub fn nearest_rank(n: u64, q: f64) -> Option<u64> {
    if n == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let x = q * n as f64;
    // `q` is a decimal the caller wrote (0.95), not exactly representable: 0.95 * 20 may come out
    // a hair above 19, which must still be rank 19, as DuckDB's exact decimal arithmetic says.
    let k = (x - x * 1e-12).ceil() as u64;
    Some(k.clamp(1, n) - 1)
}

/// The sketch's value at the nearest rank: the exact minimum and maximum at the ends, else the
/// value of the sketch's key holding that rank.
fn sketch_nearest_rank(sketch: &Sketch, q: f64) -> Option<f64> {
    sketch.at_rank(nearest_rank(sketch.count(), q)?)
}

/// Counters plus a mergeable latency sketch (DDSketch: relative-error guarantee, mergeable
/// without loss, so an hour is exactly the merge of its minutes).
#[derive(Clone, Default)]
pub struct Rollup {
    pub counters: Counters,
    latency: Digest,
}

impl std::fmt::Debug for Rollup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollup")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Rollup {
    pub fn add(&mut self, s: &Sample) {
        let c = &mut self.counters;
        c.requests += 1;
        match s.status {
            200..=299 => c.s2xx += 1,
            300..=399 => c.s3xx += 1,
            400..=499 => c.s4xx += 1,
            500..=599 => c.s5xx += 1,
            _ => {}
        }
        if s.status == 429 {
            c.rate_limited += 1;
        }
        c.request_bytes = c.request_bytes.saturating_add(s.request_bytes);
        c.response_bytes = c.response_bytes.saturating_add(s.response_bytes);
        c.tokens_in = c.tokens_in.saturating_add(s.tokens_in);
        c.tokens_out = c.tokens_out.saturating_add(s.tokens_out);
        c.cost_usd = finite_sum(c.cost_usd, s.cost_usd);
        c.unpriced = c.unpriced.saturating_add(u64::from(s.unpriced));
        self.latency.add(s.latency_ms.max(0.0));
    }

    pub fn merge(&mut self, o: &Rollup) {
        self.counters.merge(&o.counters);
        self.latency.merge(&o.latency);
    }

    /// The latency at quantile `q` (0..=1), in milliseconds, by nearest rank: the smallest value
    /// with at least `q` of the values at or below it (DuckDB's `quantile_disc`). Exact while the
    /// rollup holds its values inline; within the sketch's relative error once it holds a sketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let [v] = self.quantiles([q]);
        v
    }

    /// The largest latency held, an upper bound of every quantile that costs no sketch.
    pub fn max_latency(&self) -> Option<f64> {
        match &self.latency {
            Digest::Sketch(s) => s.max(),
            plain => plain.plain().and_then(|v| v.last().copied()),
        }
    }

    /// How many latencies the rollup holds (its requests, unless it was built from samples).
    pub fn latency_samples(&self) -> u64 {
        match &self.latency {
            Digest::Sketch(s) => s.count(),
            plain => plain.plain().map_or(0, |v| v.len() as u64),
        }
    }

    /// Several quantiles at once: an index into the sorted plain values, or the sketch's.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        match &self.latency {
            Digest::Sketch(sketch) => qs.map(|q| sketch_nearest_rank(sketch, q)),
            plain => {
                let sorted = plain.plain().unwrap_or_default();
                qs.map(|q| nearest_rank(sorted.len() as u64, q).map(|i| sorted[i as usize]))
            }
        }
    }

    /// The sketch encoded for persistence (the `sketches-ddsketch` crate's serde layout, see
    /// `sketch`), configuration included; serde_json with `float_roundtrip` keeps it bit-exact.
    pub fn sketch_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.latency.to_sketch()).unwrap_or_default()
    }

    pub fn from_parts(counters: Counters, sketch: &[u8]) -> Option<Rollup> {
        let latency: Sketch = serde_json::from_slice(sketch).ok()?;
        if latency.count() > counters.requests {
            return None;
        }
        Some(Rollup {
            counters,
            latency: Digest::Sketch(Box::new(latency)),
        })
    }
}

/// The digest tag of a sketch in [`Rollup::encode`]; 0..=PLAIN_VALUES are plain value counts.
const SKETCH_TAG: u8 = 0xff;

impl Rollup {
    /// Appends the rollup in the bucket file's form: the counters as varints, the cost's bits,
    /// then the latencies exactly as held (inline values bit for bit, or the sketch with its
    /// configuration), so a rollup read back answers exactly as the one written.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in self.counters.to_array() {
            crate::persist::put_varint(out, v);
        }
        out.extend_from_slice(&self.counters.cost_usd.to_bits().to_le_bytes());
        match &self.latency {
            Digest::Inline { .. } | Digest::Values(_) => {
                let values = self.latency.plain().unwrap_or_default();
                // At most PLAIN_VALUES (32), below the sketch's tag.
                out.push(values.len() as u8);
                for v in values {
                    out.extend_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            Digest::Sketch(sketch) => {
                out.push(SKETCH_TAG);
                let mut bytes = Vec::with_capacity(256);
                // Every field of a sketch is supported by the encoding, so this cannot fail; an
                // empty sketch would be refused when read back rather than misread.
                let encoded = crate::wire::to_bytes(&**sketch, &mut bytes);
                debug_assert!(encoded.is_ok(), "{encoded:?}");
                crate::persist::put_varint(out, bytes.len() as u64);
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// The inverse of [`Rollup::encode`]; `None` for bytes it did not write.
    pub(crate) fn decode(r: &mut crate::persist::Reader<'_>) -> Option<Rollup> {
        let mut counts = [0u64; 11];
        for c in &mut counts {
            *c = r.varint()?;
        }
        let cost = f64::from_bits(r.u64_le()?);
        let latency = match r.u8()? {
            SKETCH_TAG => {
                let n = usize::try_from(r.varint()?).ok()?;
                let sketch: Sketch = crate::wire::from_bytes(r.bytes(n)?).ok()?;
                Digest::Sketch(Box::new(sketch))
            }
            len if (len as usize) <= PLAIN_VALUES => {
                // Files before PLAIN_VALUES wrote at most INLINE_VALUES values, unsorted: the
                // values are put in order as they are read, whoever wrote them.
                let mut digest = Digest::default();
                for _ in 0..len {
                    digest.add(f64::from_bits(r.u64_le()?));
                }
                digest
            }
            _ => return None,
        };
        Some(Rollup {
            counters: Counters::from_array(counts, cost),
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counters_saturate_and_cost_stays_finite() {
        let mut r = Rollup::default();
        for bytes in [1000, u64::MAX] {
            r.add(&Sample {
                status: 200,
                request_bytes: bytes,
                cost_usd: 1e308,
                ..Sample::default()
            });
        }
        assert_eq!(
            r.counters.request_bytes,
            u64::MAX,
            "saturates, never wraps to 999"
        );
        assert!(r.counters.cost_usd.is_finite());
        let mut c = r.counters;
        c.merge(&r.counters);
        assert_eq!(c.request_bytes, u64::MAX);
        assert_eq!(c.requests, 4);
        assert!(c.cost_usd.is_finite());
    }

    /// Nearest rank computed the textbook way, independently of `nearest_rank`: the smallest
    /// value with at least `q` of the values at or below it.
    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        let n = sorted.len();
        *sorted
            .iter()
            .enumerate()
            .find(|(i, _)| (i + 1) as f64 >= q * n as f64 - 1e-9)
            .map(|(_, v)| v)
            .unwrap()
    }

    fn lognormal_ish(n: usize) -> Vec<f64> {
        // A deterministic long-tailed spread, like real latencies.
        (0..n)
            .map(|i| {
                let u = ((i * 7919) % n) as f64 / n as f64;
                3.0 + 2.0 * (6.0 * u).exp() + (i % 13) as f64 * 0.37
            })
            .collect()
    }

    #[test]
    fn percentiles_are_nearest_rank_on_1700_values() {
        let values = lognormal_ish(1700);
        let mut r = Rollup::default();
        for v in &values {
            r.add(&Sample {
                status: 200,
                latency_ms: *v,
                ..Default::default()
            });
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = exact_quantile(&sorted, q);
            let got = r.quantile(q).unwrap();
            assert!(
                (got - exact).abs() <= exact * 0.01,
                "q={q}: nearest rank is {exact}, the sketch said {got}"
            );
        }
        // The old definition, rank floor(q(n-1)), reads a lower value at p99.9 here: rank 1697
        // instead of 1698 of 0..1700. The test tells the two apart.
        assert_eq!(nearest_rank(1700, 0.999), Some(1698));
        let old = sorted[(1699.0f64 * 0.999).floor() as usize];
        assert!(r.quantile(0.999).unwrap() > old * 1.0001, "{old}");
    }

    #[test]
    fn inline_percentiles_are_exact_nearest_rank() {
        // Inline, then on the heap, then (past PLAIN_VALUES) the sketch's first value.
        for n in 1..=PLAIN_VALUES {
            let values: Vec<f64> = (0..n).map(|i| ((i * 37) % 41) as f64 + 0.5).collect();
            let mut r = Rollup::default();
            for v in &values {
                r.add(&Sample {
                    status: 200,
                    latency_ms: *v,
                    ..Default::default()
                });
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.0, 0.2, 0.25, 0.5, 0.51, 0.75, 0.95, 1.0] {
                assert_eq!(
                    r.quantile(q),
                    Some(exact_quantile(&sorted, q)),
                    "n={n} q={q}"
                );
            }
        }
        assert_eq!(
            nearest_rank(20, 0.95),
            Some(18),
            "0.95 * 20 is rank 19, not 20"
        );
        assert_eq!(nearest_rank(0, 0.5), None);
        assert_eq!(nearest_rank(5, 1.5), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn percentiles_are_within_one_percent(values in prop::collection::vec(0.05f64..60_000.0, 1..3000), skew in 1u32..4) {
            // Skewed distributions, like real latencies: a long tail.
            let values: Vec<f64> = values.into_iter().map(|v| v.powi(skew as i32) / 60_000f64.powi(skew as i32 - 1)).map(|v| v.max(0.01)).collect();
            let mut r = Rollup::default();
            for v in &values {
                r.add(&Sample { status: 200, latency_ms: *v, ..Default::default() });
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.5, 0.95, 0.99] {
                let exact = exact_quantile(&sorted, q);
                let got = r.quantile(q).unwrap();
                prop_assert!((got - exact).abs() <= exact * 0.01 + 1e-9, "q={} exact={} got={}", q, exact, got);
            }
        }

        #[test]
        fn merge_equals_adding_everything(a in prop::collection::vec(0.1f64..10_000.0, 0..500), b in prop::collection::vec(0.1f64..10_000.0, 0..500)) {
            let mut ra = Rollup::default();
            let mut rb = Rollup::default();
            let mut all = Rollup::default();
            for v in &a { ra.add(&Sample { status: 200, latency_ms: *v, ..Default::default() }); all.add(&Sample { status: 200, latency_ms: *v, ..Default::default() }); }
            for v in &b { rb.add(&Sample { status: 503, latency_ms: *v, ..Default::default() }); all.add(&Sample { status: 503, latency_ms: *v, ..Default::default() }); }
            ra.merge(&rb);
            prop_assert_eq!(ra.counters, all.counters);
            for q in [0.5, 0.95, 0.99] {
                prop_assert_eq!(ra.quantile(q), all.quantile(q));
            }
        }
    }

    #[test]
    fn the_bucket_form_reads_back_exactly_at_every_size() {
        for n in [
            0usize,
            1,
            INLINE_VALUES,
            INLINE_VALUES + 1,
            PLAIN_VALUES,
            PLAIN_VALUES + 1,
            500,
        ] {
            let mut r = Rollup::default();
            for i in 0..n {
                r.add(&Sample {
                    status: 200,
                    latency_ms: ((i * 7919) % 503) as f64 * 0.25,
                    ..Default::default()
                });
            }
            let mut bytes = Vec::new();
            r.encode(&mut bytes);
            let back = Rollup::decode(&mut crate::persist::Reader::new(&bytes)).unwrap();
            assert_eq!(back.counters, r.counters, "n={n}");
            let qs = [0.0, 0.5, 0.95, 0.99, 1.0];
            assert_eq!(back.quantiles(qs), r.quantiles(qs), "n={n}");
            assert_eq!(back.latency_samples(), n as u64);
        }
        // A file written before PLAIN_VALUES: four values, unsorted, tag 4.
        let mut old = Vec::new();
        Rollup::default().encode(&mut old);
        old.pop();
        old.push(4);
        for v in [40.0f64, 10.0, 30.0, 20.0] {
            old.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        let back = Rollup::decode(&mut crate::persist::Reader::new(&old)).unwrap();
        assert_eq!(
            back.quantiles([0.0, 0.5, 1.0]),
            [Some(10.0), Some(20.0), Some(40.0)]
        );
    }

    #[test]
    fn sketch_round_trips() {
        let mut r = Rollup::default();
        for i in 1..1000 {
            r.add(&Sample {
                status: 200,
                latency_ms: i as f64,
                ..Default::default()
            });
        }
        let back = Rollup::from_parts(r.counters, &r.sketch_bytes()).unwrap();
        for q in [0.01, 0.5, 0.99] {
            assert_eq!(back.quantile(q), r.quantile(q));
        }
        // And it still merges with sketches made here.
        let mut merged = back.clone();
        merged.merge(&r);
        assert_eq!(merged.quantile(0.5), r.quantile(0.5));
    }
}

//! What the log keeps in memory about its segments: a small index entry per block of records
//! (time range, status classes, a Bloom filter of consumers) and the fingerprints of the ids of
//! the days whose duplicates it checks.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Records per block. With 1024 Bloom bits and two probes, a block of 128 records from as many
/// consumers answers "maybe" for a consumer it does not hold about 5% of the time, for about
/// 1.3 bytes of memory per stored event.
pub const BLOCK_RECORDS: u32 = 128;

/// Index of consecutive records in one segment.
#[derive(Debug, Clone)]
pub struct Block {
    pub start: u64,
    pub end: u64,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Bit n set when a record has a status in n00..n99.
    pub classes: u16,
    pub consumers: Bloom,
}

impl Block {
    pub fn new(start: u64) -> Block {
        Block {
            start,
            end: start,
            count: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            classes: 0,
            consumers: Bloom::default(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.count >= BLOCK_RECORDS
    }

    /// Records that the frame `[start, end)` holds an event of `consumer` at `ts_ms`.
    pub fn add(&mut self, end: u64, ts_ms: i64, status: u16, consumer: Option<&str>) {
        self.end = end;
        self.count += 1;
        self.min_ts = self.min_ts.min(ts_ms);
        self.max_ts = self.max_ts.max(ts_ms);
        self.classes |= class_bit(status);
        if let Some(c) = consumer {
            self.consumers.insert(c);
        }
    }

    /// Whether the block may hold events of the query: its time range overlaps `[from, to)`,
    /// it has a status class in `classes` and its filter does not rule the consumer out.
    pub fn may_hold(&self, consumer: &ConsumerProbe, from: i64, to: i64, classes: u16) -> bool {
        self.count > 0
            && self.max_ts >= from
            && self.min_ts < to
            && self.classes & classes != 0
            && self.consumers.may_contain(consumer)
    }
}

fn class_bit(status: u16) -> u16 {
    1 << (status / 100).min(9)
}

/// The status classes a `[lo, hi]` status range touches.
pub fn classes_of(range: Option<(u16, u16)>) -> u16 {
    match range {
        None => u16::MAX,
        Some((lo, hi)) if lo <= hi => {
            let (a, b) = ((lo / 100).min(9), (hi / 100).min(9));
            (a..=b).map(|c| 1u16 << c).fold(0, |m, b| m | b)
        }
        Some(_) => 0,
    }
}

/// 1024 bits, two probes derived from one 64-bit hash.
#[derive(Debug, Clone, Default)]
pub struct Bloom([u64; 16]);

/// A consumer's Bloom probes, computed once per query.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerProbe(u16, u16);

impl ConsumerProbe {
    pub fn new(consumer: &str) -> ConsumerProbe {
        let h = hash64(0, consumer.as_bytes());
        ConsumerProbe((h & 1023) as u16, ((h >> 32) & 1023) as u16)
    }
}

impl Bloom {
    fn insert(&mut self, consumer: &str) {
        let p = ConsumerProbe::new(consumer);
        for bit in [p.0, p.1] {
            self.0[usize::from(bit / 64)] |= 1 << (bit % 64);
        }
    }

    fn may_contain(&self, p: &ConsumerProbe) -> bool {
        [p.0, p.1]
            .iter()
            .all(|bit| self.0[usize::from(bit / 64)] & (1 << (bit % 64)) != 0)
    }
}

/// 128 bits of an event id. Two ids share a fingerprint with probability about n²/2¹²⁹ for n
/// ids (1e-26 for a billion), so comparing fingerprints is comparing ids.
pub fn fingerprint(id: &str) -> u128 {
    let a = hash64(0x5eed_0001, id.as_bytes());
    let b = hash64(0x5eed_0002, id.as_bytes());
    (u128::from(a) << 64) | u128::from(b)
}

/// A set of id fingerprints. They are hashes already, so the set uses their low bits as they
/// are instead of hashing them again.
pub type IdSet = HashSet<u128, BuildHasherDefault<FingerprintHasher>>;

#[derive(Debug, Default, Clone, Copy)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed; this keeps the hasher correct for any other input.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// SipHash-1-3 with fixed keys (std's `DefaultHasher::new()`), salted: stable across runs,
/// which the on-disk filters do not need but tests and reasoning like.
fn hash64(salt: u64, bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    salt.hash(&mut h);
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_never_misses_and_rarely_says_maybe() {
        let mut block = Block::new(0);
        for i in 0..BLOCK_RECORDS {
            block.add(u64::from(i), 10, 200, Some(&format!("member-{i}")));
        }
        for i in 0..BLOCK_RECORDS {
            let p = ConsumerProbe::new(&format!("member-{i}"));
            assert!(block.may_hold(&p, 0, 100, u16::MAX));
        }
        let false_maybes = (0..10_000)
            .filter(|i| {
                block
                    .consumers
                    .may_contain(&ConsumerProbe::new(&format!("x{i}")))
            })
            .count();
        assert!(false_maybes < 1_000, "{false_maybes} of 10000");
        let p = ConsumerProbe::new("member-1");
        assert!(!block.may_hold(&p, 11, 100, u16::MAX), "time range");
        assert!(!block.may_hold(&p, 0, 100, classes_of(Some((500, 599)))));
    }

    #[test]
    fn status_ranges_map_to_classes() {
        assert_eq!(classes_of(Some((500, 599))), 1 << 5);
        assert_eq!(classes_of(Some((429, 429))), 1 << 4);
        assert_eq!(classes_of(Some((400, 599))), (1 << 4) | (1 << 5));
        assert_eq!(classes_of(Some((5, 1))), 0);
    }
}

//! What the log keeps in memory about its segments: a small index entry per block of records
//! (time range, the range of its time ids, status classes, a Bloom filter of consumers) and the
//! fingerprints of ids it checks duplicates against.

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
    /// The range of the milliseconds its time ids carry ([`time_id_ms`]); MAX..MIN for none.
    pub min_id_ms: i64,
    pub max_id_ms: i64,
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
            min_id_ms: i64::MAX,
            max_id_ms: i64::MIN,
            classes: 0,
            consumers: Bloom::default(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.count >= BLOCK_RECORDS
    }

    /// Records that the frame `[start, end)` holds an event of `consumer` at `ts_ms`, whose id
    /// is `id`.
    pub fn add(&mut self, end: u64, id: &str, ts_ms: i64, status: u16, consumer: Option<&str>) {
        self.end = end;
        self.count += 1;
        self.min_ts = self.min_ts.min(ts_ms);
        self.max_ts = self.max_ts.max(ts_ms);
        if let Some(ms) = time_id_ms(id, ts_ms) {
            self.min_id_ms = self.min_id_ms.min(ms);
            self.max_id_ms = self.max_id_ms.max(ms);
        }
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

    /// Whether the block may hold a time id carrying `ms`.
    pub fn may_hold_id_ms(&self, ms: i64) -> bool {
        self.min_id_ms <= ms && ms <= self.max_id_ms
    }
}

/// How far a time id's milliseconds may be from its event's time: the gateway's ids carry the
/// event's own time (`clientele_core::event::event_id`), exactly.
pub const TIME_ID_SLACK_MS: i64 = 3_600_000;

/// The milliseconds a *time id* carries: an id in the gateway's form (32 lowercase hex digits,
/// the first 12 the milliseconds, as UUIDv7) whose time is within [`TIME_ID_SLACK_MS`] of its
/// event's. Its duplicates can only be events of about the same time, so the log finds them
/// from the blocks whose time ids cover that millisecond, and keeps only the last few minutes'
/// fingerprints in memory. Any other id (a client's, a content hash) is a plain id, kept in
/// its day's set. A client id that happens to look like a time id is still checked exactly,
/// the same way.
pub fn time_id_ms(id: &str, ts_ms: i64) -> Option<i64> {
    let b = id.as_bytes();
    if b.len() != 32
        || !b
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return None;
    }
    let ms = i64::from_str_radix(id.get(..12)?, 16).ok()?;
    (ms.abs_diff(ts_ms) <= TIME_ID_SLACK_MS as u64).then_some(ms)
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
            block.add(u64::from(i), "x", 10, 200, Some(&format!("member-{i}")));
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

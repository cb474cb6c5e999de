//! Which exchanges are checked in full regardless of the sample rate: the first few of each
//! consumer and operation in every hour. At a 10% rate, a consumer that sends five malformed
//! bodies is never checked 59% of the time; with the first calls always checked, no consumer
//! is invisible, and the cost stays bounded by (consumers × operations × N) per hour.
//!
//! The bookkeeping is a fixed table of atomic counters (a count-min sketch of two rows, each
//! cell holding the hour it counts and its count), so memory does not grow with consumers:
//! a key is "among the first N" while the smaller of its two cells is under N. A collision
//! only makes a key look busier than it is (it is then sampled at the rate, as before); it
//! never checks more than the bound.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Cells per row: 2 × 65,536 × 8 bytes = 1 MiB in all.
const CELLS: usize = 1 << 16;

/// How many exchanges of each consumer and operation are checked in full every hour.
pub const FIRST_PER_HOUR: u32 = 5;

pub struct FirstCalls {
    rows: [Box<[AtomicU64]>; 2],
    seeds: [u64; 2],
    per_hour: u32,
}

impl Default for FirstCalls {
    fn default() -> Self {
        FirstCalls::new(FIRST_PER_HOUR)
    }
}

fn pack(hour: u32, count: u32) -> u64 {
    (u64::from(hour) << 32) | u64::from(count)
}

impl FirstCalls {
    pub fn new(per_hour: u32) -> FirstCalls {
        let row = || {
            (0..CELLS)
                .map(|_| AtomicU64::new(0))
                .collect::<Box<[AtomicU64]>>()
        };
        FirstCalls {
            rows: [row(), row()],
            seeds: [0x51A7_E5EE_D001, 0x0C0F_FEE5_EED2],
            per_hour,
        }
    }

    fn cell(&self, row: usize, consumer: &str, op: &str) -> &AtomicU64 {
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        h.write_u64(self.seeds[row]);
        h.write(consumer.as_bytes());
        h.write_u8(0xff);
        h.write(op.as_bytes());
        // Fx alone leaves the low bits of similar keys correlated; a splitmix64 finaliser
        // spreads them over the row.
        let mut z = h.finish();
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let i = ((z ^ (z >> 31)) as usize) % CELLS;
        &self.rows[row][i]
    }

    /// The count in `cell` for `hour`, after adding one.
    fn bump(cell: &AtomicU64, hour: u32) -> u32 {
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let (h, c) = ((current >> 32) as u32, current as u32);
            let next = if h == hour { c.saturating_add(1) } else { 1 };
            match cell.compare_exchange_weak(
                current,
                pack(hour, next),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// Counts one exchange of `consumer` on `op` at `ts_ms`, and says whether it is among the
    /// first `per_hour` of that hour (and so checked in full). Lock-free: two atomic updates.
    pub fn admit(&self, consumer: &str, op: &str, ts_ms: i64) -> bool {
        let hour = ts_ms.div_euclid(3_600_000) as u32;
        let a = FirstCalls::bump(self.cell(0, consumer, op), hour);
        let b = FirstCalls::bump(self.cell(1, consumer, op), hour);
        a.min(b) <= self.per_hour
    }

    /// Bytes held by the table, whatever the number of consumers.
    pub fn memory_bytes(&self) -> usize {
        2 * CELLS * std::mem::size_of::<AtomicU64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_first_calls_of_every_hour_are_admitted_then_none() {
        let f = FirstCalls::new(5);
        let admitted = (0..20)
            .filter(|_| f.admit("quiet", "POST /orders", 10 * HOUR))
            .count();
        assert_eq!(admitted, 5);
        // Another operation, another consumer, another hour: each has its own first five.
        assert!(f.admit("quiet", "GET /pets", 10 * HOUR));
        assert!(f.admit("other", "POST /orders", 10 * HOUR));
        assert!(f.admit("quiet", "POST /orders", 11 * HOUR + 5));
    }

    #[test]
    fn quiet_consumers_among_many_busy_ones_keep_their_first_checks() {
        // 20,000 busy consumers at 50 calls each, and 1,000 quiet ones sending five each: the
        // table stays 1 MiB, and about nine quiet calls in ten are still checked (a quiet key
        // is missed only when both its cells are shared with busy keys).
        let f = FirstCalls::new(5);
        for c in 0..20_000 {
            for _ in 0..50 {
                f.admit(&format!("busy-{c}"), "GET /pets", HOUR);
            }
        }
        let mut checked = 0;
        for c in 0..1_000 {
            for _ in 0..5 {
                checked += usize::from(f.admit(&format!("quiet-{c}"), "POST /orders", HOUR));
            }
        }
        assert!(checked >= 4_500, "{checked} of 5,000 quiet calls checked");
        assert_eq!(f.memory_bytes(), 1 << 20);
    }
}

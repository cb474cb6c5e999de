//! A small HyperLogLog: distinct counts in a fixed number of one-byte registers.
//!
//! Hand-written rather than `hyperloglogplus` because what is needed is tiny: insert a 64-bit
//! hash, estimate, merge. `M` registers (a power of two) give a standard error of about
//! 1.04/sqrt(M): 256 registers (256 bytes) ≈ 6.5%. Small counts, which are what policies such as
//! "3 networks a day" judge, go through linear counting and are close to exact.

/// A HyperLogLog of `M` registers; `M` must be a power of two between 16 and 65,536.
#[derive(Clone, PartialEq, Eq)]
pub struct Hll<const M: usize> {
    registers: [u8; M],
}

impl<const M: usize> Default for Hll<M> {
    fn default() -> Self {
        Hll { registers: [0; M] }
    }
}

impl<const M: usize> std::fmt::Debug for Hll<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hll<{M}>(~{:.0})", self.estimate())
    }
}

impl<const M: usize> Hll<M> {
    const P: u32 = M.trailing_zeros();

    /// Adds one item by its 64-bit hash (which must be well mixed; see [`mix`]).
    #[inline]
    pub fn insert(&mut self, hash: u64) {
        debug_assert!(M.is_power_of_two() && (16..=65_536).contains(&M));
        let index = (hash >> (64 - Self::P)) as usize;
        // The guard bit bounds the rank at 64 - P + 1 when the rest is all zeros.
        let rest = (hash << Self::P) | (1 << (Self::P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if let Some(r) = self.registers.get_mut(index) {
            if rank > *r {
                *r = rank;
            }
        }
    }

    /// The estimated number of distinct items inserted.
    pub fn estimate(&self) -> f64 {
        let m = M as f64;
        let mut sum = 0.0;
        let mut zeros = 0u32;
        for &r in &self.registers {
            sum += 1.0 / f64::from(1u32 << r.min(31));
            if r == 0 {
                zeros += 1;
            }
        }
        let alpha = match M {
            16 => 0.673,
            32 => 0.697,
            64 => 0.709,
            _ => 0.7213 / (1.0 + 1.079 / m),
        };
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / f64::from(zeros)).ln()
        } else {
            raw
        }
    }

    /// The estimate rounded to a count.
    pub fn count(&self) -> u32 {
        self.estimate().round() as u32
    }

    pub fn merge(&mut self, other: &Hll<M>) {
        for (a, b) in self.registers.iter_mut().zip(other.registers.iter()) {
            *a = (*a).max(*b);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.registers.iter().all(|&r| r == 0)
    }

    /// The registers, for persistence.
    pub fn registers(&self) -> &[u8; M] {
        &self.registers
    }

    /// A sketch from persisted registers.
    pub fn from_registers(registers: [u8; M]) -> Hll<M> {
        Hll { registers }
    }
}

/// A 64-bit hash of bytes good enough for HyperLogLog: FxHash (fast, 8 bytes a step) finished
/// with murmur3's avalanche, because HyperLogLog reads both the top bits and the leading zeros.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(bytes);
    mix(h.finish())
}

/// murmur3's 64-bit finaliser: every input bit affects every output bit.
#[inline]
pub fn mix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_counts_are_nearly_exact_and_large_within_error() {
        for n in [0u64, 1, 2, 3, 5, 10, 40] {
            let mut h = Hll::<256>::default();
            for i in 0..n {
                h.insert(mix(i));
                h.insert(mix(i)); // duplicates do not count
            }
            assert!(
                (h.estimate() - n as f64).abs() <= (n as f64 * 0.08).max(0.5),
                "{n}: {h:?}"
            );
        }
        for n in [1_000u64, 10_000, 100_000] {
            let mut h = Hll::<256>::default();
            for i in 0..n {
                h.insert(hash_bytes(format!("item-{i}").as_bytes()));
            }
            let rel = (h.estimate() - n as f64).abs() / n as f64;
            assert!(rel < 0.2, "{n}: {h:?} ({rel})");
        }
    }

    #[test]
    fn merge_is_the_union() {
        let mut a = Hll::<64>::default();
        let mut b = Hll::<64>::default();
        for i in 0..30u64 {
            a.insert(mix(i));
            b.insert(mix(i + 15));
        }
        a.merge(&b);
        assert!((a.estimate() - 45.0).abs() < 6.0, "{a:?}");
    }
}

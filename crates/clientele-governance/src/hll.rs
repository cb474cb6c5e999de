//! A small HyperLogLog: distinct counts in a fixed number of one-byte registers.
//!
//! Hand-written rather than `hyperloglogplus` because what is needed is tiny: insert a 64-bit
//! hash, estimate, merge. `M` registers (a power of two) give a standard error of about
//! 1.04/sqrt(M): 256 registers (256 bytes) ≈ 6.5%. Small counts, which are what policies such as
//! "3 networks a day" judge, go through linear counting and are close to exact.

/// Registers a sketch holds as a sorted list before it holds all `M`: 14 take the 28 bytes
/// 256 registers would take 256 of. Most consumers use one to a few networks, user agents and
/// sessions an hour, and a consumer keeps 48 hours and two open days of sketches, so this is
/// most of governance's memory.
const SPARSE: usize = 14;

/// A HyperLogLog of `M` registers; `M` must be a power of two between 16 and 1,024.
///
/// While at most [`SPARSE`] registers are set it holds just those (`index << 6 | rank`, sorted by
/// index); then all of them on the heap. Both forms answer exactly the same estimates.
#[derive(Clone)]
pub struct Hll<const M: usize> {
    repr: Repr<M>,
}

#[derive(Clone)]
enum Repr<const M: usize> {
    Sparse { len: u8, set: [u16; SPARSE] },
    Dense(Box<[u8; M]>),
}

impl<const M: usize> Default for Hll<M> {
    fn default() -> Self {
        Hll {
            repr: Repr::Sparse {
                len: 0,
                set: [0; SPARSE],
            },
        }
    }
}

impl<const M: usize> PartialEq for Hll<M> {
    fn eq(&self, other: &Self) -> bool {
        self.registers().eq(other.registers())
    }
}

impl<const M: usize> Eq for Hll<M> {}

impl<const M: usize> std::fmt::Debug for Hll<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hll<{M}>(~{:.0})", self.estimate())
    }
}

/// A sparse entry: the index in the top 10 bits, the rank (at most 64 - 4 + 1) in the low 6.
fn entry(index: usize, rank: u8) -> u16 {
    ((index as u16) << 6) | u16::from(rank)
}

fn index_of(e: u16) -> usize {
    usize::from(e >> 6)
}

fn rank_of(e: u16) -> u8 {
    (e & 0x3f) as u8
}

impl<const M: usize> Hll<M> {
    const P: u32 = {
        assert!(M.is_power_of_two() && M >= 16 && M <= 1024);
        M.trailing_zeros()
    };

    /// Adds one item by its 64-bit hash (which must be well mixed; see [`mix`]).
    #[inline]
    pub fn insert(&mut self, hash: u64) {
        let index = (hash >> (64 - Self::P)) as usize;
        // The guard bit bounds the rank at 64 - P + 1 when the rest is all zeros.
        let rest = (hash << Self::P) | (1 << (Self::P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        self.raise(index, rank);
    }

    /// Sets register `index` to `rank` if that is higher.
    fn raise(&mut self, index: usize, rank: u8) {
        match &mut self.repr {
            Repr::Dense(registers) => {
                if let Some(r) = registers.get_mut(index) {
                    *r = (*r).max(rank);
                }
            }
            Repr::Sparse { len, set } => {
                let held = &mut set[..usize::from(*len)];
                match held.binary_search_by_key(&index, |&e| index_of(e)) {
                    Ok(at) => {
                        if rank > rank_of(held[at]) {
                            held[at] = entry(index, rank);
                        }
                    }
                    Err(at) if usize::from(*len) < SPARSE => {
                        let n = usize::from(*len);
                        set.copy_within(at..n, at + 1);
                        set[at] = entry(index, rank);
                        *len += 1;
                    }
                    Err(_) => {
                        let mut registers = Box::new(self.registers_array());
                        if let Some(r) = registers.get_mut(index) {
                            *r = rank;
                        }
                        self.repr = Repr::Dense(registers);
                    }
                }
            }
        }
    }

    /// Every register's value, in index order.
    fn registers(&self) -> impl Iterator<Item = u8> + '_ {
        let (dense, sparse): (&[u8], &[u16]) = match &self.repr {
            Repr::Dense(r) => (&r[..], &[]),
            Repr::Sparse { len, set } => (&[], &set[..usize::from(*len)]),
        };
        let mut next = sparse.iter().peekable();
        (0..M).map(move |i| {
            if !dense.is_empty() {
                return dense[i];
            }
            match next.peek() {
                Some(&&e) if index_of(e) == i => {
                    next.next();
                    rank_of(e)
                }
                _ => 0,
            }
        })
    }

    fn registers_array(&self) -> [u8; M] {
        let mut out = [0u8; M];
        for (o, r) in out.iter_mut().zip(self.registers()) {
            *o = r;
        }
        out
    }

    /// The estimated number of distinct items inserted.
    pub fn estimate(&self) -> f64 {
        let m = M as f64;
        let mut sum = 0.0;
        let mut zeros = 0u32;
        // Every register in index order in both forms, so both sum in the same order and
        // answer the same to the last bit.
        for r in self.registers() {
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
        match &other.repr {
            Repr::Sparse { len, set } => {
                for &e in &set[..usize::from(*len)] {
                    self.raise(index_of(e), rank_of(e));
                }
            }
            Repr::Dense(theirs) => {
                let mut mine = Box::new(self.registers_array());
                for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(*b);
                }
                self.repr = Repr::Dense(mine);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.repr {
            Repr::Sparse { len, .. } => *len == 0,
            Repr::Dense(r) => r.iter().all(|&r| r == 0),
        }
    }

    /// The registers, for persistence.
    pub fn to_registers(&self) -> [u8; M] {
        self.registers_array()
    }

    /// A sketch from persisted registers (ranks above 64 - log2(M) + 1 cannot come from
    /// [`Hll::insert`] and are held at that bound).
    pub fn from_registers(registers: [u8; M]) -> Hll<M> {
        let mut h = Hll::default();
        let max_rank = (64 - Self::P + 1) as u8;
        for (i, &r) in registers.iter().enumerate() {
            if r > 0 {
                h.raise(i, r.min(max_rank));
            }
        }
        h
    }

    /// Bytes held on the heap beside the struct.
    pub fn heap_bytes(&self) -> usize {
        match self.repr {
            Repr::Sparse { .. } => 0,
            Repr::Dense(_) => M,
        }
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

    /// The estimate the dense registers alone give, as every sketch answered before the sparse
    /// form: both forms must answer it bit for bit.
    fn dense_estimate<const M: usize>(h: &Hll<M>) -> f64 {
        Hll::<M> {
            repr: Repr::Dense(Box::new(h.to_registers())),
        }
        .estimate()
    }

    #[test]
    fn the_sparse_form_answers_as_the_dense_one_and_goes_dense_past_it() {
        for n in 0..40u64 {
            let mut h = Hll::<256>::default();
            for i in 0..n {
                h.insert(mix(i * 7919));
            }
            assert_eq!(h.estimate().to_bits(), dense_estimate(&h).to_bits(), "{n}");
            let set = h.to_registers().iter().filter(|&&r| r > 0).count();
            assert_eq!(h.heap_bytes() == 0, set <= SPARSE, "{n}: {set} set");
            let back = Hll::<256>::from_registers(h.to_registers());
            assert_eq!(back, h);
            assert_eq!(back.estimate().to_bits(), h.estimate().to_bits());
        }
        assert!(std::mem::size_of::<Hll<256>>() <= 32);
    }

    #[test]
    fn merges_of_either_form_are_the_union_of_registers() {
        for (na, nb) in [(3u64, 4u64), (10, 10), (3, 100), (100, 3), (200, 300)] {
            let mut a = Hll::<64>::default();
            let mut b = Hll::<64>::default();
            let mut both = Hll::<64>::default();
            for i in 0..na {
                a.insert(mix(i));
                both.insert(mix(i));
            }
            for i in 0..nb {
                b.insert(mix(i + 1_000));
                both.insert(mix(i + 1_000));
            }
            a.merge(&b);
            assert_eq!(a.to_registers(), both.to_registers(), "{na} + {nb}");
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

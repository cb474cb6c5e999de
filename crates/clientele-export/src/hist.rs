//! A fixed-bucket latency histogram, the shape both Prometheus and OTLP explicit-bucket
//! histograms expect. Fixed bounds make every series the same size and mergeable.

/// Upper bounds in seconds (the `le` labels); the last bucket is +Inf.
pub const BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// Per-bucket (not cumulative) counts; index `BOUNDS.len()` is the +Inf bucket.
    pub counts: [u64; BOUNDS.len() + 1],
    pub sum: f64,
}

impl Hist {
    pub fn observe(&mut self, seconds: f64) {
        let v = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        let i = BOUNDS.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let mut h = Hist::default();
        h.observe(0.001); // le="0.001" includes the bound itself
        h.observe(0.0011);
        h.observe(100.0);
        h.observe(f64::NAN);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BOUNDS.len()], 1);
        assert_eq!(h.count(), 4);
    }
}

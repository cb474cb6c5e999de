//! Logging a repeated error once per interval, with how many times it happened.
//!
//! A full disk or an exhausted descriptor table makes the same call fail thousands of times a
//! second; one line per failure floods the log (and the disk it is failing on). Each place that
//! can repeat keeps one [`Every`] and logs only when it says so, with the count since the last
//! line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A gate letting one occurrence through per interval, counting the rest.
#[derive(Debug)]
pub struct Every {
    interval_ms: u64,
    origin: Instant,
    /// Milliseconds since `origin` of the last occurrence let through; `u64::MAX` = never.
    last_ms: AtomicU64,
    /// Occurrences since the last one let through (including it once it is let through).
    count: AtomicU64,
}

impl Every {
    pub fn new(interval: Duration) -> Every {
        Every {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
        }
    }

    /// Records one occurrence. Returns `Some(n)` when this one should be logged, `n` being the
    /// occurrences since the previous line (this one included); `None` to stay quiet.
    pub fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.interval_ms;
        // Only one caller wins the slot, so concurrent failures still give one line.
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.count.swap(0, Ordering::Relaxed));
        }
        None
    }
}

/// Logs a warning through `$every` (an [`Every`]) at most once per its interval, with
/// `occurrences` = how many happened since the last line.
#[macro_export]
macro_rules! warn_every {
    ($every:expr, $($arg:tt)+) => {
        if let Some(occurrences) = $every.hit() {
            $crate::__tracing::warn!(occurrences, $($arg)+);
        }
    };
}

/// The error-level twin of [`warn_every!`].
#[macro_export]
macro_rules! error_every {
    ($every:expr, $($arg:tt)+) => {
        if let Some(occurrences) = $every.hit() {
            $crate::__tracing::error!(occurrences, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count() {
        let every = Every::new(Duration::from_millis(200));
        assert_eq!(every.hit(), Some(1), "the first occurrence is logged");
        for _ in 0..99 {
            assert_eq!(every.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(every.hit(), Some(100), "99 suppressed plus this one");
        assert_eq!(every.hit(), None);
    }
}

//! `[agents] max_identical_calls`: refusing a session's repeat of the identical call.
//!
//! An agent stuck in a loop sends the same call (method, path, query and body) again and
//! again in one session, and each repeat costs its owner tokens. With the option set, the
//! gateway counts each (consumer, session, call fingerprint) and refuses the call once the
//! session has made it `max` times. The count is O(1): one of 16 shards, locked for one map
//! update (never across an await). Memory is bounded: a shard holds at most
//! [`SHARD_CAP`] calls, forgetting those idle for [`IDLE_MS`] first, and starts over when
//! full of live ones.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};

const SHARDS: usize = 16;
/// Calls remembered per shard (16 × 8,192 ≈ 131k sessions' calls, a few MiB).
pub const SHARD_CAP: usize = 8192;
/// A call not repeated for this long starts counting again (the sessions' idle gap).
pub const IDLE_MS: i64 = 30 * 60 * 1000;

pub struct CallGuard {
    max: u32,
    shards: Vec<Mutex<HashMap<u64, (u32, i64)>>>,
}

impl CallGuard {
    pub fn new(max: u32) -> CallGuard {
        CallGuard {
            max: max.max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts the call; `Some(count)` when this repeat is past the limit and is refused.
    pub fn repeat(&self, consumer: &str, session: &str, call: u64, now_ms: i64) -> Option<u32> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (consumer, session, call).hash(&mut h);
        let key = h.finish();
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SHARD_CAP && !map.contains_key(&key) {
            map.retain(|_, (_, last)| now_ms - *last < IDLE_MS);
            if map.len() >= SHARD_CAP {
                map.clear();
            }
        }
        let entry = map.entry(key).or_insert((0, now_ms));
        if now_ms - entry.1 >= IDLE_MS {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now_ms;
        (entry.0 > self.max).then_some(entry.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repeat_past_the_limit_is_refused_per_session_and_call() {
        let g = CallGuard::new(3);
        for _ in 0..3 {
            assert_eq!(g.repeat("a", "s1", 7, 0), None);
        }
        assert_eq!(g.repeat("a", "s1", 7, 1), Some(4));
        assert_eq!(g.repeat("a", "s1", 8, 1), None, "another call");
        assert_eq!(g.repeat("a", "s2", 7, 1), None, "another session");
        assert_eq!(g.repeat("b", "s1", 7, 1), None, "another consumer");
        assert_eq!(
            g.repeat("a", "s1", 7, 1 + IDLE_MS),
            None,
            "idle: counts again"
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let g = CallGuard::new(1);
        for i in 0..(SHARDS * SHARD_CAP * 2) as u64 {
            g.repeat("a", "s", i, 0);
        }
        let held: usize = g.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * SHARD_CAP, "{held}");
    }
}

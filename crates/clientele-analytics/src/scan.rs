//! Bulk reads for detectors: every consumer's (or every series') rollups of one tier, bucket by
//! bucket. The query functions in the crate root answer one window per call; a detector judging
//! thousands of consumers against weeks of their own history needs the buckets themselves, in
//! one pass under one read lock, with names as numbers so it can key its own maps cheaply.
//!
//! Callbacks run while the engine's read lock is held: they should only copy numbers out, so
//! that ingest (which takes the write lock) waits as little as possible.
//!
//! With a store attached, an hour or day not yet built (the open one, or one closed less than
//! a flush ago) is visited as the minutes or hours it is made of, each reported with the
//! coarse bucket's start. Callbacks must add up what they see for one start (merge, sum, max
//! of maxima), never keep only the last rollup.

use std::sync::Arc;

use crate::{Counters, Engine, Part, Rollup, Tier};

/// The numbers that name a series, as interned by the engine. Resolve them with
/// [`Engine::names`]; a number never changes meaning while the engine lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesIds {
    pub consumer: u32,
    pub api: u32,
    pub method: u32,
    pub route: u32,
    /// The status class: 2 for 2xx, 4 for 4xx, ...
    pub status_class: u8,
}

/// Requests per consumer per bucket over a window of one tier, dense (empty buckets are zero).
#[derive(Debug, Clone, Default)]
pub struct ConsumerGrid {
    pub from_ms: i64,
    pub step_ms: i64,
    /// Buckets per consumer.
    pub len: usize,
    /// Engine name ids of the consumers with any traffic in the window, one row each.
    pub consumers: Vec<u32>,
    /// Row-major: `requests[row * len + bucket]`, saturating at `u32::MAX`.
    pub requests: Vec<u32>,
}

impl ConsumerGrid {
    pub fn row(&self, row: usize) -> &[u32] {
        self.requests
            .get(row * self.len..(row + 1) * self.len)
            .unwrap_or(&[])
    }
}

/// Errors a detector should count: 4xx and 5xx, but not 429, which is the gateway enforcing a
/// limit (its own finding kind), not the integration or the API failing.
pub fn detector_errors(c: &Counters) -> u64 {
    c.errors().saturating_sub(c.rate_limited)
}

impl Engine {
    /// Every name the engine has interned, indexed by id.
    pub fn names(&self) -> Vec<Arc<str>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.names.names.clone()
    }

    /// The id of a name, if the engine has seen it.
    pub fn name_id(&self, name: &str) -> Option<u32> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.names.lookup(name)
    }

    /// Visits each consumer rollup of `tier` in buckets starting in `[from_ms, to_ms)`, in time
    /// order: `f(bucket_start, consumer_id, rollup)`.
    pub fn scan_consumers(
        &self,
        tier: Tier,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(i64, u32, &Rollup),
    ) {
        if from_ms >= to_ms {
            return;
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        self.each_whole(
            &state,
            tier,
            from_ms,
            to_ms,
            Part::Consumers,
            |start, bucket| bucket.consumers(|c, r| f(start, c, r)),
        );
    }

    /// Visits each series rollup of `tier` in buckets starting in `[from_ms, to_ms)`, in time
    /// order: `f(bucket_start, ids, rollup)`.
    pub fn scan_series(
        &self,
        tier: Tier,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(i64, SeriesIds, &Rollup),
    ) {
        if from_ms >= to_ms {
            return;
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        self.each_whole(
            &state,
            tier,
            from_ms,
            to_ms,
            Part::Series,
            |start, bucket| {
                bucket.series(|k, r| {
                    let ids = SeriesIds {
                        consumer: k.consumer,
                        api: k.api,
                        method: k.method,
                        route: k.route,
                        status_class: k.class,
                    };
                    f(start, ids, r);
                })
            },
        );
    }

    /// Requests per consumer per bucket of `tier` over `[from_ms, to_ms)` (aligned down to the
    /// tier), as one dense grid: the cheapest way to give a detector weeks of every consumer's
    /// history at once (4 bytes per consumer-bucket).
    pub fn consumer_grid(&self, tier: Tier, from_ms: i64, to_ms: i64) -> ConsumerGrid {
        let step = tier.size_ms();
        let from = from_ms.div_euclid(step) * step;
        let len = usize::try_from((to_ms - from).max(0).div_euclid(step)).unwrap_or(0);
        let mut grid = ConsumerGrid {
            from_ms: from,
            step_ms: step,
            len,
            ..Default::default()
        };
        if len == 0 {
            return grid;
        }
        let mut rows: rustc_hash::FxHashMap<u32, usize> = Default::default();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let to = from + len as i64 * step;
        self.each_whole(&state, tier, from, to, Part::Consumers, |start, bucket| {
            let idx = ((start - from) / step) as usize;
            bucket.consumers(|c, r| {
                let row = *rows.entry(c).or_insert_with(|| {
                    grid.consumers.push(c);
                    grid.requests.resize(grid.consumers.len() * len, 0);
                    grid.consumers.len() - 1
                });
                let n = u32::try_from(r.counters.requests).unwrap_or(u32::MAX);
                if let Some(cell) = grid.requests.get_mut(row * len + idx) {
                    *cell = cell.saturating_add(n);
                }
            });
        });
        grid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventRef, HOUR_MS, Retention, Sample};

    #[test]
    fn grid_counts_requests_per_consumer_per_hour() {
        let engine = Engine::new(Retention {
            minute_ms: i64::MAX / 4,
            hour_ms: i64::MAX / 4,
            day_ms: i64::MAX / 4,
        });
        let t0 = 1_700_000_000_000 / HOUR_MS * HOUR_MS;
        let ev = |ts: i64, c: &'static str, status: u16| EventRef {
            ts_ms: ts,
            consumer: c,
            api: "a",
            method: "GET",
            route: "/x",
            sample: Sample {
                status,
                latency_ms: 1.0,
                ..Default::default()
            },
        };
        engine.ingest([
            ev(t0, "acme", 200),
            ev(t0 + 10, "acme", 500),
            ev(t0 + HOUR_MS, "acme", 200),
            ev(t0 + 2 * HOUR_MS, "beta", 429),
        ]);
        let grid = engine.consumer_grid(Tier::Hour, t0, t0 + 3 * HOUR_MS);
        assert_eq!(grid.len, 3);
        let names = engine.names();
        let acme = grid
            .consumers
            .iter()
            .position(|c| &*names[*c as usize] == "acme")
            .unwrap();
        assert_eq!(grid.row(acme), &[2, 1, 0]);
        let mut errors = 0;
        engine.scan_series(Tier::Hour, t0, t0 + 3 * HOUR_MS, |_, _, r| {
            errors += detector_errors(&r.counters)
        });
        // The 500 counts; the 429 does not.
        assert_eq!(errors, 1);
    }
}

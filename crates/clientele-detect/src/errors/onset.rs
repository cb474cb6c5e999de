//! Refines the start of an error condition to the minute, from the minute tier when it still
//! holds the first hour, so a summary can say "since 14:05".

use clientele_analytics::{HOUR_MS, MINUTE_MS, Tier, detector_errors};
use rustc_hash::FxHashMap as HashMap;

use super::{Count, Route};
use crate::EvalContext;

/// One hour's minute counts per (route, consumer).
type MinuteSeries = HashMap<(Route, u32), Vec<(i64, Count)>>;

/// Refines the start of an error condition to the minute, from the minute tier when it still
/// holds the first hour. One scan per distinct hour, shared by every finding starting in it.
pub(super) struct Onset<'c, 'a> {
    ctx: &'c EvalContext<'a>,
    minutes: HashMap<i64, MinuteSeries>,
}

impl<'c, 'a> Onset<'c, 'a> {
    pub(super) fn new(ctx: &'c EvalContext<'a>) -> Self {
        Onset {
            ctx,
            minutes: HashMap::default(),
        }
    }

    /// The first minute of `hour` whose error rate is past halfway from `baseline` to
    /// `observed`, or the hour's start.
    pub(super) fn refine(
        &mut self,
        hour: i64,
        route: Route,
        consumer: Option<u32>,
        baseline: f64,
        observed: f64,
    ) -> i64 {
        let engine = self.ctx.engine;
        let by_series = self.minutes.entry(hour).or_insert_with(|| {
            let mut m: MinuteSeries = HashMap::default();
            engine.scan_series(
                Tier::Minute,
                hour * HOUR_MS,
                (hour + 1) * HOUR_MS,
                |start, k, r| {
                    m.entry(((k.api, k.method, k.route), k.consumer))
                        .or_default()
                        .push((
                            start,
                            Count {
                                n: r.counters.requests,
                                e: detector_errors(&r.counters),
                                e5: r.counters.s5xx,
                            },
                        ));
                },
            );
            m
        });
        let mut per_minute: std::collections::BTreeMap<i64, Count> = Default::default();
        for ((r, c), mins) in by_series.iter() {
            if *r == route && consumer.is_none_or(|x| x == *c) {
                for (t, cnt) in mins {
                    per_minute.entry(*t).or_default().add(*cnt);
                }
            }
        }
        let halfway = (baseline + observed) / 2.0;
        per_minute
            .iter()
            .find(|(_, c)| c.e >= 1 && c.rate() >= halfway)
            .map_or(hour * HOUR_MS, |(t, _)| *t - t.rem_euclid(MINUTE_MS))
    }
}

//! `volume_spike` and `volume_drop`: each consumer's hourly requests against its own seasonal
//! baseline.
//!
//! The baseline is fitted on the consumer's history before the judged window:
//! `expected(hour) = level × weekday_factor[day of week] × profile[hour of day]`, where the level
//! is the median daily total, each weekday factor the median of that weekday's totals over the
//! level (when at least two weeks cover it), and the profile the median share of each hour in a
//! day (weekdays and weekends apart when there are enough of each). Medians keep a past incident
//! from becoming the norm. A consumer with less than three full days of history falls back to a
//! flat hourly median; until it has two weeks (and so a day-of-week pattern) it is only flagged
//! for spikes well beyond its own record, and not judged for drops; one with less than a day
//! of history is not judged at all.
//!
//! Noise is judged by the consumer's own pattern: the 99th percentile of its past
//! observed/expected ratios. A steady integration has ratios near 1, so a 3× hour stands out; an
//! AI agent that is silent for minutes and then fires dozens of calls has large ratios in its
//! history, so only a burst well beyond its usual bursts is a spike. Drops are judged the same
//! way over three-hour windows, so an agent's silences are no `volume_drop`.

use clientele_analytics::{HOUR_MS, Tier};
use clientele_core::finding::{Finding, FindingKind, Severity};
use serde_json::json;

use crate::stats::{median, quantile};
use crate::text::{count, pct, r3, times, ts, when};
use crate::{Detector, EvalContext, new_finding_id, runs};

/// Tunables, with defaults chosen on the labelled scenario (`tests/scenario.rs`).
#[derive(Debug, Clone)]
pub struct VolumeDetector {
    /// History used for the baseline, before the judged window.
    pub history_days: i64,
    /// An hour with fewer requests is never a spike, whatever the ratio.
    pub min_spike_requests: f64,
    /// Smallest observed/expected ratio that is a spike, for the steadiest consumer.
    pub spike_ratio: f64,
    /// The spike threshold is at least this many times the consumer's own 99th percentile
    /// ratio, so bursts that fit its pattern pass.
    pub burst_margin: f64,
    /// Largest observed/expected share over the drop window that is a drop (0.2 = fell 80%).
    pub drop_ratio: f64,
    pub drop_window_hours: usize,
    /// Expected requests over the drop window below which drops are not judged.
    pub min_drop_expected: f64,
    /// Poisson z-score both spikes and drops must reach, so that low volumes do not flap.
    pub min_z: f64,
}

impl Default for VolumeDetector {
    fn default() -> Self {
        VolumeDetector {
            history_days: 28,
            min_spike_requests: 50.0,
            spike_ratio: 3.0,
            burst_margin: 1.5,
            drop_ratio: 0.2,
            drop_window_hours: 3,
            min_drop_expected: 60.0,
            min_z: 5.0,
        }
    }
}

/// How a baseline was fitted, for the evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seasonality {
    HourOfWeek,
    HourOfDay,
    Flat,
}

impl Seasonality {
    fn as_str(self) -> &'static str {
        match self {
            Seasonality::HourOfWeek => "hour_of_day_and_day_of_week",
            Seasonality::HourOfDay => "hour_of_day",
            Seasonality::Flat => "flat",
        }
    }
}

fn hour_of_day(hour: i64) -> usize {
    hour.rem_euclid(24) as usize
}

/// Monday = 0. Day 0 of the epoch was a Thursday.
fn day_of_week(hour: i64) -> usize {
    (hour.div_euclid(24) + 3).rem_euclid(7) as usize
}

fn is_weekend(hour: i64) -> bool {
    day_of_week(hour) >= 5
}

/// A fitted baseline: expected requests for any absolute hour number.
struct Model {
    level: f64,
    weekday: [f64; 7],
    /// [weekday profile, weekend profile], each summing to 1.
    profile: [[f64; 24]; 2],
    flat_hourly: Option<f64>,
    seasonality: Seasonality,
    history_days: usize,
}

impl Model {
    fn expected(&self, hour: i64) -> f64 {
        if let Some(flat) = self.flat_hourly {
            return flat;
        }
        let p = &self.profile[usize::from(is_weekend(hour))];
        self.level * self.weekday[day_of_week(hour)] * p[hour_of_day(hour)]
    }

    /// Fits on `counts[i]` = requests in absolute hour `first_hour + i`; `None` when there is
    /// too little history to judge.
    fn fit(counts: &[u32], first_hour: i64) -> Option<Model> {
        // Whole days only: a partial first day would understate the level.
        let first_day = (first_hour + 23).div_euclid(24);
        let end_day = (first_hour + counts.len() as i64).div_euclid(24);
        let mut days: Vec<(i64, f64, &[u32])> = Vec::new();
        for d in first_day..end_day {
            let start = (d * 24 - first_hour) as usize;
            let hours = &counts[start..start + 24];
            days.push((d, hours.iter().map(|&x| f64::from(x)).sum(), hours));
        }
        if days.len() < 3 {
            // Less than a day says nothing about its daily cycle (a nightly batch would look
            // like a spike on its first night).
            if counts.len() < 24 {
                return None;
            }
            let mut hourly: Vec<f64> = counts.iter().map(|&x| f64::from(x)).collect();
            let mean = hourly.iter().sum::<f64>() / hourly.len() as f64;
            let m = median(&mut hourly).unwrap_or(0.0);
            return Some(Model {
                level: 0.0,
                weekday: [1.0; 7],
                profile: [[1.0 / 24.0; 24]; 2],
                flat_hourly: Some(m.max(mean * 0.5)),
                seasonality: Seasonality::Flat,
                history_days: days.len(),
            });
        }
        let mut totals: Vec<f64> = days.iter().map(|d| d.1).collect();
        let mean = totals.iter().sum::<f64>() / totals.len() as f64;
        // A consumer idle most days still has a level: half its mean keeps expected counts
        // from being zero, and its ratio percentile absorbs the rest.
        let level = median(&mut totals).unwrap_or(0.0).max(mean * 0.5);
        let mut weekday = [1.0; 7];
        let mut seasonality = Seasonality::HourOfDay;
        if level > 0.0 {
            let mut per_dow: [Vec<f64>; 7] = Default::default();
            for (d, total, _) in &days {
                per_dow[day_of_week(d * 24)].push(total / level);
            }
            if per_dow.iter().all(|v| v.len() >= 2) {
                seasonality = Seasonality::HourOfWeek;
                for (w, v) in weekday.iter_mut().zip(per_dow.iter_mut()) {
                    *w = median(v).unwrap_or(1.0);
                }
            }
        }
        let mut profile = [[1.0 / 24.0; 24]; 2];
        let shares = |weekend: Option<bool>| -> Option<[f64; 24]> {
            let eligible: Vec<&(i64, f64, &[u32])> = days
                .iter()
                .filter(|(d, total, _)| {
                    *total >= 24.0 && weekend.is_none_or(|w| is_weekend(d * 24) == w)
                })
                .collect();
            if eligible.len() < 3 {
                return None;
            }
            let mut p = [0.0; 24];
            for (h, slot) in p.iter_mut().enumerate() {
                let mut s: Vec<f64> = eligible
                    .iter()
                    .map(|(_, total, hours)| f64::from(hours[h]) / total)
                    .collect();
                *slot = median(&mut s).unwrap_or(0.0);
            }
            let sum: f64 = p.iter().sum();
            if sum <= 0.0 {
                return None;
            }
            // Medians of shares do not sum to one; renormalise, and keep every hour above a
            // floor so that a quiet hour's baseline is never exactly zero.
            for v in &mut p {
                *v = (*v / sum).max(0.1 / 24.0);
            }
            let sum: f64 = p.iter().sum();
            Some(p.map(|v| v / sum))
        };
        match (shares(Some(false)), shares(Some(true))) {
            (Some(wd), Some(we)) => profile = [wd, we],
            _ => {
                if let Some(all) = shares(None) {
                    profile = [all, all];
                }
            }
        }
        Some(Model {
            level,
            weekday,
            profile,
            flat_hourly: None,
            seasonality,
            history_days: days.len(),
        })
    }
}

/// The floor under expected counts, so ratios stay finite for quiet hours.
const MIN_EXPECTED: f64 = 0.5;

struct Flag {
    hour: i64,
    observed: f64,
    expected: f64,
    threshold: f64,
    seasonality: Seasonality,
    history_days: usize,
    /// This hour alone (drop flags' `observed`/`expected` cover their trailing window).
    hour_observed: f64,
    hour_expected: f64,
}

impl Detector for VolumeDetector {
    fn name(&self) -> &'static str {
        "volume"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let slots = ctx.slots();
        let hist_start_hour = slots.start - self.history_days * 24;
        let grid =
            ctx.engine
                .consumer_grid(Tier::Hour, hist_start_hour * HOUR_MS, (slots.end) * HOUR_MS);
        let hist_len = (slots.start - hist_start_hour) as usize;
        let window = self.drop_window_hours.max(1);
        let mut spikes: Vec<(u32, Flag)> = Vec::new();
        let mut drops: Vec<(u32, Flag)> = Vec::new();
        // Each judged day is judged on the history before it, as a live evaluation that day
        // would have: a week-long backfill gives the findings live traffic would have given.
        let mut groups: Vec<(usize, std::ops::Range<i64>)> = Vec::new();
        let mut hour = slots.start;
        while hour < slots.end {
            let day_end = (hour.div_euclid(24) + 1) * 24;
            let hist_end = (hour.div_euclid(24) * 24).max(slots.start);
            groups.push((
                (hist_end - hist_start_hour) as usize,
                hour..day_end.min(slots.end),
            ));
            hour = day_end;
        }
        for (row, &consumer) in grid.consumers.iter().enumerate() {
            let counts = grid.row(row);
            if counts.len() < hist_len {
                continue;
            }
            for (hist_end, judged) in &groups {
                let hist_end = *hist_end;
                let Some(first_active) = counts[..hist_end].iter().position(|&x| x > 0) else {
                    // No history at all before the window: a brand-new consumer, nothing to judge.
                    continue;
                };
                let start =
                    first_active.max(hist_end.saturating_sub(self.history_days as usize * 24));
                let history = &counts[start..hist_end];
                let first_hour = hist_start_hour + start as i64;
                let Some(model) = Model::fit(history, first_hour) else {
                    continue;
                };
                // The consumer's own noise: observed/expected over the last two weeks of history,
                // hourly for spikes and over drop windows for drops.
                let recent = history.len().saturating_sub(14 * 24);
                let mut ratios = Vec::with_capacity(history.len() - recent);
                let mut window_ratios = Vec::with_capacity(history.len() - recent);
                let mut exp_acc = std::collections::VecDeque::with_capacity(window);
                let mut obs_acc = std::collections::VecDeque::with_capacity(window);
                for (i, &x) in history.iter().enumerate().skip(recent) {
                    let hour = first_hour + i as i64;
                    let e = model.expected(hour).max(MIN_EXPECTED);
                    ratios.push(f64::from(x) / e);
                    exp_acc.push_back(e);
                    obs_acc.push_back(f64::from(x));
                    if exp_acc.len() > window {
                        exp_acc.pop_front();
                        obs_acc.pop_front();
                    }
                    // Only windows busy enough to be judged say how low this consumer goes: quiet
                    // nights at zero would otherwise make every drop look normal.
                    if exp_acc.len() == window
                        && exp_acc.iter().sum::<f64>() >= self.min_drop_expected
                    {
                        window_ratios
                            .push(obs_acc.iter().sum::<f64>() / exp_acc.iter().sum::<f64>());
                    }
                }
                let usual_burst = if ratios.len() >= 48 {
                    quantile(&mut ratios, 0.99).unwrap_or(2.0)
                } else {
                    2.0
                };
                let usual_low = if window_ratios.len() >= 48 {
                    quantile(&mut window_ratios, 0.01).unwrap_or(0.0)
                } else {
                    0.0
                };
                let spike_threshold = self.spike_ratio.max(self.burst_margin * usual_burst);
                // Bursty consumers (their own ratios swing past the spike ratio) and young ones
                // (a flat baseline knows nothing of their daily shape) are also held to their own
                // record: a spike must be well beyond the hours they have already had.
                let bursty = usual_burst * self.burst_margin > self.spike_ratio;
                // Under two weeks there is no day-of-week pattern yet: a first weekend would look
                // like a drop, and a weekly batch like a spike.
                let young = model.seasonality != Seasonality::HourOfWeek;
                let count_threshold = if bursty || young {
                    let past: Vec<f64> = history.iter().map(|&x| f64::from(x)).collect();
                    // Twice the busiest hour on record: a bursty agent's largest bursts are rare
                    // by nature, so anything below its record is within its pattern.
                    let record = past.iter().copied().fold(0.0, f64::max) * 2.0;
                    record.max(self.min_spike_requests)
                } else {
                    self.min_spike_requests
                };
                let spike_threshold = if bursty {
                    self.spike_ratio
                } else {
                    spike_threshold
                };
                let drop_threshold = self.drop_ratio.min(0.5 * usual_low);
                for hour in judged.clone() {
                    let idx = (hour - hist_start_hour) as usize;
                    let Some(&x) = counts.get(idx) else { continue };
                    let x = f64::from(x);
                    let f = ctx.elapsed_fraction(hour);
                    // Under ten minutes of an hour says too little.
                    if f < 1.0 / 6.0 {
                        continue;
                    }
                    let e = model.expected(hour) * f;
                    let ratio = x / e.max(MIN_EXPECTED * f);
                    let z = (x - e) / e.max(1.0).sqrt();
                    if x >= count_threshold && ratio >= spike_threshold && z >= self.min_z {
                        spikes.push((
                            consumer,
                            Flag {
                                hour,
                                observed: x,
                                expected: e,
                                threshold: spike_threshold,
                                seasonality: model.seasonality,
                                history_days: model.history_days,
                                hour_observed: x,
                                hour_expected: e,
                            },
                        ));
                    }
                    // Drops: complete hours only, over a trailing window, and only with a seasonal
                    // baseline: without one, every night would look like a drop.
                    if f < 1.0 || idx + 1 < window || young {
                        continue;
                    }
                    let (mut xo, mut eo) = (0.0, 0.0);
                    for k in 0..window {
                        let h = hour - k as i64;
                        xo += f64::from(counts[idx - k]);
                        eo += model.expected(h);
                    }
                    let z_drop = (eo - xo) / eo.max(1.0).sqrt();
                    if eo >= self.min_drop_expected
                        && xo < eo * drop_threshold
                        && z_drop >= self.min_z
                    {
                        drops.push((
                            consumer,
                            Flag {
                                hour,
                                observed: xo,
                                expected: eo,
                                threshold: drop_threshold,
                                seasonality: model.seasonality,
                                history_days: model.history_days,
                                hour_observed: x,
                                hour_expected: model.expected(hour),
                            },
                        ));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (kind, flags) in [
            (FindingKind::VolumeSpike, spikes),
            (FindingKind::VolumeDrop, drops),
        ] {
            let by_hour: rustc_hash::FxHashMap<(u32, i64), Flag> =
                flags.into_iter().map(|(c, f)| ((c, f.hour), f)).collect();
            let keys: Vec<(u32, i64)> = by_hour.keys().copied().collect();
            for (consumer, hours) in runs(keys) {
                let flags: Vec<&Flag> = hours
                    .iter()
                    .filter_map(|h| by_hour.get(&(consumer, *h)))
                    .collect();
                if let Some(f) = self.finding(ctx, kind, ctx.name(consumer), &flags) {
                    out.push(f);
                }
            }
        }
        out
    }
}

impl VolumeDetector {
    fn finding(
        &self,
        ctx: &EvalContext<'_>,
        kind: FindingKind,
        consumer: &str,
        flags: &[&Flag],
    ) -> Option<Finding> {
        let first = flags.first()?;
        let last = flags.last()?;
        // Over the distinct hours of the run: a drop's first window, then each later hour.
        let (observed, expected) = if kind == FindingKind::VolumeDrop {
            flags
                .iter()
                .skip(1)
                .fold((first.observed, first.expected), |(o, e), f| {
                    (o + f.hour_observed, e + f.hour_expected)
                })
        } else {
            (
                flags.iter().map(|f| f.hour_observed).sum(),
                flags.iter().map(|f| f.hour_expected).sum(),
            )
        };
        let drop_span = if kind == FindingKind::VolumeDrop {
            (self.drop_window_hours.max(1) as i64 - 1) * HOUR_MS
        } else {
            0
        };
        let first_seen = first.hour * HOUR_MS - drop_span;
        let last_seen = ((last.hour + 1) * HOUR_MS).min(ctx.now_ms);
        let peak = flags
            .iter()
            .max_by(|a, b| {
                let ra = a.observed / a.expected.max(MIN_EXPECTED);
                let rb = b.observed / b.expected.max(MIN_EXPECTED);
                match kind {
                    FindingKind::VolumeDrop => rb.total_cmp(&ra),
                    _ => ra.total_cmp(&rb),
                }
            })
            .copied()?;
        let peak_ratio = peak.observed / peak.expected.max(MIN_EXPECTED);
        let (seasonality, history_days) = (peak.seasonality, peak.history_days);
        let usual = match seasonality {
            Seasonality::HourOfWeek => "for that hour and weekday",
            Seasonality::HourOfDay => "for that hour of the day",
            Seasonality::Flat => "for an hour",
        };
        let (severity, summary) = match kind {
            FindingKind::VolumeDrop => {
                let fell = 1.0 - observed / expected.max(MIN_EXPECTED);
                let severity = if observed == 0.0 && expected >= 300.0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let summary = if observed == 0.0 {
                    format!(
                        "{consumer} stopped calling the API at {} (about {} requests were expected by {}); check whether its integration is broken or the customer is leaving.",
                        when(first_seen),
                        count(expected),
                        when(last_seen)
                    )
                } else {
                    format!(
                        "{consumer}'s traffic fell {} below its usual level since {} ({} requests where about {} were expected); check whether its integration is failing or the customer is churning.",
                        pct(fell),
                        when(first_seen),
                        count(observed),
                        count(expected)
                    )
                };
                (severity, summary)
            }
            _ => {
                let severity = if peak_ratio >= 10.0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let summary = format!(
                    "{consumer} made {} requests in the hour from {}, {} its usual {} {usual}{}; look for a runaway loop or retry storm in its integration, or a launch on its side.",
                    count(peak.observed),
                    when(peak.hour * HOUR_MS),
                    times(peak_ratio),
                    count(peak.expected),
                    if flags.len() > 1 {
                        format!(
                            ", and the surge has lasted {} hours since {}",
                            flags.len(),
                            when(first_seen)
                        )
                    } else {
                        String::new()
                    }
                );
                (severity, summary)
            }
        };
        Some(Finding {
            id: new_finding_id(),
            kind,
            consumer: Some(consumer.to_string()),
            api: None,
            route: None,
            severity,
            first_seen_ms: first_seen,
            last_seen_ms: last_seen,
            summary,
            evidence: json!({
                "window": {"from": ts(first_seen), "to": ts(last_seen)},
                "observed": {"requests": observed, "peak_hour": ts(peak.hour * HOUR_MS), "peak_hour_requests": peak.observed},
                "baseline": {
                    "expected_requests": r3(expected),
                    "peak_hour_expected": r3(peak.expected),
                    "seasonality": seasonality.as_str(),
                    "history_days": history_days,
                    "method": "median level × weekday factor × hour-of-day share",
                },
                "ratio": r3(if kind == FindingKind::VolumeDrop { observed / expected.max(MIN_EXPECTED) } else { peak_ratio }),
                "threshold_ratio": r3(peak.threshold),
                "hours": flags.len(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_are_counted_from_monday() {
        // 1970-01-05 was a Monday.
        assert_eq!(day_of_week(4 * 24), 0);
        assert_eq!(day_of_week(0), 3);
        assert!(is_weekend(3 * 24));
    }

    #[test]
    fn seasonal_model_follows_the_daily_shape() {
        // Three weeks of a business-hours API: 100/h from 9 to 17 on weekdays, 5/h otherwise.
        let first_hour = 4 * 24; // a Monday
        let counts: Vec<u32> = (0..21 * 24)
            .map(|i| {
                let h = first_hour + i as i64;
                if !is_weekend(h) && (9..17).contains(&hour_of_day(h)) {
                    100
                } else {
                    5
                }
            })
            .collect();
        let m = Model::fit(&counts, first_hour).unwrap();
        assert_eq!(m.seasonality, Seasonality::HourOfWeek);
        let tue_noon = first_hour + 24 + 12;
        let sat_noon = first_hour + 5 * 24 + 12;
        assert!(
            (m.expected(tue_noon) - 100.0).abs() < 10.0,
            "{}",
            m.expected(tue_noon)
        );
        assert!(m.expected(sat_noon) < 10.0, "{}", m.expected(sat_noon));
    }

    #[test]
    fn too_little_history_is_not_judged() {
        assert!(Model::fit(&[1, 2, 3], 0).is_none());
        assert!(Model::fit(&[10; 20], 0).is_none());
        let m = Model::fit(&[10; 30], 0).unwrap();
        assert_eq!(m.seasonality, Seasonality::Flat);
        assert_eq!(m.expected(100), 10.0);
    }
}

//! `volume_spike` and `volume_drop`: each consumer's requests against its own seasonal baseline
//! (`seasonal::Model`), over sliding windows of several lengths (`[detection.volume]
//! windows_hours`, by default 1, 6 and 24 hours) ending at every judged hour.
//!
//! Each window is judged with a Poisson likelihood-ratio test scaled by the consumer's own
//! over-dispersion (a quasi-Poisson test: the median squared deviation of its past windows of that
//! length), at the significance of `[detection.volume]` divided by the number of tests in a
//! consumer-day. So a loud spike is found within the hour, and an 85% drop of a consumer at
//! 20 requests an hour within a few hours, with no per-hour volume floor: a window is judged
//! when what it holds could be significant, not when it is busy.
//!
//! Effect sizes still apply: a spike is at least `spike_ratio` times the expected count and
//! `burst_margin` times the consumer's own 99th percentile ratio for that window length, so an
//! AI agent's usual bursts pass; bursty and young consumers must also beat twice their record
//! for the window. A drop is at most `drop_ratio` of the expected count and half the consumer's
//! own 1st percentile. Consumers under two weeks old (no day-of-week pattern yet) are not
//! judged for drops: a first weekend would look like one.

use clientele_analytics::{HOUR_MS, Tier};
use clientele_core::detection_config::VolumeConfig;
use clientele_core::finding::{Finding, FindingKind, Severity};
use serde_json::json;

use crate::seasonal::{Model, Seasonality};
use crate::stats::{critical_z, poisson_z, select_quantile};
use crate::text::{count, pct, r3, times, ts, when};
use crate::{Detector, EvalContext, new_finding_id, runs};

#[derive(Debug, Clone, Default)]
pub struct VolumeDetector {
    pub config: VolumeConfig,
}

impl VolumeDetector {
    pub fn new(config: VolumeConfig) -> VolumeDetector {
        VolumeDetector { config }
    }
}

/// The floor under expected counts in ratios, so they stay finite for quiet hours.
const MIN_EXPECTED: f64 = 0.5;
/// The floor under expected counts in tests (a Poisson mean of zero has no deviance).
const MIN_MEAN: f64 = 0.05;
/// The median of a chi-square with one degree of freedom: the median squared deviance of a
/// Poisson count, against which a consumer's own dispersion is measured.
const CHI2_MEDIAN: f64 = 0.455;
/// Whole days of history before a consumer is judged at all.
const MIN_HISTORY_DAYS: usize = 3;
/// Days of recent history the consumer's noise (dispersion, usual bursts and lows) is read from.
const NOISE_DAYS: usize = 28;

/// One flagged window.
#[derive(Debug, Clone, Copy)]
struct Flag {
    /// The window's last hour (an hour number).
    hour: i64,
    /// When the condition began within the window (an hour number).
    onset_hour: i64,
    window_hours: usize,
    observed: f64,
    expected: f64,
    /// The ratio threshold the window had to pass.
    threshold: f64,
    z: f64,
    dispersion: f64,
    seasonality: Seasonality,
    history_days: usize,
}

/// What a consumer's history says about its noise over windows of one length.
struct Noise {
    hours: usize,
    /// Quasi-Poisson dispersion (>= 1).
    dispersion: f64,
    /// 99th percentile of observed/expected.
    usual_burst: f64,
    /// 1st percentile of observed/expected over windows in which a drop could be seen.
    usual_low: f64,
    /// The largest count in any window of its history.
    record: f64,
    /// The smallest count in any window of its history in which a drop could be seen.
    record_low: f64,
}

/// Cumulative sums: `p[i]` is the sum of the first `i` values, so any window is two reads.
fn prefix(v: &[f64]) -> Vec<f64> {
    let mut p = Vec::with_capacity(v.len() + 1);
    let mut acc = 0.0;
    p.push(acc);
    for x in v {
        acc += x;
        p.push(acc);
    }
    p
}

impl Noise {
    /// Reads the noise of `history` (counts) against `expected` (same hours) for windows of
    /// `hours`. `z_crit` decides which windows are able to show a drop at all: those whose
    /// expected count, falling to zero, would reach significance.
    fn of(history: &[f64], expected: &[f64], hours: usize, z_crit: f64) -> Noise {
        let recent = history.len().saturating_sub(NOISE_DAYS * 24);
        let cx = prefix(history);
        let ce = prefix(expected);
        let n = (history.len() + 1).saturating_sub(hours);
        let mut dev = Vec::with_capacity(n);
        let mut ratios = Vec::with_capacity(n);
        let mut lows = Vec::with_capacity(n);
        let mut record: f64 = 0.0;
        let mut record_low = f64::INFINITY;
        for end in hours..=history.len() {
            let x = cx[end] - cx[end - hours];
            record = record.max(x);
            if end - hours < recent {
                continue;
            }
            let e = (ce[end] - ce[end - hours]).max(MIN_MEAN);
            dev.push((x - e) * (x - e) / e);
            let ratio = x / e.max(MIN_EXPECTED * hours as f64);
            ratios.push(ratio);
            if 2.0 * e >= z_crit * z_crit {
                lows.push(ratio);
                record_low = record_low.min(x);
            }
        }
        let dispersion = select_quantile(&mut dev, 0.5).map_or(1.0, |m| (m / CHI2_MEDIAN).max(1.0));
        let usual_burst = if ratios.len() >= 48 {
            select_quantile(&mut ratios, 0.99).unwrap_or(2.0)
        } else {
            2.0
        };
        let usual_low = if lows.len() >= 48 {
            select_quantile(&mut lows, 0.01).unwrap_or(0.0)
        } else {
            0.0
        };
        Noise {
            hours,
            dispersion,
            usual_burst,
            usual_low,
            record,
            record_low,
        }
    }
}

/// The judged hours of one day, with the history before that day.
struct DayGroup {
    /// Index into the consumer's counts where that day (its history's end) starts.
    hist_end: usize,
    hours: std::ops::Range<i64>,
}

impl Detector for VolumeDetector {
    fn name(&self) -> &'static str {
        "volume"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let cfg = &self.config;
        let slots = ctx.slots();
        let windows: Vec<usize> = cfg.windows_hours.iter().map(|w| *w as usize).collect();
        let longest = windows.iter().copied().max().unwrap_or(1);
        let history_days = i64::from(cfg.history_days);
        // The history reaches back far enough for the baseline and for the first windows.
        let day0 = slots.start.div_euclid(24) * 24;
        let hist_start_hour = day0 - history_days * 24 - longest as i64;
        let grid =
            ctx.engine
                .consumer_grid(Tier::Hour, hist_start_hour * HOUR_MS, slots.end * HOUR_MS);
        // Bonferroni: spikes and drops, every window length, every hour of a consumer-day.
        let tests = (2 * windows.len() * 24) as f64;
        let z_crit = critical_z(cfg.significance / tests);
        // Each judged day is judged on the history before it, as a live evaluation that day
        // would have: a week-long backfill gives the findings live traffic would have given.
        let mut groups = Vec::new();
        let mut hour = slots.start;
        while hour < slots.end {
            let day_start = hour.div_euclid(24) * 24;
            groups.push(DayGroup {
                hist_end: (day_start - hist_start_hour) as usize,
                hours: hour..(day_start + 24).min(slots.end),
            });
            hour = day_start + 24;
        }
        let mut out = Vec::new();
        for (row, &consumer) in grid.consumers.iter().enumerate() {
            let counts: Vec<f64> = grid.row(row).iter().map(|&x| f64::from(x)).collect();
            let mut spikes = Vec::new();
            let mut drops = Vec::new();
            for g in &groups {
                self.judge_day(
                    ctx,
                    &counts,
                    hist_start_hour,
                    g,
                    &windows,
                    z_crit,
                    &mut spikes,
                    &mut drops,
                );
            }
            for (kind, flags) in [
                (FindingKind::VolumeSpike, spikes),
                (FindingKind::VolumeDrop, drops),
            ] {
                out.extend(self.findings(ctx, kind, ctx.name(consumer), flags, z_crit));
            }
        }
        out
    }
}

impl VolumeDetector {
    /// Flags the windows ending in one day's judged hours of one consumer.
    #[allow(clippy::too_many_arguments)]
    fn judge_day(
        &self,
        ctx: &EvalContext<'_>,
        counts: &[f64],
        hist_start_hour: i64,
        g: &DayGroup,
        windows: &[usize],
        z_crit: f64,
        spikes: &mut Vec<Flag>,
        drops: &mut Vec<Flag>,
    ) {
        let cfg = &self.config;
        if counts.len() < g.hist_end {
            return;
        }
        let past = &counts[..g.hist_end];
        let Some(first_active) = past.iter().position(|&x| x > 0.0) else {
            // No history at all before the day: a brand-new consumer, nothing to judge.
            return;
        };
        let start = first_active.max(g.hist_end.saturating_sub(cfg.history_days as usize * 24));
        let first_hour = hist_start_hour + start as i64;
        let as_u32: Vec<u32> = past[start..].iter().map(|&x| x as u32).collect();
        let Some(model) = Model::fit(&as_u32, first_hour) else {
            return;
        };
        // Under three days there is not even a daily shape: a first Monday after a Sunday of
        // history would be a "spike" of five times.
        if model.history_days < MIN_HISTORY_DAYS {
            return;
        }
        let young = model.seasonality != Seasonality::HourOfWeek;
        // Windows ending in the judged hours reach back at most the longest window: only those
        // hours' expectations are needed to judge, the whole history's only for a candidate's
        // noise. `lo` is the first of them; `expected[i - lo]` is hour `i`'s.
        let longest = windows.iter().copied().max().unwrap_or(1);
        let first_idx = (g.hours.start - hist_start_hour) as usize;
        let lo = (first_idx + 1).saturating_sub(longest);
        let hi = ((g.hours.end - hist_start_hour) as usize).min(counts.len());
        if hi <= lo {
            return;
        }
        let expected: Vec<f64> = (lo..hi)
            .map(|i| model.expected(hist_start_hour + i as i64))
            .collect();
        let cx = prefix(&counts[lo..hi]);
        let ce = prefix(&expected);
        // The consumer's noise only makes thresholds stricter (dispersion >= 1, ratios at least
        // `spike_ratio` or at most `drop_ratio`), so a day none of whose windows passes the
        // plain Poisson test at those ratios cannot be flagged, and its noise is not read.
        let window = |idx: usize, w: usize, f: f64| {
            let (i, from) = (idx - lo, idx + 1 - w - lo);
            let x = cx[i + 1] - cx[from];
            let e = ce[i] - ce[from] + expected[i] * f;
            let ratio = x / e.max(MIN_EXPECTED * (w as f64 - 1.0 + f));
            (x, e, ratio, poisson_z(x, e.max(MIN_MEAN)))
        };
        let candidate = windows.iter().any(|&w| {
            g.hours.clone().any(|hour| {
                let idx = (hour - hist_start_hour) as usize;
                let f = ctx.elapsed_fraction(hour);
                if idx + 1 < w + lo || idx >= hi || f < 1.0 / 6.0 {
                    return false;
                }
                let (_, _, ratio, z) = window(idx, w, f);
                (ratio >= cfg.spike_ratio && z >= z_crit)
                    || (!young && ratio < cfg.drop_ratio && z <= -z_crit)
            })
        });
        if !candidate {
            return;
        }
        let history_expected: Vec<f64> = (start..g.hist_end)
            .map(|i| model.expected(hist_start_hour + i as i64))
            .collect();
        for &w in windows {
            let noise = Noise::of(&past[start..], &history_expected, w, z_crit);
            let bursty = noise.usual_burst * cfg.burst_margin > cfg.spike_ratio;
            // Bursty consumers and young ones (a flat baseline knows nothing of their daily
            // shape) are held to their own record: a spike must be well beyond what they have
            // already done in a window of this length.
            let (spike_threshold, count_threshold) = if bursty {
                (cfg.spike_ratio, 2.0 * noise.record)
            } else if young {
                (
                    cfg.spike_ratio.max(cfg.burst_margin * noise.usual_burst),
                    2.0 * noise.record,
                )
            } else {
                (
                    cfg.spike_ratio.max(cfg.burst_margin * noise.usual_burst),
                    0.0,
                )
            };
            let drop_threshold = cfg.drop_ratio.min(0.5 * noise.usual_low);
            // A bursty consumer's quiet days are its pattern too: a drop must also be below
            // half its quietest window on record.
            let low_count = if bursty {
                0.5 * noise.record_low
            } else {
                f64::INFINITY
            };
            for hour in g.hours.clone() {
                let idx = (hour - hist_start_hour) as usize;
                if idx + 1 < w + lo || idx >= hi {
                    continue;
                }
                let f = ctx.elapsed_fraction(hour);
                // Under ten minutes of an hour says too little.
                if f < 1.0 / 6.0 {
                    continue;
                }
                let (x, e, ratio, z) = window(idx, w, f);
                let z = z / noise.dispersion.sqrt();
                // When it began: the window's first hour that is past halfway to the
                // threshold on its own (spikes up, drops down), else the window's start.
                let onset = |threshold: f64| {
                    let halfway = (1.0 + threshold) / 2.0;
                    let first = idx + 1 - w;
                    let past = (first..=idx).find(|&i| {
                        let r = counts[i] / expected[i - lo].max(MIN_EXPECTED);
                        if threshold >= 1.0 {
                            r >= halfway
                        } else {
                            r <= halfway
                        }
                    });
                    hist_start_hour + past.unwrap_or(first) as i64
                };
                let flag = |threshold: f64| Flag {
                    hour,
                    onset_hour: onset(threshold),
                    window_hours: w,
                    observed: x,
                    expected: e,
                    threshold,
                    z,
                    dispersion: noise.dispersion,
                    seasonality: model.seasonality,
                    history_days: model.history_days,
                };
                if x >= count_threshold && ratio >= spike_threshold && z >= z_crit {
                    spikes.push(flag(spike_threshold));
                }
                // Drops: complete hours only, and only with a seasonal baseline.
                if f >= 1.0 && !young && ratio < drop_threshold && x < low_count && z <= -z_crit {
                    drops.push(flag(drop_threshold));
                }
            }
            debug_assert_eq!(noise.hours, w);
        }
    }

    /// One finding per run of consecutive flagged hours, told by its most significant window.
    fn findings(
        &self,
        ctx: &EvalContext<'_>,
        kind: FindingKind,
        consumer: &str,
        flags: Vec<Flag>,
        z_crit: f64,
    ) -> Vec<Finding> {
        let mut best: rustc_hash::FxHashMap<i64, Flag> = Default::default();
        for f in flags {
            let e = best.entry(f.hour).or_insert(f);
            if f.z.abs() > e.z.abs() {
                *e = f;
            }
        }
        let hours: Vec<((), i64)> = best.keys().map(|h| ((), *h)).collect();
        runs(hours)
            .into_iter()
            .filter_map(|((), hours)| {
                let flags: Vec<Flag> = hours.iter().filter_map(|h| best.get(h).copied()).collect();
                self.finding(ctx, kind, consumer, &flags, z_crit)
            })
            .collect()
    }

    fn finding(
        &self,
        ctx: &EvalContext<'_>,
        kind: FindingKind,
        consumer: &str,
        flags: &[Flag],
        z_crit: f64,
    ) -> Option<Finding> {
        let last = flags.last()?;
        let first_hour = flags.iter().map(|f| f.onset_hour).min()?;
        let first_seen = first_hour * HOUR_MS;
        let last_seen = ((last.hour + 1) * HOUR_MS).min(ctx.now_ms);
        let peak = flags
            .iter()
            .max_by(|a, b| a.z.abs().total_cmp(&b.z.abs()))
            .copied()?;
        let w = peak.window_hours;
        let peak_from = (peak.hour + 1 - w as i64) * HOUR_MS;
        let ratio = peak.observed / peak.expected.max(MIN_EXPECTED);
        let span = if w == 1 {
            format!("in the hour from {}", when(peak_from))
        } else {
            format!("in the {w} hours from {}", when(peak_from))
        };
        let usual = match peak.seasonality {
            Seasonality::HourOfWeek => "for those hours and weekday",
            Seasonality::HourOfDay => "for those hours of the day",
            Seasonality::Flat => "",
        };
        let (severity, summary) = match kind {
            FindingKind::VolumeDrop => {
                let severity = if peak.observed == 0.0 && peak.expected >= 300.0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let summary = if peak.observed == 0.0 {
                    format!(
                        "{consumer} stopped calling the API at {} (about {} requests were expected {span}); check whether its integration is broken or the customer is leaving.",
                        when(first_seen),
                        count(peak.expected),
                    )
                } else {
                    format!(
                        "{consumer}'s traffic fell {} below its usual level since {} ({} requests {span} where about {} were expected); check whether its integration is failing or the customer is churning.",
                        pct(1.0 - ratio),
                        when(first_seen),
                        count(peak.observed),
                        count(peak.expected)
                    )
                };
                (severity, summary)
            }
            _ => {
                let severity = if ratio >= 10.0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let summary = format!(
                    "{consumer} made {} requests {span}, {} its usual {}{}{}; look for a runaway loop or retry storm in its integration, or a launch on its side.",
                    count(peak.observed),
                    times(ratio),
                    count(peak.expected),
                    if usual.is_empty() { "" } else { " " },
                    usual,
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
                "observed": {"requests": peak.observed, "window_from": ts(peak_from), "window_hours": w},
                "baseline": {
                    "expected_requests": r3(peak.expected),
                    "seasonality": peak.seasonality.as_str(),
                    "history_days": peak.history_days,
                    "method": "median level × weekday factor × hour-of-day share",
                },
                "ratio": r3(ratio),
                "threshold_ratio": r3(peak.threshold),
                "test": {
                    "method": "quasi-Poisson likelihood ratio",
                    "z": r3(peak.z),
                    "z_threshold": r3(z_crit),
                    "dispersion": r3(peak.dispersion),
                    "significance_per_consumer_day": self.config.significance,
                },
                "hours": flags.len(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_history_has_no_extra_dispersion_and_a_tight_record() {
        let history = vec![20.0; 24 * 20];
        let expected = vec![20.0; 24 * 20];
        let n = Noise::of(&history, &expected, 6, 5.0);
        assert_eq!(n.dispersion, 1.0);
        assert_eq!(n.record, 120.0);
        assert!((n.usual_burst - 1.0).abs() < 1e-9);
        assert!((n.usual_low - 1.0).abs() < 1e-9);
        assert_eq!(n.record_low, 120.0);
    }

    #[test]
    fn a_noisy_history_is_over_dispersed() {
        let history: Vec<f64> = (0..24 * 20)
            .map(|i| if i % 2 == 0 { 100.0 } else { 300.0 })
            .collect();
        let expected = vec![200.0; 24 * 20];
        let n = Noise::of(&history, &expected, 1, 5.0);
        // (100)^2 / 200 = 50 squared deviance per hour, against 0.455 for Poisson noise.
        assert!(n.dispersion > 100.0, "{}", n.dispersion);
    }
}

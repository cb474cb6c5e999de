//! The seasonal baseline of a consumer's hourly volume, fitted on its own history:
//! `expected(hour) = level × weekday_factor[day of week] × profile[hour of day]`, where the level
//! is the median daily total, each weekday factor the median of that weekday's totals over the
//! level (when at least two weeks cover it), and the profile the median share of each hour in a
//! day (weekdays and weekends apart when there are enough of each). Medians keep a past incident
//! from becoming the norm. Under three full days of history the model is a flat hourly median;
//! under a day, there is none.

use crate::stats::median;

/// How a baseline was fitted, for the evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Seasonality {
    HourOfWeek,
    HourOfDay,
    Flat,
}

impl Seasonality {
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct Model {
    pub(crate) level: f64,
    weekday: [f64; 7],
    /// [weekday profile, weekend profile], each summing to 1.
    profile: [[f64; 24]; 2],
    flat_hourly: Option<f64>,
    pub(crate) seasonality: Seasonality,
    pub(crate) history_days: usize,
}

impl Model {
    pub(crate) fn expected(&self, hour: i64) -> f64 {
        if let Some(flat) = self.flat_hourly {
            return flat;
        }
        let p = &self.profile[usize::from(is_weekend(hour))];
        self.level * self.weekday[day_of_week(hour)] * p[hour_of_day(hour)]
    }

    /// Fits on `counts[i]` = requests in absolute hour `first_hour + i`; `None` when there is
    /// too little history to judge.
    pub(crate) fn fit(counts: &[u32], first_hour: i64) -> Option<Model> {
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
            // One buffer for the 24 medians: this runs per consumer-day judged.
            let mut s: Vec<f64> = Vec::with_capacity(eligible.len());
            for (h, slot) in p.iter_mut().enumerate() {
                s.clear();
                s.extend(
                    eligible
                        .iter()
                        .map(|(_, total, hours)| f64::from(hours[h]) / total),
                );
                *slot = median(&mut s).unwrap_or(0.0);
            }
            let sum: f64 = p.iter().sum();
            if sum <= 0.0 {
                return None;
            }
            // A sparse or bursty consumer (most of its hours empty) has median shares that
            // capture little of its traffic, and renormalising them would pile a day onto one
            // hour; its pooled shares are its shape instead.
            if sum < 0.5 {
                let total: f64 = eligible.iter().map(|(_, t, _)| *t).sum();
                for (h, slot) in p.iter_mut().enumerate() {
                    *slot = eligible
                        .iter()
                        .map(|(_, _, hours)| f64::from(hours[h]))
                        .sum::<f64>()
                        / total;
                }
            }
            let sum: f64 = p.iter().sum();
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

//! `[detection.volume]`, `[detection.errors]`, `[detection.latency]` and
//! `[detection.new_endpoint]`: the detectors' thresholds.
//!
//! The per-consumer detectors judge sliding windows of several lengths (by default 1, 6 and 24
//! hours) with a likelihood-ratio test, so a loud anomaly is found within the hour and a quiet
//! consumer's sustained one within hours, without any per-hour volume floor. How often a normal
//! consumer is flagged is set by `significance`: the chance, per consumer and day, that a
//! detector reports a false finding of its kind when the consumer behaves as its history says.
//! Each test runs at `significance` divided by the number of tests in that consumer-day
//! (windows × hours × routes): a Bonferroni correction, so more windows or routes never mean
//! more false alarms. The effect sizes (`spike_ratio`, `factor`, ...) say how large a change
//! must be to be worth a finding at all, however certain it is.
//!
//! Defaults are the ones the labelled scenario in `clientele-detect/tests/scenario.rs` supports.

use serde::Deserialize;

use crate::alert::DetectionConfig;
use crate::config::ConfigError;

/// The default family-wise false-positive budget per consumer, day and detector.
const SIGNIFICANCE: f64 = 0.0002;

fn default_windows() -> Vec<u32> {
    vec![1, 6, 24]
}

/// Errors add a two-hour window: an incident of two hours on a route that quiet consumers call
/// is found in it and in neither the one-hour window (too few calls) nor the six-hour one
/// (diluted by four ordinary hours).
fn default_error_windows() -> Vec<u32> {
    vec![1, 2, 6, 24]
}

/// `[detection.volume]`: `volume_spike` and `volume_drop`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeConfig {
    /// False-positive budget per consumer-day (see the module docs).
    pub significance: f64,
    /// Window lengths judged, in hours, each ending at every judged hour.
    pub windows_hours: Vec<u32>,
    /// Days of history the seasonal baseline is fitted on.
    pub history_days: u32,
    /// Smallest observed/expected ratio that is a spike, for the steadiest consumer.
    pub spike_ratio: f64,
    /// A spike must also be this many times the consumer's own 99th percentile ratio for the
    /// window length, so bursts that fit its pattern pass.
    pub burst_margin: f64,
    /// Largest observed/expected ratio that is a drop (0.25 = fell by 75% or more).
    pub drop_ratio: f64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            significance: SIGNIFICANCE,
            windows_hours: default_windows(),
            history_days: 28,
            spike_ratio: 3.0,
            burst_margin: 1.5,
            drop_ratio: 0.25,
        }
    }
}

/// `[detection.errors]`: `error_spike`, `integration_errors` and `api_errors`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsConfig {
    pub significance: f64,
    pub windows_hours: Vec<u32>,
    /// Days of history in each consumer's (and route's) baseline error rate.
    pub baseline_days: u32,
    /// An error rate below this is never a spike.
    pub min_rate: f64,
    /// The rate must reach this multiple of the baseline...
    pub spike_factor: f64,
    /// ...and exceed it by this much (absolute, 0.05 = five points).
    pub spike_margin: f64,
    /// An API-wide rate must reach this multiple of what the callers' baselines predict...
    pub api_factor: f64,
    /// ...and exceed it by this much.
    pub api_margin: f64,
    /// Consumers with more errors than usual on the route, at least, for `api_errors`.
    pub api_min_consumers: u32,
    /// Share of a route's excess errors from one consumer that makes them its own.
    pub concentration: f64,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        ErrorsConfig {
            significance: SIGNIFICANCE,
            windows_hours: default_error_windows(),
            baseline_days: 7,
            min_rate: 0.08,
            spike_factor: 3.0,
            spike_margin: 0.05,
            api_factor: 2.0,
            api_margin: 0.02,
            api_min_consumers: 3,
            concentration: 0.6,
        }
    }
}

/// `[detection.latency]`: `latency_regression`, per consumer and API-wide.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    pub significance: f64,
    pub windows_hours: Vec<u32>,
    pub baseline_days: u32,
    /// Days with at least `min_day_requests` needed for a consumer's baseline.
    pub min_baseline_days: u32,
    pub min_day_requests: u64,
    /// The window's p95 must reach this multiple of the baseline p95...
    pub factor: f64,
    /// ...exceed it by this many milliseconds...
    pub margin_ms: f64,
    /// ...and exceed the worst daily p95 of the baseline by this factor.
    pub worst_day_factor: f64,
    /// Share of judged consumers regressing together that makes it the API's regression.
    pub api_share: f64,
    pub api_min_consumers: u32,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            significance: SIGNIFICANCE,
            windows_hours: default_windows(),
            baseline_days: 7,
            min_baseline_days: 3,
            min_day_requests: 20,
            factor: 2.0,
            margin_ms: 50.0,
            worst_day_factor: 1.25,
            api_share: 0.5,
            api_min_consumers: 3,
        }
    }
}

/// `[detection.new_endpoint]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NewEndpointConfig {
    /// How far back "never called" looks, in days.
    pub history_days: u32,
    /// A consumer younger than this is not judged (everything is new to it).
    pub min_consumer_age_days: u32,
    /// Requests on the new operation, within the window, before it counts.
    pub min_requests: u64,
    /// This many new operations at once for one consumer is a warning, not news.
    pub warn_new_routes: u32,
}

impl Default for NewEndpointConfig {
    fn default() -> Self {
        NewEndpointConfig {
            history_days: 28,
            min_consumer_age_days: 3,
            min_requests: 3,
            warn_new_routes: 3,
        }
    }
}

/// Checks one section's values; `key` names a field of it, `reason` says what is wrong.
struct Check<'a> {
    origin: &'a str,
    section: &'a str,
}

impl Check<'_> {
    fn fail(&self, key: &str, reason: String) -> ConfigError {
        ConfigError(format!(
            "{}: detection.{}.{key}: {reason}",
            self.origin, self.section
        ))
    }

    fn range(&self, key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v >= lo && v <= hi {
            Ok(())
        } else {
            Err(self.fail(key, format!("{v} must be between {lo} and {hi}")))
        }
    }

    fn significance(&self, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v > 0.0 && v <= 0.1 {
            Ok(())
        } else {
            Err(self.fail(
                "significance",
                format!("{v} must be above 0 and at most 0.1 (for example 0.0002)"),
            ))
        }
    }

    fn windows(&self, w: &[u32]) -> Result<(), ConfigError> {
        if w.is_empty() || w.len() > 6 {
            return Err(self.fail(
                "windows_hours",
                format!("{w:?} must list one to six window lengths, such as [1, 6, 24]"),
            ));
        }
        match w.iter().find(|h| !(1..=72).contains(*h)) {
            Some(h) => Err(self.fail(
                "windows_hours",
                format!("{h} must be between 1 and 72 hours"),
            )),
            None => Ok(()),
        }
    }

    fn days(&self, key: &str, v: u32, lo: u32, hi: u32) -> Result<(), ConfigError> {
        self.range(key, f64::from(v), f64::from(lo), f64::from(hi))
    }
}

/// Checks the four sections of `[detection]`, naming the dotted key of what is wrong.
pub fn validate(d: &DetectionConfig, origin: &str) -> Result<(), ConfigError> {
    {
        let c = Check {
            origin,
            section: "volume",
        };
        let v = &d.volume;
        c.significance(v.significance)?;
        c.windows(&v.windows_hours)?;
        c.days("history_days", v.history_days, 3, 90)?;
        c.range("spike_ratio", v.spike_ratio, 1.1, 1000.0)?;
        c.range("burst_margin", v.burst_margin, 1.0, 100.0)?;
        c.range("drop_ratio", v.drop_ratio, 0.0, 0.9)?;

        let c = Check {
            origin,
            section: "errors",
        };
        let e = &d.errors;
        c.significance(e.significance)?;
        c.windows(&e.windows_hours)?;
        c.days("baseline_days", e.baseline_days, 1, 90)?;
        c.range("min_rate", e.min_rate, 0.0, 1.0)?;
        c.range("spike_factor", e.spike_factor, 1.0, 1000.0)?;
        c.range("spike_margin", e.spike_margin, 0.0, 1.0)?;
        c.range("api_factor", e.api_factor, 1.0, 1000.0)?;
        c.range("api_margin", e.api_margin, 0.0, 1.0)?;
        c.days("api_min_consumers", e.api_min_consumers, 2, 10_000)?;
        c.range("concentration", e.concentration, 0.1, 1.0)?;

        let c = Check {
            origin,
            section: "latency",
        };
        let l = &d.latency;
        c.significance(l.significance)?;
        c.windows(&l.windows_hours)?;
        c.days("baseline_days", l.baseline_days, 1, 90)?;
        c.days("min_baseline_days", l.min_baseline_days, 1, l.baseline_days)?;
        c.range("min_day_requests", l.min_day_requests as f64, 1.0, 1e9)?;
        c.range("factor", l.factor, 1.0, 1000.0)?;
        c.range("margin_ms", l.margin_ms, 0.0, 3_600_000.0)?;
        c.range("worst_day_factor", l.worst_day_factor, 1.0, 1000.0)?;
        c.range("api_share", l.api_share, 0.0, 1.0)?;
        c.days("api_min_consumers", l.api_min_consumers, 2, 10_000)?;

        let c = Check {
            origin,
            section: "new_endpoint",
        };
        let n = &d.new_endpoint;
        c.days("history_days", n.history_days, 1, 90)?;
        c.days("min_consumer_age_days", n.min_consumer_age_days, 0, 90)?;
        c.range("min_requests", n.min_requests as f64, 1.0, 1e9)?;
        c.days("warn_new_routes", n.warn_new_routes, 1, 1000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/clientele"))
    }

    #[test]
    fn thresholds_parse_beside_the_schedule() {
        let c = parse(
            "[detection]\ninterval_secs = 30\n[detection.volume]\nspike_ratio = 4.0\nwindows_hours = [1, 12]\n[detection.errors]\nsignificance = 0.001\n",
        )
        .unwrap();
        assert_eq!(c.detection.interval_secs, 30);
        assert_eq!(c.detection.volume.spike_ratio, 4.0);
        assert_eq!(c.detection.volume.windows_hours, vec![1, 12]);
        assert_eq!(c.detection.errors.significance, 0.001);
        assert_eq!(c.detection.latency.factor, 2.0);
    }

    #[test]
    fn bad_thresholds_name_their_dotted_key() {
        for (body, key) in [
            (
                "[detection.volume]\nspike_ratio = 0.5",
                "detection.volume.spike_ratio",
            ),
            (
                "[detection.volume]\nwindows_hours = []",
                "detection.volume.windows_hours",
            ),
            (
                "[detection.errors]\nsignificance = 0",
                "detection.errors.significance",
            ),
            (
                "[detection.latency]\nwindows_hours = [1, 500]",
                "detection.latency.windows_hours",
            ),
            (
                "[detection.latency]\nmin_baseline_days = 9",
                "detection.latency.min_baseline_days",
            ),
            (
                "[detection.errors]\nconcentration = 2.0",
                "detection.errors.concentration",
            ),
            // Unknown keys and wrong types come from the parser, with the key and the line.
            ("[detection.volume]\nspike = 3.0", "detection.volume.spike"),
            (
                "[detection.latency]\nfactor = \"big\"",
                "detection.latency.factor",
            ),
            (
                "[detection.new_endpoint]\nmin_requests = -1",
                "detection.new_endpoint.min_requests",
            ),
        ] {
            let e = parse(&format!("{body}\n")).unwrap_err();
            assert!(e.0.starts_with("test.toml"), "{e}");
            assert!(e.0.contains(key), "{key}: {e}");
        }
    }
}

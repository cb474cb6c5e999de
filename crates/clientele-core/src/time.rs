//! Time in the forms the contract accepts: RFC 3339 strings or integer epoch milliseconds.

use chrono::{DateTime, SecondsFormat, Utc};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Parses an RFC 3339 timestamp or an integer of epoch milliseconds.
pub fn parse_ts(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor epoch milliseconds"
            )
        })
}

/// Parses a JSON value holding a time: a string (RFC 3339 or digits) or an integer.
pub fn parse_ts_value(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::String(s) => parse_ts(s),
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{n} is not an integer of epoch milliseconds")),
        other => Err(format!(
            "{other} is not a time; use RFC 3339 or epoch milliseconds"
        )),
    }
}

/// Formats epoch milliseconds as RFC 3339 in UTC, as every response does.
pub fn format_ts(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a step such as `1m`, `5m`, `1h`, `1d` into milliseconds.
pub fn parse_step(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a step; use forms like 1m, 5m, 1h or 1d"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?} has an unknown unit; use s, m, h or d")),
    };
    if n <= 0 {
        return Err(format!("{s:?} must be positive"));
    }
    Ok(n * unit_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_ts("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_ts("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert!(parse_ts("yesterday").is_err());
        assert_eq!(format_ts(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(parse_step("5m").unwrap(), 300_000);
        assert!(parse_step("5x").is_err());
        assert!(parse_step("0h").is_err());
    }
}

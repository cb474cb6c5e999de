//! How findings read: numbers and times formatted for a product manager, and evidence times
//! in RFC 3339.

use chrono::{DateTime, Utc};

/// "Tue 14:05 UTC": short enough for a sentence, unambiguous within a week.
pub fn when(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%a %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A count with thousands separators: 12,345.
pub fn count(n: f64) -> String {
    let n = n.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A rate as a percentage with sensible precision: 0.4%, 15%, 0.05%.
pub fn pct(rate: f64) -> String {
    let p = rate * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p < 0.1 {
        format!("{p:.2}%")
    } else if p < 10.0 {
        format!("{:.1}%", (p * 10.0).round() / 10.0)
    } else {
        format!("{:.0}%", p.round())
    }
}

/// A ratio such as 8.3×.
pub fn times(r: f64) -> String {
    if r >= 10.0 {
        format!("{:.0}×", r.round())
    } else {
        format!("{r:.1}×")
    }
}

/// Milliseconds for sentences: 480 ms, 2.4 s.
pub fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn ts(ms: i64) -> serde_json::Value {
    serde_json::Value::String(clientele_core::time::format_ts(ms))
}

/// Rounds for evidence, so JSON stays readable.
pub fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_naturally() {
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(count(12.0), "12");
        assert_eq!(pct(0.004), "0.4%");
        assert_eq!(pct(0.15), "15%");
        assert_eq!(times(8.34), "8.3×");
        assert_eq!(millis(2400.0), "2.4 s");
        assert_eq!(when(1_700_000_000_000), "Tue 22:13 UTC");
    }
}

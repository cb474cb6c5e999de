//! Two weeks of seasonal history for the demo's consumers, sent through `POST /v1/events`
//! (back-dated, as any backfill), so that the detectors have a usual to compare with from the
//! first minute, and each finding kind the product has shows on the consumer that earned it:
//!
//! - `acme` started calling `GET /inventory` five hours ago: `new_endpoint`;
//! - `globex`'s traffic fell 85% twenty hours ago: `volume_drop`;
//! - `initech`'s orders have failed with 422 for twelve hours: `error_spike`,
//!   `integration_errors`;
//! - `umbrella`'s loop on `/search` began three hours ago (and runs into its free plan live):
//!   `volume_spike`, `rate_limited`;
//! - `stark` was five times slower from eight to two hours ago (`latency_regression`) and uses
//!   most of its 700-a-day quota every day (`quota_pressure`);
//! - `GET /pets` answered half its calls with 503 for everyone from seven to five hours ago:
//!   `api_errors`.
//!
//! `hooli` and `smith-agent` (bursty, as agents are) behave as usual and earn nothing. Every
//! consumer's `GET /pets/{id}` gets the sample API's ordinary 404s (ids above 45) all along, so
//! they are its usual, not an incident. Volumes are those of small B2B integrations (tens of
//! requests an hour), so the backfill is about 100,000 events, and the live traffic that follows
//! keeps the same pace.

use anyhow::Result;
use clientele_analytics::{DAY_MS, HOUR_MS};
use http::Method;
use serde_json::{Value, json};

use crate::client::AdminClient;

/// Events per `POST /v1/events`.
const BATCH: usize = 5_000;
/// Two weeks of whole days before yesterday, so the day-of-week pattern is known for every
/// judged hour of the first evaluation (over the last day).
const HISTORY_DAYS: i64 = 16;

/// Requests an hour at the busiest hour of a normal day, per demo consumer; the live traffic
/// runs at these rates too.
pub const LEVELS: &[(&str, f64)] = &[
    ("acme", 60.0),
    ("globex", 40.0),
    ("initech", 30.0),
    ("umbrella", 20.0),
    ("hooli", 30.0),
    ("smith-agent", 0.0),
    ("stark", 36.0),
];

/// The daily wave: busier in the afternoon, quieter at night and at weekends.
fn wave(hour: i64) -> f64 {
    let h = hour.rem_euclid(24) as f64;
    let day = 0.7 + 0.3 * ((h - 8.0) / 24.0 * std::f64::consts::TAU).sin();
    let weekday = (hour.div_euclid(24) + 3).rem_euclid(7);
    if weekday >= 5 { day * 0.8 } else { day }
}

/// What one event of the history is.
struct Call {
    method: &'static str,
    path: String,
    status: u16,
    latency_ms: f64,
}

/// A small deterministic generator (splitmix64): the history is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A count around `mean` (Poisson-like spread, never negative).
    fn count(&mut self, mean: f64) -> u64 {
        let spread = mean.sqrt() * (self.f64() + self.f64() + self.f64() - 1.5) * 2.0;
        (mean + spread).round().max(0.0) as u64
    }
}

/// One ordinary call of a steady integration, answered as the sample API answers it.
fn ordinary(rng: &mut Rng) -> Call {
    let pet = rng.below(50) + 1;
    match rng.below(10) {
        0..=5 => Call {
            method: "GET",
            path: format!("/pets/{pet}"),
            status: if pet <= 45 { 200 } else { 404 },
            latency_ms: if pet <= 45 {
                5.0 + rng.below(10) as f64
            } else {
                3.0
            },
        },
        6..=7 => Call {
            method: "GET",
            path: "/pets".into(),
            status: 200,
            latency_ms: 15.0 + rng.below(20) as f64,
        },
        8 => Call {
            method: "GET",
            path: format!("/search?q=toy{}", rng.below(9)),
            status: 200,
            latency_ms: 40.0 + rng.below(60) as f64,
        },
        _ => Call {
            method: "POST",
            path: "/orders".into(),
            status: 201,
            latency_ms: 20.0 + rng.below(30) as f64,
        },
    }
}

/// The calls of `consumer` in absolute hour `hour`, `now_hour` being the current one.
fn calls(consumer: &str, level: f64, hour: i64, now_hour: i64, rng: &mut Rng) -> Vec<Call> {
    let ago = now_hour - hour;
    let mut mean = level * wave(hour);
    if consumer == "globex" && ago < 20 {
        mean *= 0.15;
    }
    if consumer == "smith-agent" {
        // Silent hours, then bursts of dozens of calls.
        mean = if rng.f64() < 0.35 {
            (1 + rng.below(3)) as f64 * (20 + rng.below(30)) as f64
        } else {
            0.0
        };
    }
    let mut out: Vec<Call> = (0..rng.count(mean)).map(|_| ordinary(rng)).collect();
    if consumer == "smith-agent" {
        // Every third call of its sessions asks the model.
        for c in out.iter_mut().step_by(3) {
            *c = Call {
                method: "POST",
                path: "/v1/chat/completions".into(),
                status: 200,
                latency_ms: 200.0 + rng.below(400) as f64,
            };
        }
    }
    for c in &mut out {
        // Since "their last release" initech sends the quantity as a string.
        if consumer == "initech" && ago < 12 && (c.method == "POST" || rng.f64() < 0.6) {
            *c = Call {
                method: "POST",
                path: "/orders".into(),
                status: 422,
                latency_ms: 8.0,
            };
        }
        if consumer == "stark" && (2..8).contains(&ago) {
            c.latency_ms *= 5.0;
        }
        // Half of them: `GET /pets` is a small share of each consumer's calls (about 20 an
        // hour in all), and at a fifth the two hours' few errors were too few to tell at some
        // hours of the day.
        if c.path == "/pets" && (5..7).contains(&ago) && rng.f64() < 0.5 {
            c.status = 503;
        }
    }
    if consumer == "acme" && ago < 5 {
        for _ in 0..rng.count(6.0 * wave(hour)) {
            out.push(Call {
                method: "GET",
                path: "/inventory".into(),
                status: 200,
                latency_ms: 10.0 + rng.below(10) as f64,
            });
        }
    }
    if consumer == "umbrella" && ago < 3 {
        for _ in 0..rng.count(30.0 * level) {
            out.push(Call {
                method: "GET",
                path: "/search?q=cheap+cat".into(),
                status: 200,
                latency_ms: 40.0 + rng.below(60) as f64,
            });
        }
    }
    out
}

/// Sends the history up to `now_ms` and answers how many events were accepted.
pub async fn backfill(admin: &AdminClient, now_ms: i64) -> Result<u64> {
    let mut rng = Rng(0xDE30_0001);
    let now_hour = now_ms.div_euclid(HOUR_MS);
    let first_hour = (now_ms - HISTORY_DAYS * DAY_MS).div_euclid(HOUR_MS);
    let mut batch: Vec<Value> = Vec::with_capacity(BATCH);
    let mut accepted = 0;
    for hour in first_hour..=now_hour {
        for (consumer, level) in LEVELS {
            for c in calls(consumer, *level, hour, now_hour, &mut rng) {
                let ts = hour * HOUR_MS + rng.below(HOUR_MS as u64) as i64;
                if ts >= now_ms {
                    continue;
                }
                batch.push(json!({
                    "ts": ts, "consumer": consumer, "api": "petstore", "method": c.method,
                    "path": c.path, "status": c.status, "latency_ms": c.latency_ms,
                }));
                if batch.len() >= BATCH {
                    accepted += send(admin, &mut batch).await?;
                }
            }
        }
    }
    accepted += send(admin, &mut batch).await?;
    wait_until_visible(admin, first_hour * HOUR_MS, accepted).await;
    Ok(accepted)
}

/// Accepted events reach the rollups shortly after the answer (the writer folds them in); an
/// evaluation before that would see a history that stops early, and call it a drop.
async fn wait_until_visible(admin: &AdminClient, from_ms: i64, accepted: u64) {
    let path = format!("/v1/stats/consumers?from={from_ms}");
    for _ in 0..120 {
        let seen: u64 = match admin.call(Method::GET, &path, None).await {
            Ok(v) => v
                .get("consumers")
                .and_then(Value::as_array)
                .map_or(0, |cs| {
                    cs.iter()
                        .filter_map(|c| c.get("requests").and_then(Value::as_u64))
                        .sum()
                }),
            Err(_) => 0,
        };
        if seen >= accepted {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn send(admin: &AdminClient, batch: &mut Vec<Value>) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let body = Value::Array(std::mem::take(batch));
    let answer = admin.call(Method::POST, "/v1/events", Some(&body)).await?;
    Ok(answer.get("accepted").and_then(Value::as_u64).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ordinary_404s_are_there_all_along() {
        let mut rng = Rng(1);
        let now_hour = 500_000;
        let (mut pets, mut missing) = (0, 0);
        for hour in now_hour - 24 * 14..now_hour - 24 {
            for c in calls("acme", 60.0, hour, now_hour, &mut rng) {
                if c.path.starts_with("/pets/") {
                    pets += 1;
                    missing += u32::from(c.status == 404);
                }
            }
        }
        let share = f64::from(missing) / f64::from(pets);
        assert!((0.06..0.14).contains(&share), "{share}");
    }
}

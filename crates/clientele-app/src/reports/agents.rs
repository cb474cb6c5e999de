//! The agents report: sessions (the client's session header) that repeat the same call, per
//! consumer, with the calls they hammer and what would save the round trips. Read from the
//! engine's session table, which keeps per session the calls made at least
//! [`clientele_analytics::sessions::LOOP_REPEATS`] times.

use std::collections::BTreeMap;

use clientele_analytics::{DAY_MS, Engine};
use clientele_core::time::format_ts;
use serde::Serialize;

use super::Table;

pub const WINDOW_MS: i64 = 7 * DAY_MS;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HammeredCall {
    /// `METHOD /path` as called.
    pub call: String,
    /// Looping sessions that repeated it.
    pub sessions: u64,
    pub calls: u64,
    /// Calls beyond the first of each session: what caching or batching would save.
    pub saved_round_trips: u64,
    pub suggestion: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentItem {
    pub consumer: String,
    pub sessions: u64,
    pub looping_sessions: u64,
    pub saved_round_trips: u64,
    pub calls: Vec<HammeredCall>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentsReport {
    pub from: String,
    pub to: String,
    pub items: Vec<AgentItem>,
}

fn suggestion(call: &str) -> String {
    let method = call.split(' ').next().unwrap_or("");
    match method {
        "GET" | "HEAD" => "the same read again and again within one session: cache it for the session, answer conditional requests (ETag / If-None-Match), or offer a batch read that returns everything the session needs at once".to_string(),
        _ => "the same write repeated within one session: an idempotency key makes retries safe, and a batch endpoint takes the items in one call".to_string(),
    }
}

/// Consumers with looping sessions over the 7 days ending at `to_ms`, the most round trips to
/// save first, at most `limit`.
pub fn agents(engine: &Engine, to_ms: i64, limit: usize) -> AgentsReport {
    let from_ms = to_ms - WINDOW_MS;
    let sessions = engine.sessions.query(from_ms, to_ms, None, usize::MAX);
    #[derive(Default)]
    struct Acc {
        sessions: u64,
        looping: u64,
        calls: BTreeMap<String, (u64, u64)>,
    }
    let mut by: BTreeMap<String, Acc> = BTreeMap::new();
    for s in &sessions {
        let a = by.entry(s.consumer.clone()).or_default();
        a.sessions += 1;
        if s.loops == 0 {
            continue;
        }
        a.looping += 1;
        for (call, n) in &s.repeated {
            let e = a.calls.entry(call.clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(*n);
        }
    }
    let mut items: Vec<AgentItem> = by
        .into_iter()
        .filter(|(_, a)| a.looping > 0)
        .map(|(consumer, a)| {
            let mut calls: Vec<HammeredCall> = a
                .calls
                .into_iter()
                .map(|(call, (sessions, calls))| HammeredCall {
                    suggestion: suggestion(&call),
                    call,
                    sessions,
                    calls,
                    saved_round_trips: calls.saturating_sub(sessions),
                })
                .collect();
            calls.sort_by(|x, y| {
                y.saved_round_trips
                    .cmp(&x.saved_round_trips)
                    .then_with(|| x.call.cmp(&y.call))
            });
            calls.truncate(5);
            AgentItem {
                consumer,
                sessions: a.sessions,
                looping_sessions: a.looping,
                saved_round_trips: calls.iter().map(|c| c.saved_round_trips).sum(),
                calls,
            }
        })
        .collect();
    items.sort_by(|a, b| {
        b.saved_round_trips
            .cmp(&a.saved_round_trips)
            .then_with(|| a.consumer.cmp(&b.consumer))
    });
    items.truncate(limit);
    AgentsReport {
        from: format_ts(from_ms),
        to: format_ts(to_ms),
        items,
    }
}

impl AgentsReport {
    /// One row per (consumer, hammered call).
    pub fn table(&self) -> Table {
        Table {
            header: vec![
                "consumer",
                "sessions",
                "looping_sessions",
                "call",
                "call_sessions",
                "calls",
                "saved_round_trips",
                "suggestion",
            ],
            rows: self
                .items
                .iter()
                .flat_map(|i| {
                    i.calls.iter().map(move |c| {
                        vec![
                            i.consumer.clone(),
                            i.sessions.to_string(),
                            i.looping_sessions.to_string(),
                            c.call.clone(),
                            c.sessions.to_string(),
                            c.calls.to_string(),
                            c.saved_round_trips.to_string(),
                            c.suggestion.clone(),
                        ]
                    })
                })
                .collect(),
        }
    }
}

//! Sessions: what `GET /v1/sessions` reads. A session is the client's own id when it sends the
//! session header (recorded on the event), else inferred per consumer from idle gaps: a gap
//! longer than [`IDLE_GAP_MS`] starts a new one. Derived from stored events like the tiers.
//!
//! Loops are counted in sessions the client declared with its session header only (an
//! inferred session of a polling service is not an agent): the identical call, by the
//! gateway's fingerprint of method, path, query and body (`Event::call_hash`), made
//! [`LOOP_REPEATS`] times or more. A session refining its query (the same endpoint with other
//! parameters) makes different calls and is no loop. Events without a fingerprint (ingested,
//! or stored before it existed) are never counted as loops.

use std::collections::HashMap;
use std::sync::Mutex;

use clientele_core::event::Event;

/// The idle gap that ends an inferred session.
pub const IDLE_GAP_MS: i64 = 30 * 60 * 1000;
/// Identical calls in one session from which they count as a loop.
pub const LOOP_REPEATS: u32 = 5;
/// Distinct calls remembered per session; past it new calls are not tracked for loops.
const MAX_CALLS: usize = 256;
/// Sessions kept at most, so a client sending a new session id with every request cannot
/// grow the table without bound; past it, new sessions are not tracked until old ones are
/// pruned.
pub const MAX_SESSIONS: usize = 200_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub consumer: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// `None` while no request of the session had a price.
    pub cost_usd: Option<f64>,
    /// Distinct calls repeated at least [`LOOP_REPEATS`] times.
    pub loops: u32,
    /// Whether the id was inferred from idle gaps rather than sent by the client.
    pub inferred: bool,
    /// The calls repeated at least [`LOOP_REPEATS`] times, with their counts (filled by
    /// [`SessionTable::query`]).
    pub repeated: Vec<(String, u32)>,
    /// Per (method and path, fingerprint): how often the session made the call.
    calls: HashMap<(String, u64), u32>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<(String, String), Session>,
    /// Per consumer: the inferred session in progress and its last request.
    open: HashMap<String, (String, i64)>,
}

/// A mutex held only for a map update or a scan (never across an await).
#[derive(Debug, Default)]
pub struct SessionTable {
    state: Mutex<State>,
}

impl SessionTable {
    pub fn ingest(&self, events: &[Event]) {
        let mut state = None;
        for e in events {
            let Some(consumer) = &e.consumer else {
                continue;
            };
            let st =
                state.get_or_insert_with(|| self.state.lock().unwrap_or_else(|e| e.into_inner()));
            let (id, inferred) = match &e.session_id {
                Some(id) => (id.clone(), false),
                None => {
                    let id = match st.open.get_mut(consumer) {
                        Some((id, last)) if (e.ts_ms - *last).abs() <= IDLE_GAP_MS => {
                            *last = (*last).max(e.ts_ms);
                            id.clone()
                        }
                        _ => {
                            let id = format!("inferred-{}", e.ts_ms);
                            st.open.insert(consumer.clone(), (id.clone(), e.ts_ms));
                            id
                        }
                    };
                    (id, true)
                }
            };
            let key = (consumer.clone(), id.clone());
            if st.sessions.len() >= MAX_SESSIONS && !st.sessions.contains_key(&key) {
                continue;
            }
            let s = st.sessions.entry(key).or_insert_with(|| Session {
                session_id: id,
                consumer: consumer.clone(),
                started_ms: e.ts_ms,
                ended_ms: e.ts_ms,
                inferred,
                ..Session::default()
            });
            s.started_ms = s.started_ms.min(e.ts_ms);
            s.ended_ms = s.ended_ms.max(e.ts_ms);
            s.requests += 1;
            s.tokens_in = s.tokens_in.saturating_add(e.tokens_in.unwrap_or(0));
            s.tokens_out = s.tokens_out.saturating_add(e.tokens_out.unwrap_or(0));
            if let Some(c) = e.cost_usd {
                s.cost_usd = Some(crate::rollup::finite_sum(s.cost_usd.unwrap_or(0.0), c));
            }
            let Some(print) = e.call_hash else { continue };
            let call = (format!("{} {}", e.method, e.path), print);
            let known = s.calls.len() < MAX_CALLS || s.calls.contains_key(&call);
            if known && !inferred {
                let n = s.calls.entry(call).or_insert(0);
                *n += 1;
                if *n == LOOP_REPEATS {
                    s.loops += 1;
                }
            }
        }
    }

    /// Sessions overlapping `[from, to)`, the latest first, at most `limit`.
    pub fn query(
        &self,
        from_ms: i64,
        to_ms: i64,
        consumer: Option<&str>,
        limit: usize,
    ) -> Vec<Session> {
        let mut out: Vec<Session> = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.sessions
                .values()
                .filter(|s| s.ended_ms >= from_ms && s.started_ms < to_ms)
                .filter(|s| consumer.is_none_or(|c| c == s.consumer))
                .map(|s| {
                    let mut repeated: Vec<(String, u32)> = s
                        .calls
                        .iter()
                        .filter(|(_, n)| **n >= LOOP_REPEATS)
                        .map(|((c, _), n)| (c.clone(), *n))
                        .collect();
                    repeated.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    Session {
                        session_id: s.session_id.clone(),
                        consumer: s.consumer.clone(),
                        repeated,
                        calls: HashMap::new(),
                        ..*s
                    }
                })
                .collect()
        };
        out.sort_by(|a, b| {
            b.ended_ms
                .cmp(&a.ended_ms)
                .then(a.session_id.cmp(&b.session_id))
        });
        out.truncate(limit);
        out
    }

    /// Drops sessions that ended before `cutoff_ms`.
    pub fn prune(&self, cutoff_ms: i64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.sessions.retain(|_, s| s.ended_ms >= cutoff_ms);
        st.open.retain(|_, (_, last)| *last >= cutoff_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts_ms: i64, consumer: &str, session: Option<&str>, path: &str) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": format!("{ts_ms}{consumer}{path}"), "ts_ms": ts_ms, "consumer": consumer,
            "key_id": null, "api": "ai", "method": "POST", "path": path,
            "route": path, "status": 200, "latency_ms": 1.0,
            "upstream_latency_ms": null, "request_bytes": 1, "response_bytes": 1,
            "client_ip": null, "user_agent": null, "session_id": null, "trace_id": null,
            "outcome": "proxied", "plan": null, "team": null, "use_case": null,
            "model": null, "tokens_in": 10, "tokens_out": 2, "cost_usd": null
        }))
        .unwrap();
        e.session_id = session.map(str::to_string);
        e.call_hash = Some(7);
        e
    }

    #[test]
    fn header_sessions_inferred_gaps_and_loops() {
        let t = SessionTable::default();
        let min = 60_000;
        let mut evs = Vec::new();
        // A client session with a loop: the same call six times.
        for i in 0..6 {
            evs.push(event(i * 1000, "a", Some("s1"), "/v1/tools/search"));
        }
        // A refining search: the same endpoint, a different call each time; and calls
        // without a fingerprint: neither is a loop.
        for i in 0..6 {
            let mut e = event(i * 1000 + 1, "a", Some("s2"), "/v1/tools/search");
            e.call_hash = Some(100 + i as u64);
            evs.push(e);
            let mut e = event(i * 1000 + 2, "a", Some("s3"), "/v1/tools/search");
            e.call_hash = None;
            evs.push(e);
        }
        // Inferred: two bursts 40 minutes apart are two sessions; a 10-minute gap is not.
        evs.push(event(0, "b", None, "/x"));
        evs.push(event(10 * min, "b", None, "/y"));
        evs.push(event(50 * min, "b", None, "/z"));
        t.ingest(&evs);
        let all = t.query(0, 100 * min, None, 100);
        assert_eq!(all.len(), 5, "{all:?}");
        for id in ["s2", "s3"] {
            let s = all.iter().find(|s| s.session_id == id).unwrap();
            assert_eq!((s.requests, s.loops), (6, 0), "{s:?}");
        }
        let s1 = all.iter().find(|s| s.session_id == "s1").unwrap();
        assert_eq!((s1.requests, s1.loops, s1.tokens_in), (6, 1, 60));
        assert_eq!(s1.repeated, vec![("POST /v1/tools/search".to_string(), 6)]);
        assert!(!s1.inferred);
        assert_eq!(s1.cost_usd, None);
        let b = t.query(0, 100 * min, Some("b"), 100);
        assert_eq!(b.iter().map(|s| s.requests).collect::<Vec<_>>(), vec![1, 2]);
        assert!(b.iter().all(|s| s.inferred && s.loops == 0));
        assert_eq!(t.query(0, 100 * min, None, 1).len(), 1);
        t.prune(20 * min);
        assert_eq!(t.query(0, 100 * min, None, 100).len(), 1);
    }
}

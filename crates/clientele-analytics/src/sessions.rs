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
//!
//! Each session also has its longest chain (the most consecutive calls to one endpoint,
//! method and route, in the order stored: a recursive or refining agent shows as a long
//! chain) and a class, `agent`, `service` or `interactive`, from its pattern and its user
//! agent (see [`Pattern::class`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
    /// The longest run of consecutive calls to one endpoint (`METHOD /route`) and its length.
    pub longest_chain: Option<(String, u32)>,
    /// How the session's calls came: the basis of its class.
    pub pattern: Pattern,
}

/// Calls closer than this are one burst.
pub const BURST_GAP_MS: i64 = 2_000;
/// A gap at least this long after a burst is the silence that ends it.
pub const SILENCE_GAP_MS: i64 = 30_000;

/// What a user agent says about its client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UaHint {
    #[default]
    None,
    /// A web browser: a person.
    Browser,
    /// An agent framework or an LLM tool client.
    Agent,
    /// A plain HTTP library or command-line tool: a program.
    Library,
}

impl UaHint {
    /// Classifies a user agent by the products it names (case-insensitive).
    pub fn of(ua: &str) -> UaHint {
        let ua = ua.to_ascii_lowercase();
        const AGENTS: [&str; 12] = [
            "langchain",
            "llamaindex",
            "llama-index",
            "autogen",
            "crewai",
            "claude-code",
            "claude-cli",
            "mcp",
            "agent",
            "openai-agents",
            "semantic-kernel",
            "smolagents",
        ];
        const LIBRARIES: [&str; 10] = [
            "curl/",
            "wget/",
            "python-requests",
            "python-httpx",
            "aiohttp",
            "go-http-client",
            "okhttp",
            "axios",
            "java/",
            "node-fetch",
        ];
        if AGENTS.iter().any(|a| ua.contains(a)) {
            UaHint::Agent
        } else if ua.starts_with("mozilla/") {
            UaHint::Browser
        } else if LIBRARIES.iter().any(|l| ua.contains(l)) {
            UaHint::Library
        } else {
            UaHint::None
        }
    }
}

/// The shape of a session's traffic, folded one call at a time in constant memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pattern {
    /// The latest call so far; meaningless before the first (`max_burst` is 0 until then),
    /// a plain `i64` rather than an `Option` to keep every session's slot 8 bytes smaller.
    last_ms: i64,
    /// Gaps between consecutive calls: count, sum and sum of squares (ms).
    gaps: u64,
    gap_sum: f64,
    gap_sq: f64,
    /// The burst in progress, and bursts of 10 to 60 calls that ended in a silence.
    burst: u32,
    pub agent_bursts: u32,
    pub max_burst: u32,
    /// Calls to LLM APIs (with a model).
    pub llm_calls: u64,
    pub ua: UaHint,
}

impl Pattern {
    fn add(&mut self, ts_ms: i64, llm: bool, ua: Option<&str>) {
        if llm {
            self.llm_calls += 1;
        }
        if self.ua == UaHint::None
            && let Some(ua) = ua
        {
            self.ua = UaHint::of(ua);
        }
        if self.max_burst == 0 {
            self.last_ms = ts_ms;
            self.burst = 1;
            self.max_burst = 1;
            return;
        }
        let last = self.last_ms;
        let gap = (ts_ms - last).abs();
        self.last_ms = last.max(ts_ms);
        self.gaps += 1;
        self.gap_sum += gap as f64;
        self.gap_sq += (gap as f64) * (gap as f64);
        if gap <= BURST_GAP_MS {
            self.burst += 1;
        } else {
            if gap >= SILENCE_GAP_MS && (10..=60).contains(&self.burst) {
                self.agent_bursts += 1;
            }
            self.burst = 1;
        }
        self.max_burst = self.max_burst.max(self.burst);
    }

    /// The session's class and why, by the first rule that holds:
    /// 1. a browser's user agent: `interactive`; an agent framework's: `agent`;
    /// 2. bursts of 10-60 calls (at most 2 s apart) each ended by 30 s or more of silence, or
    ///    LLM calls in bursts: `agent`;
    /// 3. ten or more calls at a steady pace (the gaps' coefficient of variation under 0.5),
    ///    or an HTTP library's user agent: `service`;
    /// 4. otherwise `interactive` (irregular calls at a person's pace).
    pub fn class(&self) -> (&'static str, String) {
        match self.ua {
            UaHint::Browser => return ("interactive", "a browser's user agent".into()),
            UaHint::Agent => return ("agent", "an agent framework's user agent".into()),
            _ => {}
        }
        if self.agent_bursts > 0 {
            return (
                "agent",
                format!(
                    "{} bursts of 10-60 calls, each followed by silence",
                    self.agent_bursts
                ),
            );
        }
        if self.llm_calls > 0 && self.max_burst >= 3 {
            return (
                "agent",
                format!(
                    "LLM calls in bursts (up to {} calls at most 2 s apart)",
                    self.max_burst
                ),
            );
        }
        if self.gaps >= 9 {
            let mean = self.gap_sum / self.gaps as f64;
            let var = (self.gap_sq / self.gaps as f64 - mean * mean).max(0.0);
            let cv = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
            if cv < 0.5 {
                return (
                    "service",
                    format!(
                        "a steady pace: a call every {:.1} s (variation {cv:.2})",
                        mean / 1000.0
                    ),
                );
            }
        }
        if self.ua == UaHint::Library {
            return ("service", "an HTTP library's user agent".into());
        }
        ("interactive", "irregular calls at a person's pace".into())
    }
}

/// A session's id as stored: the client's own, or the start of an inferred one (formatted as
/// `inferred-{ms}` only when queried, so an inferred session holds no string for it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SessionKey {
    Client(Box<str>),
    Inferred(i64),
}

impl SessionKey {
    fn id(&self) -> String {
        match self {
            SessionKey::Client(id) => id.to_string(),
            SessionKey::Inferred(start) => format!("inferred-{start}"),
        }
    }
}

/// What the table holds per session: a [`Session`] without its names (the key holds them,
/// the consumer interned) and without `repeated` (built by [`SessionTable::query`]). With
/// sparse consumers nearly every event is a session of its own, up to [`MAX_SESSIONS`], so
/// a session of one request allocates nothing beyond its map slot.
#[derive(Debug)]
struct Entry {
    started_ms: i64,
    ended_ms: i64,
    requests: u64,
    tokens_in: u64,
    tokens_out: u64,
    cost_usd: Option<f64>,
    loops: u32,
    /// The length of the run of calls in progress, and of the longest run.
    chain_len: u32,
    longest_len: u32,
    /// Their endpoints (`METHOD /route`), interned in [`State::endpoints`].
    chain: Arc<str>,
    longest: Arc<str>,
    pattern: Pattern,
    /// Per (method and path, fingerprint): how often the session made the call. Allocated
    /// at a client session's first fingerprinted call only: inferred sessions count no loops.
    /// Boxed despite `clippy::box_collection`: 8 bytes in every map slot rather than
    /// the 48 of an empty map, for the few sessions that have calls.
    #[allow(clippy::box_collection)]
    calls: Option<Box<HashMap<(String, u64), u32>>>,
}

impl Entry {
    fn to_session(&self, consumer: &str, key: &SessionKey) -> Session {
        let mut repeated: Vec<(String, u32)> = self
            .calls
            .iter()
            .flat_map(|calls| calls.iter())
            .filter(|(_, n)| **n >= LOOP_REPEATS)
            .map(|((c, _), n)| (c.clone(), *n))
            .collect();
        repeated.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Session {
            session_id: key.id(),
            consumer: consumer.to_string(),
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            requests: self.requests,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            cost_usd: self.cost_usd,
            loops: self.loops,
            inferred: matches!(key, SessionKey::Inferred(_)),
            repeated,
            longest_chain: (self.longest_len > 0)
                .then(|| (self.longest.to_string(), self.longest_len)),
            pattern: self.pattern,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<(Arc<str>, SessionKey), Entry>,
    /// Per consumer: the start of the inferred session in progress (its id) and its last
    /// request.
    open: HashMap<Arc<str>, (i64, i64)>,
    /// Consumer names and endpoints, each stored once however many sessions name it;
    /// [`SessionTable::prune`] drops those no session names any more.
    names: HashSet<Arc<str>>,
    endpoints: HashSet<Arc<str>>,
}

/// The set's copy of `s`, added if new.
fn intern(set: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(a) = set.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    set.insert(a.clone());
    a
}

/// A mutex held only for a map update or a scan (never across an await).
#[derive(Debug, Default)]
pub struct SessionTable {
    state: Mutex<State>,
}

impl SessionTable {
    pub fn ingest(&self, events: &[Event]) {
        let mut guard = None;
        // `METHOD /route` of the event at hand, formatted into one buffer for all events.
        let mut endpoint = String::new();
        for e in events {
            let Some(consumer) = &e.consumer else {
                continue;
            };
            let st: &mut State =
                guard.get_or_insert_with(|| self.state.lock().unwrap_or_else(|e| e.into_inner()));
            let name = intern(&mut st.names, consumer);
            let (key, inferred) = match &e.session_id {
                Some(id) => (SessionKey::Client(id.as_str().into()), false),
                None => {
                    let start = match st.open.get_mut(consumer.as_str()) {
                        Some((start, last)) if (e.ts_ms - *last).abs() <= IDLE_GAP_MS => {
                            *last = (*last).max(e.ts_ms);
                            *start
                        }
                        _ => {
                            st.open.insert(name.clone(), (e.ts_ms, e.ts_ms));
                            e.ts_ms
                        }
                    };
                    (SessionKey::Inferred(start), true)
                }
            };
            let key = (name, key);
            if st.sessions.len() >= MAX_SESSIONS && !st.sessions.contains_key(&key) {
                continue;
            }
            endpoint.clear();
            endpoint.push_str(&e.method);
            endpoint.push(' ');
            endpoint.push_str(&e.route);
            let endpoints = &mut st.endpoints;
            let s = st.sessions.entry(key).or_insert_with(|| {
                let ep = intern(endpoints, &endpoint);
                Entry {
                    started_ms: e.ts_ms,
                    ended_ms: e.ts_ms,
                    requests: 0,
                    tokens_in: 0,
                    tokens_out: 0,
                    cost_usd: None,
                    loops: 0,
                    // No run yet: the first call below extends this empty one to length 1.
                    chain_len: 0,
                    longest_len: 0,
                    chain: ep.clone(),
                    longest: ep,
                    pattern: Pattern::default(),
                    calls: None,
                }
            });
            s.started_ms = s.started_ms.min(e.ts_ms);
            s.ended_ms = s.ended_ms.max(e.ts_ms);
            s.requests += 1;
            s.pattern
                .add(e.ts_ms, e.model.is_some(), e.user_agent.as_deref());
            if *s.chain == *endpoint {
                s.chain_len += 1;
            } else {
                s.chain = intern(endpoints, &endpoint);
                s.chain_len = 1;
            }
            if s.chain_len > s.longest_len {
                s.longest_len = s.chain_len;
                if !Arc::ptr_eq(&s.longest, &s.chain) {
                    s.longest = s.chain.clone();
                }
            }
            s.tokens_in = s.tokens_in.saturating_add(e.tokens_in.unwrap_or(0));
            s.tokens_out = s.tokens_out.saturating_add(e.tokens_out.unwrap_or(0));
            if let Some(c) = e.cost_usd {
                s.cost_usd = Some(crate::rollup::finite_sum(s.cost_usd.unwrap_or(0.0), c));
            }
            let Some(print) = e.call_hash else { continue };
            if inferred {
                continue;
            }
            let calls = s.calls.get_or_insert_with(Default::default);
            let call = (format!("{} {}", e.method, e.path), print);
            if calls.len() < MAX_CALLS || calls.contains_key(&call) {
                let n = calls.entry(call).or_insert(0);
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
                .iter()
                .filter(|(_, s)| s.ended_ms >= from_ms && s.started_ms < to_ms)
                .filter(|((c, _), _)| consumer.is_none_or(|want| want == &**c))
                .map(|((c, key), s)| s.to_session(c, key))
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

    /// (sessions, consumers with an inferred session open) held, for `GET /v1/status`.
    pub fn held(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.sessions.len(), st.open.len())
    }

    /// Drops sessions that ended before `cutoff_ms`, and the names only they used.
    pub fn prune(&self, cutoff_ms: i64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.sessions.retain(|_, s| s.ended_ms >= cutoff_ms);
        st.open.retain(|_, (_, last)| *last >= cutoff_ms);
        // The set's own reference is the one left when nothing else names it.
        st.names.retain(|n| Arc::strong_count(n) > 1);
        st.endpoints.retain(|n| Arc::strong_count(n) > 1);
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

    #[test]
    fn longest_chain_and_classes() {
        let t = SessionTable::default();
        let mut evs = Vec::new();
        // An agent: three bursts of 12 LLM calls 100 ms apart, a minute of silence between;
        // its longest chain is 8 searches in a row.
        for burst in 0..3i64 {
            for i in 0..12i64 {
                let path = if (2..10).contains(&i) {
                    "/search"
                } else {
                    "/v1/chat/completions"
                };
                let mut e = event(burst * 60_000 + i * 100, "a", Some("agent"), path);
                e.model = Some("gpt-4o".into());
                evs.push(e);
            }
        }
        // A service: a call every 10 s, give or take 1 s.
        for i in 0..20i64 {
            evs.push(event(i * 10_000 + (i % 3) * 500, "b", Some("svc"), "/poll"));
        }
        // A person: a browser, a few calls minutes apart.
        for (i, gap) in [0i64, 5_000, 90_000, 100_000].iter().enumerate() {
            let mut e = event(*gap, "c", Some("web"), if i % 2 == 0 { "/a" } else { "/b" });
            e.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into());
            evs.push(e);
        }
        // A program with curl's user agent, a handful of irregular calls.
        for gap in [0i64, 40_000, 41_000, 200_000] {
            let mut e = event(gap, "d", Some("cli"), "/x");
            e.user_agent = Some("curl/8.5.0".into());
            evs.push(e);
        }
        t.ingest(&evs);
        let all = t.query(0, 1_000_000, None, 100);
        let get = |id: &str| all.iter().find(|s| s.session_id == id).unwrap();
        let agent = get("agent");
        assert_eq!(
            agent.longest_chain,
            Some(("POST /search".to_string(), 8)),
            "{agent:?}"
        );
        assert_eq!(
            agent.pattern.class().0,
            "agent",
            "{:?}",
            agent.pattern.class()
        );
        assert!(agent.pattern.class().1.contains("bursts"));
        assert_eq!(
            get("svc").pattern.class().0,
            "service",
            "{:?}",
            get("svc").pattern
        );
        assert_eq!(
            get("svc").longest_chain,
            Some(("POST /poll".to_string(), 20))
        );
        assert_eq!(get("web").pattern.class().0, "interactive");
        assert_eq!(get("web").longest_chain.as_ref().unwrap().1, 1);
        assert_eq!(get("cli").pattern.class().0, "service");
        assert_eq!(UaHint::of("LangChain/0.3 python-httpx/0.27"), UaHint::Agent);
        assert_eq!(UaHint::of("OpenAI/Python 1.50.0"), UaHint::None);
    }
}

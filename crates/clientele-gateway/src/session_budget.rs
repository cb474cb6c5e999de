//! Per-session budgets on one node (`budget_usd_per_session`, `tokens_per_session`): what each
//! (consumer, session) has spent, reserved before forwarding and settled when the response
//! ends, like the consumer's day and month budgets (with Redis the same counts live in the
//! limiter's script instead).
//!
//! The session is the client's session header; a request without one has no session budget.
//! The table is 16 shards, each locked for one map update (never across an await), holding at
//! most [`SHARD_CAP`] sessions: those idle for [`SESSION_BUDGET_IDLE_MS`] are forgotten first,
//! then, if every entry is live, the least recently used half. A forgotten session starts
//! again from nothing, which is the budget's purpose (a brake on one runaway session); the day
//! and month budgets are the consumer's cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use clientele_core::limits::{
    BudgetCharge, LimitKind, LimitStatus, SESSION_BUDGET_IDLE_MS, SessionBudgets, Tightest,
    quota_status,
};

const SHARDS: usize = 16;
/// Sessions remembered per shard (16 × 8,192 ≈ 131k sessions, about 5 MiB).
pub const SHARD_CAP: usize = 8192;

#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    tokens: u64,
    micro_usd: u64,
    last_ms: i64,
}

impl Spent {
    /// What the session has used of a budget of `kind`: micro-dollars or tokens.
    fn used(&self, kind: LimitKind) -> u64 {
        if kind.is_usd() {
            self.micro_usd
        } else {
            self.tokens
        }
    }
}

/// The sessions' spending, shared by the gateway's requests.
#[derive(Debug)]
pub struct SessionTable {
    shards: Vec<Mutex<HashMap<u64, Spent>>>,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// The key of a (consumer, session): FNV-1a over both, with a separator no header value can
/// hold, so nodes and releases agree on it (the Redis key uses it too).
pub fn session_key(consumer: &str, session: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in consumer
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(session.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A refusal: the budget spent, its limit and what the session has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRefusal {
    pub kind: LimitKind,
    pub limit: u64,
    pub used: u64,
}

/// A reservation in the table, settled or (when dropped) given back by its owner.
#[derive(Debug)]
pub struct SessionHeld {
    table: Arc<SessionTable>,
    key: u64,
    charge: BudgetCharge,
    /// The session budget with the least share left once this request's estimate is
    /// counted, for the RateLimit headers of the allowed request.
    status: Option<LimitStatus>,
}

impl SessionHeld {
    /// The session budget to report in the RateLimit headers (the least share left).
    pub fn status(&self) -> Option<LimitStatus> {
        self.status
    }
}

impl SessionTable {
    /// Reserves `charge` for the session if each of `budgets` has anything left (a budget
    /// admits while something is left and then counts the whole estimate, so concurrent
    /// requests overshoot by at most one estimate).
    pub fn reserve(
        self: &Arc<Self>,
        key: u64,
        budgets: SessionBudgets,
        charge: BudgetCharge,
        now_ms: i64,
    ) -> Result<SessionHeld, SessionRefusal> {
        let mut map = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SHARD_CAP && !map.contains_key(&key) {
            make_room(&mut map, now_ms);
        }
        let spent = map.entry(key).or_default();
        if now_ms - spent.last_ms >= SESSION_BUDGET_IDLE_MS {
            *spent = Spent::default();
        }
        spent.last_ms = now_ms;
        for (kind, limit) in budgets.kinds() {
            let Some(limit) = limit else { continue };
            let used = spent.used(kind);
            if used >= limit {
                return Err(SessionRefusal { kind, limit, used });
            }
        }
        spent.tokens = spent.tokens.saturating_add(charge.tokens);
        spent.micro_usd = spent.micro_usd.saturating_add(charge.micro_usd);
        let mut tightest = Tightest::default();
        for (kind, limit) in budgets.kinds() {
            let Some(limit) = limit else { continue };
            tightest.keep(quota_status(
                kind,
                limit,
                spent.used(kind),
                SESSION_BUDGET_IDLE_MS,
            ));
        }
        Ok(SessionHeld {
            table: self.clone(),
            key,
            charge,
            status: tightest.status(),
        })
    }

    /// What the session has spent (tokens, micro-dollars), for tests and status.
    pub fn spent(&self, key: u64) -> (u64, u64) {
        let map = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&key).map_or((0, 0), |s| (s.tokens, s.micro_usd))
    }

    fn adjust(&self, key: u64, from: BudgetCharge, to: BudgetCharge) {
        let mut map = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A session forgotten meanwhile has nothing left to correct.
        if let Some(s) = map.get_mut(&key) {
            s.tokens = (s.tokens + to.tokens).saturating_sub(from.tokens);
            s.micro_usd = (s.micro_usd + to.micro_usd).saturating_sub(from.micro_usd);
        }
    }
}

/// Forgets idle sessions, and the least recently used half when none is idle.
fn make_room(map: &mut HashMap<u64, Spent>, now_ms: i64) {
    map.retain(|_, s| now_ms - s.last_ms < SESSION_BUDGET_IDLE_MS);
    if map.len() >= SHARD_CAP {
        let mut ages: Vec<i64> = map.values().map(|s| s.last_ms).collect();
        let mid = ages.len() / 2;
        let (_, cut, _) = ages.select_nth_unstable(mid);
        let cut = *cut;
        map.retain(|_, s| s.last_ms > cut);
    }
}

impl SessionHeld {
    /// Replaces the estimate by the real use.
    pub fn settle(self, actual: BudgetCharge) {
        self.table.adjust(self.key, self.charge, actual);
    }

    /// Gives the whole estimate back (the request failed before an answer).
    pub fn release(self) {
        self.table
            .adjust(self.key, self.charge, BudgetCharge::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(tokens: u64) -> SessionBudgets {
        SessionBudgets {
            usd_micros: None,
            tokens: Some(tokens),
        }
    }

    const EST: BudgetCharge = BudgetCharge {
        tokens: 60,
        micro_usd: 7,
    };

    #[test]
    fn a_session_is_refused_once_spent_and_others_are_not() {
        let t = Arc::new(SessionTable::default());
        let (a, b) = (session_key("c", "s1"), session_key("c", "s2"));
        assert_ne!(a, b);
        assert_ne!(session_key("c", "s1"), session_key("cs", "1"));
        // 100 tokens: the first two estimates are admitted (something was left), the third not.
        let h1 = t.reserve(a, budgets(100), EST, 0).unwrap();
        let h2 = t.reserve(a, budgets(100), EST, 1).unwrap();
        let refused = t.reserve(a, budgets(100), EST, 2).unwrap_err();
        assert_eq!(
            refused,
            SessionRefusal {
                kind: LimitKind::TokensSession,
                limit: 100,
                used: 120
            }
        );
        // Settled to the real use (30 each): 60 used, so one more fits.
        let actual = BudgetCharge {
            tokens: 30,
            micro_usd: 3,
        };
        h1.settle(actual);
        h2.settle(actual);
        assert_eq!(t.spent(a), (60, 6));
        let h3 = t.reserve(a, budgets(100), EST, 3).unwrap();
        // A failed request gives its estimate back.
        h3.release();
        assert_eq!(t.spent(a), (60, 6));
        // Another session of the same consumer has its own budget.
        assert!(t.reserve(b, budgets(100), EST, 4).is_ok());
        // Idle past the window: the session starts again.
        t.reserve(a, budgets(100), EST, 5 + SESSION_BUDGET_IDLE_MS)
            .unwrap()
            .settle(actual);
        assert_eq!(t.spent(a), (30, 3));
    }

    #[test]
    fn dollars_are_checked_too() {
        let t = Arc::new(SessionTable::default());
        let k = session_key("c", "s");
        let usd = SessionBudgets {
            usd_micros: Some(7),
            tokens: Some(1_000_000),
        };
        t.reserve(k, usd, EST, 0).unwrap().settle(EST);
        let e = t.reserve(k, usd, EST, 1).unwrap_err();
        assert_eq!(
            (e.kind, e.limit, e.used),
            (LimitKind::BudgetUsdSession, 7, 7)
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let t = Arc::new(SessionTable::default());
        for i in 0..(SHARDS * SHARD_CAP * 2) as i64 {
            let _ = t.reserve(i as u64, budgets(10), BudgetCharge::default(), i);
        }
        let held: usize = t.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * SHARD_CAP, "{held}");
    }
}

//! Deciding whether a consumer's request is within its limits.
//!
//! On one node the decision is local: the consumer's [`LimitSlot`] (lock-free GCRA cells and
//! quota counters) answers in well under a microsecond. In cluster mode the same policy is
//! enforced by one Lua script in Redis, atomically for every node: the script reads the GCRA
//! states and quota counts, refuses if any limit would be broken, and otherwise commits them all,
//! so a quota of 20 allows exactly 20 across the cluster.
//!
//! Redis is never allowed to stall traffic. Each call has a tight timeout; after a failure the
//! limiter stops asking Redis for a second (a circuit breaker) and applies the failure policy
//! directly: `open` allows the request (counted and logged), `closed` refuses it with 503. The
//! connection manager reconnects in the background, and the first call after the pause probes
//! it, so recovery needs no one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
#[cfg(feature = "redis")]
use std::time::Duration;

use clientele_core::config::{FailurePolicy, LimitsConfig};
use clientele_core::limits::{
    BudgetCharge, Decision, LimitSlot, LimiterStats, Reserved, SESSION_BUDGET_IDLE_MS, Tightest,
    quota_status,
};

use crate::session_budget::{SessionHeld, SessionTable, session_key};

/// What the gateway does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Decided(Decision),
    /// The shared limiter could not be asked and the policy is fail-closed.
    Unavailable,
}

/// The limiter the gateway asks on every identified request.
pub struct Limiter {
    #[cfg(feature = "redis")]
    redis: Option<redis_mode::RedisLimiter>,
    stats: Arc<LimiterStats>,
    /// Per-session budgets on one node (with Redis they are counted in its script).
    sessions: Arc<SessionTable>,
}

impl Limiter {
    /// A node-local limiter.
    pub fn local() -> Limiter {
        let stats = Arc::new(LimiterStats::default());
        stats.redis_up.store(true, Ordering::Relaxed);
        Limiter {
            #[cfg(feature = "redis")]
            redis: None,
            stats,
            sessions: Arc::default(),
        }
    }

    /// The limiter `[limits]` asks for. With a `redis_url` it connects first and fails with a
    /// message naming the key when Redis cannot be reached.
    pub async fn from_config(config: &LimitsConfig) -> Result<Limiter, String> {
        let Some(url) = &config.redis_url else {
            return Ok(Limiter::local());
        };
        #[cfg(feature = "redis")]
        {
            let redis = redis_mode::RedisLimiter::connect(url, config).await?;
            let stats = Arc::new(LimiterStats::default());
            stats.redis_up.store(true, Ordering::Relaxed);
            Ok(Limiter {
                redis: Some(redis),
                stats,
                sessions: Arc::default(),
            })
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = url;
            Err("limits.redis_url: this clientele was built without the `redis` feature; rebuild with default features or remove limits.redis_url".into())
        }
    }

    pub fn stats(&self) -> Arc<LimiterStats> {
        self.stats.clone()
    }

    /// `"local"` or `"redis"`.
    pub fn mode(&self) -> &'static str {
        #[cfg(feature = "redis")]
        if self.redis.is_some() {
            return "redis";
        }
        "local"
    }

    /// Decides on one request, reserving `charge` against the consumer's budgets when it has
    /// any, and against its session's (`session`, the client's session header) when the
    /// policy sets per-session budgets: the reservation is held by the request and settled
    /// (or released) when it ends.
    #[allow(clippy::too_many_arguments)]
    pub async fn check(
        &self,
        consumer: &str,
        session: Option<&str>,
        slot: &Arc<LimitSlot>,
        method: &str,
        route: &str,
        now_ms: i64,
        charge: BudgetCharge,
    ) -> (Verdict, Reservation) {
        let session = session.filter(|_| slot.policy.session_budgets.any());
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            let (verdict, held) = redis
                .check(
                    consumer,
                    session,
                    slot,
                    method,
                    route,
                    now_ms,
                    charge,
                    &self.stats,
                )
                .await;
            return (
                self.count(verdict),
                Reservation {
                    held,
                    session: None,
                },
            );
        }
        // The session's budgets first: a refusal there reserves nothing anywhere, and a
        // refusal by the consumer's limits after it gives the session's reservation back
        // (dropping `Reservation` releases it).
        let mut session_held = None;
        if let Some(session) = session {
            let key = session_key(consumer, session);
            match self
                .sessions
                .reserve(key, slot.policy.session_budgets, charge, now_ms)
            {
                Ok(held) => session_held = Some(held),
                Err(spent) => {
                    let status =
                        quota_status(spent.kind, spent.limit, spent.used, SESSION_BUDGET_IDLE_MS);
                    let refused = Decision::Refused {
                        status,
                        retry_after_ms: SESSION_BUDGET_IDLE_MS as u64,
                    };
                    return (
                        self.count(Verdict::Decided(refused)),
                        Reservation::default(),
                    );
                }
            }
        }
        let (decision, reserved) = slot.check_with(method, route, now_ms, charge);
        // The RateLimit headers report the tightest of the consumer's limits and the
        // session's budgets, so a client sees what is left of its session too.
        let session_status = session_held.as_ref().and_then(SessionHeld::status);
        let decision = match (decision, session_status) {
            (Decision::Allowed { status }, Some(session)) => {
                let mut tightest = Tightest::default();
                tightest.keep(status);
                tightest.keep(session);
                tightest.allowed()
            }
            (Decision::Unlimited, Some(session)) => Decision::Allowed { status: session },
            (decision, _) => decision,
        };
        let held = reserved.map(|reserved| Held::Local {
            slot: slot.clone(),
            reserved,
        });
        (
            self.count(Verdict::Decided(decision)),
            Reservation {
                held,
                session: session_held,
            },
        )
    }

    /// What one session has spent on this node (tokens, micro-dollars); `(0, 0)` with Redis,
    /// where the counts live there.
    pub fn session_spent(&self, consumer: &str, session: &str) -> (u64, u64) {
        self.sessions.spent(session_key(consumer, session))
    }

    fn count(&self, v: Verdict) -> Verdict {
        let counter = match &v {
            Verdict::Decided(Decision::Refused { .. }) | Verdict::Unavailable => {
                &self.stats.refused
            }
            Verdict::Decided(_) => &self.stats.allowed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        v
    }
}

/// A request's reservation against its consumer's budgets and its session's.
/// [`Reservation::settle`] replaces the estimate by the real use when the response ends;
/// dropping it unsettled (the request failed before an answer) gives the whole estimate back.
#[derive(Default)]
pub struct Reservation {
    held: Option<Held>,
    session: Option<SessionHeld>,
}

enum Held {
    Local {
        slot: Arc<LimitSlot>,
        reserved: Reserved,
    },
    #[cfg(feature = "redis")]
    Redis(redis_mode::RedisHeld),
}

impl Reservation {
    pub fn is_held(&self) -> bool {
        self.held.is_some() || self.session.is_some()
    }

    /// Settles to `actual`, the tokens and cost the provider reported.
    pub fn settle(mut self, actual: BudgetCharge) {
        if let Some(held) = self.held.take() {
            held.settle(actual);
        }
        if let Some(session) = self.session.take() {
            session.settle(actual);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.settle(BudgetCharge::default());
        }
        if let Some(session) = self.session.take() {
            session.release();
        }
    }
}

impl Held {
    fn settle(self, actual: BudgetCharge) {
        match self {
            Held::Local { slot, reserved } => slot.settle(&reserved, actual),
            #[cfg(feature = "redis")]
            Held::Redis(held) => held.settle(actual),
        }
    }
}

/// When the circuit breaker lets Redis be asked again, in epoch ms (0 = closed circuit).
#[derive(Debug, Default)]
struct Breaker(AtomicI64);

impl Breaker {
    fn open_for(&self, now_ms: i64, ms: i64) {
        self.0.store(now_ms + ms, Ordering::Relaxed);
    }
    fn is_open(&self, now_ms: i64) -> bool {
        self.0.load(Ordering::Relaxed) > now_ms
    }
}

fn on_failure(policy: FailurePolicy, stats: &LimiterStats) -> Verdict {
    match policy {
        FailurePolicy::Open => {
            stats.failed_open.fetch_add(1, Ordering::Relaxed);
            Verdict::Decided(Decision::Unlimited)
        }
        FailurePolicy::Closed => {
            stats.failed_closed.fetch_add(1, Ordering::Relaxed);
            Verdict::Unavailable
        }
    }
}

#[cfg(feature = "redis")]
mod redis_mode {
    use super::*;
    use clientele_core::limits::{
        BUDGET_KINDS, LimitKind, LimitPolicy, Periods, Tightest, quota_status, rate_status,
    };
    use redis::aio::ConnectionManager;

    /// GCRA cells and quota counters, checked and committed atomically.
    ///
    /// KEYS: the `n` rate cells, then the day and month quota counters, then the six budget
    /// counters (USD day, USD month, tokens day, tokens month, then the session's USD and
    /// tokens).
    /// ARGV: n, then (interval_us, capacity_us) per cell, then day limit, day ttl ms, month
    /// limit, month ttl ms (a limit of 0 = no such quota), then (limit, charge) per budget,
    /// then the session counters' idle ttl ms.
    /// Returns `{1, used_day, used_month, remaining_1..n, budget_used_1..6}` when allowed, or
    /// `{0, which, retry_after_us[, used]}` when refused, `which` = 1..n for a cell, n+1 the
    /// day quota, n+2 the month quota, n+2+j budget j. A budget admits while anything is
    /// left and then counts the whole charge, in the same script as the check, so concurrent
    /// requests cannot all pass one check before any is counted. A session's counters live
    /// until the session has been idle for the ttl (each use renews it). Time is Redis's own,
    /// so nodes' clocks need not agree.
    const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local b = 2 + 2 * n
local day_limit = tonumber(ARGV[b])
local day_ttl = tonumber(ARGV[b + 1])
local month_limit = tonumber(ARGV[b + 2])
local month_ttl = tonumber(ARGV[b + 3])
local day_used = 0
local month_used = 0
if day_limit > 0 then
  day_used = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
  if day_used >= day_limit then return {0, n + 1, day_ttl * 1000} end
end
if month_limit > 0 then
  month_used = tonumber(redis.call('GET', KEYS[n + 2]) or '0')
  if month_used >= month_limit then return {0, n + 2, month_ttl * 1000} end
end
local session_ttl = tonumber(ARGV[b + 16])
local function budget_ttl(j)
  if j > 4 then return session_ttl end
  if j % 2 == 0 then return month_ttl end
  return day_ttl
end
local budget_used = {}
for j = 1, 6 do
  local limit = tonumber(ARGV[b + 2 + 2 * j])
  budget_used[j] = 0
  if limit > 0 then
    budget_used[j] = tonumber(redis.call('GET', KEYS[n + 2 + j]) or '0')
    if budget_used[j] >= limit then
      return {0, n + 2 + j, budget_ttl(j) * 1000, budget_used[j]}
    end
  end
end
local tats = {}
local out = {1, 0, 0}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local next_tat = tat + interval
  if next_tat - now > cap then return {0, i, next_tat - now - cap} end
  tats[i] = next_tat
  out[3 + i] = math.floor((cap - (next_tat - now)) / interval)
end
for i = 1, n do
  -- '%.0f' keeps every digit: Lua's default number format would round the microseconds.
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1000)
end
if day_limit > 0 then
  day_used = redis.call('INCR', KEYS[n + 1])
  if day_used == 1 then redis.call('PEXPIRE', KEYS[n + 1], day_ttl + 3600000) end
end
if month_limit > 0 then
  month_used = redis.call('INCR', KEYS[n + 2])
  if month_used == 1 then redis.call('PEXPIRE', KEYS[n + 2], month_ttl + 3600000) end
end
for j = 1, 6 do
  local limit = tonumber(ARGV[b + 2 + 2 * j])
  if limit > 0 then
    budget_used[j] = redis.call('INCRBY', KEYS[n + 2 + j], tonumber(ARGV[b + 3 + 2 * j]))
    if j > 4 then
      redis.call('PEXPIRE', KEYS[n + 2 + j], session_ttl)
    elseif redis.call('PTTL', KEYS[n + 2 + j]) < 0 then
      redis.call('PEXPIRE', KEYS[n + 2 + j], budget_ttl(j) + 3600000)
    end
  end
  -- Every slot is set: a nil would end the reply there.
  out[3 + n + j] = budget_used[j]
end
out[2] = day_used
out[3] = month_used
return out
"#;

    /// Replaces reservations by the real use: KEYS the budget counters, ARGV the deltas. A
    /// counter that has expired (its period ended) is left alone, and none goes below 0.
    const SETTLE: &str = r#"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('INCRBY', KEYS[i], tonumber(ARGV[i]))
    if v < 0 then redis.call('INCRBY', KEYS[i], -v) end
  end
end
return 1
"#;

    /// A reservation in Redis: the counters it was made in and what was charged.
    pub(super) struct RedisHeld {
        conn: ConnectionManager,
        settle: Arc<redis::Script>,
        timeout: Duration,
        keys: Vec<(String, LimitKind)>,
        charge: BudgetCharge,
        slot: Arc<LimitSlot>,
        reserved: Reserved,
    }

    impl RedisHeld {
        /// Sends the difference in a task of its own: the response has ended, and nothing
        /// waits for Redis.
        pub(super) fn settle(self, actual: BudgetCharge) {
            // The local mirror of the cluster's counts follows too.
            self.slot.settle(&self.reserved, actual);
            let deltas: Vec<(String, i64)> = self
                .keys
                .into_iter()
                .map(|(k, kind)| {
                    (
                        k,
                        actual.amount_of(kind) as i64 - self.charge.amount_of(kind) as i64,
                    )
                })
                .filter(|(_, d)| *d != 0)
                .collect();
            if deltas.is_empty() {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let (mut conn, script, timeout) = (self.conn, self.settle, self.timeout);
            runtime.spawn(async move {
                let mut inv = script.prepare_invoke();
                for (k, d) in &deltas {
                    inv.key(k).arg(*d);
                }
                let sent =
                    tokio::time::timeout(timeout * 4, inv.invoke_async::<i64>(&mut conn)).await;
                if !matches!(sent, Ok(Ok(_))) {
                    static FAILED: std::sync::LazyLock<clientele_core::ratelog::Every> =
                        std::sync::LazyLock::new(|| {
                            clientele_core::ratelog::Every::new(Duration::from_secs(10))
                        });
                    clientele_core::warn_every!(
                        FAILED,
                        "could not settle a budget reservation in Redis; the estimate stays counted"
                    );
                }
            });
        }
    }

    pub(super) struct RedisLimiter {
        conn: ConnectionManager,
        script: redis::Script,
        settle: Arc<redis::Script>,
        timeout: Duration,
        policy: FailurePolicy,
        prefix: String,
        breaker: Breaker,
        /// Rate-limits the "Redis unreachable" warning to one line per pause.
        warned_at: AtomicI64,
    }

    impl RedisLimiter {
        pub(super) async fn connect(
            url: &str,
            config: &LimitsConfig,
        ) -> Result<RedisLimiter, String> {
            let client = redis::Client::open(url)
                .map_err(|e| format!("limits.redis_url: {url:?} is not a valid Redis URL: {e}"))?;
            let timeout = Duration::from_millis(config.redis_timeout_ms);
            let manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(1000)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let start = ConnectionManager::new_with_config(client, manager_config);
            let mut conn = tokio::time::timeout(Duration::from_secs(3), start)
                .await
                .map_err(|_| {
                    format!("limits.redis_url: no answer from {url} within 3 s; start Redis there or remove limits.redis_url")
                })?
                .map_err(|e| {
                    format!("limits.redis_url: cannot reach {url}: {e}; start Redis there or remove limits.redis_url")
                })?;
            let script = redis::Script::new(SCRIPT);
            // Loading now turns a Redis without scripting (or with EVAL denied by ACL) into
            // a start-up error instead of a stream of failures on traffic.
            tokio::time::timeout(
                Duration::from_secs(3),
                script.prepare_invoke().load_async(&mut conn),
            )
            .await
            .map_err(|_| {
                format!("limits.redis_url: {url} did not load the limiter script within 3 s")
            })?
            .map_err(|e| format!("limits.redis_url: {url} refused the limiter script: {e}"))?;
            Ok(RedisLimiter {
                conn,
                script,
                settle: Arc::new(redis::Script::new(SETTLE)),
                timeout,
                policy: config.on_redis_error,
                prefix: config.redis_key_prefix.clone(),
                breaker: Breaker::default(),
                warned_at: AtomicI64::new(0),
            })
        }

        #[allow(clippy::too_many_arguments)]
        pub(super) async fn check(
            &self,
            consumer: &str,
            session: Option<&str>,
            slot: &Arc<LimitSlot>,
            method: &str,
            route: &str,
            now_ms: i64,
            charge: BudgetCharge,
            stats: &LimiterStats,
        ) -> (Verdict, Option<Held>) {
            if self.breaker.is_open(now_ms) {
                return (on_failure(self.policy, stats), None);
            }
            let policy = &slot.policy;
            // The hash tag keeps one consumer's keys in one slot, so the script also works on
            // a Redis Cluster.
            let base = format!("{}:{{{consumer}}}", self.prefix);
            let mut cells: Vec<(String, f64, u32, LimitKind)> = Vec::with_capacity(2);
            if policy.has_rate() {
                cells.push((
                    format!("{base}:rate"),
                    policy.rate_per_second,
                    policy.burst,
                    LimitKind::Rate,
                ));
            }
            for (m, l) in &policy.routes {
                if m.matches(method, route) {
                    cells.push((
                        format!("{base}:route:{m}"),
                        l.rate_per_second,
                        l.burst,
                        LimitKind::Route,
                    ));
                }
            }
            let periods = Periods::at(now_ms);
            let mut inv = self.script.prepare_invoke();
            for (key, ..) in &cells {
                inv.key(key);
            }
            inv.key(format!("{base}:day:{}", Periods::day_label(now_ms)));
            inv.key(format!("{base}:month:{}", Periods::month_label(now_ms)));
            let budget_keys: [String; 4] = BUDGET_KINDS.map(|kind| {
                let label = if kind.is_monthly() {
                    Periods::month_label(now_ms)
                } else {
                    Periods::day_label(now_ms)
                };
                format!("{base}:{}:{label}", kind.as_str())
            });
            for key in &budget_keys {
                inv.key(key);
            }
            // A session's counters, named by the (consumer, session) key so a long header
            // value makes no long Redis key; passed (and never touched) without a session.
            let session_label = session.map_or_else(
                || "none".to_string(),
                |s| format!("{:016x}", session_key(consumer, s)),
            );
            let session_budgets = policy.session_budgets.kinds();
            let session_keys: [String; 2] = session_budgets
                .map(|(kind, _)| format!("{base}:session:{session_label}:{}", kind.as_str()));
            for key in &session_keys {
                inv.key(key);
            }
            inv.arg(cells.len());
            for (_, rate, burst, _) in &cells {
                let interval = LimitPolicy::interval_us(*rate);
                inv.arg(interval).arg(interval * u64::from(*burst));
            }
            inv.arg(policy.quota_per_day.unwrap_or(0))
                .arg(periods.day_left_ms)
                .arg(policy.quota_per_month.unwrap_or(0))
                .arg(periods.month_left_ms);
            for i in 0..BUDGET_KINDS.len() {
                inv.arg(policy.budgets.0[i].unwrap_or(0))
                    .arg(charge.amount(i));
            }
            for (kind, limit) in session_budgets {
                let limit = if session.is_some() {
                    limit.unwrap_or(0)
                } else {
                    0
                };
                inv.arg(limit).arg(charge.amount_of(kind));
            }
            inv.arg(SESSION_BUDGET_IDLE_MS);

            let mut conn = self.conn.clone();
            let answer: Result<Vec<i64>, String> =
                match tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn))
                    .await
                {
                    Ok(Ok(v)) if v.len() >= 3 => Ok(v),
                    Ok(Ok(v)) => Err(format!("unexpected limiter script answer {v:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
                };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    self.failed(now_ms, stats, &e);
                    return (on_failure(self.policy, stats), None);
                }
            };
            stats.redis_up.store(true, Ordering::Relaxed);

            let n = cells.len() as i64;
            if answer[0] == 0 {
                let which = answer[1];
                let retry_after_ms = (answer[2].max(0) as u64).div_ceil(1000);
                let status = if which <= n {
                    let (_, rate, burst, kind) = &cells[(which - 1) as usize];
                    rate_status(*kind, *rate, *burst, 0)
                } else if which == n + 1 {
                    let limit = policy.quota_per_day.unwrap_or(0);
                    quota_status(LimitKind::DailyQuota, limit, limit, periods.day_left_ms)
                } else if which == n + 2 {
                    let limit = policy.quota_per_month.unwrap_or(0);
                    quota_status(LimitKind::MonthlyQuota, limit, limit, periods.month_left_ms)
                } else {
                    let j = ((which - n - 3).max(0) as usize).min(BUDGET_KINDS.len() + 1);
                    let (kind, limit) = match BUDGET_KINDS.get(j) {
                        Some(kind) => (*kind, policy.budgets.0[j]),
                        None => session_budgets[j - BUDGET_KINDS.len()],
                    };
                    let used = answer.get(3).copied().unwrap_or(0).max(0) as u64;
                    let left = if kind.is_monthly() {
                        periods.month_left_ms
                    } else if kind.is_session() {
                        SESSION_BUDGET_IDLE_MS
                    } else {
                        periods.day_left_ms
                    };
                    quota_status(kind, limit.unwrap_or(0), used, left)
                };
                return (
                    Verdict::Decided(Decision::Refused {
                        status,
                        retry_after_ms,
                    }),
                    None,
                );
            }
            // Mirror the cluster's counts into the local slot, so usage figures on this node
            // show the cluster's usage.
            let (day_used, month_used) = (answer[1].max(0) as u64, answer[2].max(0) as u64);
            slot.day.restore(periods.day, day_used);
            slot.month.restore(periods.month, month_used);
            let mut tightest = Tightest::default();
            if let Some(limit) = policy.quota_per_day {
                tightest.keep(quota_status(
                    LimitKind::DailyQuota,
                    limit,
                    day_used,
                    periods.day_left_ms,
                ));
            }
            if let Some(limit) = policy.quota_per_month {
                tightest.keep(quota_status(
                    LimitKind::MonthlyQuota,
                    limit,
                    month_used,
                    periods.month_left_ms,
                ));
            }
            for (i, (_, rate, burst, kind)) in cells.iter().enumerate() {
                let remaining = answer.get(3 + i).copied().unwrap_or(0).max(0) as u64;
                tightest.keep(rate_status(*kind, *rate, *burst, remaining));
            }
            let mut keys = Vec::new();
            for (j, kind) in BUDGET_KINDS.into_iter().enumerate() {
                let Some(limit) = policy.budgets.0[j] else {
                    continue;
                };
                let used = answer.get(3 + cells.len() + j).copied().unwrap_or(0).max(0) as u64;
                let (period, left) = if kind.is_monthly() {
                    (periods.month, periods.month_left_ms)
                } else {
                    (periods.day, periods.day_left_ms)
                };
                slot.budget[j].restore(period, used);
                tightest.keep(quota_status(kind, limit, used, left));
                keys.push((budget_keys[j].clone(), kind));
            }
            if session.is_some() {
                for (i, (kind, limit)) in session_budgets.into_iter().enumerate() {
                    if let Some(limit) = limit {
                        // The script answers the session counters after the consumer's.
                        let at = 3 + cells.len() + BUDGET_KINDS.len() + i;
                        let used = answer.get(at).copied().unwrap_or(0).max(0) as u64;
                        tightest.keep(quota_status(kind, limit, used, SESSION_BUDGET_IDLE_MS));
                        keys.push((session_keys[i].clone(), kind));
                    }
                }
            }
            let held = (!keys.is_empty()).then(|| {
                Held::Redis(RedisHeld {
                    conn: self.conn.clone(),
                    settle: self.settle.clone(),
                    timeout: self.timeout,
                    keys,
                    charge,
                    slot: slot.clone(),
                    reserved: Reserved {
                        day: periods.day,
                        month: periods.month,
                        charge,
                    },
                })
            });
            (Verdict::Decided(tightest.allowed()), held)
        }

        fn failed(&self, now_ms: i64, stats: &LimiterStats, error: &str) {
            stats.redis_errors.fetch_add(1, Ordering::Relaxed);
            stats.redis_up.store(false, Ordering::Relaxed);
            // Pause asking Redis for a second: requests meanwhile are decided at once by the
            // failure policy instead of each waiting for its own timeout.
            self.breaker.open_for(now_ms, 1000);
            let last = self.warned_at.load(Ordering::Relaxed);
            if now_ms - last >= 10_000 {
                self.warned_at.store(now_ms, Ordering::Relaxed);
                let policy = match self.policy {
                    FailurePolicy::Open => "allowing requests (on_redis_error = \"open\")",
                    FailurePolicy::Closed => "refusing requests (on_redis_error = \"closed\")",
                };
                tracing::warn!(error = %error, "the shared rate limiter (Redis) failed; {policy} until it answers again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_and_closes_with_time() {
        let b = Breaker::default();
        assert!(!b.is_open(0));
        b.open_for(100, 1000);
        assert!(b.is_open(500));
        assert!(!b.is_open(1100));
    }

    #[test]
    fn failure_policies() {
        let stats = LimiterStats::default();
        assert_eq!(
            on_failure(FailurePolicy::Open, &stats),
            Verdict::Decided(Decision::Unlimited)
        );
        assert_eq!(
            on_failure(FailurePolicy::Closed, &stats),
            Verdict::Unavailable
        );
        assert_eq!(stats.failed_open.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failed_closed.load(Ordering::Relaxed), 1);
    }
}

//! Rate limits and quotas: the policy a consumer is held to, and its state on this node.
//!
//! A consumer's policy is its plan's (from the config) with its own overrides (from the admin
//! API) on top. The state is one [`LimitSlot`] per consumer, shared by all its keys and hung off
//! the gateway's key index, so checking a request costs no map lookup beyond the key lookup the
//! gateway does anyway, and no lock: the rate is a GCRA cell (one atomic word, via `governor`)
//! and each quota is one atomic word holding the period and the count together.
//!
//! In cluster mode (`[limits] redis_url`) the same policy is enforced by a script in Redis
//! instead; the local state then only serves the usage figures.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::config::PlanConfig;

/// A rate limit on one route, for every consumer of a plan or for one consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub rate_per_second: f64,
    pub burst: u32,
}

/// What an operator sets on one consumer through the admin API. Every field that is set
/// replaces the plan's; `routes` entries are added to (or replace) the plan's route limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_per_month: Option<u64>,
    /// Spending budgets for AI traffic (see [`Budgets`]); each replaces the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_per_day: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_per_month: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    /// Budgets of each of the consumer's sessions (see [`SessionBudgets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_per_session: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_session: Option<u64>,
    /// Keyed like the plan's: `"GET /search"` or `"/search"` (every method).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteLimit>,
}

impl LimitOverride {
    pub fn is_empty(&self) -> bool {
        self == &LimitOverride::default()
    }

    /// Checks the values, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.rate_per_second {
            check_rate("rate_per_second", r)?;
        }
        if self.burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        if self.quota_per_day == Some(0) || self.quota_per_month == Some(0) {
            return Err("a quota must be at least 1; leave it out to keep the plan's".into());
        }
        check_budgets(
            [self.budget_usd_per_day, self.budget_usd_per_month],
            [self.tokens_per_day, self.tokens_per_month],
        )?;
        check_session_budgets(self.budget_usd_per_session, self.tokens_per_session)?;
        for (key, limit) in &self.routes {
            RouteMatch::parse(key).map_err(|e| format!("routes.{key:?}: {e}"))?;
            check_route_limit(limit).map_err(|e| format!("routes.{key:?}.{e}"))?;
        }
        Ok(())
    }
}

/// Checks a rate; the error starts with `field`.
pub fn check_rate(field: &str, r: f64) -> Result<(), String> {
    // Below one request in ten days the GCRA period no longer fits governor's nanosecond
    // arithmetic comfortably, and nobody means it.
    if !(r.is_finite() && r > 0.0) {
        return Err(format!("{field} must be greater than 0 (got {r})"));
    }
    if !(1.0 / 864_000.0..=1e9).contains(&r) {
        return Err(format!(
            "{field} must be between 0.0000012 (one a fortnight) and 1e9 (got {r})"
        ));
    }
    Ok(())
}

/// Checks budget values (USD per day and month, tokens per day and month); the error starts
/// with the field name.
pub fn check_budgets(usd: [Option<f64>; 2], tokens: [Option<u64>; 2]) -> Result<(), String> {
    for (field, v) in [
        ("budget_usd_per_day", usd[0]),
        ("budget_usd_per_month", usd[1]),
    ] {
        if let Some(v) = v {
            // A micro-dollar is the unit counted; a budget must hold at least one, and fit the
            // 40-bit counter (about $1.1 million a period).
            if !(v.is_finite() && (0.000_001..=1_000_000.0).contains(&v)) {
                return Err(format!(
                    "{field} must be between 0.000001 and 1000000 US dollars (got {v})"
                ));
            }
        }
    }
    for (field, v) in [
        ("tokens_per_day", tokens[0]),
        ("tokens_per_month", tokens[1]),
    ] {
        if let Some(v) = v {
            if v == 0 || v > COUNT_MASK {
                return Err(format!(
                    "{field} must be between 1 and {COUNT_MASK} (got {v}); leave it out for no token budget"
                ));
            }
        }
    }
    Ok(())
}

/// Checks the per-session budgets like the others; the error starts with the field name.
pub fn check_session_budgets(usd: Option<f64>, tokens: Option<u64>) -> Result<(), String> {
    if let Some(v) = usd
        && !(v.is_finite() && (0.000_001..=1_000_000.0).contains(&v))
    {
        return Err(format!(
            "budget_usd_per_session must be between 0.000001 and 1000000 US dollars (got {v})"
        ));
    }
    if let Some(v) = tokens
        && (v == 0 || v > COUNT_MASK)
    {
        return Err(format!(
            "tokens_per_session must be between 1 and {COUNT_MASK} (got {v}); leave it out for no session budget"
        ));
    }
    Ok(())
}

/// Checks a route limit; the error starts with the field name.
pub fn check_route_limit(limit: &RouteLimit) -> Result<(), String> {
    check_rate("rate_per_second", limit.rate_per_second)?;
    if limit.burst == 0 {
        return Err("burst must be at least 1".into());
    }
    Ok(())
}

/// Which requests a route limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteMatch {
    /// `None` = every method.
    pub method: Option<String>,
    /// A route template as the gateway reports it (`/pet/{id}`).
    pub route: String,
}

impl RouteMatch {
    /// Parses `"GET /search"` or `"/search"`.
    pub fn parse(key: &str) -> Result<RouteMatch, String> {
        let key = key.trim();
        let (method, route) = match key.split_once(' ') {
            Some((m, r)) => (Some(m.trim().to_ascii_uppercase()), r.trim()),
            None => (None, key),
        };
        if let Some(m) = &method {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!(
                    "{m:?} is not an HTTP method; write \"GET /path\" or \"/path\""
                ));
            }
        }
        if !route.starts_with('/') {
            return Err(format!(
                "{route:?} must be a route template starting with '/', like \"GET /search\""
            ));
        }
        Ok(RouteMatch {
            method,
            route: route.to_string(),
        })
    }

    pub fn matches(&self, method: &str, route: &str) -> bool {
        self.route == route && self.method.as_deref().is_none_or(|m| m == method)
    }
}

impl std::fmt::Display for RouteMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.route),
            None => f.write_str(&self.route),
        }
    }
}

/// The limits one consumer is held to, resolved from its plan and overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitPolicy {
    pub rate_per_second: f64,
    pub burst: u32,
    pub quota_per_day: Option<u64>,
    pub quota_per_month: Option<u64>,
    pub routes: Vec<(RouteMatch, RouteLimit)>,
    pub budgets: Budgets,
    pub session_budgets: SessionBudgets,
}

/// Budgets of one session of a consumer, resolved: what the session may spend for as long as
/// it lasts (the client's session header names it; a request without one has no session
/// budget). USD in micro-dollars. The gateway counts each (consumer, session) apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionBudgets {
    pub usd_micros: Option<u64>,
    pub tokens: Option<u64>,
}

impl SessionBudgets {
    pub fn any(&self) -> bool {
        self.usd_micros.is_some() || self.tokens.is_some()
    }

    /// The limits with their kinds, in the order the Redis script takes them.
    pub fn kinds(&self) -> [(LimitKind, Option<u64>); 2] {
        [
            (LimitKind::BudgetUsdSession, self.usd_micros),
            (LimitKind::TokensSession, self.tokens),
        ]
    }
}

/// How long a session's budget use is remembered after its last request: a session that
/// comes back later starts again (the session header is the client's, and a budget per
/// session is a brake on a runaway session, not a cap on the consumer; the day and month
/// budgets are that).
pub const SESSION_BUDGET_IDLE_MS: i64 = 24 * 3_600_000;

/// Spending budgets of AI traffic, resolved: `[usd_day, usd_month, tokens_day, tokens_month]`,
/// USD in micro-dollars (integers, so they are counted with the same atomics as quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets(pub [Option<u64>; 4]);

/// The kinds of [`Budgets`], in their order.
pub const BUDGET_KINDS: [LimitKind; 4] = [
    LimitKind::BudgetUsdDay,
    LimitKind::BudgetUsdMonth,
    LimitKind::TokensDay,
    LimitKind::TokensMonth,
];

impl Budgets {
    pub fn any(&self) -> bool {
        self.0.iter().any(Option::is_some)
    }

    /// Whether a monthly budget is set (the month then needs a calendar).
    pub fn monthly(&self) -> bool {
        self.0[1].is_some() || self.0[3].is_some()
    }

    /// US dollars as counted micro-dollars (rounded up, so a budget never grows).
    pub fn micro_usd(usd: f64) -> u64 {
        (usd * 1e6).ceil().clamp(0.0, COUNT_MASK as f64) as u64
    }
}

/// What one request is charged against the budgets: reserved before forwarding (an
/// estimate), then settled to what the provider reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetCharge {
    pub tokens: u64,
    pub micro_usd: u64,
}

impl BudgetCharge {
    /// The amount counted by budget `i` (of [`BUDGET_KINDS`]).
    pub fn amount(&self, i: usize) -> u64 {
        if i < 2 { self.micro_usd } else { self.tokens }
    }

    /// The amount counted by a budget of `kind`.
    pub fn amount_of(&self, kind: LimitKind) -> u64 {
        if kind.is_usd() {
            self.micro_usd
        } else {
            self.tokens
        }
    }
}

/// A reservation made by [`LimitSlot::check_with`]: the periods it was counted in and what
/// was counted, so [`LimitSlot::settle`] can replace the estimate by the real use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub day: u32,
    pub month: u32,
    pub charge: BudgetCharge,
}

impl LimitPolicy {
    /// The policy for a consumer on `plan` with `overrides`; `None` means unlimited (no plan
    /// that the config defines, and nothing set on the consumer).
    pub fn resolve(
        plan: Option<&PlanConfig>,
        overrides: Option<&LimitOverride>,
    ) -> Option<LimitPolicy> {
        let o = overrides.filter(|o| !o.is_empty());
        let (rate, burst) = match (plan, o) {
            (Some(p), _) => (
                o.and_then(|o| o.rate_per_second)
                    .unwrap_or(p.rate_per_second),
                o.and_then(|o| o.burst).unwrap_or(p.burst),
            ),
            (None, Some(o)) => match o.rate_per_second {
                // An override with a rate but no burst allows a one-second burst.
                Some(r) => (r, o.burst.unwrap_or_else(|| r.ceil().max(1.0) as u32)),
                // Quotas or route limits only: no consumer-wide rate.
                None => (f64::INFINITY, u32::MAX),
            },
            (None, None) => return None,
        };
        let mut routes: BTreeMap<RouteMatch, RouteLimit> = BTreeMap::new();
        let plan_routes = plan.map(|p| &p.routes).into_iter().flatten();
        let own_routes = o.map(|o| &o.routes).into_iter().flatten();
        for (key, limit) in plan_routes.chain(own_routes) {
            // Validated at load time; a key that somehow fails to parse is skipped, not fatal.
            if let Ok(m) = RouteMatch::parse(key) {
                routes.insert(m, limit.clone());
            }
        }
        Some(LimitPolicy {
            rate_per_second: rate,
            burst,
            quota_per_day: o
                .and_then(|o| o.quota_per_day)
                .or(plan.and_then(|p| p.quota_per_day)),
            quota_per_month: o
                .and_then(|o| o.quota_per_month)
                .or(plan.and_then(|p| p.quota_per_month)),
            routes: routes.into_iter().collect(),
            budgets: {
                let usd =
                    |own: Option<f64>, plan: Option<f64>| own.or(plan).map(Budgets::micro_usd);
                Budgets([
                    usd(
                        o.and_then(|o| o.budget_usd_per_day),
                        plan.and_then(|p| p.budget_usd_per_day),
                    ),
                    usd(
                        o.and_then(|o| o.budget_usd_per_month),
                        plan.and_then(|p| p.budget_usd_per_month),
                    ),
                    o.and_then(|o| o.tokens_per_day)
                        .or(plan.and_then(|p| p.tokens_per_day)),
                    o.and_then(|o| o.tokens_per_month)
                        .or(plan.and_then(|p| p.tokens_per_month)),
                ])
            },
            session_budgets: SessionBudgets {
                usd_micros: o
                    .and_then(|o| o.budget_usd_per_session)
                    .or(plan.and_then(|p| p.budget_usd_per_session))
                    .map(Budgets::micro_usd),
                tokens: o
                    .and_then(|o| o.tokens_per_session)
                    .or(plan.and_then(|p| p.tokens_per_session)),
            },
        })
    }

    /// The policy of a consumer as the control plane stores it, under the config's plans.
    pub fn for_consumer(
        consumer: &crate::consumer::Consumer,
        plans: &BTreeMap<String, PlanConfig>,
    ) -> Option<LimitPolicy> {
        LimitPolicy::resolve(
            consumer.plan.as_deref().and_then(|p| plans.get(p)),
            consumer.limits.as_ref(),
        )
    }

    pub fn has_rate(&self) -> bool {
        self.rate_per_second.is_finite()
    }

    /// The GCRA emission interval, in microseconds (what the Redis script takes).
    pub fn interval_us(rate: f64) -> u64 {
        ((1_000_000.0 / rate).round() as u64).max(1)
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

fn gcra(rate: f64, burst: u32) -> Option<Gcra> {
    let period = Duration::from_nanos(((1e9 / rate).round() as u64).max(1));
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
    Some(RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>())
}

/// Counters an operator reads in `GET /v1/status` (and `/metrics`).
#[derive(Debug, Default)]
pub struct LimiterStats {
    pub allowed: AtomicU64,
    pub refused: AtomicU64,
    /// Calls to Redis that failed or timed out.
    pub redis_errors: AtomicU64,
    /// Requests decided by the failure policy because Redis could not be asked.
    pub failed_open: AtomicU64,
    pub failed_closed: AtomicU64,
    /// Whether the last call to Redis succeeded (true when there is no Redis).
    pub redis_up: AtomicBool,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rate,
    Route,
    DailyQuota,
    MonthlyQuota,
    /// Budgets of AI traffic: US dollars (counted in micro-dollars) and tokens.
    BudgetUsdDay,
    BudgetUsdMonth,
    TokensDay,
    TokensMonth,
    /// Budgets of one session ([`SessionBudgets`]).
    BudgetUsdSession,
    TokensSession,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Rate => "rate",
            LimitKind::Route => "route",
            LimitKind::DailyQuota => "day",
            LimitKind::MonthlyQuota => "month",
            LimitKind::BudgetUsdDay => "budget_usd_day",
            LimitKind::BudgetUsdMonth => "budget_usd_month",
            LimitKind::TokensDay => "tokens_day",
            LimitKind::TokensMonth => "tokens_month",
            LimitKind::BudgetUsdSession => "budget_usd_session",
            LimitKind::TokensSession => "tokens_session",
        }
    }

    pub fn is_budget(self) -> bool {
        BUDGET_KINDS.contains(&self) || self.is_session()
    }

    /// Whether the limit is a session's budget (its period is the session).
    pub fn is_session(self) -> bool {
        matches!(self, LimitKind::BudgetUsdSession | LimitKind::TokensSession)
    }

    /// The config key that sets the budget of this kind.
    pub fn budget_key(self) -> Option<&'static str> {
        Some(match self {
            LimitKind::BudgetUsdDay => "budget_usd_per_day",
            LimitKind::BudgetUsdMonth => "budget_usd_per_month",
            LimitKind::TokensDay => "tokens_per_day",
            LimitKind::TokensMonth => "tokens_per_month",
            LimitKind::BudgetUsdSession => "budget_usd_per_session",
            LimitKind::TokensSession => "tokens_per_session",
            _ => return None,
        })
    }

    /// Whether the limit counts US dollars (as micro-dollars).
    pub fn is_usd(self) -> bool {
        matches!(
            self,
            LimitKind::BudgetUsdDay | LimitKind::BudgetUsdMonth | LimitKind::BudgetUsdSession
        )
    }

    /// Whether the limit's period is the calendar month.
    pub fn is_monthly(self) -> bool {
        matches!(
            self,
            LimitKind::MonthlyQuota | LimitKind::BudgetUsdMonth | LimitKind::TokensMonth
        )
    }

    /// The unit of the RateLimit fields' counts (`qu` in RateLimit-Policy).
    pub fn unit(self) -> &'static str {
        match self {
            LimitKind::BudgetUsdDay | LimitKind::BudgetUsdMonth | LimitKind::BudgetUsdSession => {
                "usd-micros"
            }
            LimitKind::TokensDay | LimitKind::TokensMonth | LimitKind::TokensSession => "tokens",
            _ => "requests",
        }
    }
}

/// What the gateway tells the client about one limit (the IETF RateLimit fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitStatus {
    pub kind: LimitKind,
    /// The quota units of the policy: the burst for a rate, the count for a quota.
    pub limit: u64,
    /// The window the policy is expressed over, in seconds.
    pub window_secs: u64,
    pub remaining: u64,
    /// Seconds until `remaining` is back to `limit` (rate) or the period ends (quota).
    pub reset_secs: u64,
}

/// A decision on one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No limits apply.
    Unlimited,
    /// Allowed; `status` is the most constraining limit, for the response headers.
    Allowed { status: LimitStatus },
    /// Refused by `status.kind`; try again after `retry_after_ms`.
    Refused {
        status: LimitStatus,
        retry_after_ms: u64,
    },
}

/// The most constraining of the limits an allowed request was counted against (the lowest
/// share remaining): what the RateLimit headers report.
#[derive(Debug, Default)]
pub struct Tightest(Option<LimitStatus>);

impl Tightest {
    pub fn keep(&mut self, s: LimitStatus) {
        let ratio = |s: &LimitStatus| s.remaining as f64 / s.limit.max(1) as f64;
        if self.0.as_ref().is_none_or(|t| ratio(&s) < ratio(t)) {
            self.0 = Some(s);
        }
    }

    /// The most constraining status kept, if any.
    pub fn status(&self) -> Option<LimitStatus> {
        self.0
    }

    /// The decision for an allowed request.
    pub fn allowed(self) -> Decision {
        match self.0 {
            Some(status) => Decision::Allowed { status },
            None => Decision::Unlimited,
        }
    }
}

/// One GCRA cell's answer: the status to report, or a refusal with the wait.
fn check_cell(
    cell: &Gcra,
    kind: LimitKind,
    rate: f64,
    burst: u32,
) -> Result<LimitStatus, Decision> {
    match cell.check() {
        Ok(snap) => Ok(rate_status(
            kind,
            rate,
            burst,
            u64::from(snap.remaining_burst_capacity()),
        )),
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Err(refused(
                rate_status(kind, rate, burst, 0),
                wait.as_millis() as u64,
            ))
        }
    }
}

/// A quota's usage in one period, packed in one word so it can be checked and counted without
/// a lock: the period number in the high 24 bits, the count in the low 40.
#[derive(Debug, Default)]
pub struct QuotaCounter(AtomicU64);

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl QuotaCounter {
    fn unpack(v: u64) -> (u32, u64) {
        ((v >> COUNT_BITS) as u32, v & COUNT_MASK)
    }

    fn pack(period: u32, count: u64) -> u64 {
        (u64::from(period) << COUNT_BITS) | count.min(COUNT_MASK)
    }

    /// Counts one request in `period` if fewer than `limit` were counted; returns the count
    /// after, or `None` when the quota is used up. Exact under any concurrency.
    pub fn try_take(&self, period: u32, limit: u64) -> Option<u64> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (p, n) = Self::unpack(cur);
            let used = if p == period { n } else { 0 };
            if used >= limit {
                return None;
            }
            let next = Self::pack(period, used + 1);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(used + 1),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Counts `n` units in `period` if fewer than `limit` are counted so far (a budget admits
    /// while anything is left, so concurrent requests overshoot by at most one charge);
    /// returns the count after, or `None` when the budget is spent. Exact under any
    /// concurrency: the check and the count are one compare-and-swap.
    pub fn try_reserve(&self, period: u32, limit: u64, n: u64) -> Option<u64> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (p, used) = Self::unpack(cur);
            let used = if p == period { used } else { 0 };
            if used >= limit {
                return None;
            }
            let after = used.saturating_add(n).min(COUNT_MASK);
            match self.0.compare_exchange_weak(
                cur,
                Self::pack(period, after),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(after),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Adds `delta` (which may be negative) to the count of `period`, if that is still the
    /// counter's period; the count stays within 0 and the counter's range.
    pub fn adjust(&self, period: u32, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (p, n) = Self::unpack(cur);
            if p != period {
                return;
            }
            let next = (n as i64).saturating_add(delta).clamp(0, COUNT_MASK as i64) as u64;
            match self.0.compare_exchange_weak(
                cur,
                Self::pack(p, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back one request taken in `period` (another limit refused the request).
    pub fn give_back(&self, period: u32) {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (p, n) = Self::unpack(cur);
            if p != period || n == 0 {
                return;
            }
            match self.0.compare_exchange_weak(
                cur,
                Self::pack(p, n - 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The count in `period`.
    pub fn used(&self, period: u32) -> u64 {
        let (p, n) = Self::unpack(self.0.load(Ordering::Acquire));
        if p == period { n } else { 0 }
    }

    /// Raises the count in `period` to at least `count` (restoring persisted usage).
    pub fn restore(&self, period: u32, count: u64) {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (p, n) = Self::unpack(cur);
            let base = if p == period { n } else { 0 };
            if p == period && base >= count {
                return;
            }
            match self.0.compare_exchange_weak(
                cur,
                Self::pack(period, count.max(base)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The raw word, to carry usage over to a new slot.
    fn load_raw(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Quota periods are UTC calendar days and months, numbered from the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day: u32,
    pub month: u32,
    /// Milliseconds until the day and the month end.
    pub day_left_ms: i64,
    pub month_left_ms: i64,
}

impl Periods {
    pub fn at(now_ms: i64) -> Periods {
        let day = now_ms.div_euclid(86_400_000);
        let day_left_ms = (day + 1) * 86_400_000 - now_ms;
        let dt = Utc
            .timestamp_millis_opt(now_ms)
            .single()
            .unwrap_or_else(Utc::now);
        let month = (dt.year() - 1970) * 12 + dt.month0() as i32;
        let next_month_ms =
            Periods::month_bounds(now_ms).map_or(now_ms + day_left_ms, |(_, end)| end);
        Periods {
            day: day.max(0) as u32,
            month: month.max(0) as u32,
            day_left_ms,
            month_left_ms: next_month_ms - now_ms,
        }
    }

    /// The UTC calendar month holding `now_ms`, as `[start_ms, end_ms)`; `None` only for
    /// times chrono cannot represent.
    pub fn month_bounds(now_ms: i64) -> Option<(i64, i64)> {
        let dt = Utc.timestamp_millis_opt(now_ms).single()?;
        let start = Utc
            .with_ymd_and_hms(dt.year(), dt.month(), 1, 0, 0, 0)
            .single()?;
        let (ny, nm) = if dt.month() == 12 {
            (dt.year() + 1, 1)
        } else {
            (dt.year(), dt.month() + 1)
        };
        let end = Utc.with_ymd_and_hms(ny, nm, 1, 0, 0, 0).single()?;
        Some((start.timestamp_millis(), end.timestamp_millis()))
    }

    /// The day alone (month fields zero): integer arithmetic, no calendar.
    pub fn day_only(now_ms: i64) -> Periods {
        let day = now_ms.div_euclid(86_400_000);
        Periods {
            day: day.max(0) as u32,
            month: 0,
            day_left_ms: (day + 1) * 86_400_000 - now_ms,
            month_left_ms: 0,
        }
    }

    /// `20261124` / `202611`: how periods are named in storage and in Redis keys.
    pub fn day_label(now_ms: i64) -> String {
        Utc.timestamp_millis_opt(now_ms)
            .single()
            .map_or_else(String::new, |t| t.format("%Y%m%d").to_string())
    }

    pub fn month_label(now_ms: i64) -> String {
        Utc.timestamp_millis_opt(now_ms)
            .single()
            .map_or_else(String::new, |t| t.format("%Y%m").to_string())
    }
}

/// One consumer's limits and their state on this node.
pub struct LimitSlot {
    pub policy: LimitPolicy,
    rate: Option<Gcra>,
    routes: Vec<Option<Gcra>>,
    pub day: QuotaCounter,
    pub month: QuotaCounter,
    /// The budgets' use, in the order of [`BUDGET_KINDS`] (micro-dollars, then tokens).
    pub budget: [QuotaCounter; 4],
    /// Set when a quota count changed since the persister last looked; the flag shares the
    /// cache line the count just dirtied, so setting it is nearly free.
    dirty: AtomicBool,
    /// The plan-policy rule (a [`crate::policy::PolicyRule`] code, 0 = none) that blocks this
    /// consumer, set by the governance evaluation. The gateway only loads it: judging happens
    /// off the hot path.
    policy_block: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for LimitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitSlot")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl LimitSlot {
    pub fn new(policy: LimitPolicy) -> LimitSlot {
        let rate = if policy.has_rate() {
            gcra(policy.rate_per_second, policy.burst)
        } else {
            None
        };
        let routes = policy
            .routes
            .iter()
            .map(|(_, l)| gcra(l.rate_per_second, l.burst))
            .collect();
        LimitSlot {
            policy,
            rate,
            routes,
            day: QuotaCounter::default(),
            month: QuotaCounter::default(),
            budget: Default::default(),
            dirty: AtomicBool::new(false),
            policy_block: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// A slot for a changed policy that keeps this one's quota usage (rate state starts over:
    /// a new rate means a new bucket).
    pub fn successor(&self, policy: LimitPolicy) -> LimitSlot {
        let next = LimitSlot::new(policy);
        next.day.0.store(self.day.load_raw(), Ordering::Release);
        next.month.0.store(self.month.load_raw(), Ordering::Release);
        for (to, from) in next.budget.iter().zip(&self.budget) {
            to.0.store(from.load_raw(), Ordering::Release);
        }
        // A changed rate is no reason to lift a block; the next evaluation decides.
        next.policy_block
            .store(self.policy_block.load(Ordering::Relaxed), Ordering::Relaxed);
        next
    }

    /// The plan-policy rule currently blocking this consumer, if any.
    pub fn policy_block(&self) -> Option<crate::policy::PolicyRule> {
        crate::policy::PolicyRule::from_code(self.policy_block.load(Ordering::Relaxed))
    }

    /// Sets (or with `None` lifts) the block; called by the governance evaluation.
    pub fn set_policy_block(&self, rule: Option<crate::policy::PolicyRule>) {
        self.policy_block
            .store(rule.map_or(0, |r| r.code()), Ordering::Relaxed);
    }

    /// Whether a quota count changed since the last call (and clears the flag).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// Decides on one request and, when it is allowed, counts it against every limit.
    pub fn check(&self, method: &str, route: &str, now_ms: i64) -> Decision {
        self.check_with(method, route, now_ms, BudgetCharge::default())
            .0
    }

    /// [`LimitSlot::check`], also reserving `charge` against the budgets. When the request is
    /// allowed and a budget is set, the reservation is returned for [`LimitSlot::settle`].
    pub fn check_with(
        &self,
        method: &str,
        route: &str,
        now_ms: i64,
        charge: BudgetCharge,
    ) -> (Decision, Option<Reserved>) {
        // The month needs a calendar; only pay for it when a monthly limit exists.
        let periods = if self.policy.quota_per_month.is_some() || self.policy.budgets.monthly() {
            Periods::at(now_ms)
        } else {
            Periods::day_only(now_ms)
        };
        let mut tightest = Tightest::default();
        let budgets = self.policy.budgets;
        let reserved = budgets.any().then_some(Reserved {
            day: periods.day,
            month: periods.month,
            charge,
        });
        let give_back_budgets = |upto: usize| {
            for (i, kind) in BUDGET_KINDS.into_iter().enumerate().take(upto) {
                if budgets.0[i].is_some() {
                    let period = if kind.is_monthly() {
                        periods.month
                    } else {
                        periods.day
                    };
                    self.budget[i].adjust(period, -(charge.amount(i) as i64));
                }
            }
        };
        // Budgets first, like quotas: a reservation can be given back exactly.
        for (i, kind) in BUDGET_KINDS.into_iter().enumerate() {
            let Some(limit) = budgets.0[i] else { continue };
            let (period, left_ms) = if kind.is_monthly() {
                (periods.month, periods.month_left_ms)
            } else {
                (periods.day, periods.day_left_ms)
            };
            match self.budget[i].try_reserve(period, limit, charge.amount(i)) {
                Some(used) => tightest.keep(quota_status(kind, limit, used, left_ms)),
                None => {
                    give_back_budgets(i);
                    let used = self.budget[i].used(period);
                    return (
                        refused(quota_status(kind, limit, used, left_ms), left_ms as u64),
                        None,
                    );
                }
            }
        }
        let decision = self.check_counts(method, route, &periods, tightest);
        if matches!(decision, Decision::Refused { .. }) {
            give_back_budgets(BUDGET_KINDS.len());
            return (decision, None);
        }
        (decision, reserved)
    }

    /// Replaces a reservation's estimate by what the request really used. Use that went past
    /// the estimate is counted too (the budget may then be overshot by that much); a period
    /// that has ended since the reservation is left alone.
    pub fn settle(&self, reserved: &Reserved, actual: BudgetCharge) {
        for (i, kind) in BUDGET_KINDS.into_iter().enumerate() {
            if self.policy.budgets.0[i].is_none() {
                continue;
            }
            let period = if kind.is_monthly() {
                reserved.month
            } else {
                reserved.day
            };
            let delta = actual.amount(i) as i64 - reserved.charge.amount(i) as i64;
            self.budget[i].adjust(period, delta);
        }
    }

    /// The quotas and rates of [`LimitSlot::check_with`], after the budgets.
    fn check_counts(
        &self,
        method: &str,
        route: &str,
        periods: &Periods,
        mut tightest: Tightest,
    ) -> Decision {
        // Quotas first: they can be given back exactly if a rate then refuses.
        let mut took_day = false;
        if let Some(limit) = self.policy.quota_per_day {
            match self.day.try_take(periods.day, limit) {
                Some(used) => {
                    took_day = true;
                    self.dirty.store(true, Ordering::Relaxed);
                    tightest.keep(quota_status(
                        LimitKind::DailyQuota,
                        limit,
                        used,
                        periods.day_left_ms,
                    ));
                }
                None => {
                    let status =
                        quota_status(LimitKind::DailyQuota, limit, limit, periods.day_left_ms);
                    return refused(status, periods.day_left_ms as u64);
                }
            }
        }
        let mut took_month = false;
        if let Some(limit) = self.policy.quota_per_month {
            match self.month.try_take(periods.month, limit) {
                Some(used) => {
                    took_month = true;
                    self.dirty.store(true, Ordering::Relaxed);
                    tightest.keep(quota_status(
                        LimitKind::MonthlyQuota,
                        limit,
                        used,
                        periods.month_left_ms,
                    ));
                }
                None => {
                    if took_day {
                        self.day.give_back(periods.day);
                    }
                    let status =
                        quota_status(LimitKind::MonthlyQuota, limit, limit, periods.month_left_ms);
                    return refused(status, periods.month_left_ms as u64);
                }
            }
        }
        let give_back = || {
            if took_day {
                self.day.give_back(periods.day);
            }
            if took_month {
                self.month.give_back(periods.month);
            }
        };

        for (i, limiter) in self.routes.iter().enumerate() {
            let (m, l) = &self.policy.routes[i];
            let Some(limiter) = limiter else { continue };
            if !m.matches(method, route) {
                continue;
            }
            match check_cell(limiter, LimitKind::Route, l.rate_per_second, l.burst) {
                Ok(status) => tightest.keep(status),
                Err(refusal) => {
                    give_back();
                    return refusal;
                }
            }
        }
        if let Some(limiter) = &self.rate {
            let p = &self.policy;
            match check_cell(limiter, LimitKind::Rate, p.rate_per_second, p.burst) {
                Ok(status) => tightest.keep(status),
                Err(refusal) => {
                    give_back();
                    return refusal;
                }
            }
        }
        tightest.allowed()
    }
}

fn refused(status: LimitStatus, retry_after_ms: u64) -> Decision {
    Decision::Refused {
        status,
        retry_after_ms,
    }
}

/// The RateLimit fields for a GCRA bucket: the policy is `burst` requests per the time it
/// takes to refill them.
pub fn rate_status(kind: LimitKind, rate: f64, burst: u32, remaining: u64) -> LimitStatus {
    let refill = |n: u64| ((n as f64) / rate).ceil().max(1.0) as u64;
    LimitStatus {
        kind,
        limit: u64::from(burst),
        window_secs: refill(u64::from(burst)),
        remaining,
        reset_secs: if remaining >= u64::from(burst) {
            0
        } else {
            refill(u64::from(burst) - remaining)
        },
    }
}

pub fn quota_status(kind: LimitKind, limit: u64, used: u64, left_ms: i64) -> LimitStatus {
    let window_secs = if kind.is_monthly() {
        30 * 86_400
    } else if kind.is_session() {
        (SESSION_BUDGET_IDLE_MS / 1000) as u64
    } else {
        86_400
    };
    LimitStatus {
        kind,
        limit,
        window_secs,
        remaining: limit.saturating_sub(used),
        reset_secs: (left_ms.max(0) as u64).div_ceil(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: f64, burst: u32, day: Option<u64>) -> PlanConfig {
        PlanConfig {
            rate_per_second: rate,
            burst,
            quota_per_day: day,
            quota_per_month: None,
            budget_usd_per_day: None,
            budget_usd_per_month: None,
            tokens_per_day: None,
            tokens_per_month: None,
            budget_usd_per_session: None,
            tokens_per_session: None,
            routes: BTreeMap::new(),
            policy: None,
        }
    }

    #[test]
    fn burst_then_refuse_with_retry_after() {
        let slot = LimitSlot::new(LimitPolicy::resolve(Some(&plan(1.0, 3, None)), None).unwrap());
        for i in 0..3 {
            match slot.check("GET", "/a", 0) {
                Decision::Allowed { status } => assert_eq!(status.remaining, 2 - i),
                d => panic!("{d:?}"),
            }
        }
        match slot.check("GET", "/a", 0) {
            Decision::Refused {
                status,
                retry_after_ms,
            } => {
                assert_eq!(status.kind, LimitKind::Rate);
                assert!(
                    retry_after_ms > 0 && retry_after_ms <= 1000,
                    "{retry_after_ms}"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn quota_is_exact_under_contention() {
        let slot = std::sync::Arc::new(LimitSlot::new(
            LimitPolicy::resolve(Some(&plan(1e9, 1_000_000, Some(1000))), None).unwrap(),
        ));
        let allowed = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (slot, allowed) = (slot.clone(), allowed.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if matches!(slot.check("GET", "/", 5), Decision::Allowed { .. }) {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), 1000);
        assert_eq!(slot.day.used(0), 1000);
    }

    #[test]
    fn a_new_day_starts_a_new_count_and_a_rate_refusal_gives_the_quota_back() {
        let slot =
            LimitSlot::new(LimitPolicy::resolve(Some(&plan(1.0, 1, Some(5))), None).unwrap());
        assert!(matches!(
            slot.check("GET", "/", 0),
            Decision::Allowed { .. }
        ));
        // The rate refuses this one; it must not count against the quota.
        assert!(matches!(
            slot.check("GET", "/", 0),
            Decision::Refused { status, .. } if status.kind == LimitKind::Rate
        ));
        assert_eq!(slot.day.used(0), 1);
        slot.day.restore(0, 5);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            slot.check("GET", "/", 1000),
            Decision::Refused { status, .. } if status.kind == LimitKind::DailyQuota
        ));
        // The next UTC day.
        assert!(matches!(
            slot.check("GET", "/", 86_400_000 + 5),
            Decision::Allowed { .. }
        ));
        assert_eq!(slot.day.used(1), 1);
    }

    #[test]
    fn overrides_replace_plan_values_and_route_limits_apply_to_their_route_only() {
        let mut p = plan(100.0, 100, Some(10));
        p.routes.insert(
            "GET /search".into(),
            RouteLimit {
                rate_per_second: 1.0,
                burst: 1,
            },
        );
        let o = LimitOverride {
            quota_per_day: Some(50),
            ..Default::default()
        };
        let policy = LimitPolicy::resolve(Some(&p), Some(&o)).unwrap();
        assert_eq!(policy.quota_per_day, Some(50));
        assert_eq!(policy.rate_per_second, 100.0);
        let slot = LimitSlot::new(policy);
        assert!(matches!(
            slot.check("GET", "/search", 0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            slot.check("GET", "/search", 0),
            Decision::Refused { status, .. } if status.kind == LimitKind::Route
        ));
        assert!(matches!(
            slot.check("POST", "/search", 0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            slot.check("GET", "/other", 0),
            Decision::Allowed { .. }
        ));
        assert!(LimitPolicy::resolve(None, None).is_none());
    }

    #[test]
    fn budgets_reserve_exactly_under_contention_and_settle_to_the_real_use() {
        let mut p = plan(1e9, 1_000_000, None);
        p.tokens_per_day = Some(1000);
        p.budget_usd_per_day = Some(0.01);
        let slot = std::sync::Arc::new(LimitSlot::new(
            LimitPolicy::resolve(Some(&p), None).unwrap(),
        ));
        assert_eq!(
            slot.policy.budgets.0,
            [Some(10_000), None, Some(1000), None]
        );
        let charge = BudgetCharge {
            tokens: 60,
            micro_usd: 10,
        };
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (slot, held) = (slot.clone(), held.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if let (Decision::Allowed { .. }, Some(r)) =
                            slot.check_with("POST", "/", 5, charge)
                        {
                            held.lock().unwrap().push(r);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let held = held.lock().unwrap();
        // Admitted while anything was left: 16 × 60 = 960 < 1000, the 17th reaches 1020.
        assert_eq!(held.len(), 17);
        assert_eq!(slot.budget[2].used(0), 17 * 60);
        match slot.check_with("POST", "/", 5, charge) {
            (Decision::Refused { status, .. }, None) => {
                assert_eq!(status.kind, LimitKind::TokensDay);
                assert_eq!(status.remaining, 0);
            }
            d => panic!("{d:?}"),
        }
        for r in held.iter() {
            slot.settle(
                r,
                BudgetCharge {
                    tokens: 50,
                    micro_usd: 7,
                },
            );
        }
        assert_eq!(slot.budget[2].used(0), 17 * 50);
        assert_eq!(slot.budget[0].used(0), 17 * 7);
        // A refusal by another limit gives the reservation back.
        let mut q = plan(1e9, 1_000_000, Some(1));
        q.tokens_per_day = Some(1000);
        let slot = LimitSlot::new(LimitPolicy::resolve(Some(&q), None).unwrap());
        assert!(slot.check_with("POST", "/", 5, charge).1.is_some());
        assert!(matches!(
            slot.check_with("POST", "/", 5, charge),
            (Decision::Refused { status, .. }, None) if status.kind == LimitKind::DailyQuota
        ));
        assert_eq!(slot.budget[2].used(0), 60);
        assert!(check_budgets([Some(0.0), None], [None, None]).is_err());
        assert!(check_budgets([None, None], [Some(0), None]).is_err());
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-24T18:00:00Z
        let t = 1_795_543_200_000;
        let p = Periods::at(t);
        assert_eq!(Periods::day_label(t), "20261124");
        assert_eq!(Periods::month_label(t), "202611");
        assert_eq!(p.day_left_ms, 6 * 3_600_000);
        assert_eq!(p.month_left_ms, (6 * 24 + 6) * 3_600_000);
        assert_eq!(p.month, 56 * 12 + 10);
    }

    #[test]
    fn route_match_syntax() {
        assert!(RouteMatch::parse("GET /search").is_ok());
        assert!(
            RouteMatch::parse("/search")
                .unwrap()
                .matches("PUT", "/search")
        );
        assert!(RouteMatch::parse("search").is_err());
        assert!(RouteMatch::parse("G3T /x").is_err());
    }
}

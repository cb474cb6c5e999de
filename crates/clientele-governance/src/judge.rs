//! Judging: `key_sharing`, `scraping`, `reselling` and `policy_violation`, per consumer-day.
//!
//! Each UTC day touched by the evaluation's window is judged against the consumer's own
//! history (the [`HISTORY_DAYS`] days before it) and against its plan's peers on the same day.
//! Behaviour a consumer has always had is its own baseline: a nightly job that walks the same
//! id range every night, or a mobile app used from many networks since its first day, is not
//! news. Consumers younger than [`MIN_HISTORY_DAYS`] have no own baseline and are judged
//! only on what is wrong whatever the history (guessing ids, breaking a plan rule) or against
//! their peers.

use std::collections::BTreeMap;

use clientele_core::config::PlanConfig;
use clientele_core::consumer::Consumer;
use clientele_core::finding::{Finding, FindingKind, Severity};
use clientele_core::policy::{PolicyAction, PolicyRule, Resale};
use rustc_hash::FxHashMap as HashMap;
use serde_json::json;

use crate::features::{ConsumerFeatures, DAY_MS, DaySummary, FeatureStore, HOUR_MS};

/// Days before the judged day that make the own baseline.
pub const HISTORY_DAYS: i64 = 14;
/// Fewer days of history than this and there is no own baseline.
pub const MIN_HISTORY_DAYS: usize = 3;
/// How long before the judged day a routine must have begun to be the consumer's baseline:
/// a scraper is news for its first week, a weekly job is routine by its third run.
const ESTABLISHED_DAYS: i64 = 7;
/// Plan peers needed before "unlike its peers" is said.
const MIN_PEERS: usize = 3;

/// The outcome of one evaluation.
#[derive(Debug, Default)]
pub struct Judged {
    /// Findings with empty ids (the caller gives them fresh ones).
    pub findings: Vec<Finding>,
    /// Consumers to block now, with the rule broken (`action = "block"` policies only).
    pub blocks: Vec<(String, PolicyRule)>,
    /// Consumers judged (consumer-days with traffic), for the scenario's false-positive rate.
    pub consumer_days: usize,
}

/// The own history of a consumer before a judged day, reduced to what the rules read.
#[derive(Debug, Default, Clone)]
struct History {
    days: usize,
    max_networks: u32,
    /// The most autonomous systems in a day, and countries within one hour (with an IP table).
    max_asns: u32,
    max_countries_per_hour: u32,
    /// Every country seen before (packed codes), for "new countries" in the evidence.
    countries: Vec<u16>,
    max_user_agents: u32,
    /// The most TLS clients in a day, and whether any day came over terminated TLS at all.
    max_tls_clients: u32,
    max_end_users: u32,
    walk_days: usize,
    /// The earliest day of the history that walked an id space.
    first_walk_day: Option<i64>,
    max_walk_ids: u32,
    median_active_hours: f64,
    median_requests: f64,
}

/// One consumer-day to judge, copied out of the store.
#[derive(Debug, Clone)]
struct Case {
    consumer: String,
    plan: Option<String>,
    use_case: Option<String>,
    day: DaySummary,
    history: History,
    /// Active hours of the last 24 hours (for today) or of the day.
    active_hours: u32,
    first_ms: i64,
    last_ms: i64,
}

/// Medians of a plan's consumers on one day.
#[derive(Debug, Default, Clone, Copy)]
struct Peers {
    count: usize,
    networks: f64,
    tls_clients: f64,
    end_users: f64,
    share: f64,
}

/// Judges every consumer-day in `[now - lookback, now]`.
pub fn evaluate(
    store: &FeatureStore,
    now_ms: i64,
    lookback_ms: i64,
    consumers: &[Consumer],
    plans: &BTreeMap<String, PlanConfig>,
) -> Judged {
    let first_day = (now_ms - lookback_ms.max(HOUR_MS)).div_euclid(DAY_MS);
    let today = now_ms.div_euclid(DAY_MS);
    let by_id: HashMap<&str, &Consumer> = consumers.iter().map(|c| (c.id.as_str(), c)).collect();
    let (cases, totals) = store.with_consumers(|src| {
        let mut cases = Vec::new();
        src.each(&mut |id, f| collect(id, f, first_day..=today, now_ms, &by_id, &mut cases));
        let totals: HashMap<i64, u64> = (first_day..=today).map(|d| (d, src.total(d))).collect();
        (cases, totals)
    });
    let peers = peer_medians(&cases, &totals);
    let mut out = Judged {
        consumer_days: cases.len(),
        ..Judged::default()
    };
    for case in &cases {
        let total = totals.get(&case.day.day).copied().unwrap_or(0);
        let p = peers
            .get(&(case.plan.clone(), case.day.day))
            .copied()
            .unwrap_or_default();
        let ctx = Judging {
            case,
            peers: p,
            total,
        };
        let reselling = ctx.reselling();
        out.findings.extend(ctx.key_sharing());
        out.findings.extend(ctx.scraping());
        let policy = case
            .plan
            .as_deref()
            .and_then(|name| plans.get(name))
            .and_then(|plan| plan.policy.as_ref());
        if let Some(policy) = policy {
            let broken = ctx.broken_rules(policy, reselling.is_some());
            if let Some(f) = ctx.policy_finding(policy, &broken) {
                if policy.action == PolicyAction::Block && case.day.day == today {
                    if let Some((rule, ..)) = broken.first() {
                        out.blocks.push((case.consumer.clone(), *rule));
                    }
                }
                out.findings.push(f);
            }
        }
        out.findings.extend(reselling);
    }
    out
}

fn collect(
    id: &str,
    f: &ConsumerFeatures,
    judged: std::ops::RangeInclusive<i64>,
    now_ms: i64,
    by_id: &HashMap<&str, &Consumer>,
    cases: &mut Vec<Case>,
) {
    let days = f.days();
    let known = by_id.get(id);
    let plan = known
        .and_then(|c| c.plan.clone())
        .or_else(|| f.plan.as_deref().map(str::to_string));
    let today = now_ms.div_euclid(DAY_MS);
    for d in days.iter().filter(|d| judged.contains(&d.day)) {
        if d.counts.requests == 0 {
            continue;
        }
        let history = history_of(&days, d.day);
        let active_hours = if d.day == today {
            recent_active_hours(f, now_ms)
        } else {
            d.active_hours()
        };
        let hours: Vec<usize> = (0..24).filter(|&h| d.hour_requests[h] > 0).collect();
        let first_hour = hours.first().copied().unwrap_or(0) as i64;
        let last_hour = hours.last().copied().unwrap_or(0) as i64;
        cases.push(Case {
            consumer: id.to_string(),
            plan: plan.clone(),
            use_case: known.and_then(|c| c.use_case.clone()),
            day: d.clone(),
            history,
            active_hours,
            first_ms: d.day * DAY_MS + first_hour * HOUR_MS,
            last_ms: (d.day * DAY_MS + (last_hour + 1) * HOUR_MS).min(now_ms.max(d.day * DAY_MS)),
        });
    }
}

fn history_of(days: &[DaySummary], day: i64) -> History {
    let before: Vec<&DaySummary> = days
        .iter()
        .filter(|d| d.day < day && d.day >= day - HISTORY_DAYS && d.counts.requests > 0)
        .collect();
    let mut active: Vec<f64> = before.iter().map(|d| f64::from(d.active_hours())).collect();
    let mut requests: Vec<f64> = before.iter().map(|d| d.counts.requests as f64).collect();
    let walks: Vec<&&DaySummary> = before.iter().filter(|d| walk_like(d)).collect();
    History {
        days: before.len(),
        max_networks: before.iter().map(|d| d.networks).max().unwrap_or(0),
        max_asns: before.iter().map(|d| d.asns).max().unwrap_or(0),
        max_countries_per_hour: before
            .iter()
            .map(|d| d.max_countries_per_hour)
            .max()
            .unwrap_or(0),
        countries: {
            let mut all: Vec<u16> = before
                .iter()
                .flat_map(|d| d.countries.packed().iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        },
        max_user_agents: before.iter().map(|d| d.user_agents).max().unwrap_or(0),
        max_tls_clients: before.iter().map(|d| d.tls_clients).max().unwrap_or(0),
        max_end_users: before.iter().map(|d| d.end_users).max().unwrap_or(0),
        walk_days: walks.len(),
        first_walk_day: walks.iter().map(|d| d.day).min(),
        max_walk_ids: walks.iter().map(|d| d.distinct_ids).max().unwrap_or(0),
        median_active_hours: median(&mut active),
        median_requests: median(&mut requests),
    }
}

/// Active hours of the 24 hours before `now_ms`: today's partial day cannot show a profile.
fn recent_active_hours(f: &ConsumerFeatures, now_ms: i64) -> u32 {
    let last = now_ms.div_euclid(HOUR_MS);
    let recent: Vec<u64> = f
        .hours()
        .filter(|h| h.hour > last - 24 && h.hour <= last)
        .map(|h| h.counts.requests)
        .collect();
    let total: u64 = recent.iter().sum();
    if total == 0 {
        return 0;
    }
    recent.iter().filter(|&&r| r * 50 >= total).count() as u32
}

/// A day that walked an id space: many distinct ids, in sequence, or most of a range, or
/// many misses.
fn is_walk(d: &DaySummary) -> bool {
    d.counts.item_requests >= 200
        && d.distinct_ids >= 150
        && (d.counts.sequential_share() >= 0.5
            || d.id_coverage() >= 0.5
            || d.counts.not_found_share() >= 0.25)
}

/// The shape of a walk at any size, for the history: a consumer that always walked, even
/// below the size judged today, has walking as its baseline (hysteresis, so that a routine
/// hovering around the threshold does not flap between routine and news).
fn walk_like(d: &DaySummary) -> bool {
    d.counts.item_requests >= 50
        && d.distinct_ids >= 30
        && (d.counts.sequential_share() >= 0.5
            || d.id_coverage() >= 0.5
            || d.counts.not_found_share() >= 0.25)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn peer_medians(
    cases: &[Case],
    totals: &HashMap<i64, u64>,
) -> HashMap<(Option<String>, i64), Peers> {
    let mut groups: HashMap<(Option<String>, i64), Vec<&Case>> = HashMap::default();
    for c in cases {
        groups
            .entry((c.plan.clone(), c.day.day))
            .or_default()
            .push(c);
    }
    groups
        .into_iter()
        .map(|(k, members)| {
            let total = totals.get(&k.1).copied().unwrap_or(0).max(1) as f64;
            let mut nets: Vec<f64> = members.iter().map(|c| f64::from(c.day.networks)).collect();
            let mut tls: Vec<f64> = members
                .iter()
                .map(|c| f64::from(c.day.tls_clients))
                .collect();
            let mut eus: Vec<f64> = members.iter().map(|c| f64::from(c.day.end_users)).collect();
            let mut shares: Vec<f64> = members
                .iter()
                .map(|c| c.day.counts.requests as f64 / total)
                .collect();
            let p = Peers {
                // The consumer itself is one of the members; the median barely moves for it.
                count: members.len().saturating_sub(1),
                networks: median(&mut nets),
                tls_clients: median(&mut tls),
                end_users: median(&mut eus),
                share: median(&mut shares),
            };
            (k, p)
        })
        .collect()
}

/// Use cases whose traffic should follow office hours.
fn business_hours_use_case(use_case: Option<&str>) -> bool {
    let Some(u) = use_case else { return false };
    let u = u.to_ascii_lowercase();
    [
        "dashboard",
        "internal",
        "backoffice",
        "back-office",
        "crm",
        "reporting",
        "office",
    ]
    .iter()
    .any(|w| u.contains(w))
}

struct Judging<'a> {
    case: &'a Case,
    peers: Peers,
    total: u64,
}

impl Judging<'_> {
    fn finding(
        &self,
        kind: FindingKind,
        severity: Severity,
        summary: String,
        evidence: serde_json::Value,
    ) -> Finding {
        Finding {
            id: String::new(),
            kind,
            consumer: Some(self.case.consumer.clone()),
            api: None,
            route: None,
            severity,
            first_seen_ms: self.case.first_ms,
            last_seen_ms: self.case.last_ms,
            summary,
            evidence,
        }
    }

    fn share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.case.day.counts.requests as f64 / self.total as f64
        }
    }

    fn key_sharing(&self) -> Option<Finding> {
        let c = self.case;
        let h = &c.history;
        if h.days < MIN_HISTORY_DAYS {
            return None;
        }
        let nets = c.day.networks;
        let own = h.max_networks.max(1);
        let jump = nets >= 6 && f64::from(nets) >= 3.0 * f64::from(own);
        let beyond_peers =
            self.peers.count < MIN_PEERS || f64::from(nets) >= 3.0 * self.peers.networks + 2.0;
        // Far-apart networks at the same time (with an IP table): three or more countries in
        // one hour, where the key never was in more than half as many, is not one application
        // travelling.
        let in_hour = c.day.max_countries_per_hour;
        let geo_jump = in_hour >= 3 && in_hour > 2 * h.max_countries_per_hour.max(1);
        // Many more TLS client stacks than the key ever had (where the gateway terminates
        // TLS): one application is one or two stacks (an upgrade changes the fingerprint), a
        // key passed around is curl, browsers, several SDKs. Judged only against a history
        // that came over TLS, so a key moving from ingest to the gateway is not news.
        let tls = c.day.tls_clients;
        let own_tls = h.max_tls_clients;
        let tls_jump = own_tls > 0
            && tls >= 5
            && tls >= 3 * own_tls
            && (self.peers.count < MIN_PEERS
                || f64::from(tls) >= 3.0 * self.peers.tls_clients + 2.0);
        if !((jump && beyond_peers) || geo_jump || tls_jump) {
            return None;
        }
        let uas = c.day.user_agents;
        let ua_jump = uas >= 3 && uas >= 2 * h.max_user_agents.max(1);
        let severity = if ua_jump || geo_jump || (tls_jump && jump) {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let countries: Vec<String> = c.day.countries.codes().collect();
        let new_countries: Vec<String> = c
            .day
            .countries
            .packed()
            .iter()
            .filter(|code| h.countries.binary_search(code).is_err())
            .map(|code| crate::iptable::country_str(*code))
            .collect();
        let summary = format!(
            "The key of {} was used from {nets} networks{}{}{} on {}, against at most {own} a day{}{} in its previous {} days: it is probably shared beyond the application it was issued to; ask the consumer, and rotate the key if the terms allow one application",
            c.consumer,
            if ua_jump {
                format!(" and {uas} user agents")
            } else {
                String::new()
            },
            if tls_jump {
                format!(" by {tls} different TLS clients")
            } else {
                String::new()
            },
            if geo_jump {
                format!(
                    ", in {in_hour} countries within one hour ({})",
                    countries.join(", ")
                )
            } else {
                String::new()
            },
            day_label(c.day.day),
            if geo_jump {
                format!(
                    " and {} {} in one hour",
                    h.max_countries_per_hour,
                    if h.max_countries_per_hour == 1 {
                        "country"
                    } else {
                        "countries"
                    }
                )
            } else {
                String::new()
            },
            if tls_jump {
                format!(" and {own_tls} TLS clients")
            } else {
                String::new()
            },
            h.days,
        );
        Some(self.finding(
            FindingKind::KeySharing,
            severity,
            summary,
            json!({
                "day": day_label(c.day.day),
                "networks": nets,
                "baseline_max_networks_per_day": h.max_networks,
                "user_agents": uas,
                "baseline_max_user_agents_per_day": h.max_user_agents,
                "tls_clients": tls,
                "baseline_max_tls_clients_per_day": own_tls,
                "plan_peer_median_tls_clients": self.peers.tls_clients,
                "max_tls_clients_in_one_hour": c.day.max_tls_clients_per_hour,
                "plan_peer_median_networks": self.peers.networks,
                "plan_peers": self.peers.count,
                "history_days": h.days,
                "max_calls_per_second": c.day.max_per_second,
                "asns": c.day.asns,
                "baseline_max_asns_per_day": h.max_asns,
                "countries": countries,
                "new_countries": new_countries,
                "max_countries_in_one_hour": in_hour,
                "baseline_max_countries_in_one_hour": h.max_countries_per_hour,
            }),
        ))
    }

    fn scraping(&self) -> Option<Finding> {
        let c = self.case;
        let d = &c.day;
        let h = &c.history;
        if !is_walk(d) {
            return None;
        }
        let misses = d.counts.not_found_share();
        let own_baseline = if h.days >= MIN_HISTORY_DAYS {
            // Walks repeated over at least a week before, at no more than three times their
            // usual breadth: the consumer's routine (a nightly or weekly sync), not news.
            let established = h.walk_days >= 2
                && h.first_walk_day
                    .is_some_and(|first| d.day - first >= ESTABLISHED_DAYS);
            established && d.distinct_ids <= 3 * h.max_walk_ids.max(1)
        } else {
            // No history to judge against: only guessing ids is wrong on its face.
            misses < 0.25
        };
        if own_baseline {
            return None;
        }
        let cv = d.counts.gap_cv();
        let machine = cv.is_some_and(|v| v < 0.3);
        let severity = if machine || misses >= 0.25 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let summary = format!(
            "{} called {} distinct item ids on {} ({:.0}% in sequence, {:.0}% of the id range {}-{}, {:.0}% not found){}, which it did not do before: check this against the acceptable-use policy and contact the consumer",
            c.consumer,
            d.distinct_ids,
            day_label(d.day),
            100.0 * d.counts.sequential_share(),
            100.0 * d.id_coverage(),
            d.id_min,
            d.id_max,
            100.0 * misses,
            if machine {
                " at machine-regular intervals"
            } else {
                ""
            },
        );
        Some(self.finding(
            FindingKind::Scraping,
            severity,
            summary,
            json!({
                "day": day_label(d.day),
                "item_requests": d.counts.item_requests,
                "distinct_ids": d.distinct_ids,
                "sequential_share": round3(d.counts.sequential_share()),
                "id_range": [d.id_min, d.id_max],
                "id_range_coverage": round3(d.id_coverage()),
                "not_found_share": round3(misses),
                "think_time_mean_ms": round3(d.counts.gap_mean_ms),
                "think_time_cv": cv.map(round3),
                "baseline_walk_days": h.walk_days,
                "baseline_days": h.days,
                "baseline_max_distinct_ids": h.max_walk_ids,
            }),
        ))
    }

    fn reselling(&self) -> Option<Finding> {
        let c = self.case;
        let d = &c.day;
        let h = &c.history;
        let eu = d.end_users;
        // With history, even a history of no end users is a baseline: a key that never named
        // its end users and now names hundreds is news.
        let eu_signal = eu >= 50
            && if h.days >= MIN_HISTORY_DAYS {
                eu >= 5 * h.max_end_users.max(10)
            } else {
                self.peers.count >= MIN_PEERS
                    && self.peers.end_users > 0.0
                    && f64::from(eu) >= 10.0 * self.peers.end_users
            };
        let share = self.share();
        let share_signal = self.total >= 1000
            && share >= 0.2
            && self.peers.count >= MIN_PEERS
            && share >= 10.0 * self.peers.share;
        let office = business_hours_use_case(c.use_case.as_deref());
        let flat_signal = c.active_hours >= 20
            && ((h.days >= MIN_HISTORY_DAYS && h.median_active_hours <= 14.0) || office);
        let grew =
            h.days >= MIN_HISTORY_DAYS && d.counts.requests as f64 >= 2.0 * h.median_requests;
        // One signal alone has honest explanations (a campaign brings end users, a customer
        // outgrows its plan); a change against the consumer's own past next to it does not.
        let flagged = (eu_signal && (flat_signal || share_signal || grew))
            || (share_signal && (flat_signal || grew));
        if !flagged {
            return None;
        }
        let signals = [eu_signal, flat_signal, share_signal]
            .iter()
            .filter(|s| **s)
            .count();
        let severity = if signals >= 2 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut why = Vec::new();
        if eu_signal {
            why.push(format!(
                "{eu} distinct end users (usually at most {})",
                h.max_end_users
            ));
        }
        if flat_signal {
            why.push(format!(
                "traffic in {} of 24 hours (usually {:.0})",
                c.active_hours, h.median_active_hours
            ));
        }
        if share_signal {
            why.push(format!(
                "{:.0}% of all traffic (plan peers' median {:.1}%)",
                100.0 * share,
                100.0 * self.peers.share
            ));
        }
        let summary = format!(
            "{} looks like it serves its own customers through its key on {}: {}; check whether its contract allows resale",
            c.consumer,
            day_label(d.day),
            why.join(", ")
        );
        Some(self.finding(
            FindingKind::Reselling,
            severity,
            summary,
            json!({
                "day": day_label(d.day),
                "end_users": eu,
                "baseline_max_end_users_per_day": h.max_end_users,
                "plan_peer_median_end_users": self.peers.end_users,
                "sessions": d.sessions,
                "active_hours": c.active_hours,
                "baseline_median_active_hours": h.median_active_hours,
                "declared_use_case": c.use_case,
                "share_of_traffic": round3(share),
                "plan_peer_median_share": round3(self.peers.share),
                "requests": d.counts.requests,
                "baseline_median_requests": h.median_requests,
                "plan_peers": self.peers.count,
            }),
        ))
    }

    /// The plan rules broken on the day: (rule, limit, value).
    fn broken_rules(
        &self,
        policy: &clientele_core::policy::PlanPolicy,
        reselling: bool,
    ) -> Vec<(PolicyRule, f64, f64)> {
        let d = &self.case.day;
        let mut out = Vec::new();
        for (rule, limit, value) in [
            (
                PolicyRule::MaxNetworksPerDay,
                policy.max_networks_per_day,
                d.networks,
            ),
            (
                PolicyRule::MaxUserAgentsPerDay,
                policy.max_user_agents_per_day,
                d.user_agents,
            ),
            (PolicyRule::MaxEndUsers, policy.max_end_users, d.end_users),
        ] {
            if let Some(limit) = limit {
                if value > limit {
                    out.push((rule, f64::from(limit), f64::from(value)));
                }
            }
        }
        if let Some(limit) = policy.max_share_of_traffic {
            // A share means something only among several consumers and enough calls.
            let share = self.share();
            if self.total >= 1000 && self.peers.count >= 2 && share > limit {
                out.push((PolicyRule::MaxShareOfTraffic, limit, round3(share)));
            }
        }
        if policy.resale == Some(Resale::Forbidden) && reselling {
            out.push((PolicyRule::Resale, 0.0, 1.0));
        }
        out
    }

    fn policy_finding(
        &self,
        policy: &clientele_core::policy::PlanPolicy,
        broken: &[(PolicyRule, f64, f64)],
    ) -> Option<Finding> {
        if broken.is_empty() {
            return None;
        }
        let c = self.case;
        let plan = c.plan.as_deref().unwrap_or("");
        let rules: Vec<String> = broken
            .iter()
            .map(|(rule, limit, value)| match rule {
                PolicyRule::Resale => {
                    "resale = \"forbidden\" (it looks like reselling)".to_string()
                }
                PolicyRule::MaxShareOfTraffic => {
                    format!(
                        "{} = {limit} ({:.0}% of traffic)",
                        rule.as_str(),
                        100.0 * value
                    )
                }
                _ => format!("{} = {limit} ({value})", rule.as_str()),
            })
            .collect();
        let block = policy.action == PolicyAction::Block;
        let summary = format!(
            "{} broke the policy of plan {plan} on {}: {}; {}",
            c.consumer,
            day_label(c.day.day),
            rules.join(", "),
            if block {
                "its requests are refused with 403 until the rule holds again (action = \"block\")"
            } else {
                "contact the consumer or move it to a plan that allows this"
            }
        );
        let evidence_rules: Vec<serde_json::Value> = broken
            .iter()
            .map(|(rule, limit, value)| json!({"rule": rule.as_str(), "limit": limit, "value": value}))
            .collect();
        Some(self.finding(
            FindingKind::PolicyViolation,
            if block {
                Severity::Critical
            } else {
                Severity::Warning
            },
            summary,
            json!({
                "day": day_label(c.day.day),
                "plan": plan,
                "action": if block { "block" } else { "flag" },
                "rules": evidence_rules,
            }),
        ))
    }
}

/// Rounded to three decimals, for evidence and answers.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `2026-12-01` for a day number.
pub fn day_label(day: i64) -> String {
    clientele_core::time::format_ts(day * DAY_MS)
        .get(..10)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::tests::event;
    use clientele_core::event::Event;

    /// `days` days of 200 calls from two networks through `fps(day)` TLS clients.
    fn key(consumer: &str, days: i64, fps: impl Fn(i64) -> Option<u64>) -> Vec<Event> {
        let day0 = 20_500;
        let mut out = Vec::new();
        for d in 0..days {
            for i in 0..200i64 {
                let mut e = event(
                    consumer,
                    (day0 + d) * DAY_MS + 8 * HOUR_MS + i * 60_000,
                    "/x",
                    "/x",
                );
                e.client_ip = Some(format!("10.1.{}.1", i % 2));
                e.tls_fp =
                    fps(d).map(|n| format!("t13d1{}h2_{:012}_x", i as u64 % n, i as u64 % n));
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn a_key_used_by_many_more_tls_clients_than_ever_is_shared() {
        let store = FeatureStore::new();
        // One application: one TLS client for ten days, then eight on the last.
        store.observe(&key("shared", 11, |d| Some(if d == 10 { 8 } else { 1 })));
        // An application with three client stacks that shows a fourth.
        store.observe(&key("steady", 11, |d| Some(if d == 10 { 4 } else { 3 })));
        // A key that never came over terminated TLS before (ingest only) has no TLS baseline.
        store.observe(&key("moved", 11, |d| (d == 10).then_some(8)));
        let now = 20_510 * DAY_MS + 20 * HOUR_MS;
        let judged = evaluate(&store, now, HOUR_MS, &[], &BTreeMap::new());
        let sharing: Vec<&Finding> = judged
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::KeySharing)
            .collect();
        assert_eq!(sharing.len(), 1, "{sharing:?}");
        let f = sharing[0];
        assert_eq!(f.consumer.as_deref(), Some("shared"));
        // HyperLogLog estimates: near exact at these counts.
        let n = f.evidence["tls_clients"].as_u64().unwrap();
        assert!((7..=9).contains(&n), "{}", f.evidence);
        assert_eq!(f.evidence["baseline_max_tls_clients_per_day"], 1);
        let in_hour = f.evidence["max_tls_clients_in_one_hour"].as_u64().unwrap();
        assert!((7..=9).contains(&in_hour), "{}", f.evidence);
        assert!(
            f.summary.contains(&format!("{n} different TLS clients")),
            "{}",
            f.summary
        );
    }
}

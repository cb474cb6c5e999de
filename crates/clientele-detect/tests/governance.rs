//! The labelled governance scenario: three weeks of a world of honest consumers of every size
//! and shape (server integrations, office dashboards, mobile apps used from hundreds of
//! networks from their first day, nightly batch jobs walking the whole id range, list pagers, an
//! indexing crawler, an integration with stale ids), and injected key sharing, scraping and
//! reselling that start on a random day of the last week.
//!
//! Every day from the second week on is evaluated as it would be live (after that day's events,
//! through `Registry::standard()`), and the governance findings are compared with the labels:
//! every injected consumer must be found with its kind (recall 100%), and findings on
//! consumer-days without that label are false positives (at most 1 per 1,000 consumer-days).
//! Several seeds; the world is described first and the detector was not tuned to a seed.
//!
//! Addresses have owners: a synthetic IP table in iptoasn.com's format gives each first octet
//! its own autonomous system and one of 24 countries, so honest integrations in several
//! regions, mobile apps all over the world, and a key copied abroad are judged with the
//! countries they are used from.

use std::collections::{BTreeMap, BTreeSet};

use clientele_analytics::Engine;
use clientele_core::config::PlanConfig;
use clientele_core::consumer::Consumer;
use clientele_core::event::{Event, Outcome};
use clientele_core::finding::FindingKind;
use clientele_detect::{EvalContext, Registry};
use clientele_governance::FeatureStore;
use clientele_governance::features::DAY_MS;

const DAYS: i64 = 21;
/// Judging starts when every consumer has a full week of history behind it (a routine is
/// established after a week; the world's first day has no spill-over from the day before).
const FIRST_JUDGED: i64 = 8;
/// 2026-01-05, a Monday.
const BASE_DAY: i64 = 20_458;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// A backend calling the API: a few fixed networks, one or two user agents.
    Server { around_the_clock: bool },
    /// An office tool: staff as end users, browsers, office hours on weekdays.
    Dashboard,
    /// A mobile app: end users on carrier networks, many app versions, evenings.
    Mobile,
    /// Walks /items/{id} from 1 to N every night, at a fixed pace.
    NightlyWalk,
    /// Pages through /items?page=k every night.
    ListPager,
    /// Indexes every item daily in random order; some items are gone (404).
    Crawler,
    /// Calls items it cached long ago: a third are gone, every day.
    StaleIds,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Inject {
    SharedKey,
    SequentialScrape,
    GuessingScrape,
    ResellerEndUsers,
    ResellerShare,
    /// The key copied to a few machines abroad, used in the same hours as at home: too few
    /// networks to stand out, but three new countries at once.
    SharedAbroad,
}

impl Inject {
    fn kind(self) -> FindingKind {
        match self {
            Inject::SharedKey | Inject::SharedAbroad => FindingKind::KeySharing,
            Inject::SequentialScrape | Inject::GuessingScrape => FindingKind::Scraping,
            Inject::ResellerEndUsers | Inject::ResellerShare => FindingKind::Reselling,
        }
    }
}

struct Profile {
    id: String,
    plan: &'static str,
    use_case: &'static str,
    shape: Shape,
    /// Calls per day.
    volume: u64,
    networks: Vec<u32>,
    agents: Vec<String>,
    /// End users (dashboards, mobile apps).
    users: u64,
    walk: u64,
    inject: Option<(Inject, i64)>,
}

fn world(rng: &mut Rng) -> Vec<Profile> {
    let mut out: Vec<Profile> = Vec::new();
    let add = |out: &mut Vec<Profile>,
               rng: &mut Rng,
               prefix: &str,
               n: usize,
               plan: &'static str,
               use_case: &'static str,
               shape: Shape,
               vol: (u64, u64)| {
        for i in 0..n {
            let nets = match shape {
                Shape::Dashboard => rng.range(1, 3),
                _ => rng.range(1, 3),
            };
            let agents = match shape {
                Shape::Dashboard => rng.range(3, 8),
                Shape::Mobile => rng.range(10, 30),
                Shape::Server { .. } => rng.range(1, 2),
                _ => 1,
            };
            let id = format!("{prefix}-{i}");
            out.push(Profile {
                networks: (0..nets).map(|_| rng.next() as u32 >> 8).collect(),
                agents: (0..agents)
                    .map(|a| format!("{id}-agent/{a}.{}", rng.range(0, 9)))
                    .collect(),
                users: match shape {
                    Shape::Dashboard => rng.range(5, 25),
                    Shape::Mobile => rng.range(400, 3000),
                    _ => 0,
                },
                walk: rng.range(800, 2500),
                volume: rng.range(vol.0, vol.1),
                id,
                plan,
                use_case,
                shape,
                inject: None,
            });
        }
    };
    add(
        &mut out,
        rng,
        "srv-small",
        30,
        "free",
        "integration",
        Shape::Server {
            around_the_clock: false,
        },
        (20, 150),
    );
    add(
        &mut out,
        rng,
        "srv-small-247",
        10,
        "free",
        "integration",
        Shape::Server {
            around_the_clock: true,
        },
        (20, 150),
    );
    add(
        &mut out,
        rng,
        "srv-medium",
        15,
        "pro",
        "integration",
        Shape::Server {
            around_the_clock: true,
        },
        (150, 700),
    );
    add(
        &mut out,
        rng,
        "srv-large",
        3,
        "enterprise",
        "integration",
        Shape::Server {
            around_the_clock: true,
        },
        (1500, 3000),
    );
    add(
        &mut out,
        rng,
        "dashboard",
        12,
        "pro",
        "internal dashboard",
        Shape::Dashboard,
        (100, 600),
    );
    add(
        &mut out,
        rng,
        "mobile",
        8,
        "enterprise",
        "mobile app",
        Shape::Mobile,
        (800, 2000),
    );
    add(
        &mut out,
        rng,
        "nightly",
        6,
        "pro",
        "nightly sync",
        Shape::NightlyWalk,
        (0, 0),
    );
    add(
        &mut out,
        rng,
        "pager",
        4,
        "pro",
        "nightly export",
        Shape::ListPager,
        (300, 1000),
    );
    add(
        &mut out,
        rng,
        "crawler",
        2,
        "enterprise",
        "search indexing",
        Shape::Crawler,
        (0, 0),
    );
    add(
        &mut out,
        rng,
        "stale",
        3,
        "pro",
        "integration",
        Shape::StaleIds,
        (150, 400),
    );
    // Integrations deployed in three regions from their first day: three countries every hour
    // is their normal.
    add(
        &mut out,
        rng,
        "multiregion",
        4,
        "pro",
        "integration",
        Shape::Server {
            around_the_clock: true,
        },
        (300, 1500),
    );
    for p in out.iter_mut().filter(|p| p.id.starts_with("multiregion")) {
        let top = (p.networks[0] >> 16) % 200 + 1;
        p.networks = (0..3)
            .map(|r| ((top + 7 * r) << 16) | (p.networks[0] & 0xffff))
            .collect();
    }
    // The injected: honest integrations until their day comes.
    let injected = [
        (Inject::SharedKey, "free", false),
        (Inject::SharedKey, "free", true),
        (Inject::SharedKey, "pro", true),
        (Inject::SharedKey, "pro", false),
        (Inject::SequentialScrape, "free", false),
        (Inject::SequentialScrape, "pro", true),
        (Inject::GuessingScrape, "free", true),
        (Inject::GuessingScrape, "pro", false),
        (Inject::ResellerEndUsers, "pro", false),
        (Inject::ResellerEndUsers, "free", true),
        (Inject::ResellerShare, "free", false),
        (Inject::ResellerShare, "free", false),
        (Inject::SharedAbroad, "pro", false),
        (Inject::SharedAbroad, "free", true),
    ];
    for (i, (inject, plan, atc)) in injected.into_iter().enumerate() {
        add(
            &mut out,
            rng,
            &format!("suspect{i}"),
            1,
            plan,
            "integration",
            Shape::Server {
                around_the_clock: atc,
            },
            (50, 800),
        );
        let start = rng.range(14, (DAYS - 2) as u64) as i64;
        if let Some(p) = out.last_mut() {
            p.inject = Some((inject, start));
            if inject == Inject::SharedAbroad {
                // At home in one place: one network, one country.
                p.networks.truncate(1);
            }
        }
    }
    out
}

/// Relative weight of an hour of day for a shape.
fn hour_weight(shape: Shape, hour: u32, weekend: bool) -> f64 {
    let office = (8..18).contains(&hour);
    match shape {
        Shape::Server {
            around_the_clock: true,
        } => 0.6 + 0.4 * f64::from(u8::from(office)),
        Shape::Server {
            around_the_clock: false,
        }
        | Shape::Dashboard => match (office, weekend) {
            (true, false) => 1.0,
            (true, true) => 0.1,
            _ => 0.01,
        },
        Shape::Mobile => match hour {
            0..=5 => 0.2,
            6..=16 => 0.7,
            _ => 1.0,
        },
        _ => 1.0,
    }
}

fn event(
    p: &Profile,
    ts_ms: i64,
    path: String,
    route: &str,
    status: u16,
    ip: u32,
    agent: &str,
) -> Event {
    Event {
        id: String::new(),
        ts_ms,
        consumer: Some(p.id.clone()),
        key_id: None,
        api: Some("shop".into()),
        method: "GET".into(),
        path,
        route: route.into(),
        status,
        latency_ms: 20.0,
        upstream_latency_ms: None,
        request_bytes: 0,
        response_bytes: 100,
        client_ip: Some(std::net::Ipv4Addr::from(ip).to_string()),
        user_agent: Some(agent.to_string()),
        session_id: None,
        end_user: None,
        trace_id: None,
        outcome: Outcome::Ingested,
        plan: Some(p.plan.into()),
        team: None,
        use_case: Some(p.use_case.into()),
        model: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
        close_code: None,
        call_hash: None,
        tokens_cached: None,
        tokens_cache_write: None,
        tokens_reasoning: None,
        tls_fp: None,
    }
}

/// An honest call of an interactive shape: list or item, popular ids.
fn interactive(rng: &mut Rng, p: &Profile, ts: i64, day: i64) -> Event {
    let ip = (*rng.pick(&p.networks) << 8) | rng.range(1, 254) as u32;
    let agent = rng.pick(&p.agents).clone();
    let mut e = if rng.f() < 0.5 {
        // Popular items first: a skewed draw over a large catalogue.
        let id = 1 + (rng.f().powi(3) * 200_000.0) as u64;
        let status = if rng.f() < 0.02 { 404 } else { 200 };
        event(
            p,
            ts,
            format!("/shop/items/{id}"),
            "/items/{id}",
            status,
            ip,
            &agent,
        )
    } else {
        event(p, ts, "/shop/items".into(), "/items", 200, ip, &agent)
    };
    match p.shape {
        Shape::Dashboard | Shape::Mobile => {
            let user = rng.range(0, p.users.max(1) - 1) % (p.users * 3 / 10).max(5)
                + (day as u64 % 3) * (p.users / 10);
            e.end_user = Some(format!("{}-user{user}", p.id));
            if p.shape == Shape::Mobile {
                // Carrier networks: a user's address moves daily and differs between users.
                let h = clientele_governance::hll::mix(user ^ (day as u64) << 32 ^ rng.range(0, 2));
                e.client_ip = Some(std::net::Ipv4Addr::from((h as u32) | 1).to_string());
            }
        }
        _ => {}
    }
    e
}

fn spread(rng: &mut Rng, shape: Shape, day: i64, n: u64) -> Vec<i64> {
    let weekend = (day + 3).rem_euclid(7) >= 5; // BASE_DAY is a Monday
    let weights: Vec<f64> = (0..24).map(|h| hour_weight(shape, h, weekend)).collect();
    let total: f64 = weights.iter().sum();
    let mut out = Vec::with_capacity(n as usize);
    for (h, w) in weights.iter().enumerate() {
        let k = (n as f64 * w / total * (0.8 + 0.4 * rng.f())).round() as u64;
        for _ in 0..k {
            out.push(day * DAY_MS + h as i64 * 3_600_000 + rng.range(0, 3_599_999) as i64);
        }
    }
    out.sort_unstable();
    out
}

fn walk(
    p: &Profile,
    day: i64,
    start_hour: i64,
    ids: impl Iterator<Item = (u64, u16)>,
    pace_ms: f64,
    rng: &mut Rng,
) -> Vec<Event> {
    let mut ts = (day * DAY_MS + start_hour * 3_600_000) as f64;
    let ip = p.networks[0] << 8 | 7;
    ids.map(|(id, status)| {
        ts += pace_ms * (0.95 + 0.1 * rng.f());
        event(
            p,
            ts as i64,
            format!("/shop/items/{id}"),
            "/items/{id}",
            status,
            ip,
            &p.agents[0],
        )
    })
    .collect()
}

fn honest_day(rng: &mut Rng, p: &Profile, day: i64) -> Vec<Event> {
    let growth = 1.0 + 0.01 * (day - BASE_DAY) as f64;
    match p.shape {
        Shape::NightlyWalk => {
            let n = p.walk + (day - BASE_DAY) as u64 * 10;
            let ids: Vec<(u64, u16)> = (1..=n)
                .map(|i| (i, if rng.f() < 0.02 { 404 } else { 200 }))
                .collect();
            walk(p, day, 2, ids.into_iter(), 400.0, rng)
        }
        Shape::Crawler => {
            let n = p.walk * 2;
            let ids: Vec<(u64, u16)> = (0..n)
                .map(|_| (rng.range(1, n), if rng.f() < 0.1 { 404 } else { 200 }))
                .collect();
            walk(p, day, 0, ids.into_iter(), 20_000.0, rng)
        }
        Shape::ListPager => {
            let ip = p.networks[0] << 8 | 9;
            let pages = (p.volume as f64 * growth) as u64;
            let mut ts = day * DAY_MS + 3 * 3_600_000;
            (1..=pages)
                .map(|k| {
                    ts += 250;
                    event(
                        p,
                        ts,
                        format!("/shop/items?page={k}"),
                        "/items",
                        200,
                        ip,
                        &p.agents[0],
                    )
                })
                .collect()
        }
        Shape::StaleIds => {
            let n = (p.volume as f64 * growth) as u64;
            spread(
                rng,
                Shape::Server {
                    around_the_clock: true,
                },
                day,
                n,
            )
            .into_iter()
            .map(|ts| {
                let id = rng.range(1, 50_000);
                let status = if rng.f() < 0.33 { 404 } else { 200 };
                let ip = p.networks[0] << 8 | 3;
                event(
                    p,
                    ts,
                    format!("/shop/items/{id}"),
                    "/items/{id}",
                    status,
                    ip,
                    &p.agents[0],
                )
            })
            .collect()
        }
        _ => {
            let n = (p.volume as f64 * growth * (0.85 + 0.3 * rng.f())) as u64;
            spread(rng, p.shape, day, n)
                .into_iter()
                .map(|ts| interactive(rng, p, ts, day))
                .collect()
        }
    }
}

/// What an injected consumer does on top of (or instead of) its honest traffic.
fn injected_day(
    rng: &mut Rng,
    p: &Profile,
    inject: Inject,
    day: i64,
    total_per_day: u64,
) -> Vec<Event> {
    let mut events = honest_day(rng, p, day);
    match inject {
        Inject::SharedKey => {
            // Other applications with the same key: their own networks and clients.
            let others = rng.range(8, 30);
            let extra = (p.volume as f64 * (0.3 + rng.f())) as u64;
            let apps: Vec<(u32, String)> = (0..others)
                .map(|i| {
                    (
                        rng.next() as u32 >> 8,
                        format!("other-app-{}/{}", i % rng.range(2, 6), i),
                    )
                })
                .collect();
            for ts in spread(
                rng,
                Shape::Server {
                    around_the_clock: true,
                },
                day,
                extra.max(others * 3),
            ) {
                let (net, agent) = rng.pick(&apps).clone();
                let mut e = interactive(rng, p, ts, day);
                e.client_ip = Some(std::net::Ipv4Addr::from(net << 8 | 5).to_string());
                e.user_agent = Some(agent);
                events.push(e);
            }
        }
        Inject::SharedAbroad => {
            // Three machines in three other countries, busy in the same hours as home.
            let home = (p.networks[0] >> 16) % 200 + 1;
            let abroad: Vec<u32> = (1..=3)
                .map(|i| ((home + i) << 16) | rng.range(0, 0xffff) as u32)
                .collect();
            let first = rng.range(8, 16) as i64;
            let agent = p.agents[0].clone();
            for h in first..first + 3 {
                for (i, net) in abroad.iter().enumerate() {
                    for k in 0..rng.range(5, 15) as i64 {
                        let ts = day * DAY_MS + h * 3_600_000 + (i as i64 * 7 + k) * 60_000;
                        let mut e = interactive(rng, p, ts, day);
                        e.client_ip = Some(std::net::Ipv4Addr::from(net << 8 | 9).to_string());
                        e.user_agent = Some(agent.clone());
                        events.push(e);
                    }
                }
            }
        }
        Inject::SequentialScrape => {
            let start = rng.range(1, 50_000);
            let n = rng.range(1500, 4000);
            let ids: Vec<(u64, u16)> = (start..start + n)
                .map(|i| (i, if rng.f() < 0.05 { 404 } else { 200 }))
                .collect();
            events.extend(walk(p, day, 9, ids.into_iter(), 1500.0, rng));
        }
        Inject::GuessingScrape => {
            let n = rng.range(1500, 5000);
            let ids: Vec<(u64, u16)> = (0..n)
                .map(|_| {
                    (
                        rng.range(1, 400_000),
                        if rng.f() < 0.35 { 404 } else { 200 },
                    )
                })
                .collect();
            let mut walked = walk(p, day, 6, ids.into_iter(), 4000.0, rng);
            // Not perfectly regular: a human-written loop with jitter.
            for (i, e) in walked.iter_mut().enumerate() {
                e.ts_ms += (rng.range(0, 3000) as i64) * (i as i64 % 2);
            }
            events.extend(walked);
        }
        Inject::ResellerEndUsers => {
            let users = rng.range(150, 1500);
            let extra = p.volume * 2 + users * 3;
            for ts in spread(
                rng,
                Shape::Server {
                    around_the_clock: true,
                },
                day,
                extra,
            ) {
                let mut e = interactive(rng, p, ts, day);
                e.end_user = Some(format!("{}-customer{}", p.id, rng.range(0, users - 1)));
                events.push(e);
            }
        }
        Inject::ResellerShare => {
            let extra = (total_per_day as f64 * rng.range(30, 45) as f64 / 100.0) as u64;
            for ts in spread(rng, Shape::Mobile, day, extra) {
                events.push(interactive(rng, p, ts, day));
            }
        }
    }
    events.sort_by_key(|e| e.ts_ms);
    events
}

struct Outcome_ {
    consumer_days: usize,
    false_positives: Vec<String>,
    missed: Vec<String>,
}

fn run(seed: u64) -> Outcome_ {
    let mut rng = Rng(seed);
    let profiles = world(&mut rng);
    let consumers: Vec<Consumer> = profiles
        .iter()
        .map(|p| Consumer {
            id: p.id.clone(),
            name: None,
            plan: Some(p.plan.into()),
            team: None,
            use_case: Some(p.use_case.into()),
            metadata: Default::default(),
            created_at_ms: BASE_DAY * DAY_MS,
            limits: None,
        })
        .collect();
    let plans: BTreeMap<String, PlanConfig> = BTreeMap::new();
    let store = FeatureStore::with_ip_table(std::sync::Arc::new(ip_table()));
    let engine = Engine::default();
    let registry = Registry::standard();
    let honest_total: u64 = profiles.iter().map(|p| p.volume.max(p.walk)).sum();
    // (consumer, kind) pairs found on a labelled day, and the false positives.
    let mut found: BTreeSet<(String, FindingKind)> = BTreeSet::new();
    let mut out = Outcome_ {
        consumer_days: 0,
        false_positives: Vec::new(),
        missed: Vec::new(),
    };
    for d in 0..DAYS {
        let day = BASE_DAY + d;
        let mut events = Vec::new();
        for p in &profiles {
            match p.inject {
                Some((inject, start)) if d >= start => {
                    events.extend(injected_day(&mut rng, p, inject, day, honest_total))
                }
                _ => events.extend(honest_day(&mut rng, p, day)),
            }
        }
        events.sort_by_key(|e| e.ts_ms);
        store.observe(&events);
        if d < FIRST_JUDGED {
            continue;
        }
        let now = (day + 1) * DAY_MS - 1;
        let ctx =
            EvalContext::new(&engine, now, 3_600_000, &consumers, &plans).with_governance(&store);
        let (findings, _) = registry.evaluate(&ctx);
        out.consumer_days += profiles
            .iter()
            .filter(|p| events.iter().any(|e| e.consumer.as_deref() == Some(&p.id)))
            .count();
        for f in findings {
            let Some(c) = f.consumer.clone() else {
                continue;
            };
            let label = profiles
                .iter()
                .find(|p| p.id == c)
                .and_then(|p| p.inject)
                .filter(|(_, start)| d >= *start)
                .map(|(i, _)| i.kind());
            if label == Some(f.kind) {
                found.insert((c, f.kind));
            } else {
                out.false_positives.push(format!(
                    "day {d}: {} {c}: {}",
                    f.kind.as_str(),
                    f.summary
                ));
            }
        }
    }
    for p in &profiles {
        if let Some((inject, start)) = p.inject {
            if !found.contains(&(p.id.clone(), inject.kind())) {
                out.missed
                    .push(format!("{} ({inject:?} from day {start})", p.id));
            }
        }
    }
    out
}

/// The world's address owners: each first octet (1-254) its own autonomous system, in one of
/// 24 countries, written in iptoasn.com's format and read by the same parser as a real table.
fn ip_table() -> clientele_governance::iptable::IpTable {
    const COUNTRIES: [&str; 24] = [
        "US", "DE", "JP", "BR", "IN", "FR", "GB", "CA", "AU", "NL", "SE", "SG", "KR", "ZA", "MX",
        "ES", "IT", "PL", "NG", "AR", "ID", "TR", "VN", "EG",
    ];
    let text: String = (1..=254u32)
        .map(|b| {
            format!(
                "{b}.0.0.0\t{b}.255.255.255\t{}\t{}\tAS-{b}\n",
                64_512 + b,
                COUNTRIES[b as usize % COUNTRIES.len()]
            )
        })
        .collect();
    clientele_governance::iptable::IpTable::parse(&text)
        .unwrap_or_else(|e| panic!("the synthetic table does not parse: {e}"))
}

#[test]
fn governance_scenario_finds_every_injection_and_stays_quiet_on_honest_traffic() {
    let mut consumer_days = 0;
    let mut fps = Vec::new();
    let mut missed = Vec::new();
    // GOVERNANCE_SEEDS=5,6,7 runs other worlds.
    let seeds: Vec<u64> = std::env::var("GOVERNANCE_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4]);
    for seed in seeds {
        let o = run(seed);
        consumer_days += o.consumer_days;
        fps.extend(
            o.false_positives
                .into_iter()
                .map(|f| format!("seed {seed}: {f}")),
        );
        missed.extend(o.missed.into_iter().map(|m| format!("seed {seed}: {m}")));
    }
    eprintln!(
        "governance scenario: {consumer_days} consumer-days judged, {} false positives, {} missed",
        fps.len(),
        missed.len()
    );
    for f in &fps {
        eprintln!("  false positive: {f}");
    }
    assert!(missed.is_empty(), "missed: {missed:#?}");
    let allowed = consumer_days / 1000;
    assert!(
        fps.len() <= allowed,
        "{} false positives in {consumer_days} consumer-days (allowed {allowed}): {fps:#?}",
        fps.len()
    );
}

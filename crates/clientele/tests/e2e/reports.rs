//! Reports end to end: about two months of back-dated history with a known answer posted to
//! `POST /v1/events`, a release marker, an evaluation, then `GET /v1/portfolio`,
//! `/v1/reports/{outreach,pricing,sla}` as JSON and CSV (parsed with the `csv` crate), the
//! releases list and `clientele report`.
//!
//! Everything is anchored to calendar months so the answer does not depend on the day the test
//! runs: M is the last whole month, P the one before; history runs from ten days before P to
//! the end of M, and the reports are asked for as of the end of M.
//!
//! The world (plans by value: free < pro < enterprise):
//! - steady (free): 20 calls a day on the same two routes all along: stagnating.
//! - grower (pro): 2% more calls every day: active, not stagnating.
//! - starter (free): from M+3 days, growing: new.
//! - leaver (pro): only until the end of P: churned.
//! - returner (free): before P, then from M+5 days: reactivated.
//! - bigfree (free): from two days before M, about 30% of all traffic: large share.
//! - growco (pro): 320-400 calls a day against a 400/day quota: outgrown.
//! - shopco (enterprise, api "shop"): POST /orders failing with 400 for a third of its calls
//!   in six hours after release v2.3, two days before the end of M.
//! - bigcorp (enterprise): a tenth of its plan at most: oversized.

use std::collections::BTreeMap;

use chrono::{Datelike, TimeZone, Utc};
use http::Method;
use serde_json::{Value, json};

use crate::support::*;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn month_start(year: i32, month: u32) -> i64 {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}

/// (P start, M start, M end) for the last whole month M.
fn months() -> (i64, i64, i64, String) {
    let now = Utc::now();
    let (y, m) = (now.year(), now.month());
    let prev = |y: i32, m: u32| if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    let (my, mm) = prev(y, m);
    let (py, pm) = prev(my, mm);
    (
        month_start(py, pm),
        month_start(my, mm),
        month_start(y, m),
        format!("{my:04}-{mm:02}"),
    )
}

#[allow(clippy::too_many_arguments)]
fn ev(
    ts: i64,
    consumer: &str,
    plan: &str,
    api: &str,
    method: &str,
    route: &str,
    status: u16,
    latency: f64,
) -> Value {
    json!({
        "ts": ts, "consumer": consumer, "plan": plan, "api": api, "method": method,
        "path": route.replace("{id}", "42"), "route": route, "status": status, "latency_ms": latency,
    })
}

/// `n` calls spread evenly over the day starting at `day`, alternating the routes.
#[allow(clippy::too_many_arguments)]
fn day_of_calls(
    out: &mut Vec<Value>,
    day: i64,
    n: u64,
    consumer: &str,
    plan: &str,
    api: &str,
    routes: &[(&str, &str)],
    status: impl Fn(i64) -> u16,
) {
    for i in 0..n {
        let ts = day + (DAY * i as i64) / n as i64 + 1000;
        let (method, route) = routes[i as usize % routes.len()];
        // Latencies 20-220 ms, deterministic.
        let latency = 20.0 + ((i * 37) % 200) as f64;
        out.push(ev(
            ts,
            consumer,
            plan,
            api,
            method,
            route,
            status(ts),
            latency,
        ));
    }
}

fn world(p_start: i64, m_start: i64, m_end: i64) -> (Vec<Value>, i64, i64) {
    let pets: &[(&str, &str)] = &[("GET", "/pets/{id}"), ("GET", "/pets")];
    let orders: &[(&str, &str)] = &[("POST", "/orders"), ("GET", "/orders/{id}")];
    let begin = p_start - 10 * DAY;
    let incident_start = m_end - 2 * DAY + 6 * HOUR;
    let incident_end = incident_start + 6 * HOUR;
    let ok = |_: i64| 200u16;
    // grower: about one call in 200 fails with 503 all along, and every call of the last six
    // hours of M (an outage), which burns its error budget in every window.
    let grower_status = |ts: i64| {
        if ts >= m_end - 6 * HOUR || ts % 200 == 7 {
            503
        } else {
            200
        }
    };
    let mut out = Vec::new();
    let mut day = begin;
    while day < m_end {
        day_of_calls(&mut out, day, 20, "steady", "free", "petstore", pets, ok);
        let grow = |base: f64, since: i64| {
            (base * 1.02f64.powi(((day - since) / DAY) as i32)).round() as u64
        };
        day_of_calls(
            &mut out,
            day,
            grow(30.0, begin),
            "grower",
            "pro",
            "petstore",
            pets,
            grower_status,
        );
        day_of_calls(
            &mut out,
            day,
            grow(30.0, begin),
            "bigcorp",
            "enterprise",
            "petstore",
            pets,
            ok,
        );
        if day < m_start {
            day_of_calls(&mut out, day, 30, "leaver", "pro", "petstore", pets, ok);
        }
        if day < p_start {
            day_of_calls(&mut out, day, 10, "returner", "free", "petstore", pets, ok);
        }
        if day >= m_start + 5 * DAY {
            day_of_calls(
                &mut out,
                day,
                5 + ((day - m_start) / DAY) as u64,
                "returner",
                "free",
                "petstore",
                pets,
                ok,
            );
        }
        if day >= m_start + 3 * DAY {
            day_of_calls(
                &mut out,
                day,
                5 + ((day - m_start) / DAY) as u64,
                "starter",
                "free",
                "petstore",
                pets,
                ok,
            );
        }
        if day >= m_start - 2 * DAY {
            day_of_calls(
                &mut out,
                day,
                grow(300.0, m_start - 2 * DAY),
                "bigfree",
                "free",
                "petstore",
                pets,
                ok,
            );
            // Weeks counted back from the end of M, so the stagnation window's weeks alternate.
            let growco = if ((m_end - day) / DAY - 1) / 7 % 2 == 0 {
                320
            } else {
                400
            };
            day_of_calls(&mut out, day, growco, "growco", "pro", "petstore", pets, ok);
            day_of_calls(
                &mut out,
                day,
                grow(300.0, m_start - 2 * DAY),
                "shopco",
                "enterprise",
                "shop",
                orders,
                |ts| {
                    if (incident_start..incident_end).contains(&ts) && ts % 3 == 0 {
                        400
                    } else {
                        201
                    }
                },
            );
        }
        day += DAY;
    }
    (out, incident_start, incident_end)
}

async fn get_csv(server: &Server, path: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let (status, headers, bytes) = send(
        Method::GET,
        &format!("http://{}{path}", server.admin),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .cloned()
                .zip(r.iter().map(str::to_string))
                .collect()
        })
        .collect();
    (header, rows)
}

fn names(items: &Value) -> Vec<String> {
    let mut v: Vec<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["consumer"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_months_of_history_give_the_known_portfolio_and_reports() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir, |gateway, admin| {
        format!(
            r#"
[gateway]
listen = "{gateway}"

[admin]
listen = "{admin}"
token = "{ADMIN_TOKEN}"
max_body_bytes = 8388608

[storage]
data_dir = "data"
raw_event_retention_days = 130

[analytics]
hour_retention_days = 130

[detection]
interval_secs = 0

[[apis]]
name = "petstore"
upstream = "http://{up}"
prefix = "/"

[[apis]]
name = "shop"
upstream = "http://{up}"
prefix = "/shop"

[plans.free]
rate_per_second = 2
burst = 5
quota_per_day = 1000

[plans.pro]
rate_per_second = 20
burst = 40
quota_per_day = 400

[plans.enterprise]
rate_per_second = 200
burst = 400
"#,
            up = upstream.addr
        )
    })
    .await;
    let (p_start, m_start, m_end, month) = months();
    let (events, incident_start, _) = world(p_start, m_start, m_end);
    post_events(&server, &events).await;

    // The release went out an hour before the errors began.
    let release_at = incident_start - HOUR;
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/releases",
            Some(json!({"api": "shop", "version": "v2.3", "at": clientele_core_ts(release_at)})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], "v2.3");
    // The same version again, and bad input, are refused with problem+json.
    let (status, _) = server
        .admin(
            Method::POST,
            "/v1/releases",
            Some(json!({"api": "shop", "version": "v2.3", "at": release_at})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/releases",
            Some(json!({"api": "", "version": "v1"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("api"), "{body}");
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/releases",
            Some(json!({"api": "shop", "version": "v9", "at": "yesterday"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = server
        .admin(Method::GET, "/v1/releases?api=shop", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["releases"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["releases"][0]["source"], "api");

    // Findings as of the end of M, over the two days that hold the incident.
    let (status, body) = server
        .admin(
            Method::POST,
            &format!("/v1/findings/evaluate?lookback=72h&at={m_end}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Findings say which release they followed.
    let (_, found) = server
        .admin(Method::GET, "/v1/findings?consumer=shopco", None)
        .await;
    let found = found["findings"].as_array().unwrap();
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|f| f["since_release"] == "v2.3"),
        "{found:?}"
    );
    let (_, found) = server
        .admin(Method::GET, "/v1/findings?consumer=grower", None)
        .await;
    assert!(
        found["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f.get("since_release").is_none()),
        "{found}"
    );

    // Portfolio: exact counts.
    let (status, p) = server
        .admin(Method::GET, &format!("/v1/portfolio?month={month}"), None)
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        p["consumers"],
        json!({"active": 8, "active_prev": 7, "new": 1, "churned": 1, "reactivated": 1, "stagnating": 1}),
        "{p}"
    );
    assert_eq!(
        p["lists"],
        json!({"new": ["starter"], "churned": ["leaver"], "reactivated": ["returner"], "stagnating": ["steady"]}),
        "{p}"
    );
    let apis = p["apis"].as_array().unwrap();
    let api = |name: &str| apis.iter().find(|a| a["api"] == name).unwrap().clone();
    assert_eq!(api("shop")["active_consumers"], 1);
    assert_eq!(api("shop")["active_consumers_prev"], 1);
    assert_eq!(api("petstore")["active_consumers"], 7);
    assert_eq!(api("petstore")["active_consumers_prev"], 6);
    // Every latency is 20-220 ms, under T = 500 ms: satisfaction is the share of answers < 400.
    let petstore = api("petstore");
    let petstore_errors = petstore["error_rate"].as_f64().unwrap();
    assert!(
        petstore_errors > 0.0 && petstore_errors < 0.005,
        "{petstore}"
    );
    assert!(
        (petstore["satisfaction"].as_f64().unwrap() - (1.0 - petstore_errors)).abs() < 1e-3,
        "{petstore}"
    );
    let shop = api("shop");
    let shop_errors = shop["error_rate"].as_f64().unwrap();
    assert!(shop_errors > 0.0 && shop_errors < 0.02, "{shop}");
    assert!(
        (shop["satisfaction"].as_f64().unwrap() - (1.0 - shop_errors)).abs() < 1e-3,
        "{shop}"
    );
    assert!(shop["p95_ms"].as_f64().unwrap() <= 225.0, "{shop}");
    assert_eq!(p["top_plan"]["plan"], "enterprise", "{p}");
    assert_eq!(p["top_plan"]["experience"], "unchanged", "{p}");
    assert_eq!(p["releases"][0]["version"], "v2.3", "{p}");
    let (header, rows) = get_csv(&server, &format!("/v1/portfolio?month={month}&format=csv")).await;
    assert!(header.contains(&"satisfaction".to_string()), "{header:?}");
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["consumers_active"] == "8" && r["month"] == month)
    );

    // Outreach: the failing integration first, naming the release and the route.
    let (status, o) = server
        .admin(
            Method::GET,
            &format!("/v1/reports/outreach?to={m_end}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{o}");
    let items = o["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 3, "a short list: {o}");
    let first = &items[0];
    assert_eq!(first["consumer"], "shopco", "{o}");
    assert_eq!(first["release"]["version"], "v2.3", "{o}");
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains("after our v2.3 release")
            && message.contains("POST /orders")
            && message.contains("4xx"),
        "{message}"
    );
    let (_, rows) = get_csv(
        &server,
        &format!("/v1/reports/outreach?to={m_end}&format=csv"),
    )
    .await;
    assert_eq!(rows.len(), items.len());
    assert_eq!(rows[0]["consumer"], "shopco");
    assert_eq!(
        rows[0]["message"], message,
        "CSV quoting keeps the message whole"
    );

    // Pricing: exactly the three consumers whose plan does not fit.
    let (status, pr) = server
        .admin(
            Method::GET,
            &format!("/v1/reports/pricing?to={m_end}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{pr}");
    assert_eq!(
        names(&pr["items"]),
        ["bigcorp", "bigfree", "growco"],
        "{pr}"
    );
    let item = |c: &str| {
        pr["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["consumer"] == c)
            .unwrap()
            .clone()
    };
    assert_eq!(item("growco")["kind"], "outgrown");
    assert_eq!(item("growco")["recommended_plan"], "enterprise");
    assert_eq!(item("bigfree")["kind"], "large_share");
    assert_eq!(item("bigfree")["recommended_plan"], "pro");
    assert_eq!(item("bigcorp")["kind"], "oversized");
    assert_eq!(item("bigcorp")["recommended_plan"], "free");
    let (_, rows) = get_csv(
        &server,
        &format!("/v1/reports/pricing?to={m_end}&format=csv"),
    )
    .await;
    assert_eq!(rows.len(), 3);

    // SLA: every consumer active in the 28 days, proposals never tighter than observed.
    let (status, sla) = server
        .admin(Method::GET, &format!("/v1/reports/sla?to={m_end}"), None)
        .await;
    assert_eq!(status, 200, "{sla}");
    assert_eq!(
        names(&sla["items"]),
        [
            "bigcorp", "bigfree", "growco", "grower", "returner", "shopco", "starter", "steady"
        ],
        "{sla}"
    );
    for i in sla["items"].as_array().unwrap() {
        assert!(
            i["proposed"]["availability"].as_f64().unwrap() <= i["availability"].as_f64().unwrap(),
            "{i}"
        );
        assert!(
            i["proposed"]["latency_p95_ms"].as_f64().unwrap() >= i["p95_ms"].as_f64().unwrap(),
            "{i}"
        );
        assert_eq!(i["burn"].as_array().unwrap().len(), 3, "{i}");
        let alerting: Vec<bool> = i["burn"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["alerting"].as_bool().unwrap())
            .collect();
        if i["consumer"] == "grower" {
            let a = i["availability"].as_f64().unwrap();
            assert!(a > 0.98 && a < 0.99, "{i}");
            assert_eq!(i["proposed"]["availability"], 0.98, "{i}");
            assert_eq!(alerting, [true, true, true], "{i}");
        } else {
            assert_eq!(i["availability"], 1.0, "{i}");
            assert_eq!(alerting, [false, false, false], "{i}");
        }
    }
    let (header, rows) = get_csv(&server, &format!("/v1/reports/sla?to={m_end}&format=csv")).await;
    assert_eq!(rows.len(), 8);
    assert!(header.contains(&"burn_3d".to_string()));

    // Bad parameters are named.
    let (status, body) = server
        .admin(Method::GET, "/v1/portfolio?month=2026-13", None)
        .await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("month"), "{body}");
    let (status, body) = server
        .admin(Method::GET, "/v1/reports/sla?format=xml", None)
        .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("format"),
        "{body}"
    );

    // The CLI reads the same answers.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
            .args(args)
            .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
            .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = cli(&["report", "portfolio", "--month", &month]);
    assert!(
        text.contains("8 active consumers") && text.contains("stagnating: steady"),
        "{text}"
    );
    let text = cli(&["report", "pricing", "--to", &m_end.to_string(), "--csv"]);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.records().count(), 3, "{text}");
    let text = cli(&["report", "outreach", "--to", &m_end.to_string(), "--json"]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["items"][0]["consumer"], "shopco");
}

fn clientele_core_ts(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_reaches_the_alert_webhooks_in_their_formats() {
    let upstream = start_upstream().await;
    let receiver = crate::findings::start_receiver().await;
    let extra = format!(
        r#"
[digest]
interval_secs = 1

[detection]
interval_secs = 0

[[alerts]]
name = "product-json"
webhook = "http://{addr}/digest-json"

[[alerts]]
name = "product-slack"
webhook = "http://{addr}/digest-slack"
format = "slack"
"#,
        addr = receiver.addr
    );
    let server = Server::start(upstream.addr, &extra).await;
    let now = Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..50)
        .map(|i| {
            ev(
                now - (i + 1) * 60_000,
                "acme",
                "pro",
                "petstore",
                "GET",
                "/pets",
                200,
                30.0,
            )
        })
        .collect();
    post_events(&server, &events).await;
    // An agent session that reads the same pet eight times.
    let mut session: Vec<Value> = (0..8)
        .map(|i| {
            let mut e = ev(
                now - 30_000 + i,
                "bot",
                "free",
                "petstore",
                "GET",
                "/pets/{id}",
                200,
                5.0,
            );
            e["session_id"] = json!("s-1");
            e
        })
        .collect();
    session.push({
        let mut e = ev(
            now - 20_000,
            "bot",
            "free",
            "petstore",
            "POST",
            "/orders",
            201,
            5.0,
        );
        e["session_id"] = json!("s-1");
        e
    });
    post_events(&server, &session).await;
    let (status, agents) = server.admin(Method::GET, "/v1/reports/agents", None).await;
    assert_eq!(status, 200, "{agents}");
    assert_eq!(names(&agents["items"]), ["bot"], "{agents}");
    let call = &agents["items"][0]["calls"][0];
    assert_eq!(call["call"], "GET /pets/42", "{agents}");
    assert_eq!(call["calls"], 8);
    assert_eq!(call["saved_round_trips"], 7);
    let (_, rows) = get_csv(&server, "/v1/reports/agents?format=csv").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["saved_round_trips"], "7");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (json_body, slack_body) = loop {
        {
            let got = receiver.got.lock().unwrap();
            let find = |path: &str| {
                got.iter()
                    .filter(|(p, _)| p == path)
                    .map(|(_, v)| v.clone())
                    // The first digests may be sent before the events are in.
                    .find(|v| {
                        let c = &v["digest"]["portfolio"]["consumers"];
                        c["active"].as_u64().unwrap_or(0) + c["active_prev"].as_u64().unwrap_or(0)
                            >= 1
                            || v["text"].as_str().is_some_and(|t| {
                                !t.contains(": 0 active consumers (0 the month before)")
                            })
                    })
            };
            if let (Some(j), Some(s)) = (find("/digest-json"), find("/digest-slack")) {
                break (j, s);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no digest arrived: {:?}",
            receiver.got.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(json_body["event"], "digest");
    assert_eq!(json_body["rule"], "product-json");
    assert_eq!(json_body["digest"]["sla_alerting"], json!([]));
    assert!(
        json_body["digest"]["portfolio"]["apis"][0]["api"] == "petstore",
        "{json_body}"
    );
    // The preview answers the same digest.
    let (status, preview) = server.admin(Method::GET, "/v1/reports/digest", None).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview["portfolio"]["month"],
        json_body["digest"]["portfolio"]["month"]
    );
    assert_eq!(preview["outreach"], json_body["digest"]["outreach"]);
    let (status, _) = server
        .admin(Method::GET, "/v1/reports/digest?format=csv", None)
        .await;
    assert_eq!(status, 400);
    let text = slack_body["text"].as_str().unwrap();
    assert!(text.starts_with("Clientele digest "), "{text}");
    assert_eq!(slack_body["blocks"][0]["type"], "section");
}

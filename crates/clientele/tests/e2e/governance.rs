//! Governance end to end: behaviour features fed through the gateway (client networks from a
//! trusted proxy's X-Forwarded-For, end users from X-End-User-Id) and through `POST
//! /v1/events`, plan policies judged by the evaluation, a `block` policy refusing with 403
//! problem+json (recorded as an event), the risk endpoint, the dashboard page, and features
//! loaded from rollups.db after a restart.

use http::Method;
use serde_json::{Value, json};

use crate::support::*;
use crate::ui::admin_browser;

const EXTRA: &str = r#"trusted_proxies = ["127.0.0.0/8"]

[plans.trial]
rate_per_second = 100
burst = 200

[plans.trial.policy]
max_networks_per_day = 3
action = "block"

[plans.metered]
rate_per_second = 100
burst = 200

[plans.metered.policy]
max_end_users = 5
resale = "forbidden"
"#;

async fn call(
    server: &Server,
    key: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Value) {
    let mut all = vec![("x-api-key", key)];
    all.extend_from_slice(headers);
    let (status, h, body) = send(Method::GET, &server.gw("/pets/1"), &all, None)
        .await
        .unwrap();
    (
        status,
        h,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn evaluate(server: &Server) -> Vec<Value> {
    let (status, body) = server
        .admin(Method::POST, "/v1/findings/evaluate?lookback=1h", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = server
        .admin(Method::GET, "/v1/findings?kind=policy_violation", None)
        .await;
    list["findings"].as_array().cloned().unwrap_or_default()
}

fn finding_of<'a>(findings: &'a [Value], consumer: &str) -> Option<&'a Value> {
    findings.iter().find(|f| f["consumer"] == consumer)
}

#[tokio::test]
async fn plan_policies_flag_and_block_and_the_risk_page_explains() {
    let upstream = start_upstream().await;
    let mut server = Server::start(upstream.addr, EXTRA).await;
    let (_, shared) = server.consumer_with_key("shared", Some("trial")).await;
    let (_, reseller) = server.consumer_with_key("reseller", Some("metered")).await;

    // One key, six networks (/24s) behind the trusted proxy: the trial plan allows three.
    for n in 0..6 {
        let ip = format!("198.51.{n}.7");
        let (status, _, _) = call(&server, &shared, &[("x-forwarded-for", &ip)]).await;
        assert_eq!(status, 200);
    }
    // Eight end users behind one key: the metered plan allows five (flag only).
    for u in 0..8 {
        let user = format!("customer-{u}");
        let (status, _, _) = call(&server, &reseller, &[("x-end-user-id", &user)]).await;
        assert_eq!(status, 200);
    }
    let recorded = server.wait_events("reseller", "", |e| e.len() >= 8).await;
    assert!(
        recorded.iter().any(|e| e["end_user"] == "customer-3"),
        "{recorded:?}"
    );
    server.wait_events("shared", "", |e| e.len() >= 6).await;

    // Sidecar mode: the same features from ingested events, `user` being OpenAI's name.
    let now = clientele_core::time::now_ms();
    let lines: Vec<String> = (0..10)
        .map(|i| {
            let who = if i % 2 == 0 { "end_user" } else { "user" };
            json!({"ts": now - 1000 + i, "consumer": "sidecar", "plan": "metered", "method": "GET",
                "path": "/pets/2", "status": 200, "latency_ms": 3.0, "client_ip": "192.0.2.4", who: format!("u{i}")})
            .to_string()
        })
        .collect();
    let (status, _, body) = send(
        Method::POST,
        &format!("http://{}/v1/events", server.admin),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", "application/x-ndjson"),
        ],
        Some(lines.join("\n").into()),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));

    let findings = evaluate(&server).await;
    let f = finding_of(&findings, "shared").expect("shared key flagged");
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["evidence"]["action"], "block");
    assert_eq!(f["evidence"]["rules"][0]["rule"], "max_networks_per_day");
    assert_eq!(f["evidence"]["rules"][0]["value"], 6.0);
    assert!(f["summary"].as_str().unwrap().contains("403"), "{f}");
    let f = finding_of(&findings, "reseller").expect("end users over the plan's limit");
    assert_eq!(f["evidence"]["rules"][0]["rule"], "max_end_users");
    assert_eq!(f["evidence"]["action"], "flag");
    let f = finding_of(&findings, "sidecar").expect("ingested events judged too");
    assert_eq!(f["evidence"]["rules"][0]["value"], 10.0);

    // Blocked: 403 problem+json naming the rule, recorded like any other refusal.
    let (status, headers, body) =
        call(&server, &shared, &[("x-forwarded-for", "198.51.0.7")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max_networks_per_day"),
        "{body}"
    );
    assert!(
        body["type"].as_str().unwrap().ends_with("policy-violation"),
        "{body}"
    );
    server
        .wait_events("shared", "", |e| {
            e.iter()
                .any(|e| e["status"] == 403 && e["outcome"] == "policy_blocked")
        })
        .await;
    // A flag policy does not refuse.
    let (status, _, _) = call(&server, &reseller, &[("x-end-user-id", "customer-1")]).await;
    assert_eq!(status, 200);

    // The risk report: every consumer with calls, riskiest first, factors explained.
    let (status, risk) = server.admin(Method::GET, "/v1/governance/risk", None).await;
    assert_eq!(status, 200, "{risk}");
    let rows = risk["consumers"].as_array().unwrap();
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| (0.0..=100.0).contains(s)));
    let shared_row = rows.iter().find(|r| r["consumer"] == "shared").unwrap();
    assert_eq!(shared_row["plan"], "trial");
    assert!(
        shared_row["factors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "governance_findings" && f["value"].as_f64().unwrap() > 0.0)
    );
    let (_, only) = server
        .admin(Method::GET, "/v1/governance/risk?plan=metered", None)
        .await;
    let names: Vec<&str> = only["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["consumer"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"reseller") && names.contains(&"sidecar"));
    let (status, bad) = server
        .admin(Method::GET, "/v1/governance/risk?from=yesterday", None)
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["detail"].as_str().unwrap().contains("from"), "{bad}");
    let (_, doc) = server.admin(Method::GET, "/v1/openapi.json", None).await;
    assert!(doc["paths"]["/v1/governance/risk"].is_object());

    let (status, features) = server
        .admin(Method::GET, "/v1/governance/consumers/shared", None)
        .await;
    assert_eq!(status, 200, "{features}");
    assert_eq!(features["days"][0]["networks"], 6);
    assert_eq!(features["blocked_by"], "max_networks_per_day");

    // The dashboard: the governance page in the nav, and the consumer's risk and behaviour.
    let mut b = admin_browser(&server).await;
    let page = b.get(&server, "/governance").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"href="/governance""#), "nav link");
    assert!(
        page.body.contains(r#"data-consumer="shared""#),
        "{}",
        page.body
    );
    assert!(page.body.contains("max_networks_per_day"));
    let page = b.get(&server, "/consumers/shared").await;
    assert!(
        page.body.contains(r#"data-metric="risk_score""#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"id="features""#));

    // Restart: the features saved at the graceful stop are loaded (no day to replay), and the
    // next evaluation blocks the key again.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    assert!(server.terminate().success());
    let server = Server::start_in(dir, upstream.addr, EXTRA).await;
    let log = server.stderr();
    let loaded = log
        .lines()
        .find(|l| l.contains("loaded governance features"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        loaded.contains("consumers=")
            && !loaded.contains("consumers=0 ")
            && !loaded.contains("replay_from="),
        "every day is in the save: {loaded}"
    );
    let (_, features) = server
        .admin(Method::GET, "/v1/governance/consumers/shared", None)
        .await;
    assert_eq!(features["days"][0]["networks"], 6, "{features}");
    evaluate(&server).await;
    let (status, _, _) = call(&server, &shared, &[]).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_bad_policy_is_refused_at_start_up_with_its_key() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clientele.toml");
    let text = config_text(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        upstream.addr,
        "[plans.trial]\nrate_per_second = 1\nburst = 1\n\n[plans.trial.policy]\nmax_share_of_traffic = 2.0\n",
    );
    std::fs::write(&config, text).unwrap();
    let err = serve_refused(&config);
    assert!(
        err.contains("plans.trial.policy.max_share_of_traffic"),
        "{err}"
    );
    std::fs::write(&config, config_text(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        upstream.addr,
        "[plans.trial]\nrate_per_second = 1\nburst = 1\n\n[plans.trial.policy]\naction = \"deny\"\n",
    ))
    .unwrap();
    let err = serve_refused(&config);
    assert!(err.contains("action"), "{err}");
}

/// With `governance.ip_table`, a key that always came from one country and is then used from
/// three countries within one hour is a critical `key_sharing`, even from few networks; the
/// features show its autonomous systems and countries.
#[tokio::test]
async fn a_key_in_three_countries_within_an_hour_is_shared() {
    let table = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ip2asn-sample.tsv"
    );
    let extra =
        format!("trusted_proxies = [\"127.0.0.0/8\"]\n\n[governance]\nip_table = \"{table}\"\n");
    let upstream = start_upstream().await;
    let server = Server::start(upstream.addr, &extra).await;
    let (_, key) = server.consumer_with_key("globetrotter", Some("pro")).await;
    let (_, steady_key) = server.consumer_with_key("homebody", Some("pro")).await;

    // Five days of history from one network in the US, for both consumers, in time order.
    let now = clientele_core::time::now_ms();
    let day = 86_400_000i64;
    let lines: Vec<Value> = (1..=5)
        .rev()
        .flat_map(|d| {
            (0..20).flat_map(move |i| {
                ["globetrotter", "homebody"].map(|who| {
                    json!({"ts": now - d * day + i * 60_000, "consumer": who, "plan": "pro",
                        "method": "GET", "path": "/pets/1", "status": 200, "latency_ms": 3.0,
                        "client_ip": "192.0.2.10"})
                })
            })
        })
        .collect();
    let (status, body) = crate::analytics::post_ndjson(&server, &lines).await;
    assert_eq!(status, 202, "{body}");

    // Today, through the gateway: the US, Germany and Japan within minutes for one key; the
    // other stays home on a second US network.
    for ip in ["192.0.2.77", "198.51.100.7", "203.0.113.9", "198.51.100.8"] {
        let (status, _, _) = call(&server, &key, &[("x-forwarded-for", ip)]).await;
        assert_eq!(status, 200);
    }
    for _ in 0..4 {
        let (status, _, _) =
            call(&server, &steady_key, &[("x-forwarded-for", "192.0.2.200")]).await;
        assert_eq!(status, 200);
    }
    let live = |e: &[Value]| e.iter().filter(|x| x["client_ip"] != "192.0.2.10").count() >= 4;
    server.wait_events("globetrotter", "", live).await;
    server.wait_events("homebody", "", live).await;

    let (status, body) = server
        .admin(Method::POST, "/v1/findings/evaluate?lookback=1h", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = server
        .admin(Method::GET, "/v1/findings?kind=key_sharing", None)
        .await;
    let findings = list["findings"].as_array().cloned().unwrap_or_default();
    assert!(finding_of(&findings, "homebody").is_none(), "{findings:?}");
    let f = finding_of(&findings, "globetrotter").expect("the shared key is found");
    assert_eq!(f["severity"], "critical", "{f}");
    let e = &f["evidence"];
    assert_eq!(e["max_countries_in_one_hour"], 3, "{f}");
    assert_eq!(e["baseline_max_countries_in_one_hour"], 1, "{f}");
    assert_eq!(e["countries"], json!(["US", "DE", "JP"]), "{f}");
    assert_eq!(e["new_countries"], json!(["DE", "JP"]), "{f}");
    assert_eq!(e["asns"], 3, "{f}");
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains("3 countries within one hour (US, DE, JP)"),
        "{summary}"
    );

    // The features per day carry the owners of the addresses.
    let (status, body) = server
        .admin(Method::GET, "/v1/governance/consumers/globetrotter", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let days = body["days"].as_array().expect("days");
    let today = days.last().expect("today");
    assert_eq!(today["countries"], json!(["US", "DE", "JP"]), "{body}");
    assert_eq!(today["max_countries_per_hour"], 3, "{body}");
    assert_eq!(days[0]["countries"], json!(["US"]), "{body}");
}

/// A table that does not parse stops the start with the file and the line at fault.
#[tokio::test]
async fn a_broken_ip_table_stops_the_start_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("ip2asn.tsv");
    std::fs::write(
        &table,
        "1.0.0.0\t1.0.0.255\t13335\tUS\tOK\n1.0.1.0\tnot-an-ip\t1\tUS\tX\n",
    )
    .unwrap();
    let config = dir.path().join("clientele.toml");
    std::fs::write(
        &config,
        config_text(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            &format!("\n[governance]\nip_table = \"{}\"\n", table.display()),
        ),
    )
    .unwrap();
    let err = serve_refused(&config);
    assert!(
        err.contains("governance.ip_table") && err.contains("line 2") && err.contains("not-an-ip"),
        "{err}"
    );
}

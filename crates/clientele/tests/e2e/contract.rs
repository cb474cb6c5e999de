//! Contracts end to end: the repository's own OpenAPI fixture (and variants) on the real binary.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::*;

/// A pet shop written for the tests, kept in the repository (see its header for what they edit).
const PETSTORE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../clientele-contract/tests/fixtures/kennel.yaml"
);

/// The fixture with findPetsByTags deprecated (replaced by findPetsByStatus), no `default`
/// responses, and a `/status` operation documenting only 200.
fn variant() -> String {
    let original = std::fs::read_to_string(PETSTORE).unwrap();
    let v = original
        .replacen(
            "      operationId: findPetsByTags\n",
            "      operationId: findPetsByTags\n      deprecated: true\n      x-replaced-by: findPetsByStatus\n",
            1,
        )
        .replace(
            "        default:\n          $ref: '#/components/responses/Trouble'\n",
            "",
        )
        .replacen(
            "paths:\n",
            "paths:\n  /status:\n    get:\n      responses:\n        '200':\n          description: ok\n",
            1,
        );
    assert_ne!(v, original);
    v
}

async fn start_with_spec(spec: &str) -> (Server, Upstream) {
    start_with_spec_and(spec, "").await
}

/// Like `start_with_spec`, with more `[[apis]]` keys for the petstore API.
async fn start_with_spec_and(spec: &str, api_extra: &str) -> (Server, Upstream) {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("petstore.yaml"), spec).unwrap();
    let addr = upstream.addr;
    let server = Server::start_with(dir, |gateway, admin| {
        format!(
            "[gateway]\nlisten = \"{gateway}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [storage]\ndata_dir = \"data\"\n[[apis]]\nname = \"petstore\"\nupstream = \"http://{addr}\"\n\
             prefix = \"/\"\nopenapi = \"petstore.yaml\"\n{api_extra}\n[plans.pro]\nrate_per_second = 100\nburst = 200\n"
        )
    })
    .await;
    (server, upstream)
}

#[tokio::test]
async fn routes_are_spec_templates_and_drift_is_found_per_consumer() {
    let (mut server, _up) = start_with_spec(&variant()).await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;
    for path in [
        "/pet/1",
        "/api/v1/pet/2",
        "/pet/findByTags?tags=a",
        "/pet/findByTags?tags=b",
        "/pet/findByStatus?status=sold",
        "/not/documented/7",
        "/status?code=503",
    ] {
        let (status, _, _) = get_with_key(&server, path, &key).await;
        assert!(status == 200 || status == 503, "{path}: {status}");
    }
    server.wait_events("acme", "", |e| e.len() >= 7).await;
    let events = server.wait_events("acme", "", |e| e.len() >= 7).await;
    let routes: Vec<&str> = events.iter().filter_map(|e| e["route"].as_str()).collect();
    assert!(routes.contains(&"/pet/{petId}"), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("api/v1")), "{routes:?}");

    // Stats list the spec's templates.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = server.admin(Method::GET, "/v1/stats/routes", None).await;
        let routes: Vec<String> = body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["route"].as_str().unwrap_or("").to_string())
            .collect();
        if routes.iter().any(|r| r == "/pet/{petId}") {
            break;
        }
        assert!(Instant::now() < deadline, "{routes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, _) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200);
    let (_, body) = server
        .admin(Method::GET, "/v1/findings?consumer=acme", None)
        .await;
    let found: Vec<(String, String)> = body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["route"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (kind, route) in [
        ("undocumented_endpoint", "GET /not/documented/{id}"),
        ("undocumented_status", "GET /status"),
        ("deprecated_usage", "GET /pet/findByTags"),
    ] {
        assert!(
            found.iter().any(|(k, r)| k == kind && r == route),
            "{kind} {route} not in {found:?}"
        );
    }

    let (status, body) = server.admin(Method::GET, "/v1/deprecations", None).await;
    assert_eq!(status, 200);
    let dep: &Value = &body["deprecations"][0];
    assert_eq!(dep["route"], "GET /pet/findByTags");
    assert_eq!(dep["replaced_by"], "GET /pet/findByStatus");
    assert_eq!(dep["consumers"][0]["consumer"], "acme");
    assert_eq!(dep["consumers"][0]["calls"], 2);
    let progress = dep["consumers"][0]["migration_progress"].as_f64().unwrap();
    assert!((progress - 1.0 / 3.0).abs() < 1e-9, "{progress}");

    // The sunset proposal: acme has no pace yet (no calls the week before), so no date, and
    // the report says whom to talk to first.
    let (status, body) = server
        .admin(Method::GET, "/v1/reports/deprecation", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let item = &body["items"][0];
    assert_eq!(item["route"], "GET /pet/findByTags", "{body}");
    assert_eq!(item["blocked_by"], serde_json::json!(["acme"]), "{body}");
    assert_eq!(item["proposed_sunset"], Value::Null, "{body}");
    assert_eq!(item["consumers"][0]["calls_last_week"], 2, "{body}");
    let progress = item["consumers"][0]["progress"].as_f64().unwrap();
    assert!((progress - 0.3333).abs() < 1e-4, "{progress}");

    // The dashboard's deprecations page shows the same report.
    let mut browser = crate::ui::admin_browser(&server).await;
    let page = browser.get(&server, "/deprecations").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for needle in [
        "GET /pet/findByTags",
        "replaced by <code>GET /pet/findByStatus</code>",
        ">acme</a>",
        "33% on the replacement",
    ] {
        assert!(
            page.body.contains(needle),
            "{needle} not on the page:\n{}",
            page.body
        );
    }

    // A bad new spec is refused with the file and place, and the last good one keeps serving.
    let spec_path = server.dir.path().join("petstore.yaml");
    std::fs::write(
        &spec_path,
        "openapi: 3.0.3\npaths:\n  /a: {$ref: '#/nowhere'}\n",
    )
    .unwrap();
    let (status, body) = server
        .admin(Method::POST, "/v1/apis/petstore/spec/reload", None)
        .await;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("petstore.yaml") && detail.contains("#/paths/~1a"),
        "{detail}"
    );
    std::fs::write(&spec_path, std::fs::read_to_string(PETSTORE).unwrap()).unwrap();
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/apis/petstore/spec/reload?impact_days=0",
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("impact_days"));
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/apis/petstore/spec/reload?impact_days=7",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["impact_days"], 7);
    // The original spec gives findByTags its `default` back and drops `deprecated`: a change,
    // and acme called it.
    assert!(
        body["modified"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "GET /pet/findByTags"),
        "{body}"
    );
    assert!(
        body["impacted_consumers"]["acme"].as_u64().unwrap() >= 2,
        "{body}"
    );
    let (_, body) = server
        .admin(Method::GET, "/v1/apis/petstore/spec", None)
        .await;
    assert_eq!(body["history"].as_array().unwrap().len(), 2, "{body}");
    // Each spec version after the first (the reload) is a release marker.
    let (_, releases) = server
        .admin(Method::GET, "/v1/releases?api=petstore", None)
        .await;
    let releases = releases["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert!(
        releases
            .iter()
            .all(|r| r["source"] == "spec" && r["version"].as_str().unwrap().starts_with("spec-")),
        "{releases:?}"
    );

    // The version history is in the store: it survives a restart, load times unchanged.
    let before = body["history"].clone();
    assert!(server.terminate().success());
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let config_path = dir.path().join("clientele.toml");
    let server = Server::spawn(dir, &config_path, server.gateway, server.admin).await;
    let (_, body) = server
        .admin(Method::GET, "/v1/apis/petstore/spec", None)
        .await;
    assert_eq!(body["history"], before, "{body}");
}

#[tokio::test]
async fn an_invalid_spec_stops_start_up_naming_the_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "openapi: 3.0.3\npaths:\n  /a:\n    get:\n      responses: 7\n",
    )
    .unwrap();
    let config = "[[apis]]\nname = \"petstore\"\nupstream = \"http://127.0.0.1:9\"\nopenapi = \"bad.yaml\"\n[storage]\ndata_dir = \"data\"\n";
    let config_path = dir.path().join("clientele.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("#/paths/~1a/get/responses"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The fixture with a closed `Pet` schema (`additionalProperties: false`).
fn closed_variant() -> String {
    let original = std::fs::read_to_string(PETSTORE).unwrap();
    let v = original.replacen(
        "    Pet:\n      # tests edit: the schema tests close this object after the next line\n      type: object\n",
        "    Pet:\n      type: object\n      additionalProperties: false\n",
        1,
    );
    assert_ne!(v, original);
    v
}

#[tokio::test]
async fn sampled_requests_that_break_the_schema_become_findings_for_the_caller() {
    let (server, _up) = start_with_spec_and(
        &closed_variant(),
        "request_sample_rate = 1.0\nresponse_sample_rate = 1.0",
    )
    .await;
    let (_, acme) = server.consumer_with_key("acme", Some("pro")).await;
    let (_, initech) = server.consumer_with_key("initech", Some("pro")).await;
    let post = |key: String, body: &'static str| {
        let url = server.gw("/pet");
        async move {
            send(
                Method::POST,
                &url,
                &[
                    ("x-api-key", key.as_str()),
                    ("content-type", "application/json"),
                ],
                Some(bytes::Bytes::from_static(body.as_bytes())),
            )
            .await
            .unwrap()
            .0
        }
    };
    // acme: a body missing `name`, with a wrong enum and a field the closed schema refuses.
    for _ in 0..3 {
        let status = post(
            acme.clone(),
            r#"{"photoUrls": [], "status": "lost", "colour": "red"}"#,
        )
        .await;
        assert_eq!(status, 200);
    }
    // initech: valid bodies, and a bad query parameter.
    assert_eq!(
        post(
            initech.clone(),
            r#"{"name": "rex", "photoUrls": ["x"], "status": "sold"}"#
        )
        .await,
        200
    );
    let (status, _, _) = get_with_key(&server, "/pet/findByStatus?status=lost", &initech).await;
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(15);
    let findings = loop {
        let (status, _) = server
            .admin(Method::POST, "/v1/findings/evaluate", None)
            .await;
        assert_eq!(status, 200);
        let (_, body) = server
            .admin(Method::GET, "/v1/findings?kind=schema_violation", None)
            .await;
        let list = body["findings"].as_array().cloned().unwrap_or_default();
        if list.len() >= 3 {
            break list;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let acme_f = findings
        .iter()
        .find(|f| f["consumer"] == "acme")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(acme_f["route"], "POST /pet");
    let violations: Vec<(String, String, u64)> = acme_f["evidence"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["pointer"].as_str().unwrap().to_string(),
                v["rule"].as_str().unwrap().to_string(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    for want in [
        ("/name", "required"),
        ("/status", "enum"),
        ("/colour", "additionalProperties"),
    ] {
        assert!(
            violations.contains(&(want.0.to_string(), want.1.to_string(), 3)),
            "{want:?} not in {violations:?}"
        );
    }
    assert!(acme_f["evidence"]["first_seen"].is_string());
    assert!(acme_f["evidence"]["last_seen"].is_string());
    let initech_f = findings
        .iter()
        .find(|f| f["consumer"] == "initech")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(initech_f["route"], "GET /pet/findByStatus");
    let has = |f: &Value, location: &str, pointer: &str, rule: &str| {
        f["evidence"]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["location"] == location && v["pointer"] == pointer && v["rule"] == rule)
    };
    assert!(
        has(initech_f, "parameter", "/query/status", "enum"),
        "{initech_f}"
    );
    // Responses are sampled too: the test upstream echoes the request, which is not a Pet list.
    assert!(has(initech_f, "response", "", "type"), "{initech_f}");
    assert_eq!(initech_f["evidence"]["pointer"], "/query/status");
    // The valid POST from initech broke nothing on its side (the echoed response does).
    let initech_post = findings
        .iter()
        .find(|f| f["consumer"] == "initech" && f["route"] == "POST /pet")
        .unwrap();
    assert!(
        initech_post["evidence"]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["location"] == "response"),
        "{initech_post}"
    );
    assert_eq!(initech_post["severity"], "warning");
    assert!(has(initech_post, "response", "/name", "required"));
    let (_, spec) = server
        .admin(Method::GET, "/v1/apis/petstore/spec", None)
        .await;
    assert_eq!(spec["validation"]["checked"], 5, "{spec}");
    assert_eq!(spec["validation"]["dropped"], 0, "{spec}");
}

#[tokio::test]
async fn config_deprecations_feed_the_report_and_bad_ones_stop_start_up() {
    let (server, _up) = start_with_spec_and(
        &std::fs::read_to_string(PETSTORE).unwrap(),
        "deprecations = [{ operation = \"GET /pet/findByTags\", sunset = \"2027-01-01\", replaced_by = \"GET /pet/findByStatus\" }]",
    )
    .await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;
    for path in ["/pet/findByTags?tags=a", "/pet/findByStatus?status=sold"] {
        assert_eq!(get_with_key(&server, path, &key).await.0, 200);
    }
    server.wait_events("acme", "", |e| e.len() >= 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = server.admin(Method::GET, "/v1/deprecations", None).await;
        let dep = &body["deprecations"][0];
        if dep["consumers"][0]["calls"] == 1 {
            assert_eq!(dep["route"], "GET /pet/findByTags");
            assert_eq!(dep["source"], "config");
            assert_eq!(dep["sunset"], "2027-01-01T00:00:00.000Z");
            assert_eq!(dep["replaced_by"], "GET /pet/findByStatus");
            assert_eq!(dep["consumers"][0]["migration_progress"], 0.5);
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The contract endpoints are in the admin API's own OpenAPI document.
    let (_, doc) = server.admin(Method::GET, "/v1/openapi.json", None).await;
    for path in [
        "/v1/deprecations",
        "/v1/apis/{name}/spec",
        "/v1/apis/{name}/spec/reload",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }

    // Sidecar events without a route get the spec's template (base path or not).
    let now = clientele_core::time::now_ms();
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/events",
            Some(serde_json::json!([
                {"ts": now, "consumer": "side", "api": "petstore", "method": "GET", "path": "/api/v1/pet/findByStatus?status=sold", "status": 200, "latency_ms": 3},
                {"ts": now, "consumer": "side", "api": "petstore", "method": "GET", "path": "/pet/abc", "status": 200, "latency_ms": 3},
                {"ts": now, "consumer": "side", "method": "GET", "path": "/pet/abc", "status": 200, "latency_ms": 3}
            ])),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let events = server.wait_events("side", "", |e| e.len() >= 3).await;
    let mut routes: Vec<&str> = events.iter().filter_map(|e| e["route"].as_str()).collect();
    routes.sort();
    assert_eq!(
        routes,
        vec!["/pet/abc", "/pet/findByStatus", "/pet/{petId}"],
        "{events:?}"
    );

    // An operation the spec does not have: start-up stops with file, key and reason.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(PETSTORE, dir.path().join("petstore.yaml")).unwrap();
    let config = "[[apis]]\nname = \"petstore\"\nupstream = \"http://127.0.0.1:9\"\nopenapi = \"petstore.yaml\"\n\
                  deprecations = [{ operation = \"GET /pets/old\", sunset = \"2027-01-01\" }]\n[storage]\ndata_dir = \"data\"\n";
    let config_path = dir.path().join("clientele.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "clientele.toml: apis[0].deprecations[0].operation: GET /pets/old is not an operation"
        ),
        "{stderr}"
    );
}

/// Sample rates per operation: with the API's rates at 0, only the operation given a rate of
/// its own is checked.
#[tokio::test]
async fn per_operation_sample_rates_override_the_apis() {
    let (server, _up) = start_with_spec_and(
        &closed_variant(),
        "request_sample_rate = 0.0\nresponse_sample_rate = 0.0\n\
         sample_rates = { \"POST /pet\" = { request = 1.0 } }",
    )
    .await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;
    let (status, _, _) = send(
        Method::POST,
        &server.gw("/pet"),
        &[
            ("x-api-key", key.as_str()),
            ("content-type", "application/json"),
        ],
        Some(bytes::Bytes::from_static(
            br#"{"photoUrls": [], "status": "lost"}"#,
        )),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    // Not sampled: a bad query parameter on an operation left at the API's rate of 0.
    let (status, _, _) = get_with_key(&server, "/pet/findByStatus?status=lost", &key).await;
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(15);
    let list = loop {
        server
            .admin(Method::POST, "/v1/findings/evaluate", None)
            .await;
        let (_, body) = server
            .admin(Method::GET, "/v1/findings?kind=schema_violation", None)
            .await;
        let list = body["findings"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            break list;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Give a late sample of the other operation a moment, then check it never came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    let (_, body) = server
        .admin(Method::GET, "/v1/findings?kind=schema_violation", None)
        .await;
    let routes: Vec<&str> = body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["route"].as_str())
        .collect();
    assert!(routes.contains(&"POST /pet"), "{list:?}");
    assert!(!routes.contains(&"GET /pet/findByStatus"), "{routes:?}");

    // A bad operation key is refused at start-up with the key named.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[apis]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\nsample_rates = { \"pet\" = { request = 1.0 } }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apis[0].sample_rates.\"pet\""), "{stderr}");
}
